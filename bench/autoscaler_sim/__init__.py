"""Replay a workload through the autoscaler's policy and the published anchors on a model of
ECS Fargate; report waits, cost and killed jobs, and plot one run.

    python -m bench.autoscaler_sim simulate --workload batch    # one day, every policy, a PNG
    python -m bench.autoscaler_sim simulate --csv jobs.csv --interval 60 --no-protection
    python -m bench.autoscaler_sim bench                        # the full benchmark table
    python -m bench.autoscaler_sim csv --workload long out.csv  # write a generated workload

The model (event-driven, exact times):

* jobs (`bench/workloads.py`: a CSV of `arrival_s,service_s` or a generated day) are published
  into one FIFO queue;
* a running ECS task has `concurrency` slots; the idle slot that has waited longest takes the
  next message (Redis serves blocked BRPOP clients in order), so work spreads over all tasks;
* the policy is called every `interval_s` from t = 0 with what the handler sees: waiting,
  in flight (busy slots, including those of stopping tasks), running and pending tasks, the
  desired count, completions since the last call and the handler's arrival estimate
  max(0, d waiting + d in flight + completed);
* ECS then launches tasks up to the desired count; a task is up after a start-up delay drawn
  uniformly from 45-90 s and is billed from launch (Fargate bills from the image pull);
* above the desired count ECS first cancels pending tasks (newest first), then stops running
  ones. With scale-in protection (the workers' default) only tasks idle for the workers'
  5 s grace are unprotected, and only those are stopped; a busy task above the desired count
  keeps serving. Without protection ECS picks tasks without knowing which are busy (seeded
  random); a stopping worker takes no new message, finishes what it runs (Celery's warm
  shutdown) and is killed after the 120 s stop timeout: its unfinished jobs are *killed* and
  redelivered to the head of the queue (immediately; in production after the visibility
  timeout, so this is the optimistic case).

Metrics (jobs published after the warm-up): wait = publish to the start of the run that
completed (a killed job's wait includes its lost run); p50/p95/p99 and the share of jobs
waiting longer than the target ("late"); task-hours billed (from the warm-up to the end of the
day, or until the queue has drained); the work's lower bound = sum of service seconds /
concurrency (every slot of every task busy all the time, no start-up); jobs killed.
The package: `policies.py` (the policy under test and the published anchors), `fargate.py`
(the event-driven model of ECS Fargate), `plot.py`, `report.py` (the benchmark's cases,
goals and tables) and `__main__.py` (the command line).
"""

from bench.autoscaler_sim.fargate import RunResult, simulate
from bench.autoscaler_sim.plot import plot
from bench.autoscaler_sim.policies import OURS, POLICIES, Service
from bench.autoscaler_sim.report import goals

__all__ = ["OURS", "POLICIES", "RunResult", "Service", "goals", "plot", "simulate"]
