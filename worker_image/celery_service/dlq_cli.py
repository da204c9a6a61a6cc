"""`python -m celery_service dlq`: inspect and act on dead letters.

dlq list [QUEUE] [--limit N]        entries, newest first (all queues without QUEUE)
dlq show QUEUE ID                   one entry, whole (JSON)
dlq replay QUEUE ID [ID ...]        re-enqueue with the same arguments, once per entry
dlq purge QUEUE (--all | ID ...)    delete entries
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import json
import sys
from dataclasses import asdict

from celery_service.dlq import AlreadyReplayedError, DeadLetter, DeadLetterQueues
from celery_service.redis_client import client_for
from celery_service.settings import Settings


def main(settings: Settings, argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="celery_service dlq",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list")
    listing.add_argument("queue", nargs="?")
    listing.add_argument("--limit", type=int, default=50)
    show = sub.add_parser("show")
    show.add_argument("queue")
    show.add_argument("id")
    replay = sub.add_parser("replay")
    replay.add_argument("queue")
    replay.add_argument("ids", nargs="+", metavar="ID")
    purge = sub.add_parser("purge")
    purge.add_argument("queue")
    which = purge.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true")
    which.add_argument("ids", nargs="*", metavar="ID", default=[])
    args = parser.parse_args(argv)
    known = settings.catalog.queues
    if args.queue is not None and args.queue not in known:
        print(f"error: {args.queue!r} is not a queue; queues: {', '.join(known)}", file=sys.stderr)
        return 2

    dlq = DeadLetterQueues(client_for(settings))
    if args.action == "list":
        queues = [args.queue] if args.queue else dlq.queues()
        for queue in queues:
            print(f"{queue}: {dlq.depth(queue)} dead letters")
            for entry in dlq.entries(queue, args.limit):
                print("  " + _line(entry))
        return 0
    if args.action == "show":
        found = dlq.get(args.queue, args.id)
        if found is None:
            print(f"no dead letter {args.id} in {args.queue}", file=sys.stderr)
            return 1
        data = asdict(found)
        if found.raw:
            data["raw_text"] = base64.b64decode(found.raw).decode("utf-8", "replace")
        print(json.dumps(data, indent=2, default=repr))
        return 0
    if args.action == "replay":
        return _replay(settings, dlq, args.queue, args.ids)
    count = dlq.purge(args.queue, None if args.all else args.ids)
    print(f"purged {count} dead letters from {args.queue}")
    return 0


def _replay(settings: Settings, dlq: DeadLetterQueues, queue: str, ids: list[str]) -> int:
    from celery_service.factory import create_app

    app = create_app(settings, main="dlq-replay")

    def send(entry: DeadLetter, task_id: str) -> None:
        app.send_task(
            entry.task_name,
            args=entry.args,
            kwargs=entry.kwargs,
            queue=entry.queue,
            task_id=task_id,
            headers={"replayed_from": entry.id},
        )

    status = 0
    for entry_id in ids:
        try:
            new_id = dlq.replay(queue, entry_id, send)
        except AlreadyReplayedError as exc:
            print(f"skipped: {exc}")
            continue
        except (KeyError, ValueError) as exc:
            print(f"error: {exc.args[0]}", file=sys.stderr)
            status = 1
            continue
        print(f"replayed {entry_id} as task {new_id}")
    return status


def _line(entry: DeadLetter) -> str:
    when = dt.datetime.fromtimestamp(entry.failed_at, dt.UTC).strftime("%Y-%m-%d %H:%M:%S")
    state = f" replayed as {entry.replayed_as}" if entry.replayed_as else ""
    return (
        f"{entry.id}  {when}Z  {entry.kind:<12} {entry.task_name or '-'}  "
        f"attempts={entry.attempts or '?'}  {entry.exception or ''}{state}"
    )
