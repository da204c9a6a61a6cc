"""The autoscaler's pure decision: hard rules, stabilization, state handling, properties.
(Its benchmark against the anchors is bench/autoscaler_sim/; the simulator's own tests are
tests/bench/test_autoscaler_sim.py.)

The policy's contract (names and fields) is what the handler and outside benchmarks use, so
these tests build observations exactly as the handler does: by keyword.
"""

from __future__ import annotations

import ast
import json
import math
import random
import re
import sys
from dataclasses import replace
from pathlib import Path
from statistics import NormalDist
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lambdas.autoscaler.policy import (
    Decision,
    Observation,
    PolicyConfig,
    backlog_slots,
    decide,
    queue_overflow_risk,
    slots_for_wait,
)

POLICY_FILE = Path(__file__).resolve().parents[2] / "lambdas" / "autoscaler" / "policy.py"
CONFIG = PolicyConfig(min_tasks=1, max_tasks=50, concurrency=4, target_wait_s=60)
INTERVAL_S = 300.0
START_S = 1_700_000_000.0  # an epoch second


def observe(**fields: Any) -> Observation:
    """An observation with quiet defaults; `running_tasks` follows `desired` unless given."""
    values: dict[str, Any] = {
        "now": START_S,
        "waiting": 0,
        "in_flight": 0,
        "pending_tasks": 0,
        "desired": 2,
        "arrived_since_last": 0,
        "completed_since_last": 0,
    }
    values.update(fields)
    values.setdefault("running_tasks", values["desired"])
    return Observation(**values)


def steady(
    config: PolicyConfig,
    *,
    rate_per_s: float,
    run_time_s: float,
    desired: int,
    steps: int = 6,
    start_s: float = START_S,
) -> tuple[Decision, float]:
    """Feed `steps` decisions of a service in equilibrium: what arrives completes, the queue
    is empty and in flight is the load (Little's law). Returns the last decision and time."""
    state: dict[str, Any] | None = None
    decision = None
    now = start_s
    per_interval = round(rate_per_s * config.interval_s)
    for _ in range(steps):
        now += config.interval_s
        decision = decide(
            observe(
                now=now,
                desired=desired,
                in_flight=round(rate_per_s * run_time_s),
                arrived_since_last=per_interval,
                completed_since_last=per_interval,
            ),
            config,
            state,
        )
        state, desired = decision.state, decision.desired
    assert decision is not None
    return decision, now


# ---------------------------------------------------------------- hard rules


@pytest.mark.parametrize(
    ("waiting", "in_flight", "expected"),
    [(0, 0, 1), (10**9, 0, 50), (0, 10**6, 50), (5, 3, None)],
)
def test_result_always_within_bounds(waiting: int, in_flight: int, expected: int | None) -> None:
    decision, now = steady(CONFIG, rate_per_s=0.0, run_time_s=10, desired=1)
    after = decide(
        observe(now=now + INTERVAL_S, desired=1, waiting=waiting, in_flight=in_flight),
        CONFIG,
        decision.state,
    )
    assert CONFIG.min_tasks <= after.desired <= CONFIG.max_tasks
    if expected is not None:
        assert after.desired == expected


def test_desired_above_max_is_brought_back_within_bounds() -> None:
    decision = decide(observe(desired=80, waiting=10**6), CONFIG, None)
    assert decision.desired == CONFIG.max_tasks


@pytest.mark.parametrize(("waiting", "in_flight"), [(1, 0), (0, 1), (7, 3)])
def test_never_scales_to_zero_while_work_is_present(waiting: int, in_flight: int) -> None:
    config = replace(CONFIG, min_tasks=0, idle_before_zero_s=0)
    decision, now = steady(config, rate_per_s=0.0, run_time_s=10, desired=3)
    after = decide(
        observe(now=now + INTERVAL_S, desired=3, waiting=waiting, in_flight=in_flight),
        config,
        decision.state,
    )
    assert after.desired >= 1


@pytest.mark.parametrize("with_state", [True, False])
def test_wakes_from_zero_as_soon_as_anything_waits(with_state: bool) -> None:
    config = replace(CONFIG, min_tasks=0)
    state = steady(config, rate_per_s=0.0, run_time_s=10, desired=0)[0].state
    now = START_S + 10 * INTERVAL_S
    decision = decide(
        observe(now=now, desired=0, running_tasks=0, waiting=1, arrived_since_last=1),
        config,
        state if with_state else None,
    )
    assert decision.desired == 1
    assert decision.reason.startswith("scale out 0->1")


