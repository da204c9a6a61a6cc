"""The autoscaler's decision: how many ECS tasks one worker service should run next.

Pure Python, standard library only: no AWS, no Redis. The handler observes a service every
`interval_s` seconds (300 by default), calls `decide(observation, config, state)` and stores
the returned `state` (a small JSON-serializable dict) for the next call.

The model, in plain words
-------------------------
A worker service is a pool of *slots*: each ECS task runs `concurrency` Celery processes, each
process runs one message at a time. Two numbers describe the load:

* the arrival rate `lambda` (messages per second), measured from the arrivals of the last
  `rate_window_s` seconds (at least the last interval), plus one standard deviation of Poisson
  counting noise and a damped rising trend, so a quiet sample or a ramp does not leave the
  service short for the next interval;
* the run time `S` (seconds per message), measured with Little's law on the slots: the average
  number of in-flight messages equals throughput times run time, so
  `S = sum(in-flight x seconds) / sum(completions)`, exponentially weighted (half-life
  `rate_half_life_s`) and pulled towards `run_time_hint_s` while few completions are known.

Little's law then says the service keeps `a = lambda x S` slots busy on average. Queueing adds
waiting on top of that: the policy picks the smallest number of slots `k` for which the
Erlang-C (M/M/k) model predicts that at most `late_fraction` of messages wait longer than
`target_wait_s`. That is the *steady* need.

A backlog needs more: messages already waiting plus those arriving meanwhile must be started
within `startup_s + drain_s` seconds (new Fargate tasks only help after `startup_s`). The
*drain* need is the number of slots that finishes that work in time, counting the slots that
already run from now and new ones from `startup_s` on, and never more than one slot per message
(long tasks: one waiting message needs one slot, not `S / horizon` of them).

The result is the larger need in slots, rounded up to tasks. Scaling out happens at once.
Scaling in is careful: the count never drops below the tasks busy with in-flight work
(`ceil(in_flight / concurrency)`; messages reserved by workers are invisible to LLEN), below
the largest steady need of the last `scale_in_stabilization_s` seconds, or by more than
`scale_in_max_step_fraction` of the tasks in one decision. With `min_tasks` 0 the service goes
to zero only after `idle_before_zero_s` seconds with nothing waiting, in flight or arriving,
and wakes as soon as anything waits. Missing, negative or contradictory inputs never lower
the count: the decision holds (scale-out stays possible) and the reason says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

STATE_VERSION = 1
# One standard deviation of the Poisson noise of a measured arrival count (messages): an
# interval that happened to be quiet must not leave the next one short.
RATE_NOISE_SIGMAS = 1.0
# Arrivals a rate measurement should contain (about 14 % counting noise); slow services
# measure over a longer window to get them.
MIN_RATE_ARRIVALS = 50
# Completions' worth of weight given to `run_time_hint_s` before measurements dominate.
RUN_TIME_PRIOR_COMPLETIONS = 2.0
# The steady sizing keeps at least this much of the queueing margin however fast reactions are.
MAX_ERLANG_LATE = 0.5
# Bound on the stabilization history kept in the state (entries), whatever the cadence.
MAX_RECENT_ENTRIES = 200
# Erlang-C search stops this many slots above the offered load (never reached in practice).
MAX_EXTRA_SLOTS_SEARCH = 100_000


@dataclass(frozen=True)
class Observation:
    """One look at one worker service. Counts are messages or ECS tasks; `now` is epoch s.

    Any field may be None (or garbage) when the handler could not read it: the policy then
    holds instead of scaling in.
    """

    now: float | None
    waiting: int | None  # messages in the service's queues, all priority levels
    in_flight: int | None  # reserved/unacknowledged messages of those queues
    running_tasks: int | None
    pending_tasks: int | None
    desired: int | None  # the service's current ECS desired count
    arrived_since_last: int | None = None  # estimate: max(0, dwaiting + din_flight + completed)
    completed_since_last: int | None = None  # finished task attempts (workers' counter)


@dataclass(frozen=True)
class PolicyConfig:
    """The service's bounds and latency target, plus tuning knobs with safe defaults."""

    min_tasks: int
    max_tasks: int
    concurrency: int  # slots (Celery processes) per ECS task
    target_wait_s: float  # acceptable wait between publish and start of a message
    interval_s: float = 300.0  # seconds between decisions
    startup_s: float = 75.0  # Fargate task start: scheduling, image pull, worker ready
    run_time_hint_s: float = 30.0  # run time assumed until completions are measured
    late_fraction: float = 0.02  # share of messages allowed over target_wait_s in steady state
    drain_s: float | None = None  # backlog start deadline after new tasks are up; None: target
    scale_in_stabilization_s: float = 600.0  # scale in only below every steady need this long
    scale_in_max_step_fraction: float = 1.0  # largest share of tasks removed in one decision
    idle_before_zero_s: float = 300.0  # quiet time before min_tasks 0 lets the service stop
    rate_window_s: float = 300.0  # arrivals are averaged over at least this long
    rate_window_max_s: float = 3600.0  # ... and longer while fewer than 50 arrived, up to this
    rate_half_life_s: float = 3600.0  # weight half-life of the run time measurement
    max_state_age_s: float | None = None  # older state is ignored; None: 4 intervals + startup

    def __post_init__(self) -> None:
        errors = []
        if not 0 <= self.min_tasks <= self.max_tasks:
            errors.append(f"min_tasks {self.min_tasks} must be in 0..max_tasks {self.max_tasks}")
        if self.max_tasks < 1:
            errors.append(f"max_tasks {self.max_tasks} must be >= 1")
        if self.concurrency < 1:
            errors.append(f"concurrency {self.concurrency} must be >= 1")
        positive = (
            "target_wait_s",
            "interval_s",
            "run_time_hint_s",
            "rate_half_life_s",
            "rate_window_max_s",
        )
        for name in positive:
            if not getattr(self, name) > 0:
                errors.append(f"{name} {getattr(self, name)} must be > 0")
        for name in (
            "startup_s",
            "scale_in_stabilization_s",
            "idle_before_zero_s",
            "rate_window_s",
        ):
            if not getattr(self, name) >= 0:
                errors.append(f"{name} {getattr(self, name)} must be >= 0")
        if not 0 < self.late_fraction < 1:
            errors.append(f"late_fraction {self.late_fraction} must be in (0, 1)")
        if not 0 < self.scale_in_max_step_fraction <= 1:
            errors.append(
                f"scale_in_max_step_fraction {self.scale_in_max_step_fraction} must be in (0, 1]"
            )
        if self.drain_s is not None and not self.drain_s > 0:
            errors.append(f"drain_s {self.drain_s} must be > 0")
        if self.max_state_age_s is not None and not self.max_state_age_s > 0:
            errors.append(f"max_state_age_s {self.max_state_age_s} must be > 0")
        if errors:
            raise ValueError("invalid PolicyConfig: " + "; ".join(errors))

    @property
    def state_max_age_s(self) -> float:
        if self.max_state_age_s is not None:
            return self.max_state_age_s
        return 4 * self.interval_s + self.startup_s


