"""What a check is: a name, a category, a severity, an explanation and a function over the audit context.

Checks register themselves with `@check(...)` in `CHECKS`; `all_checks()` lists them grouped by category, the
order of the console table and the report. A check returns an `Outcome`: what it looked at, what failed and why, and (for duplicate
checks) the sets it found. A check that cannot run (no shards registered, no VAE checkpoint) says why instead.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from audit.context import AuditContext

SEVERITIES = ("info", "warning", "error")  # in rising order


def severity_rank(severity: str) -> int:
    try:
        return SEVERITIES.index(severity)
    except ValueError:
        raise ValueError(f"severity {severity!r} is not one of {', '.join(SEVERITIES)}") from None


@dataclass
class Outcome:
    """What a check found. `checked` names every item (or shard, embodiment, ...) it judged; `failures` maps the
    failing ones to a reason. `sets` lists groups that belong together (duplicate sets), `stats` holds numbers
    the report shows, `not_run` says why the check could not run."""

    checked: list[str] = field(default_factory=list)
    failures: dict[str, str] = field(default_factory=dict)
    sets: list[list[str]] = field(default_factory=list)
    stats: dict[str, Any] = field(default_factory=dict)
    not_run: str | None = None

    def fail(self, subject: str, reason: str) -> None:
        """Record a failure; a subject failing twice keeps both reasons."""
        if subject not in self.checked:
            self.checked.append(subject)
        self.failures[subject] = f"{self.failures[subject]}; {reason}" if subject in self.failures else reason

    @classmethod
    def skipped(cls, reason: str) -> "Outcome":
        return cls(not_run=reason)


@dataclass(frozen=True)
class Check:
    name: str
    category: str  # one of CATEGORIES
    severity: str
    explanation: str
    run: Callable[["AuditContext"], Outcome]


CHECKS: dict[str, Check] = {}
CATEGORIES = ("integrity", "dataset", "content", "motion", "duplicates", "splits", "labels", "shards")


def check(name: str, category: str, severity: str, explanation: str):
    """Register the decorated function as a check."""
    severity_rank(severity)
    if category not in CATEGORIES:
        raise ValueError(f"check {name}: category {category!r} is not one of {', '.join(CATEGORIES)}")

    def register(fn: Callable[["AuditContext"], Outcome]) -> Callable[["AuditContext"], Outcome]:
        if name in CHECKS:
            raise ValueError(f"check {name!r} is registered twice")
        CHECKS[name] = Check(name, category, severity, explanation, fn)
        return fn

    return register


def all_checks() -> list[Check]:
    """Every registered check, grouped by category in `CATEGORIES` order (registration order within one)."""
    importlib.import_module("audit.checks")  # importing registers the checks

    return sorted(CHECKS.values(), key=lambda c: CATEGORIES.index(c.category))