def test_a_stopped_idle_service_stays_stopped() -> None:
    config = replace(CONFIG, min_tasks=0)
    decision, _ = steady(config, rate_per_s=0.0, run_time_s=10, desired=0)
    assert decision.desired == 0


def test_scales_to_zero_only_after_the_quiet_period_when_traffic_is_frequent() -> None:
    config = replace(CONFIG, min_tasks=0, idle_before_zero_s=600)
    decision, now = steady(config, rate_per_s=0.5, run_time_s=10, desired=2)
    assert decision.desired >= 1
    desired, state = decision.desired, decision.state
    counts = []
    for _ in range(4):  # nothing arrives any more
        now += INTERVAL_S
        decision = decide(observe(now=now, desired=desired), config, state)
        desired, state = decision.desired, decision.state
        counts.append(desired)
    # Still warm 300 s into the quiet period (a message every 2 s was the norm), off after it.
    assert counts[0] >= 1
    assert counts[-1] == 0
    assert "quiet for" in decision.reason


def test_rare_traffic_scales_to_zero_at_the_first_empty_decision() -> None:
    config = replace(CONFIG, min_tasks=0)
    state: dict[str, Any] | None = None
    now, desired = START_S, 1
    # One message every 20 minutes: staying warm for five minutes after each does not pay.
    for step in range(12):
        now += INTERVAL_S
        arrived = 1 if step % 4 == 0 else 0
        decision = decide(
            observe(now=now, desired=desired, in_flight=arrived, arrived_since_last=arrived),
            config,
            state,
        )
        state, desired = decision.state, decision.desired
    now += INTERVAL_S
    stop = decide(observe(now=now, desired=1), config, state)
    assert stop.desired == 0
    assert "under one message expected in 300 s" in stop.reason


@pytest.mark.parametrize(
    ("field", "bad"),
    [
        ("waiting", None),
        ("waiting", -1),
        ("in_flight", None),
        ("in_flight", float("nan")),
        ("running_tasks", -3),
        ("pending_tasks", "2"),
        ("arrived_since_last", None),
        ("completed_since_last", -40),
        ("completed_since_last", True),
        ("now", None),
        ("now", float("inf")),
    ],
)
def test_missing_or_contradictory_data_never_lowers_capacity(field: str, bad: object) -> None:
    decision, now = steady(CONFIG, rate_per_s=0.2, run_time_s=10, desired=1)
    # Plenty of tasks, nothing to do: with good data this scales in.
    good = decide(observe(now=now + INTERVAL_S, desired=12), CONFIG, decision.state)
    assert good.desired < 12
    fields: dict[str, Any] = {"now": now + INTERVAL_S, "desired": 12, field: bad}
    held = decide(observe(**fields), CONFIG, decision.state)
    assert held.desired == 12
    assert held.reason.startswith("hold at 12")
    assert f"{field} is {bad!r}" in held.reason
    assert "scale-in held" in held.reason


def test_an_unknown_desired_count_holds_the_largest_known_one() -> None:
    decision, now = steady(CONFIG, rate_per_s=0.2, run_time_s=10, desired=9)
    held = decide(
        observe(now=now + INTERVAL_S, desired=None, running_tasks=11, pending_tasks=1),
        CONFIG,
        decision.state,
    )
    assert held.desired == 12
    assert "desired is None" in held.reason


def test_scale_out_stays_possible_with_partial_data() -> None:
    decision, now = steady(CONFIG, rate_per_s=0.5, run_time_s=10, desired=2)
    burst = decide(
        observe(now=now + INTERVAL_S, desired=2, waiting=3000, completed_since_last=None),
        CONFIG,
        decision.state,
    )
    assert burst.desired > 10
    assert "completed_since_last is None" in burst.reason


@pytest.mark.parametrize("in_flight", [30, 57, 200])
def test_never_scales_in_below_the_tasks_busy_with_in_flight_work(in_flight: int) -> None:
    decision, now = steady(CONFIG, rate_per_s=0.1, run_time_s=10, desired=50)
    after = decide(
        observe(now=now + INTERVAL_S, desired=50, in_flight=in_flight), CONFIG, decision.state
    )
    assert after.desired >= min(50, math.ceil(in_flight / CONFIG.concurrency))


