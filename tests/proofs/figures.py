"""The figures of the proofs: how many cases of each kind were tried and what came of them."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

# `make proofs` sets this: more seeded runs and every variant, instead of CI's sample.
EXHAUSTIVE = os.environ.get("PROOFS_EXHAUSTIVE") == "1"


@dataclass
class Figures:
    sections: dict[str, dict[str, int | str]] = field(default_factory=dict)

    def count(self, section: str, row: str, n: int = 1) -> None:
        rows = self.sections.setdefault(section, {})
        value = rows.get(row, 0)
        rows[row] = (value if isinstance(value, int) else 0) + n

    def measure(self, section: str, row: str, value: str) -> None:
        self.sections.setdefault(section, {})[row] = value

    def merge(self, sections: dict[str, dict[str, int | str]]) -> None:
        """Add the figures of another process (a pytest-xdist worker)."""
        for section, rows in sections.items():
            for row, value in rows.items():
                if isinstance(value, int):
                    self.count(section, row, value)
                else:
                    self.measure(section, row, value)

    def markdown(self) -> str:
        mode = "exhaustive (`make proofs`)" if EXHAUSTIVE else "CI sample (`pytest tests/proofs`)"
        lines = ["# Proofs: faults and bad input", "", f"Mode: {mode}.", ""]
        for name in sorted(self.sections):
            lines += [f"## {name}", "", "| case | figure |", "|---|---:|"]
            rows = list(self.sections[name].items())
            # Totals first, in the order measured; then each kind of case, alphabetically.
            rows.sort(key=lambda item: (_kind(item[0]), item[0] if _kind(item[0]) else ""))
            lines += [f"| {row} | {value} |" for row, value in rows]
            lines.append("")
        return "\n".join(lines)


def _kind(row: str) -> str:
    prefix = row.split(":", 1)[0]
    return prefix if prefix in {"fault", "category", "outcome", "events"} else ""


FIGURES = Figures()
