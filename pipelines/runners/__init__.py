"""Runners execute a stage over tasks and yield outcomes as they complete. They know nothing of video.

- `local`: an in-process loop (debugging, and the baseline the benchmarks compare against);
- `ray`: Ray actors on this machine (default) or a cluster (`--ray-address` / `RAY_ADDRESS`);
- `beam`: an Apache Beam pipeline (DirectRunner worker processes here; Flink, Spark or Dataflow by options).
"""

from __future__ import annotations

from typing import Any

from pipelines.runners.local import LocalRunner

ENGINES = ("ray", "beam", "local")


def make_runner(engine: str = "ray", **options: Any):
    if engine == "local":
        return LocalRunner()
    if engine == "ray":
        from pipelines.runners.ray_runner import RayRunner

        return RayRunner(**options)
    if engine == "beam":
        from pipelines.runners.beam_runner import BeamRunner

        return BeamRunner(**options)
    raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")


def runner_from_config(runner_cfg: Any):
    """The runner a `RunnerConfig` describes (engine, Ray address or Beam runner, size, torch threads per worker)."""
    if runner_cfg.engine == "ray":
        return make_runner("ray", address=runner_cfg.ray_address, num_cpus=runner_cfg.num_cpus,
                           torch_threads=runner_cfg.torch_threads)
    if runner_cfg.engine == "beam":
        return make_runner("beam", runner=runner_cfg.beam_runner, num_workers=runner_cfg.num_cpus,
                           options=runner_cfg.beam_options, temp_dir=runner_cfg.beam_temp,
                           torch_threads=runner_cfg.torch_threads)
    return make_runner(runner_cfg.engine)


__all__ = ["ENGINES", "LocalRunner", "make_runner", "runner_from_config"]
