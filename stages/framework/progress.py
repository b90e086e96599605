"""Progress of a pipeline run: a bar per stage on a terminal, plain log lines otherwise.

:func:`make_progress` picks the form from the output stream: on a TTY, one tqdm bar per stage;
otherwise (CI, a log file) a line each time another tenth of the run's quanta has finished, a line
for every failure, and a line when a stage completes: about twenty lines for a run of any size.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO


class Progress:
    """Receives the events of a run; this base class shows nothing."""

    def start(self, totals: Mapping[str, int]) -> None:
        """The run starts; ``totals`` is the number of quanta to run per stage."""

    def advance(self, label: str, status: str, message: str = "") -> None:
        """One quantum of stage ``label`` ended as ``done``, ``failed`` or ``blocked``."""

    def finish(self) -> None:
        """The run has ended."""


class LogProgress(Progress):
    """Plain lines: every tenth of the run, every failure, and each stage's completion."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.totals: dict[str, int] = {}
        self.counts: dict[str, dict[str, int]] = {}
        self.shown = 0
        self.started = time.monotonic()

    def start(self, totals: Mapping[str, int]) -> None:
        self.totals = {k: v for k, v in totals.items() if v}
        self.counts = {k: {"done": 0, "failed": 0, "blocked": 0} for k in self.totals}
        self.shown = 0
        self.started = time.monotonic()
        summary = ", ".join(f"{k} {v}" for k, v in self.totals.items()) or "nothing"
        self._line(f"running {sum(self.totals.values())} quanta: {summary}")

    def advance(self, label: str, status: str, message: str = "") -> None:
        counts = self.counts[label]
        counts[status] = counts.get(status, 0) + 1
        if status == "failed":
            self._line(f"{label}: FAILED {message}")
        if sum(counts.values()) == self.totals[label]:
            self._line(f"{label}: all {self.totals[label]} quanta finished ({_counts(counts)})")
        finished = sum(sum(c.values()) for c in self.counts.values())
        total = sum(self.totals.values())
        tenth = finished * 10 // total
        if tenth > self.shown and finished < total:
            self.shown = tenth
            elapsed = time.monotonic() - self.started
            self._line(f"{finished}/{total} quanta finished ({tenth}0%) in {elapsed:.1f} s")

    def _line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def _counts(counts: Mapping[str, int]) -> str:
    extra = "".join(f", {counts[s]} {s}" for s in ("failed", "blocked") if counts.get(s))
    return f"{counts['done']} done{extra}"


class TqdmProgress(Progress):
    """One tqdm bar per stage; failures are printed above the bars."""

    def __init__(self, stream: TextIO | None = None):
        self.stream = stream or sys.stderr
        self.bars: dict[str, Any] = {}

    def start(self, totals: Mapping[str, int]) -> None:
        from tqdm import tqdm

        width = max((len(k) for k in totals), default=0)
        self.bars = {
            label: tqdm(
                total=total,
                desc=label.ljust(width),
                unit="quantum",
                position=i,
                file=self.stream,
                leave=True,
            )
            for i, (label, total) in enumerate((k, v) for k, v in totals.items() if v)
        }

    def advance(self, label: str, status: str, message: str = "") -> None:
        bar = self.bars[label]
        if status == "failed":
            bar.write(f"{label}: FAILED {message}", file=self.stream)
        bar.update(1)
        if status != "done":
            failed = getattr(bar, "_drp_bad", 0) + 1
            bar._drp_bad = failed
            bar.set_postfix_str(f"{failed} failed/blocked", refresh=False)

    def finish(self) -> None:
        for bar in self.bars.values():
            bar.close()


def make_progress(stream: TextIO | None = None) -> Progress:
    """Bars on a terminal, log lines otherwise."""
    stream = stream or sys.stderr
    isatty = getattr(stream, "isatty", lambda: False)
    return TqdmProgress(stream) if isatty() else LogProgress(stream)
