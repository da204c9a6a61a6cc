"""Workloads for the autoscaler simulator: CSV files of `arrival_s,service_s` and generators.

A workload is a list of jobs, each a publish time (seconds from the start of the day) and the
seconds one worker slot needs to run it. `write_csv`/`read_csv` store one as a CSV with the
header `arrival_s,service_s`; any such file (from a broker log, say) can be replayed.

Every generator makes one day (`DAY_S`, 24 h) and is seeded, so each policy sees the same
jobs. Service times are lognormal (the usual shape of task run times: most short, a long
tail) with the given mean and coefficient of variation (cv). Loads are sized for the
benchmark's service (1-50 tasks of 4 slots): at the busiest, the work fills 30-50 % of the
200 slots, which leaves room to drain backlogs.

Shapes (rates in jobs/s, service times mean and cv):

* steady: Poisson 1.5/s all day; service 40 s (cv 1), about 60 busy slots.
* diurnal: a working day, 0.25/s at 03:00 rising to 2.5/s at 15:00 (raised cosine);
  service 30 s (cv 1).
* batch: 0.3/s of 20 s jobs, plus 6 batch drops a day (near 01, 05, 09, 12, 17 and 21 h,
  +-20 min) of 2,000-5,000 jobs published within 30 s; batch jobs 6 s (cv 0.5). The largest
  drop is 30,000 slot-seconds: all 200 slots start it within 150 s.
* spike: 0.5/s of 20 s jobs (cv 1), plus 3 flash spikes a day at random times: the rate
  ramps within 2 min to 5-8 times and stays there 15-40 min.
* long: Poisson 0.05/s (180/h) of long jobs, mean 12 min (cv 1), clipped to 1 min-1 h.
* mixed: a diurnal stream of 10 s jobs (0.3-1.5/s), 0.01/s of 5-60 min jobs (uniform) and
  2 batch drops of 1,500 jobs of 15 s.
"""

from __future__ import annotations

import csv
import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

DAY_S = 24 * 3600
HOUR_S = 3600
CSV_HEADER = ("arrival_s", "service_s")


@dataclass(frozen=True, order=True)
class Job:
    arrival_s: float  # publish time, seconds from the start of the workload
    service_s: float  # run time on one worker slot


# ---------------------------------------------------------------- CSV


def write_csv(jobs: Iterable[Job], path: Path) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(CSV_HEADER)
        for job in jobs:
            writer.writerow((f"{job.arrival_s:.3f}", f"{job.service_s:.3f}"))


def read_csv(path: Path) -> list[Job]:
    """Jobs from a CSV with the header `arrival_s,service_s`, sorted by arrival.

    Raises ValueError naming the line for a missing header, a bad number, a negative
    arrival or a service time that is not positive.
    """
    jobs: list[Job] = []
    with path.open(newline="") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None or tuple(h.strip() for h in header) != CSV_HEADER:
            raise ValueError(f"{path}: first line must be {','.join(CSV_HEADER)!r}, got {header}")
        for line, row in enumerate(reader, start=2):
            if not row or all(not cell.strip() for cell in row):
                continue
            if len(row) != 2:
                raise ValueError(f"{path}:{line}: expected 2 values, got {len(row)}")
            try:
                arrival, service = float(row[0]), float(row[1])
            except ValueError:
                raise ValueError(f"{path}:{line}: not a number: {row}") from None
            if not (math.isfinite(arrival) and arrival >= 0):
                raise ValueError(f"{path}:{line}: arrival_s must be >= 0, got {row[0]}")
            if not (math.isfinite(service) and service > 0):
                raise ValueError(f"{path}:{line}: service_s must be > 0, got {row[1]}")
            jobs.append(Job(arrival, service))
    jobs.sort()
    return jobs


# ---------------------------------------------------------------- building blocks


def lognormal(rng: random.Random, mean_s: float, cv: float) -> float:
    sigma2 = math.log(1 + cv * cv)
    return rng.lognormvariate(math.log(mean_s) - sigma2 / 2, math.sqrt(sigma2))