def test_with_a_stabilization_a_brief_dip_does_not_scale_in_but_a_lasting_one_does() -> None:
    config = replace(CONFIG, scale_in_stabilization_s=2 * INTERVAL_S)
    decision, now = steady(config, rate_per_s=2.4, run_time_s=10, desired=6)
    level = decision.desired
    assert level >= 6  # 24 slots of load: fewer than 6 tasks of 4 fall behind
    dip = {"arrived_since_last": 60, "completed_since_last": 60, "in_flight": 2}
    now += INTERVAL_S
    first = decide(observe(now=now, desired=level, **dip), config, decision.state)
    assert first.desired == level
    assert "scale-in limited" in first.reason
    desired, state = first.desired, first.state
    for _ in range(4):
        now += INTERVAL_S
        decision = decide(observe(now=now, desired=desired, **dip), config, state)
        desired, state = decision.desired, decision.state
    assert desired <= 2


def test_by_default_a_dip_scales_in_at_the_next_decision() -> None:
    """Scale-in protection lets ECS stop only idle tasks: a scale-in never interrupts work,
    and holding tasks through every dip cost more than the start-ups it saved."""
    assert CONFIG.scale_in_stabilization_s == 0
    decision, now = steady(CONFIG, rate_per_s=2.0, run_time_s=10, desired=6)
    level = decision.desired
    dip = {"arrived_since_last": 60, "completed_since_last": 60, "in_flight": 2}
    after = decide(observe(now=now + INTERVAL_S, desired=level, **dip), CONFIG, decision.state)
    assert after.desired < level, after.reason


@pytest.mark.parametrize(("interval_s", "held_s"), [(300.0, 600.0), (60.0, 120.0), (30.0, 120.0)])
def test_scale_in_waits_the_stabilization_it_is_given(interval_s: float, held_s: float) -> None:
    """A configured stabilization remembers the steady need that long."""
    config = replace(CONFIG, interval_s=interval_s, scale_in_stabilization_s=held_s)
    decision, now = steady(config, rate_per_s=2.0, run_time_s=10, desired=6, steps=24)
    level = decision.desired
    per_interval = round(0.2 * interval_s)
    dip = {"arrived_since_last": per_interval, "completed_since_last": per_interval}
    desired, state = level, decision.state
    started = now
    while desired == level:
        now += interval_s
        decision = decide(observe(now=now, desired=desired, in_flight=2, **dip), config, state)
        desired, state = decision.desired, decision.state
        assert now - started <= held_s + config.rate_window_s + interval_s, decision.reason
    # Not before the dip has lasted the stabilization time.
    assert now - started >= held_s


def test_scales_out_fast_on_a_burst() -> None:
    decision, now = steady(CONFIG, rate_per_s=0.5, run_time_s=10, desired=2)
    assert decision.desired <= 3
    burst = decide(
        observe(
            now=now + INTERVAL_S,
            desired=decision.desired,
            waiting=3000,
            in_flight=12,
            arrived_since_last=3150,
            completed_since_last=150,
        ),
        CONFIG,
        decision.state,
    )
    # 3000 messages of ~10 s started within a minute: ~430 slots, more than max_tasks' 200.
    assert burst.desired == CONFIG.max_tasks
    assert burst.reason.startswith(f"scale out {decision.desired}->50")
    assert "capped at max_tasks 50" in burst.reason


@pytest.mark.parametrize("interval_s", [60.0, 300.0])
def test_a_drained_batch_does_not_hold_its_tasks(interval_s: float) -> None:
    """A batch drop is backlog, not a new arrival rate: once it has drained, the next decision
    returns to what the ongoing flow needs instead of keeping the batch's tasks for the rate
    window and the scale-in stabilization."""
    config = replace(CONFIG, interval_s=interval_s, target_wait_s=300)
    decision, now = steady(config, rate_per_s=0.3, run_time_s=20, desired=2, steps=12)
    per_interval = round(0.3 * interval_s)
    drop = decide(
        observe(
            now=now + interval_s,
            desired=decision.desired,
            waiting=4000,
            in_flight=8,
            arrived_since_last=4000 + per_interval,
            completed_since_last=per_interval,
        ),
        config,
        decision.state,
    )
    assert drop.desired == config.max_tasks
    drained = decide(
        observe(
            now=now + 2 * interval_s,
            desired=drop.desired,
            waiting=0,
            in_flight=6,
            arrived_since_last=per_interval,
            completed_since_last=4000 + per_interval + 2,
        ),
        config,
        drop.state,
    )
    assert drained.desired <= decision.desired + 1, drained.reason


