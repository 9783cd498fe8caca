"""What both trainers (the VAE's and the compact Motus's) share: step seeds, the metrics log, resume diffs."""

from __future__ import annotations

import csv
import hashlib
import os
from pathlib import Path
from typing import IO, Any, Mapping, Sequence


def derive_seed(*parts: Any) -> int:
    """A 63-bit seed from parts (a run's seed, a step, a rank, ...): the same parts give the same seed in every
    process and on every resume."""
    return int.from_bytes(hashlib.blake2b(":".join(map(str, parts)).encode(), digest_size=8).digest(), "big") >> 1


def settings_diff(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = "") -> str:
    """`key: old -> new` for every setting that differs, for the error a refused resume raises."""
    keys = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
    return ", ".join(f"{prefix}{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in keys)


class MetricsLog:
    """A training run's metrics.csv (a `step` column and `fields`), appended row by row and flushed, so it can be
    read while the run goes on. Opened for a run that starts (or resumes) at `start`: rows of steps ≥ `start`
    from an earlier run are dropped, so no step is logged twice. `enabled=False` (the processes other than rank
    0) writes nothing."""

    def __init__(self, path: str | os.PathLike, fields: Sequence[str], start: int = 0, enabled: bool = True):
        self.path, self.fields, self.enabled = Path(path), list(fields), enabled
        self._file: IO[str] | None = None
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            truncate_metrics_csv(self.path, start, self.fields)

    def __enter__(self) -> "MetricsLog":
        if self.enabled:
            self._file = open(self.path, "a", newline="")
            self._writer = csv.DictWriter(self._file, fieldnames=self.fields)
            if self._file.tell() == 0:
                self._writer.writeheader()
        return self

    def write(self, row: Mapping[str, Any]) -> None:
        if self._file is not None:
            self._writer.writerow({k: row.get(k) for k in self.fields})
            self._file.flush()

    def __exit__(self, *exc: Any) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def truncate_metrics_csv(path: str | os.PathLike, start: int, fields: Sequence[str]) -> None:
    """Drop the rows of a training log (a CSV with a `step` column) at or after `start`, so a run resumed from the
    checkpoint of step `start` does not log those steps twice."""
    path = Path(path)
    if not path.exists():
        return
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if int(r["step"]) < start]
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(fields))
        writer.writeheader()
        writer.writerows(rows)
