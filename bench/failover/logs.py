"""The warnings and errors in the processes' logs, counted by message, for the report: what a
failing mode's workers said is the first clue to why."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

# Variable parts (ids, addresses, numbers) differ from line to line of one message.
_VARIABLE = re.compile(r"0x[0-9a-f]+|[0-9a-f]{8}-[0-9a-f-]{27}|\d+(\.\d+)?")
# Lines outside the JSON log: an exception's last line, or Celery's own shutdown notice.
_RAW = re.compile(r"^([\w.]+(Error|Exception|Exit)\b.*|.*[Uu]nrecoverable.*)$")
LINE_CHARS = 240


def _message(line: str) -> str | None:
    if line.startswith("{"):
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            return None
        if record.get("level") not in {"WARNING", "ERROR", "CRITICAL"}:
            return None
        message = " / ".join(str(record.get("message")).split("\n")).strip(" /")
        text = f"{record.get('level')} {record.get('logger')}: {message}"
        exc = str(record.get("exc_info") or "").strip().splitlines()
        return f"{text} [{exc[-1]}]" if exc else text
    return line if _RAW.match(line) else None


def error_lines(logs: Path, limit: int = 12) -> dict[str, int]:
    """Message -> how often, over every process's log in `logs`, most frequent first; the
    first occurrence of each message stands for all its variants."""
    counts: Counter[str] = Counter()
    first: dict[str, str] = {}
    for path in sorted(logs.glob("*.log")):
        process = path.stem
        for line in path.read_text(errors="replace").splitlines():
            message = _message(line.strip())
            if message is None:
                continue
            key = _VARIABLE.sub("N", message)
            first.setdefault(key, f"{process}: {message}"[:LINE_CHARS])
            counts[key] += 1
    return {first[key]: n for key, n in counts.most_common(limit)}