@dataclass(frozen=True)
class Decision:
    desired: int
    state: dict[str, Any]
    reason: str


# ---------------------------------------------------------------- input cleaning


def _count(value: object) -> int | None:
    """A non-negative whole number, or None for anything else (None, negative, NaN, bool)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if value >= 0 else None
    if isinstance(value, float) and math.isfinite(value) and value >= 0 and value.is_integer():
        return int(value)
    return None


def _seconds(value: object) -> float | None:
    """A finite, non-negative number of seconds, or None."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


@dataclass
class _Memory:
    """What the previous call left, validated."""

    t: float  # epoch s of the previous observation
    waiting: int
    in_flight: int
    arrival_rate: float  # messages/s over the previous rate window
    arrivals: list[tuple[float, int]]  # (seconds, messages) per past interval, newest last
    busy_slot_s: float  # weighted sum of in-flight messages x seconds
    completed: float  # weighted sum of completions
    active_t: float  # epoch s when work was last seen (waiting, in flight or arriving)
    recent: list[tuple[float, int]]  # (epoch s, steady need in tasks) for stabilization
    desired: int


def _load(raw: object, now: float, config: PolicyConfig) -> _Memory | None:
    """The previous state if it is well-formed, from this schema and recent; else None."""
    if not isinstance(raw, dict) or raw.get("version") != STATE_VERSION:
        return None
    t = _seconds(raw.get("t"))
    waiting = _count(raw.get("waiting"))
    in_flight = _count(raw.get("in_flight"))
    rate = _seconds(raw.get("arrival_rate"))
    busy = _seconds(raw.get("busy_slot_s"))
    completed = _seconds(raw.get("completed"))
    active_t = _seconds(raw.get("active_t"))
    desired = _count(raw.get("desired"))
    recent_raw = raw.get("recent")
    arrivals_raw = raw.get("arrivals")
    if (
        t is None
        or waiting is None
        or in_flight is None
        or rate is None
        or busy is None
        or completed is None
        or active_t is None
        or desired is None
        or not isinstance(recent_raw, list)
        or not isinstance(arrivals_raw, list)
    ):
        return None
    # A state from the future or from long ago describes another situation.
    if not 0 < now - t <= config.state_max_age_s or active_t > t:
        return None
    recent: list[tuple[float, int]] = []
    for entry in recent_raw[-MAX_RECENT_ENTRIES:]:
        if not isinstance(entry, list) or len(entry) != 2:
            return None
        when, need = _seconds(entry[0]), _count(entry[1])
        if when is None or need is None or when > t:
            return None
        recent.append((when, need))
    arrivals: list[tuple[float, int]] = []
    for entry in arrivals_raw[-MAX_RECENT_ENTRIES:]:
        if not isinstance(entry, list) or len(entry) != 2:
            return None
        span, count = _seconds(entry[0]), _count(entry[1])
        if span is None or count is None or span <= 0:
            return None
        arrivals.append((span, count))
    return _Memory(
        t, waiting, in_flight, rate, arrivals, busy, completed, active_t, recent, desired
    )


