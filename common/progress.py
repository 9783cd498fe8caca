"""Progress for long stages: items done / quarantined / failed, items/s and ETA.

On a terminal it is a live rich bar; elsewhere (CI, logs) a plain line every `log_every_s` seconds.
"""

from __future__ import annotations

import sys
import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


class StageProgress:
    """`total=None`: the tasks arrive as a stream; `planned(todo, skipped)` adds each planned chunk."""

    def __init__(self, stage: str, total: int | None, skipped: int = 0, console: Console | None = None,
                 log_every_s: float = 10.0, enabled: bool = True, unit: str = "items"):
        self.streamed = total is None
        self.stage, self.total, self.skipped, self.unit = stage, total or 0, skipped, unit
        self.note = ""
        self.console = console or make_console(stderr=True)
        self.counts = {"done": 0, "quarantined": 0, "failed": 0}
        self.enabled = enabled
        self.log_every_s = log_every_s
        self._t0 = time.perf_counter()
        self._last_log = self._t0
        self._live = enabled and self.console.is_terminal
        self._progress: Progress | None = None
        if self._live:
            self._progress = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[counts]}"), TextColumn("{task.fields[rate]}"), TextColumn("{task.fields[note]}"),
                TimeRemainingColumn(), console=self.console, transient=False,
            )
            self._task = self._progress.add_task(stage, total=self.total, counts=self._counts_text(), rate="", note="")
            self._progress.start()
        elif enabled and not self.streamed:
            self.console.print(f"[{stage}] {total} to do, {skipped} already done", highlight=False, markup=False)

    def planned(self, todo: int, skipped: int) -> None:
        """A chunk of a streamed plan: `todo` more to do, `skipped` more already done."""
        self.total += todo
        self.skipped += skipped
        if self._progress is not None:
            self._progress.update(self._task, total=self.total)

    def _counts_text(self) -> str:
        c = self.counts
        if self.unit != "items":
            return ""
        return f"done {c['done']} · quarantined {c['quarantined']} · failed {c['failed']}"

    @property
    def finished(self) -> int:
        return sum(self.counts.values())

    def rate(self) -> float:
        elapsed = time.perf_counter() - self._t0
        return self.finished / elapsed if elapsed > 0 else 0.0

    def update(self, status: str, note: str = "") -> None:
        self.counts[status] += 1
        self.note = note
        if not self.enabled:
            return
        rate = self.rate()
        if self._progress is not None:
            self._progress.update(self._task, advance=1, counts=self._counts_text(), rate=f"{rate:.1f} {self.unit}/s",
                                  note=note)
        elif time.perf_counter() - self._last_log >= self.log_every_s:
            self._last_log = time.perf_counter()
            left = self.total - self.finished
            eta = f"{left / rate:.0f}s" if rate > 0 else "?"
            self.console.print(
                f"[{self.stage}] {self.finished}/{self.total}{'+' if self.streamed else ''} {self._counts_text()} "
                f"{rate:.1f} {self.unit}/s, "
                f"ETA {eta} {self.note}",
                highlight=False, markup=False,
            )

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
        if self.enabled:
            elapsed = time.perf_counter() - self._t0
            counts = f"{self._counts_text()}; " if self.unit == "items" else ""
            self.console.print(
                f"[{self.stage}] finished {self.finished}/{self.total} {self.unit} in {elapsed:.1f}s "
                f"({counts}skipped {self.skipped} already done) {self.note}",
                highlight=False, markup=False,
            )


def make_console(stderr: bool = False) -> Console:
    """A console that wraps at 140 columns when writing to a file or CI log instead of the 80 default."""
    stream = sys.stderr if stderr else sys.stdout
    return Console(stderr=stderr, width=None if stream.isatty() else 140)
