"""Stages: plain functions over items, with declared resources. They know nothing of Ray or Beam.

A stage function takes one task (a dict that carries paths and parameters, never frames) and a per-worker
context (whatever `setup` built once, e.g. a loaded model) and returns a result dict. It signals unusable
input by raising `BadInput(reason)`: the item is quarantined with that reason. Any other exception marks the
item failed (a rerun retries it). Either way the run goes on.
"""

from __future__ import annotations

import itertools
import time
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

from common.errors import BadInput  # every layer raises it; part of the stage API, so re-exported here

__all__ = ["BadInput", "Outcome", "Resources", "Stage", "batches", "execute", "execute_batch", "iter_batches"]


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 1  # tasks handed to a worker at once (model stages batch inside)
    max_workers: int | None = None  # cap on parallel workers (None: as many as the resources allow)


@dataclass(frozen=True)
class Stage:
    name: str
    fn: Callable[[Mapping[str, Any], Any], Mapping[str, Any]]
    setup: Callable[[], Any] | None = None  # runs once per worker; its return value is the fn's context
    resources: Resources = field(default_factory=Resources)


@dataclass
class Outcome:
    item_id: str
    status: str  # done | quarantined | failed
    result: Mapping[str, Any] | None = None
    reason: str | None = None
    duration_s: float = 0.0
    node: str | None = None  # the cluster node that ran it (Ray: the node id's first 12 hex digits)


def failure_reason(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    where = f" (at {frames[-1].filename.rsplit('/', 1)[-1]}:{frames[-1].lineno})" if frames else ""
    return f"{type(e).__name__}: {e}{where}"


def execute(stage: Stage, task: Mapping[str, Any], context: Any) -> Outcome:
    """Run one task, turning every exception into an outcome so one bad item never stops a run."""
    t0 = time.perf_counter()
    item_id = task["item_id"]
    try:
        result = stage.fn(task, context)
        return Outcome(item_id, "done", result=result, duration_s=time.perf_counter() - t0)
    except BadInput as e:
        return Outcome(item_id, "quarantined", reason=str(e), duration_s=time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - a failure of one item is recorded, never raised
        return Outcome(item_id, "failed", reason=failure_reason(e), duration_s=time.perf_counter() - t0)


def execute_batch(stage: Stage, tasks: Sequence[Mapping[str, Any]], context: Any) -> list[Outcome]:
    return [execute(stage, t, context) for t in tasks]


def batches(tasks: Sequence[Mapping[str, Any]], size: int) -> list[list[Mapping[str, Any]]]:
    size = max(1, size)
    return [list(tasks[i : i + size]) for i in range(0, len(tasks), size)]


def iter_batches(tasks: Iterable[Mapping[str, Any]], size: int) -> Iterator[list[Mapping[str, Any]]]:
    """Batches of `size` tasks, drawn from `tasks` (a list or a stream) only as they are asked for."""
    it, size = iter(tasks), max(1, size)
    while batch := list(itertools.islice(it, size)):
        yield batch