# ---------------------------------------------------------------- queueing model


def slots_for_wait(
    offered_slots: float, run_time_s: float, target_wait_s: float, late_fraction: float
) -> int:
    """Fewest slots k for which an M/M/k queue with offered load `offered_slots` (Erlangs,
    arrival rate x run time) lets at most `late_fraction` of messages wait > target_wait_s.

    P(wait > T) = ErlangC(k, a) * exp(-(k - a) * T / S). Erlang B is computed by its stable
    recurrence B(n) = a B(n-1) / (n + a B(n-1)), so large k costs O(k) and never overflows.
    """
    a = offered_slots
    if a <= 0:
        return 0
    erlang_b = 1.0
    k = 0
    while k < a + MAX_EXTRA_SLOTS_SEARCH:
        k += 1
        erlang_b = a * erlang_b / (k + a * erlang_b)
        if k <= a:
            continue  # unstable: the queue grows without bound
        erlang_c = k * erlang_b / (k - a * (1 - erlang_b))
        late = erlang_c * math.exp(-(k - a) * target_wait_s / run_time_s)
        if late <= late_fraction:
            return k
    return k


def _erlang_late(config: PolicyConfig) -> float:
    """The share of late messages the steady sizing may allow so that `late_fraction` holds
    once reactions count: a message that finds every slot busy gets a new one at the next
    decision plus start-up at the latest (the drain need adds one per waiting message). If it
    arrives `u` seconds after a decision (uniform over the interval) that is
    `interval - u + startup` seconds, so only the share of arrival phases where this exceeds
    the target can be late at all."""
    exposed = (config.interval_s + config.startup_s - config.target_wait_s) / config.interval_s
    if exposed <= 0:
        return MAX_ERLANG_LATE
    return min(MAX_ERLANG_LATE, config.late_fraction / min(1.0, exposed))


def backlog_slots(
    *, waiting: int, in_flight: int, arrival_rate: float, run_time_s: float, drain_s: float
) -> float:
    """Slots that do all the work due within the next `drain_s` seconds: every waiting
    message started, the in-flight ones continued, arrivals served. Each message counts
    only with the part of its run that falls inside the window, so a short-task backlog
    needs about waiting x run time / drain_s slots, and a long-task one a slot per message
    (plus the slots its in-flight messages keep)."""
    work_slot_s = (
        waiting * min(run_time_s, drain_s)
        + in_flight * min(run_time_s / 2, drain_s)  # half the run left on average
        + arrival_rate * drain_s * min(run_time_s, drain_s / 2)  # arrivals come throughout
    )
    return work_slot_s / drain_s


# ---------------------------------------------------------------- the decision