def test_an_ended_spike_is_seen_in_flight_before_the_rate_window_forgets_it() -> None:
    config = replace(CONFIG, interval_s=60, target_wait_s=300)
    decision, now = steady(config, rate_per_s=3.0, run_time_s=20, desired=16, steps=20)
    assert decision.desired >= 15
    desired, state = decision.desired, decision.state
    for _ in range(3):  # 0.5/s from now on: 10 messages in flight instead of 60
        now += 60
        decision = decide(
            observe(
                now=now,
                desired=desired,
                in_flight=10,
                arrived_since_last=30,
                completed_since_last=80,
            ),
            config,
            state,
        )
        desired, state = decision.desired, decision.state
    # The 300 s rate window still averages 1.5/s (8 tasks); in flight says 0.5/s.
    assert desired <= 5, decision.reason


def test_long_tasks_get_a_slot_per_waiting_message_not_more() -> None:
    # The current slots would start the 4th waiting message in about 4 x 900 / 20 = 180 s:
    # over this target, so the policy scales out.
    config = replace(CONFIG, concurrency=2, target_wait_s=120)
    # 20 slots busy with 15-minute tasks, 4 messages waiting.
    decision, now = steady(config, rate_per_s=20 / 900, run_time_s=900, desired=10, steps=12)
    after = decide(
        observe(
            now=now + INTERVAL_S,
            desired=decision.desired,
            waiting=4,
            in_flight=20,
            arrived_since_last=11,
            completed_since_last=7,
        ),
        config,
        decision.state,
    )
    assert 10 < after.desired <= math.ceil((20 + 4) / 2) + 2


def test_tasks_that_start_a_backlog_in_time_are_not_joined_by_new_ones() -> None:
    """Spend the target: 12 slots of 10 s messages start 150 waiting ones within about
    125 s, well within 85 % of a 300 s target, so no task is launched (and billed) for
    them, though the backlog's sizing asks for a fourth."""
    config = replace(CONFIG, target_wait_s=300)
    decision, now = steady(config, rate_per_s=1.0, run_time_s=10, desired=3, steps=12)
    assert decision.desired == 3
    observation = observe(
        now=now + INTERVAL_S,
        desired=3,
        waiting=150,
        in_flight=12,
        arrived_since_last=450,
        completed_since_last=300,
    )
    spent = decide(observation, config, decision.state)
    assert spent.desired == 3
    assert "3 tasks spend the target" in spent.reason
    # None of the target spent: the same backlog scales out.
    eager = decide(observation, replace(config, scale_out_wait_fraction=0), decision.state)
    assert eager.desired > 3


def test_a_long_target_is_spent_on_steady_load() -> None:
    """1.5/s of 40 s messages keep 60 slots busy. For a 300 s target the service runs the
    load itself, 15 tasks of 4 (the busy ones), not the 16 a stationary queue would need:
    the queue that builds until the next decision's tasks are up stays well within it."""
    config = replace(CONFIG, target_wait_s=300)
    decision, _ = steady(config, rate_per_s=1.5, run_time_s=40, desired=16, steps=12)
    assert decision.desired == 15, decision.reason
    assert "spend the target" in decision.reason
    eager, _ = steady(
        replace(config, scale_out_wait_fraction=0), rate_per_s=1.5, run_time_s=40, desired=16
    )
    assert eager.desired == 16


def test_a_short_target_keeps_the_queueing_sizing() -> None:
    """Nothing to spend where the target is short: 0.06/s of 100 s messages (6 busy slots)
    get the 3 tasks of 4 the stationary queue needs for a 30 s target."""
    config = replace(CONFIG, target_wait_s=30)
    decision, _ = steady(config, rate_per_s=0.06, run_time_s=100, desired=2, steps=12)
    assert decision.desired == 3, decision.reason
    assert "spend the target" not in decision.reason


# ---------------------------------------------------------------- state