def poisson_times(
    rng: random.Random, duration_s: float, rate: Callable[[float], float], rate_max: float
) -> list[float]:
    """Arrival times of a Poisson process with rate(t) <= rate_max per second (thinning)."""
    times: list[float] = []
    t = 0.0
    while True:
        t += rng.expovariate(rate_max)
        if t >= duration_s:
            return times
        if rng.random() * rate_max <= rate(t):
            times.append(t)


def _day_curve(low: float, high: float, trough_h: float = 3.0) -> Callable[[float], float]:
    """A raised cosine over the day: `low` at `trough_h` o'clock, `high` twelve hours later."""

    def rate(t: float) -> float:
        phase = 2 * math.pi * (t / HOUR_S - trough_h) / 24
        return low + (high - low) * (1 - math.cos(phase)) / 2

    return rate


def _drop(rng: random.Random, at_s: float, size: int, spread_s: float, mean_s: float) -> list[Job]:
    """A batch drop: `size` jobs published within `spread_s` of `at_s`."""
    return [Job(at_s + rng.uniform(0, spread_s), lognormal(rng, mean_s, 0.5)) for _ in range(size)]


# ---------------------------------------------------------------- the six shapes


def steady(rng: random.Random) -> list[Job]:
    times = poisson_times(rng, DAY_S, lambda _: 1.5, 1.5)
    return [Job(t, lognormal(rng, 40.0, 1.0)) for t in times]


def diurnal(rng: random.Random) -> list[Job]:
    times = poisson_times(rng, DAY_S, _day_curve(0.25, 2.5), 2.5)
    return [Job(t, lognormal(rng, 30.0, 1.0)) for t in times]


BATCH_HOURS = (1, 5, 9, 12, 17, 21)


def batch(rng: random.Random) -> list[Job]:
    jobs = [
        Job(t, lognormal(rng, 20.0, 1.0)) for t in poisson_times(rng, DAY_S, lambda _: 0.3, 0.3)
    ]
    for hour in BATCH_HOURS:
        at = hour * HOUR_S + rng.uniform(-1200, 1200)
        jobs += _drop(rng, at, rng.randint(2000, 5000), 30.0, 6.0)
    return jobs


def spike(rng: random.Random) -> list[Job]:
    base = 0.5
    spikes = []
    for _ in range(3):
        start = rng.uniform(HOUR_S, DAY_S - 2 * HOUR_S)
        spikes.append((start, rng.uniform(900, 2400), rng.uniform(5, 8)))
    ramp_s = 120.0

    def rate(t: float) -> float:
        factor = 1.0
        for start, length, peak in spikes:
            if start <= t < start + length:
                factor = max(factor, 1 + (peak - 1) * min(1.0, (t - start) / ramp_s))
        return base * factor

    times = poisson_times(rng, DAY_S, rate, base * 8)
    return [Job(t, lognormal(rng, 20.0, 1.0)) for t in times]


def long(rng: random.Random) -> list[Job]:
    times = poisson_times(rng, DAY_S, lambda _: 0.05, 0.05)
    return [Job(t, min(3600.0, max(60.0, lognormal(rng, 720.0, 1.0)))) for t in times]


def mixed(rng: random.Random) -> list[Job]:
    short = poisson_times(rng, DAY_S, _day_curve(0.3, 1.5), 1.5)
    jobs = [Job(t, lognormal(rng, 10.0, 1.0)) for t in short]
    jobs += [
        Job(t, rng.uniform(300, 3600)) for t in poisson_times(rng, DAY_S, lambda _: 0.01, 0.01)
    ]
    for hour in (2, 14):
        jobs += _drop(rng, hour * HOUR_S + rng.uniform(-1800, 1800), 1500, 30.0, 15.0)
    return jobs


SHAPES: dict[str, Callable[[random.Random], list[Job]]] = {
    "steady": steady,
    "diurnal": diurnal,
    "batch": batch,
    "spike": spike,
    "long": long,
    "mixed": mixed,
}


def generate(shape: str, seed: int = 1) -> list[Job]:
    """One day of the named shape, sorted by arrival; the same seed gives the same jobs."""
    if shape not in SHAPES:
        raise ValueError(f"unknown workload {shape!r}; choose one of {', '.join(SHAPES)}")
    return sorted(SHAPES[shape](random.Random(f"{shape}-{seed}")))
