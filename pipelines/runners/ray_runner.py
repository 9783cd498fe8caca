"""The Ray runner: a pool of actors per stage, each running the stage's `setup` once (e.g. loading a model).

Ray schedules the actors on this machine (`ray.init()` starts a local instance) or on a cluster when
`address` / `RAY_ADDRESS` names one; on a cluster every node needs this package installed from the same lock.
Only paths and small result dicts cross process boundaries, never frames (anchors.md §6).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import math
import os
from typing import Any, Iterable, Iterator, Mapping

import ray

from pipelines.stages import Outcome, Stage, execute_batch, iter_batches
from common.torch_compat import WORKER_ENV


@ray.remote
class _StageWorker:
    def __init__(self, stage: Stage, torch_threads: int):
        from common.torch_compat import install_import_hook, set_worker_threads

        install_import_hook()
        set_worker_threads(torch_threads)
        self.stage = stage
        self.context = stage.setup() if stage.setup else None
        self.node = ray.get_runtime_context().get_node_id()[:12]

    def ready(self) -> bool:
        return True

    def run(self, tasks: list[Mapping[str, Any]]) -> list[Outcome]:
        return [dataclasses.replace(o, node=self.node) for o in execute_batch(self.stage, tasks, self.context)]


# Ray >= 2.5x turns token authentication on for a local `ray.init()` when RAY_AUTH_MODE is unset, and logs a
# warning saying so on every start; the local default keeps Ray's choice and drops only that line
_AUTH_LOGGER = "ray._private.authentication.authentication_token_setup"
_AUTH_ENABLED_NOTE = "Token authentication is enabled for this Ray cluster"


def _not_the_auth_note(record: logging.LogRecord) -> bool:
    return _AUTH_ENABLED_NOTE not in record.getMessage()


def init_ray(**kwargs: Any) -> None:
    """`ray.init(**kwargs)`; a local instance (no address) starts without the token-auth note. A cluster's own
    messages (a missing token, auth disabled) still show."""
    local = not kwargs.get("address") and not os.environ.get("RAY_ADDRESS")
    log = logging.getLogger(_AUTH_LOGGER)
    if local:
        log.addFilter(_not_the_auth_note)
    try:
        ray.init(**kwargs)
    finally:
        log.removeFilter(_not_the_auth_note)


class RayRunner:
    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None, torch_threads: int = 1):
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.num_cpus = num_cpus
        self.torch_threads = torch_threads
        self._started_here = False

    def _ensure_started(self) -> None:
        if ray.is_initialized():
            return
        env_vars = dict(WORKER_ENV)
        for var in ("MUJOCO_GL", "PYOPENGL_PLATFORM", "HF_HUB_OFFLINE", "TORCH_HOME"):
            if var in os.environ:
                env_vars[var] = os.environ[var]
        kwargs: dict[str, Any] = dict(
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=True,
            runtime_env={"env_vars": env_vars},
        )
        if self.address:
            kwargs["address"] = self.address
        else:
            kwargs["num_cpus"] = self.num_cpus or os.cpu_count()
        init_ray(**kwargs)
        self._started_here = True

    def pool_size(self, stage: Stage, n_batches: int) -> int:
        self._ensure_started()
        res = ray.cluster_resources()
        r = stage.resources
        size = max(1, math.floor(res.get("CPU", 1) / max(r.num_cpus, 1e-3)))
        if r.num_gpus > 0:
            gpus = res.get("GPU", 0)
            if gpus <= 0:
                raise RuntimeError(f"stage {stage.name} asks for {r.num_gpus} GPU per worker but the Ray cluster has none")
            size = min(size, max(1, math.floor(gpus / r.num_gpus)))
        if r.max_workers:
            size = min(size, r.max_workers)
        return max(1, min(size, n_batches))

    def map(self, stage: Stage, tasks: Iterable[Mapping[str, Any]]) -> Iterator[Outcome]:
        """Yield outcomes as batches finish. A worker that dies (OOM, segfault) fails only its own batch;
        it is replaced, and the stage gives up only when workers keep dying (e.g. `setup` itself raises)."""
        stream = iter_batches(tasks, stage.resources.batch_size)  # drawn as workers free up, never all at once
        first = next(stream, None)
        if first is None:  # no tasks: Ray is not even started
            return
        ahead = [first, *itertools.islice(stream, self.pool_size(stage, 1 << 30) - 1)]  # enough to size the pool
        size = self.pool_size(stage, len(ahead))
        work = itertools.chain(ahead, stream)
        del ahead
        options = dict(num_cpus=stage.resources.num_cpus, num_gpus=stage.resources.num_gpus)

        def spawn():
            return _StageWorker.options(**options).remote(stage, self.torch_threads)

        idle = [spawn() for _ in range(size)]
        try:  # a `setup` that raises (bad checkpoint, no GPU) stops the stage now, before any item is touched
            ray.get(idle[0].ready.remote())
        except ray.exceptions.RayActorError as e:
            for actor in idle:
                ray.kill(actor)
            cause = [line for line in str(e).splitlines() if line.strip()][-1]  # the exception, not Ray's framing
            raise RuntimeError(f"stage {stage.name}: worker setup failed: {cause}") from e
        in_flight: dict[Any, tuple[Any, list[Mapping[str, Any]]]] = {}
        deaths = 0
        try:
            exhausted = False
            while True:
                while idle and not exhausted:
                    batch = next(work, None)
                    if batch is None:
                        exhausted = True
                        break
                    actor = idle.pop()
                    in_flight[actor.run.remote(batch)] = (actor, batch)
                if not in_flight:
                    break
                done, _ = ray.wait(list(in_flight), num_returns=1)
                actor, batch = in_flight.pop(done[0])
                try:
                    outcomes = ray.get(done[0])
                    idle.append(actor)
                    deaths = 0  # give up only when workers die one after another (e.g. `setup` raises)
                except ray.exceptions.RayActorError as e:
                    deaths += 1
                    if deaths > size + 2:
                        raise RuntimeError(f"stage {stage.name}: workers keep dying; last error: {e}") from e
                    reason = f"worker died: {str(e).splitlines()[0][:300]}"
                    outcomes = [Outcome(t["item_id"], "failed", reason=reason) for t in batch]
                    ray.kill(actor)
                    idle.append(spawn())
                yield from outcomes
        finally:
            for actor in idle + [a for a, _ in in_flight.values()]:
                ray.kill(actor)

    def close(self) -> None:
        if self._started_here and ray.is_initialized():
            ray.shutdown()
        self._started_here = False
