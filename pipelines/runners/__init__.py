"""Runners execute a stage over tasks and yield outcomes as they complete. They know nothing of video.

- `local`: an in-process loop (debugging, and the baseline the benchmarks compare against);
- `ray`: Ray actors on this machine (default) or a cluster (`--ray-address` / `RAY_ADDRESS`).
"""

from __future__ import annotations

from typing import Any

from pipelines.runners.local import LocalRunner

ENGINES = ("ray", "local")


def make_runner(engine: str = "ray", **options: Any):
    if engine == "local":
        return LocalRunner()
    if engine == "ray":
        from pipelines.runners.ray_runner import RayRunner

        return RayRunner(**options)
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


__all__ = ["ENGINES", "LocalRunner", "make_runner"]