def test_state_round_trips_through_json() -> None:
    decision, now = steady(CONFIG, rate_per_s=1.0, run_time_s=8, desired=3)
    stored = json.loads(json.dumps(decision.state, allow_nan=False))
    assert stored == decision.state
    nxt = observe(now=now + INTERVAL_S, desired=3, waiting=40, arrived_since_last=330)
    assert decide(nxt, CONFIG, stored) == decide(nxt, CONFIG, decision.state)


GARBLED_STATES: list[Any] = [
    {},
    {"version": 1},
    {"version": 999, "t": START_S},
    {"foo": "bar"},
    {"version": 1, "t": "yesterday", "recent": "x"},
    "not a dict",
    [1, 2, 3],
    42,
]


@pytest.mark.parametrize("garbled", GARBLED_STATES)
def test_garbled_state_is_treated_as_none(garbled: Any) -> None:
    decision = decide(observe(now=START_S, desired=12), CONFIG, garbled)
    assert decision.desired == 12
    assert "previous state unusable or stale" in decision.reason
    json.dumps(decision.state, allow_nan=False)


@pytest.mark.parametrize(
    "corrupt",
    [
        {"t": START_S + 10 * INTERVAL_S},  # from the future
        {"t": START_S - 86_400.0},  # a day old
        {"busy_slot_s": -5.0},
        {"recent": [[START_S, "many"]]},
        {"arrivals": [[0, 5]]},
        {"arrival_rate": float("nan")},
    ],
)
def test_corrupt_fields_of_a_real_state_are_rejected(corrupt: dict[str, Any]) -> None:
    decision, now = steady(CONFIG, rate_per_s=1.0, run_time_s=8, desired=3)
    state = {**decision.state, **corrupt}
    after = decide(observe(now=now + INTERVAL_S, desired=12), CONFIG, state)
    assert after.desired == 12
    assert "previous state unusable or stale" in after.reason


def test_the_state_after_a_missing_clock_is_not_trusted_next_time() -> None:
    decision, now = steady(CONFIG, rate_per_s=1.0, run_time_s=8, desired=3)
    blind = decide(observe(now=None, desired=12), CONFIG, decision.state)
    later = decide(observe(now=now + 2 * INTERVAL_S, desired=12), CONFIG, blind.state)
    assert later.desired == 12
    assert "previous state unusable or stale" in later.reason


# ---------------------------------------------------------------- reason, config, purity


def test_the_reason_states_the_numbers() -> None:
    decision, now = steady(CONFIG, rate_per_s=1.0, run_time_s=10, desired=3)
    burst = decide(
        observe(
            now=now + INTERVAL_S,
            desired=3,
            waiting=480,
            in_flight=12,
            arrived_since_last=780,
            completed_since_last=300,
        ),
        CONFIG,
        decision.state,
    )
    reason = burst.reason
    assert reason.startswith(f"scale out 3->{burst.desired}: 480 waiting + 12 in flight")
    assert "arrivals 2.6/s" in reason
    assert re.search(r"run time 10(\.\d)? s", reason), reason
    assert re.search(r"service rate 0\.(39|40)\d*/s/task \(4 slots\)", reason), reason
    assert "target wait 60 s" in reason


def test_a_bad_config_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"min_tasks 5 must be in 0\.\.max_tasks 2"):
        PolicyConfig(min_tasks=5, max_tasks=2, concurrency=4, target_wait_s=60)
    with pytest.raises(ValueError, match="concurrency 0 must be >= 1"):
        PolicyConfig(min_tasks=0, max_tasks=2, concurrency=0, target_wait_s=60)
    with pytest.raises(ValueError, match="target_wait_s 0 must be > 0"):
        PolicyConfig(min_tasks=0, max_tasks=2, concurrency=1, target_wait_s=0)


def test_policy_imports_only_the_standard_library() -> None:
    tree = ast.parse(POLICY_FILE.read_text())
    imported = {
        alias.name.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.Import)
        for alias in node.names
    } | {
        node.module.split(".")[0]
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0
    }
    assert not any(isinstance(node, ast.ImportFrom) and node.level for node in ast.walk(tree)), (
        "relative imports would break the Lambda's flat packaging"
    )
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported


