"""Worker throughput and start latency: the shipped settings next to Celery's defaults.

`make bench-worker` runs this. Everything stays on this machine: it starts a throw-away
redis-server on a free 127.0.0.1 port (always stopped at the end) and, per variant, one
worker with a prefork pool of 2 processes consuming one queue, then

1. drain: fills the queue with --tasks no-op tasks, starts the worker and times it from
   "ready" (the worker_ready signal, sent just before its event loop starts consuming) to the
   last completion; also the CPU its main process, its pool processes and Redis used per task,
   and the resident memory of its main process and largest pool process at the end.
   The queue is filled with copies of one message published through the variant's app (each
   with a fresh task id and delivery tag), pipelined: publishing 20,000 through `apply_async`
   would take 10-20 s here, and the publisher is not what is measured;
2. latency: publishes through `apply_async` at a steady --rate for --seconds to the now idle
   worker; start latency is the task body's wall clock minus a header stamped in
   before_task_publish (as the platform's `published_at`, for both apps). The time from the
   caller's `apply_async` is reported too.

The shipped variants' workers get a loopback stand-in for the ECS agent's task-protection
endpoint (ECS_AGENT_URI), so their scale-in protection runs as on Fargate.

Completions are counted from the worker side over a Unix datagram socket (see bench_tasks):
no Redis command, no result backend read, so counting does not load what is measured. Other
load on the machine is measured as well (CPU used by processes other than the benchmark's,
from /proc/stat): the numbers are only meaningful on an otherwise idle machine.
Results go to bench/results/worker_bench.{json,md}; the table is printed too.

The package keeps its concerns apart: `variants` (what each row runs), `runner` (redis-server,
the workers, publishing, measuring, profiling), `report` (summaries, the table,
bench/results/) and `__main__` (the CLI).
"""