def _newest(
    intervals: list[tuple[float, int]], span_s: float, arrivals: int = 0
) -> list[tuple[float, int]]:
    """The newest (seconds, messages) entries that together last at least `span_s` and hold
    at least `arrivals` messages; all of them if they do not."""
    covered = 0.0
    counted = 0
    for index in range(len(intervals) - 1, -1, -1):
        covered += intervals[index][0]
        counted += intervals[index][1]
        if covered >= span_s and counted >= arrivals:
            return intervals[index:]
    return intervals


def _tasks(slots: float, concurrency: int) -> int:
    # The tolerance keeps float noise (12.000000001 slots) from costing a whole task.
    return max(0, math.ceil(slots / concurrency - 1e-9))


def decide(
    observation: Observation, config: PolicyConfig, state: dict[str, Any] | None
) -> Decision:
    """The desired count for the next interval, the state to pass to the next call, and a
    one-sentence reason with the numbers behind it."""
    c = config.concurrency
    now = _seconds(observation.now)
    waiting = _count(observation.waiting)
    in_flight = _count(observation.in_flight)
    running = _count(observation.running_tasks)
    pending = _count(observation.pending_tasks)
    desired = _count(observation.desired)
    arrived = _count(observation.arrived_since_last)
    completed = _count(observation.completed_since_last)

    # Reasons not to scale in: bad inputs, or nothing measured yet.
    holds = [
        f"{name} is {raw!r}"
        for name, raw, clean in (
            ("now", observation.now, now),
            ("waiting", observation.waiting, waiting),
            ("in_flight", observation.in_flight, in_flight),
            ("running_tasks", observation.running_tasks, running),
            ("pending_tasks", observation.pending_tasks, pending),
            ("desired", observation.desired, desired),
            ("arrived_since_last", observation.arrived_since_last, arrived),
            ("completed_since_last", observation.completed_since_last, completed),
        )
        if clean is None
    ]
    memory = _load(state, now, config) if now is not None else None
    if state is None:
        holds.append("first observation, no rates yet")
    elif memory is None:
        holds.append("previous state unusable or stale")

    # The count to hold when the current one is unknown: the largest any signal supports,
    # so a missing field never lowers capacity.
    if desired is not None:
        current = desired
    else:
        known = [memory.desired] if memory is not None else []
        if running is not None and pending is not None:
            known.append(running + pending)
        current = max(known, default=config.min_tasks)
    waiting_n = waiting or 0
    in_flight_n = in_flight or 0

    # ---- measurements: arrival rate (messages/s) and run time (s/message)
    busy_slot_s = memory.busy_slot_s if memory is not None else 0.0
    completed_w = memory.completed if memory is not None else 0.0
    arrivals = list(memory.arrivals) if memory is not None else []
    measured_rate = memory.arrival_rate if memory is not None else 0.0
    rate = measured_rate
    if memory is not None and now is not None and arrived is not None and completed is not None:
        dt = now - memory.t
        average_in_flight = (memory.in_flight + in_flight_n) / 2
        # The two in-flight samples stand for the whole interval only if the queue was in the
        # same regime at both ends: empty (in flight ~ arrivals x run time) or backed up (every
        # slot busy). A backlog that appeared or drained in between tells nothing reliable.
        # Idle intervals carry no run-time information either: keep the old weights then.
        same_regime = (memory.waiting == 0) == (waiting_n == 0)
        if same_regime and in_flight is not None and (completed > 0 or average_in_flight > 0):
            keep = 0.5 ** (dt / config.rate_half_life_s)
            busy_slot_s = busy_slot_s * keep + average_in_flight * dt
            completed_w = completed_w * keep + completed
        arrivals.append((dt, arrived))
        # Keep what the longest rate window can use; measure over the newest intervals that
        # cover rate_window_s and hold enough arrivals for a usable count, if there are any.
        arrivals = _newest(arrivals, config.rate_window_max_s)
        window = _newest(arrivals, config.rate_window_s, MIN_RATE_ARRIVALS)
        span_s = sum(span for span, _ in window)
        count = sum(n for _, n in window)
        measured_rate = count / span_s
        rate = measured_rate + RATE_NOISE_SIGMAS * math.sqrt(count + 1) / span_s
    run_time_s = (busy_slot_s + config.run_time_hint_s * RUN_TIME_PRIOR_COMPLETIONS) / (
        completed_w + RUN_TIME_PRIOR_COMPLETIONS
    )

    # ---- needs, in slots then tasks
    steady_slots = min(
        config.max_tasks * c,
        slots_for_wait(rate * run_time_s, run_time_s, config.target_wait_s, _erlang_late(config)),
    )
    steady_tasks = _tasks(steady_slots, c)
    busy_tasks = _tasks(in_flight_n, c)
    need = steady_tasks
    if waiting_n > 0:
        # A backlog: start it within drain_s of new tasks being up, on top of the rest.
        backlog = backlog_slots(
            waiting=waiting_n,
            in_flight=in_flight_n,
            arrival_rate=rate,
            run_time_s=run_time_s,
            drain_s=config.drain_s if config.drain_s is not None else config.target_wait_s,
        )
        need = max(need, _tasks(backlog, c))

    work_present = waiting_n + in_flight_n > 0
    active_now = work_present or (arrived or 0) > 0 or waiting is None or in_flight is None
    if memory is None or now is None:
        active_t = now if now is not None else 0.0
    else:
        active_t = now if active_now else memory.active_t
    quiet_s = now - active_t if now is not None and memory is not None else 0.0
    quiet = not active_now and quiet_s >= config.idle_before_zero_s
    # Nothing to do after the quiet period (itself the stabilization), or stopped and idle: 0.
    # Otherwise at least one task: work waits, or stay warm until the quiet period has passed.
    need = 0 if not work_present and (quiet or current == 0) else max(need, 1)

    # ---- scale out at once; scale in carefully
    recent = memory.recent if memory is not None else []
    if now is not None:
        recent = [(t, n) for t, n in recent if now - t < config.scale_in_stabilization_s]
    notes: list[str] = []
    if need >= current:
        new = need
        if holds and state is not None:
            notes.append("inputs: " + ", ".join(holds))
    elif holds:
        new = current
        notes.append("scale-in held: " + ", ".join(holds))
    else:
        stable = need if quiet else max([need] + [n for _, n in recent])
        step = max(1, math.floor(current * config.scale_in_max_step_fraction))
        # Never below the tasks busy with in-flight work (a scale-in, not a scale-out, though:
        # scale-in protection keeps busy tasks running above the desired count anyway).
        new = min(current, max(stable, current - step, busy_tasks))
        if new > need:
            notes.append(
                f"scale-in limited (steady need over the last "
                f"{config.scale_in_stabilization_s:g} s {stable}, step {step}, busy {busy_tasks})"
            )

    new = min(max(new, config.min_tasks), config.max_tasks)
    if work_present and new == 0:
        new = 1  # never stop a service that has work, whatever min_tasks says
    if need > config.max_tasks:
        notes.append(f"capped at max_tasks {config.max_tasks}")
    if quiet:
        notes.append(f"quiet for {quiet_s:.0f} s")

    if new > current:
        verb = f"scale out {current}->{new}"
    elif new < current:
        verb = f"scale in {current}->{new}"
    else:
        verb = f"hold at {new}"
    reason = (
        f"{verb}: {_show(waiting)} waiting + {_show(in_flight)} in flight, "
        f"arrivals {measured_rate:.2f}/s, run time {run_time_s:.1f} s, "
        f"service rate {c / run_time_s:.2f}/s/task ({c} slots), target wait "
        f"{config.target_wait_s:g} s; needs {steady_tasks} for arrivals, {need} with "
        f"in-flight work and backlog"
    )
    if notes:
        reason += "; " + "; ".join(notes)

    if now is not None:
        recent = [*recent, (now, steady_tasks)]
    new_state: dict[str, Any] = {
        "version": STATE_VERSION,
        # Without a valid clock this state is unusable next time, which the next call says.
        "t": now if now is not None else 0.0,
        "waiting": waiting_n,
        "in_flight": in_flight if in_flight is not None else new * c,
        "arrival_rate": measured_rate,
        "arrivals": [[span, n] for span, n in arrivals[-MAX_RECENT_ENTRIES:]],
        "busy_slot_s": busy_slot_s,
        "completed": completed_w,
        "active_t": active_t,
        "recent": [[t, n] for t, n in recent[-MAX_RECENT_ENTRIES:]],
        "desired": new,
    }
    return Decision(desired=new, state=new_state, reason=reason)


def _show(value: int | None) -> str:
    return "?" if value is None else str(value)