def _late_mmk(k: int, a: float, run_s: float, target_s: float) -> float:
    """P(wait > target) in M/M/k, from the textbook Erlang C sum."""
    top = a**k / math.factorial(k) * k / (k - a)
    erlang_c = top / (sum(a**n / math.factorial(n) for n in range(k)) + top)
    return erlang_c * math.exp(-(k - a) * target_s / run_s)


@pytest.mark.parametrize(
    ("load", "run_s", "target_s", "late"),
    [(10, 10, 20, 0.05), (3.5, 60, 30, 0.02), (40, 5, 60, 0.01), (18, 900, 300, 0.2)],
)
def test_erlang_sizing_is_the_fewest_slots_meeting_the_target(
    load: float, run_s: float, target_s: float, late: float
) -> None:
    k = slots_for_wait(load, run_s, target_s, late)
    assert _late_mmk(k, load, run_s, target_s) <= late
    assert k - 1 <= load or _late_mmk(k - 1, load, run_s, target_s) > late


def test_overflow_risk_matches_known_values() -> None:
    common = {"arrival_rate": 1.0, "run_time_s": 10.0, "horizon_s": 800.0}
    # No drift: twice the normal tail at the distance over sqrt(variance 2 x horizon) = 40.
    assert queue_overflow_risk(waiting=0, slots=10, limit=40, **common) == pytest.approx(
        2 * NormalDist().cdf(-1)
    )
    # Already beyond the limit; no room at all.
    assert queue_overflow_risk(waiting=50, slots=10, limit=40, **common) == 1.0
    # Draining fast, far from the limit; filling fast, near it.
    assert queue_overflow_risk(waiting=0, slots=20, limit=40, **common) < 1e-3
    assert queue_overflow_risk(waiting=0, slots=5, limit=40, **common) > 0.99


def test_overflow_risk_matches_a_simulated_queue() -> None:
    """Against the queue it approximates: Poisson arrivals at 1.5/s, 56 busy slots of 40 s
    (each finishing at 1/40 per second), 100 waiting, 160 allowed, over 375 s."""
    rng = random.Random(7)
    arrival, service, horizon, limit = 1.5, 56 / 40, 375.0, 160
    paths, over = 1000, 0
    for _ in range(paths):
        t, queue = 0.0, 100
        while True:
            t += rng.expovariate(arrival + service)
            if t > horizon:
                break
            queue += 1 if rng.random() < arrival / (arrival + service) else -1
            if queue > limit:
                over += 1
                break
    approximation = queue_overflow_risk(
        waiting=100, slots=56, arrival_rate=arrival, run_time_s=40, horizon_s=horizon, limit=limit
    )
    assert 0.2 < approximation < 0.5
    assert over / paths == pytest.approx(approximation, abs=0.05)


def test_queueing_helpers_match_known_values() -> None:
    # M/M/k, 10 Erlangs, 10 s runs: 11 slots let 9 % wait over 20 s, 12 slots 0.8 %.
    assert slots_for_wait(10, 10, 20, 0.05) == 12
    assert slots_for_wait(0, 10, 20, 0.05) == 0
    # 600 messages of 5 s, 60 s to start them: 50 slots (plus nothing else due).
    assert backlog_slots(
        waiting=600, in_flight=0, arrival_rate=0, run_time_s=5, drain_s=60
    ) == pytest.approx(50)
    # Long tasks: a slot per waiting message, and in-flight ones keep most of theirs.
    assert backlog_slots(
        waiting=3, in_flight=10, arrival_rate=0, run_time_s=900, drain_s=300
    ) == pytest.approx(3 + 10 * (300 - 300 * 300 / 1800) / 300)


# ---------------------------------------------------------------- properties

# Whole numbers, but also what a broken reading might hand over (the policy takes anything).
counts: st.SearchStrategy[Any] = st.one_of(
    st.integers(min_value=0, max_value=5000),
    st.integers(min_value=-10, max_value=-1),
    st.none(),
    st.just(float("nan")),
)


@st.composite
def configs(draw: st.DrawFn) -> PolicyConfig:
    low = draw(st.integers(min_value=0, max_value=20))
    return PolicyConfig(
        min_tasks=low,
        max_tasks=draw(st.integers(min_value=max(low, 1), max_value=200)),
        concurrency=draw(st.integers(min_value=1, max_value=32)),
        target_wait_s=draw(st.floats(min_value=1, max_value=3600)),
        interval_s=draw(st.sampled_from([30.0, 60.0, 300.0])),
    )


