"""The autoscaler's decision: how many ECS tasks one worker service should run next.

Pure Python, standard library only: no AWS, no Redis. The handler observes a service every
`interval_s` seconds (300 by default), calls `decide(observation, config, state)` and stores
the returned `state` (a small JSON-serializable dict) for the next call.

The model behind it (the arrival rate and run time it measures, the steady and backlog needs
it sizes for, how it scales in) is explained in docs/autoscaler.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
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
# Default age (seconds) beyond which a stored state is ignored.
MIN_STATE_MAX_AGE_S = 3600.0
# Spending the target: the largest chance accepted that the queue outgrows
# `scale_out_wait_fraction` of the target before a later decision's tasks are up. A miss
# costs little (the share of messages late is far smaller, and the next decision corrects
# it); tighter values bought no fewer late messages in the benchmark, only more tasks.
HOLD_RISK = 0.2
# Largest slot count the Erlang-C search considers unless told a smaller one (max_tasks x
# concurrency is at most 1000 x 256 in the platform's config).
MAX_SLOTS_SEARCH = 1_000_000
_STANDARD_NORMAL = NormalDist()


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
    late_fraction: float = 0.05  # share of messages allowed over target_wait_s in steady state
    drain_s: float | None = None  # backlog start deadline after new tasks are up; None: target
    # Run fewer tasks than the needs above while the queue would likely (HOLD_RISK) start
    # every message within this share of the target until a later decision's tasks are up:
    # the target is spent instead of new tasks' start-ups (0: never; 1: the whole target).
    scale_out_wait_fraction: float = 0.85
    # Scale in only below every steady need of this long (seconds). With the workers'
    # scale-in protection ECS stops only idle tasks, so a scale-in never interrupts work and
    # one that proves wrong costs a start-up; holding tasks through every dip cost more
    # (bench/results/autoscaler_sim.md), hence none by default.
    scale_in_stabilization_s: float = 0.0
    scale_in_max_step_fraction: float = 1.0  # largest share of tasks removed at once; 1: no cap
    idle_before_zero_s: float = 300.0  # quiet time before min_tasks 0 lets the service stop
    rate_window_s: float = 300.0  # arrivals are averaged over at least this long
    rate_window_max_s: float = 3600.0  # ... and longer while fewer than 50 arrived, up to this
    rate_half_life_s: float = 3600.0  # weight half-life of the run time measurement
    max_state_age_s: float | None = None  # older state is ignored; None: 1 h or 4 intervals

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
            "idle_before_zero_s",
            "rate_window_s",
        ):
            if not getattr(self, name) >= 0:
                errors.append(f"{name} {getattr(self, name)} must be >= 0")
        if not 0 <= self.scale_out_wait_fraction <= 1:
            errors.append(
                f"scale_out_wait_fraction {self.scale_out_wait_fraction} must be in [0, 1]"
            )
        if not 0 < self.late_fraction < 1:
            errors.append(f"late_fraction {self.late_fraction} must be in (0, 1)")
        if not 0 < self.scale_in_max_step_fraction <= 1:
            errors.append(
                f"scale_in_max_step_fraction {self.scale_in_max_step_fraction} must be in (0, 1]"
            )
        if not self.scale_in_stabilization_s >= 0:
            errors.append(f"scale_in_stabilization_s {self.scale_in_stabilization_s} must be >= 0")
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
        # Generous: a long gap still yields valid averages (counts over the whole gap); only
        # a state from another era (a service stopped for hours) is better forgotten.
        return max(MIN_STATE_MAX_AGE_S, 4 * self.interval_s)


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
    offered_slots: float,
    run_time_s: float,
    target_wait_s: float,
    late_fraction: float,
    limit: int = MAX_SLOTS_SEARCH,
) -> int:
    """Fewest slots k for which an M/M/k queue with offered load `offered_slots` (Erlangs,
    arrival rate x run time) lets at most `late_fraction` of messages wait > target_wait_s;
    `limit` if that is more.

    P(wait > T) = ErlangC(k, a) * exp(-(k - a) * T / S). Erlang B is computed by its stable
    recurrence B(n) = a B(n-1) / (n + a B(n-1)), so large k costs O(k) and never overflows.
    """
    a = offered_slots
    if a <= 0:
        return 0
    if a >= limit:
        return limit  # saturated: no need to search (and a garbage rate cannot stall us)
    erlang_b = 1.0
    k = 0
    while k < limit:
        k += 1
        erlang_b = a * erlang_b / (k + a * erlang_b)
        if k <= a:
            continue  # unstable: the queue grows without bound
        erlang_c = k * erlang_b / (k - a * (1 - erlang_b))
        late = erlang_c * math.exp(-(k - a) * target_wait_s / run_time_s)
        if late <= late_fraction:
            return k
    return k


def late_exposure(config: PolicyConfig) -> float:
    """Share of arrivals that reactions cannot save from being late, in [0, 1].

    A message that finds every slot busy gets a new one at the next decision plus start-up
    at the latest (the backlog need adds slots for waiting messages). Arriving `u` seconds
    after a decision (uniform over the interval), it waits at most `interval - u + startup`,
    so only the share of arrival phases where that exceeds the target can be late at all.
    """
    exposed = (config.interval_s + config.startup_s - config.target_wait_s) / config.interval_s
    return min(1.0, max(0.0, exposed))


def _erlang_late(exposure: float, late_fraction: float) -> float:
    # The steady sizing may allow more late messages where reactions catch most of them.
    if exposure <= 0:
        return MAX_ERLANG_LATE
    return min(MAX_ERLANG_LATE, late_fraction / exposure)


def queue_overflow_risk(
    *,
    waiting: float,
    slots: int,
    arrival_rate: float,
    run_time_s: float,
    horizon_s: float,
    limit: float,
) -> float:
    """Chance that a queue of `waiting` messages served by `slots` busy slots grows beyond
    `limit` messages within `horizon_s`, in [0, 1].

    The diffusion approximation of a busy multi-server queue: the queue moves like a Brownian
    motion with drift `arrival_rate - slots / run_time_s` and variance rate `arrival_rate +
    slots / run_time_s` (Poisson arrivals and exponential run times). Its first passage
    above `limit - waiting` within the horizon has the closed form
    P = Phi((mu H - b) / (sigma sqrt H)) + exp(2 mu b / sigma^2) Phi((-mu H - b) / (sigma sqrt H)).
    """
    b = limit - waiting
    if b <= 0:
        return 1.0
    if horizon_s <= 0:
        return 0.0
    if slots <= 0 or run_time_s <= 0:
        return 1.0 if arrival_rate > 0 else 0.0
    service_rate = slots / run_time_s
    drift = arrival_rate - service_rate
    variance = arrival_rate + service_rate
    spread = math.sqrt(variance * horizon_s)
    exponent = 2 * drift * b / variance
    if exponent > 700:
        return 1.0  # exp overflows only where the first term is about 1 anyway
    cdf = _STANDARD_NORMAL.cdf
    risk = cdf((drift * horizon_s - b) / spread)
    risk += math.exp(exponent) * cdf((-drift * horizon_s - b) / spread)
    return min(1.0, max(0.0, risk))


def backlog_slots(
    *, waiting: int, in_flight: int, arrival_rate: float, run_time_s: float, drain_s: float
) -> float:
    """Slots that do all the work due within the next `drain_s` seconds: every waiting
    message started, the in-flight ones continued, arrivals served. Each message counts with
    the part of its run that falls inside the window (in-flight ones have a uniformly spread
    remainder, arrivals come uniformly through the window), so a short-task backlog needs
    about waiting x run time / drain_s slots and a long-task one about a slot per message."""
    run, window = run_time_s, drain_s
    in_flight_s = run / 2 if window >= run else window - window * window / (2 * run)
    arrival_s = window / 2 if run >= window else run - run * run / (2 * window)
    work_slot_s = (
        waiting * min(run, window) + in_flight * in_flight_s + arrival_rate * window * arrival_s
    )
    return work_slot_s / window


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


def _run_time(busy_slot_s: float, completed: float, config: PolicyConfig) -> float:
    """Mean run time (s): busy slot-seconds per completion, pulled towards the hint while few
    completions are known."""
    prior = RUN_TIME_PRIOR_COMPLETIONS
    return (busy_slot_s + config.run_time_hint_s * prior) / (completed + prior)


def _tasks(slots: float, concurrency: int) -> int:
    # The tolerance keeps float noise (12.000000001 slots) from costing a whole task.
    return max(0, math.ceil(slots / concurrency - 1e-9))


@dataclass(frozen=True)
class _Inputs:
    """One observation, cleaned, with the previous state it continues."""

    now: float | None
    waiting: int | None
    in_flight: int | None
    arrived: int | None
    completed: int | None
    memory: _Memory | None
    problems: list[str]  # inputs missing or making no sense: reasons not to scale in
    holds: list[str]  # the problems, and a first observation (no rates yet)
    current: int  # the count now; where unknown, the largest any signal supports

    @property
    def waiting_n(self) -> int:
        return self.waiting or 0

    @property
    def in_flight_n(self) -> int:
        return self.in_flight or 0

    @property
    def work_present(self) -> bool:
        return self.waiting_n + self.in_flight_n > 0


@dataclass(frozen=True)
class _Load:
    """The measured load: arrival rates (messages/s) and run time (s/message)."""

    exposure: float  # share of arrivals reactions cannot save (late_exposure)
    measured_rate: float  # arrivals as counted, over the rate window
    rate: float  # arrivals to size for: those the service took, plus a noise margin
    run_time_s: float
    busy_slot_s: float  # the run-time measurement's weighted sums, for the state
    completed_w: float
    arrivals: list[tuple[float, int]]  # (seconds, messages) the service took, newest last


@dataclass(frozen=True)
class _Idle:
    active_t: float  # epoch s when work was last seen
    quiet_s: float  # seconds since then
    quiet: bool  # nothing to do long enough (or, for rare messages, right now) to stop
    warm_pays: bool  # a message is expected within idle_before_zero_s


def decide(
    observation: Observation, config: PolicyConfig, state: dict[str, Any] | None
) -> Decision:
    """The desired count for the next interval, the state to pass to the next call, and a
    one-sentence reason with the numbers behind it. The stages below, in order: clean the
    inputs, measure the load, size for it, tell idleness, spend the target (run fewer tasks
    while the queue likely absorbs the difference in time), then scale out or in carefully
    (docs/autoscaler.md explains the model)."""
    inputs = _clean(observation, config, state)
    load = _measure(inputs, config)
    steady_tasks, busy_tasks, need = _needs(inputs, load, config)
    idle = _idleness(inputs, load, config)
    # Nothing to do after the quiet period (itself the stabilization), or stopped and idle: 0.
    # Otherwise at least one task: work waits, or stay warm until the quiet period has passed.
    stop = not inputs.work_present and (idle.quiet or inputs.current == 0)
    need = 0 if stop else max(need, 1)
    wanted, spent = _spend_target(inputs, load, config, need)
    new, recent, notes = _scale(inputs, wanted, busy_tasks, idle, config)
    if spent:
        notes.insert(0, spent)
    reason = _reason(inputs, load, config, new, need, steady_tasks, notes)
    if inputs.now is not None:
        recent = [*recent, (inputs.now, steady_tasks)]
    return Decision(desired=new, state=_state(inputs, load, idle, recent, new), reason=reason)


def _clean(observation: Observation, config: PolicyConfig, state: dict[str, Any] | None) -> _Inputs:
    """Each field as a count or seconds (None where missing or nonsense), the usable previous
    state, and the count to hold when the current one is unknown."""
    now = _seconds(observation.now)
    waiting = _count(observation.waiting)
    in_flight = _count(observation.in_flight)
    running = _count(observation.running_tasks)
    pending = _count(observation.pending_tasks)
    desired = _count(observation.desired)
    arrived = _count(observation.arrived_since_last)
    completed = _count(observation.completed_since_last)
    problems = [
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
    if state is not None and memory is None and now is not None:
        problems.append("previous state unusable or stale")
    holds = problems if state is not None else [*problems, "first observation, no rates yet"]
    # A missing field never lowers capacity: hold the largest count any signal supports.
    if desired is not None:
        current = desired
    else:
        known = [memory.desired] if memory is not None else []
        if running is not None and pending is not None:
            known.append(running + pending)
        current = max(known, default=config.min_tasks)
    return _Inputs(now, waiting, in_flight, arrived, completed, memory, problems, holds, current)


def _measure(inputs: _Inputs, config: PolicyConfig) -> _Load:
    """The arrival rate and run time, updated with this interval where it tells something."""
    memory, now, arrived, completed = inputs.memory, inputs.now, inputs.arrived, inputs.completed
    in_flight, waiting_n, in_flight_n = inputs.in_flight, inputs.waiting_n, inputs.in_flight_n
    exposure = late_exposure(config)
    busy_slot_s = memory.busy_slot_s if memory is not None else 0.0
    completed_w = memory.completed if memory is not None else 0.0
    arrivals = list(memory.arrivals) if memory is not None else []
    measured_rate = memory.arrival_rate if memory is not None else 0.0
    rate = measured_rate
    sizing_alternative: tuple[float, float] | None = None
    if memory is not None and now is not None and arrived is not None and completed is not None:
        dt = now - memory.t
        average_in_flight = (memory.in_flight + in_flight_n) / 2
        # The two in-flight samples stand for the whole interval only if the queue was in the
        # same regime at both ends: empty (in flight ~ arrivals x run time) or backed up (every
        # slot busy). A backlog that appeared or drained in between tells nothing reliable.
        # Idle intervals carry no run-time information either: keep the old weights then.
        same_regime = (memory.waiting == 0) == (waiting_n == 0)
        if in_flight is not None and (completed > 0 or average_in_flight > 0):
            keep = 0.5 ** (dt / config.rate_half_life_s)
            updated = (busy_slot_s * keep + average_in_flight * dt, completed_w * keep + completed)
            if same_regime:
                busy_slot_s, completed_w = updated
            else:
                # Not kept, but a backlog is sized with the longer of the two estimates:
                # otherwise a backlog could ask for fewer tasks than no backlog would.
                sizing_alternative = updated
        # Arrivals as the service took them: those that piled up as backlog (a batch drop)
        # are the backlog need's to drain, not a lasting rate that would keep a drained
        # batch's tasks for a whole window. Counted from what started (completions and the
        # change in flight), not from the queue, so that more waiting never lowers the need.
        started = completed + in_flight - memory.in_flight if in_flight is not None else arrived
        absorbed = max(0, min(arrived, started))
        # Measure over the newest intervals that cover rate_window_s and hold enough arrivals
        # for a usable count, if there are any; keep what the longest window can use.
        measured = _newest([*arrivals, (dt, arrived)], config.rate_window_s, MIN_RATE_ARRIVALS)
        measured_rate = sum(n for _, n in measured) / sum(span for span, _ in measured)
        arrivals = _newest([*arrivals, (dt, absorbed)], config.rate_window_max_s)
        window = _newest(arrivals, config.rate_window_s, MIN_RATE_ARRIVALS)
        span_s = sum(span for span, _ in window)
        count = sum(n for _, n in window)
        # The counting-noise margin matters only where reactions come too late.
        noise = RATE_NOISE_SIGMAS * math.sqrt(count + 1) / span_s
        rate = count / span_s + exposure * noise
    run_time_s = _run_time(busy_slot_s, completed_w, config)
    if sizing_alternative is not None and waiting_n > 0:
        run_time_s = max(run_time_s, _run_time(*sizing_alternative, config))
    if inputs.waiting == 0 and in_flight is not None and memory is not None:
        # Little's law the other way round: with nothing waiting, the messages in flight are
        # what arrived within about one run time. A rate window still full of a spike that
        # has ended must not hold its tasks for another window.
        current_rate = (in_flight + RATE_NOISE_SIGMAS * math.sqrt(in_flight + 1)) / run_time_s
        rate = min(rate, current_rate)
    return _Load(exposure, measured_rate, rate, run_time_s, busy_slot_s, completed_w, arrivals)


def _needs(inputs: _Inputs, load: _Load, config: PolicyConfig) -> tuple[int, int, int]:
    """Tasks for the arrival rate (steady), tasks busy with in-flight work, and tasks for
    the steady load or the backlog, whichever needs more."""
    c = config.concurrency
    steady_slots = slots_for_wait(
        load.rate * load.run_time_s,
        load.run_time_s,
        config.target_wait_s,
        _erlang_late(load.exposure, config.late_fraction),
        limit=config.max_tasks * c,
    )
    steady_tasks = _tasks(steady_slots, c)
    need = steady_tasks
    if inputs.waiting_n > 0:
        # A backlog: start it within drain_s of new tasks being up, on top of the rest.
        backlog = backlog_slots(
            waiting=inputs.waiting_n,
            in_flight=inputs.in_flight_n,
            arrival_rate=load.rate,
            run_time_s=load.run_time_s,
            drain_s=config.drain_s if config.drain_s is not None else config.target_wait_s,
        )
        need = max(need, _tasks(backlog, c))
    return steady_tasks, _tasks(inputs.in_flight_n, c), need


def _spend_target(
    inputs: _Inputs, load: _Load, config: PolicyConfig, need: int
) -> tuple[int, str | None]:
    """Spend the target before paying for start-ups: the fewest tasks, up to the need, with
    which the queue likely (1 - HOLD_RISK) starts every message within
    `scale_out_wait_fraction` of the target until a later decision's tasks could be up (the
    next decision plus a start-up). Tasks launched now serve only after their start-up, so
    the queue grows meanwhile by what arrives beyond the current tasks' capacity. Returns
    the count, and a note when it is below the need."""
    if need <= 1 or inputs.problems:
        return need, None  # nothing to spare, or inputs too unsure to lean on the target
    c, run_time_s, rate = config.concurrency, load.run_time_s, load.rate
    allowed_s = config.scale_out_wait_fraction * config.target_wait_s
    horizon_s = config.interval_s + config.startup_s
    current_slots = inputs.current * c
    # What piles up while launched tasks start, for counts above the current one.
    startup_growth = max(0.0, rate - current_slots / run_time_s) * config.startup_s
    for tasks in range(1, need):
        slots = tasks * c
        risk = queue_overflow_risk(
            waiting=inputs.waiting_n + (startup_growth if slots > current_slots else 0.0),
            slots=slots,
            arrival_rate=rate,
            run_time_s=run_time_s,
            horizon_s=horizon_s,
            limit=slots * allowed_s / run_time_s,  # the queue its slots start within allowed_s
        )
        if risk <= HOLD_RISK:
            return tasks, (
                f"{tasks} tasks spend the target: with them the queue likely starts each message "
                f"within {allowed_s:g} s over the next {horizon_s:g} s (risk {risk:.2f})"
            )
    return need, None


def _idleness(inputs: _Inputs, load: _Load, config: PolicyConfig) -> _Idle:
    """Whether the service has had nothing to do long enough to stop (min_tasks 0)."""
    now, memory = inputs.now, inputs.memory
    active_now = (
        inputs.work_present
        or (inputs.arrived or 0) > 0
        or inputs.waiting is None
        or inputs.in_flight is None
    )
    if memory is None or now is None:
        active_t = now if now is not None else 0.0
    else:
        active_t = now if active_now else memory.active_t
    quiet_s = now - active_t if now is not None and memory is not None else 0.0
    # Staying warm pays only if a message is expected within the quiet period; for rarer
    # ones the service stops as soon as a decision finds nothing waiting or in flight.
    warm_pays = load.measured_rate * config.idle_before_zero_s >= 1
    if warm_pays:
        quiet = not active_now and quiet_s >= config.idle_before_zero_s
    else:
        quiet = (
            not inputs.work_present and inputs.waiting is not None and inputs.in_flight is not None
        )
    return _Idle(active_t, quiet_s, quiet, warm_pays)


def _scale(
    inputs: _Inputs, need: int, busy_tasks: int, idle: _Idle, config: PolicyConfig
) -> tuple[int, list[tuple[float, int]], list[str]]:
    """Scale out at once; scale in carefully. The new count, the steady needs still inside
    the stabilization window, and notes for the reason."""
    current, now = inputs.current, inputs.now
    recent = inputs.memory.recent if inputs.memory is not None else []
    if now is not None:
        recent = [(t, n) for t, n in recent if now - t < config.scale_in_stabilization_s]
    notes: list[str] = []
    if need >= current:
        new = need
        if inputs.problems:
            notes.append("inputs: " + ", ".join(inputs.problems))
    elif inputs.holds:
        new = current
        notes.append("scale-in held: " + ", ".join(inputs.holds))
    else:
        stable = need if idle.quiet else max([need] + [n for _, n in recent])
        step = max(1, math.floor(current * config.scale_in_max_step_fraction))
        # Never below the tasks busy with in-flight work (a scale-in, not a scale-out, though:
        # scale-in protection keeps busy tasks running above the desired count anyway).
        new = min(current, max(stable, current - step, busy_tasks))
        limits = [
            f"steady need over the last {config.scale_in_stabilization_s:g} s {stable}"
            if new == stable > need
            else None,
            f"at most {step} removed at once" if new == current - step > need else None,
            f"{busy_tasks} tasks busy" if new == busy_tasks > need else None,
        ]
        if new > need:
            notes.append(f"scale-in limited to {new}: " + ", ".join(filter(None, limits)))
    new = min(max(new, config.min_tasks), config.max_tasks)
    if inputs.work_present and new == 0:
        new = 1  # never stop a service that has work, whatever min_tasks says
    if need > config.max_tasks:
        notes.append(f"capped at max_tasks {config.max_tasks}")
    if idle.quiet and idle.warm_pays:
        notes.append(f"quiet for {idle.quiet_s:.0f} s")
    elif idle.quiet:
        notes.append(
            f"nothing to do and under one message expected in {config.idle_before_zero_s:g} s"
        )
    return new, recent, notes


def _reason(
    inputs: _Inputs,
    load: _Load,
    config: PolicyConfig,
    new: int,
    need: int,
    steady_tasks: int,
    notes: list[str],
) -> str:
    current, c, run_time_s = inputs.current, config.concurrency, load.run_time_s
    if new > current:
        verb = f"scale out {current}->{new}"
    elif new < current:
        verb = f"scale in {current}->{new}"
    else:
        verb = f"hold at {new}"
    reason = (
        f"{verb}: {_show(inputs.waiting)} waiting + {_show(inputs.in_flight)} in flight, "
        f"arrivals {load.measured_rate:.3g}/s, run time {run_time_s:.3g} s, "
        f"service rate {c / run_time_s:.3g}/s/task ({c} slots), target wait "
        f"{config.target_wait_s:g} s; needs {_plural(steady_tasks, 'task')} for the arrival rate, "
        f"{need} with in-flight work and backlog"
    )
    if notes:
        reason += "; " + "; ".join(notes)
    return reason


def _state(
    inputs: _Inputs, load: _Load, idle: _Idle, recent: list[tuple[float, int]], new: int
) -> dict[str, Any]:
    """What the next call continues from (JSON-serializable)."""
    memory, now, in_flight = inputs.memory, inputs.now, inputs.in_flight
    return {
        "version": STATE_VERSION,
        # Without a valid clock this state is unusable next time, which the next call says.
        "t": now if now is not None else 0.0,
        "waiting": inputs.waiting_n,
        "in_flight": in_flight if in_flight is not None else (memory.in_flight if memory else 0),
        "arrival_rate": load.measured_rate,
        "arrivals": [[span, n] for span, n in load.arrivals[-MAX_RECENT_ENTRIES:]],
        "busy_slot_s": load.busy_slot_s,
        "completed": load.completed_w,
        "active_t": idle.active_t,
        "recent": [[t, n] for t, n in recent[-MAX_RECENT_ENTRIES:]],
        "desired": new,
    }


def _show(value: int | None) -> str:
    return "?" if value is None else str(value)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"