@st.composite
def sequences(draw: st.DrawFn) -> tuple[PolicyConfig, list[Observation]]:
    config = draw(configs())
    now = START_S
    observations = []
    for _ in range(draw(st.integers(min_value=1, max_value=8))):
        now += draw(st.sampled_from([config.interval_s, config.interval_s / 2, 5000.0, -10.0]))
        observations.append(
            Observation(
                now=draw(st.one_of(st.just(now), st.none())),
                waiting=draw(counts),
                in_flight=draw(counts),
                running_tasks=draw(counts),
                pending_tasks=draw(counts),
                desired=draw(st.one_of(st.integers(min_value=0, max_value=300), st.none())),
                arrived_since_last=draw(counts),
                completed_since_last=draw(counts),
            )
        )
    return config, observations


def _valid(value: object) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok and isinstance(value, int) else None


# database=None: no example database left in the working tree.
@settings(max_examples=300, deadline=None, database=None)
@given(sequences(), st.one_of(st.none(), st.dictionaries(st.text(max_size=8), st.integers())))
def test_hard_rules_hold_for_any_sequence(
    case: tuple[PolicyConfig, list[Observation]], initial: dict[str, Any] | None
) -> None:
    config, observations = case
    state = initial
    for observation in observations:
        decision = decide(observation, config, state)
        assert config.min_tasks <= decision.desired <= config.max_tasks
        assert decision.reason
        waiting, in_flight = _valid(observation.waiting), _valid(observation.in_flight)
        if (waiting or 0) + (in_flight or 0) > 0:
            assert decision.desired >= 1
        desired = observation.desired
        if desired is not None:
            floor = min(desired, config.max_tasks)
            inputs_bad = any(
                _valid(getattr(observation, f)) is None
                for f in (
                    "waiting",
                    "in_flight",
                    "running_tasks",
                    "pending_tasks",
                    "arrived_since_last",
                    "completed_since_last",
                )
            ) or not isinstance(observation.now, float)
            if inputs_bad:
                assert decision.desired >= max(floor, config.min_tasks)
            if in_flight is not None:
                busy = math.ceil(in_flight / config.concurrency)
                assert decision.desired >= min(floor, busy)
        stored = json.loads(json.dumps(decision.state, allow_nan=False))
        assert stored == decision.state
        state = stored


@settings(max_examples=100, deadline=None, database=None)
@given(
    st.floats(min_value=0.01, max_value=20),
    st.floats(min_value=0.5, max_value=1200),
    st.integers(min_value=0, max_value=20_000),
)
def test_more_backlog_never_means_fewer_tasks(rate: float, run_time: float, waiting: int) -> None:
    decision, now = steady(CONFIG, rate_per_s=rate, run_time_s=run_time, desired=3)
    small, large = (
        decide(observe(now=now + INTERVAL_S, desired=3, waiting=w), CONFIG, decision.state)
        for w in (waiting, waiting + 500)
    )
    assert large.desired >= small.desired


@settings(max_examples=150, deadline=None, database=None)
@given(
    st.floats(min_value=0.01, max_value=20),
    st.floats(min_value=0.5, max_value=1200),
    st.integers(min_value=0, max_value=20_000),
    st.integers(min_value=0, max_value=20_000),
    st.integers(min_value=0, max_value=5_000),
    st.integers(min_value=0, max_value=300),
    st.sampled_from([60.0, 300.0]),
)
def test_more_backlog_never_means_fewer_tasks_whatever_arrived(
    rate: float,
    run_time: float,
    waiting: int,
    arrived: int,
    completed: int,
    in_flight: int,
    interval_s: float,
) -> None:
    """Arrivals that piled up do not count as a lasting rate; that discount must never make
    a larger backlog (with the same arrivals, completions and in-flight work) ask for less."""
    config = replace(CONFIG, interval_s=interval_s)
    decision, now = steady(config, rate_per_s=rate, run_time_s=run_time, desired=3)
    small, large = (
        decide(
            observe(
                now=now + interval_s,
                desired=3,
                waiting=w,
                in_flight=in_flight,
                arrived_since_last=arrived,
                completed_since_last=completed,
            ),
            config,
            decision.state,
        )
        for w in (waiting, waiting + 500)
    )
    assert large.desired >= small.desired
