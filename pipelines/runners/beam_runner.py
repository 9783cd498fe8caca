"""The Apache Beam runner: the same stage functions as a Beam pipeline (DirectRunner here; Flink, Spark or
Dataflow through `runner.beam_options`).

The pipeline is Create(batches) → Reshuffle (spreads batches over workers) → ParDo(stage). The DoFn runs the
stage's `setup` once per worker (`DoFn.setup`) and writes each batch's outcomes to `<outcome dir>/<batch>.pkl`
(temp name, then rename, so a retried bundle overwrites and a reader never sees half a file). The driver runs the
pipeline in a thread and yields outcomes as those files appear, so progress, catalog writes and quarantine work
exactly as with Ray. On a cluster runner the outcome directory must be on storage every worker and the driver
share (`runner.beam_temp`).

Differences from Ray: Beam retries a failing bundle and then fails the whole pipeline, so a batch that keeps
killing its worker (or a `setup` that raises) stops the stage with the runner's error, where Ray fails only that
batch. Ordinary item failures never get that far: `execute_batch` turns them into outcomes. A dead DirectRunner
worker is noticed through Beam's "Worker subprocess exited with return code N" report (N ≠ 0); without it the
DirectRunner would wait for that worker forever. A driver that stops early (Ctrl-C, a catalog error) abandons
the pipeline thread, which runs its remaining batches into a deleted folder before the process exits.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import pickle
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterator, Mapping, Sequence

from pipelines.stages import Outcome, Stage, batches, execute_batch

POLL_S = 0.2


def _dofn(stage: Stage, out_dir: str, torch_threads: int):
    """The stage as a DoFn (a class made here so that importing this module does not import apache_beam)."""
    import apache_beam as beam

    class StageDoFn(beam.DoFn):
        def setup(self):
            from common.torch_compat import install_import_hook, set_worker_threads

            install_import_hook()
            set_worker_threads(torch_threads)
            self.context = stage.setup() if stage.setup else None

        def process(self, element):
            index, tasks = element
            outcomes = execute_batch(stage, tasks, self.context)
            final = Path(out_dir) / f"{index:08d}.pkl"
            tmp = final.with_suffix(f".{uuid.uuid4().hex}.tmp")  # unique across hosts (retries may overlap)
            tmp.write_bytes(pickle.dumps(outcomes))
            os.replace(tmp, final)
            yield index

    return StageDoFn()


class BeamRunner:
    name = "beam"

    def __init__(self, runner: str = "DirectRunner", num_workers: int | None = None,
                 options: Sequence[str] = (), temp_dir: str | None = None, torch_threads: int = 1):
        self.runner, self.num_workers, self.options = runner, num_workers, list(options)
        self.temp_dir, self.torch_threads = temp_dir, torch_threads

    def pool_size(self, stage: Stage, n_batches: int) -> int:
        r = stage.resources
        size = self.num_workers or max(1, math.floor((os.cpu_count() or 1) / max(r.num_cpus, 1e-3)))
        if r.max_workers:
            size = min(size, r.max_workers)
        return max(1, min(size, n_batches))

    def pipeline_options(self, stage: Stage, n_batches: int):
        from apache_beam.options.pipeline_options import PipelineOptions

        given = {flag.split("=")[0].lstrip("-") for flag in self.options}
        extra: dict[str, Any] = {"runner": self.runner, "default_sdk_harness_log_level": "ERROR"}
        if self.runner == "DirectRunner":  # worker processes, like Ray's actors: the stage never runs in the driver
            extra.update(direct_num_workers=self.pool_size(stage, n_batches), direct_running_mode="multi_processing")
        return PipelineOptions(self.options, **{k: v for k, v in extra.items() if k not in given})

    def map(self, stage: Stage, tasks: Sequence[Mapping[str, Any]]) -> Iterator[Outcome]:
        if not tasks:
            return
        import apache_beam as beam

        work = batches(tasks, stage.resources.batch_size)
        failure: list[BaseException] = []  # the pipeline's error, or a dead worker process
        with tempfile.TemporaryDirectory(prefix=f"beam-{stage.name}-", dir=self.temp_dir,
                                         ignore_cleanup_errors=True) as out_dir, _worker_deaths(failure):
            def run() -> None:
                try:
                    # Beam's chatter, and its relay of worker tracebacks: a failure is raised below with its cause
                    logging.getLogger("apache_beam").setLevel(logging.ERROR)
                    logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(logging.CRITICAL)
                    with beam.Pipeline(options=self.pipeline_options(stage, len(work))) as p:
                        (p | "batches" >> beam.Create(list(enumerate(work)))
                           | "spread" >> beam.Reshuffle()
                           | stage.name >> beam.ParDo(_dofn(stage, out_dir, self.torch_threads)))
                except BaseException as exc:  # noqa: BLE001 - raised again in the driver
                    failure.append(exc)

            thread = threading.Thread(target=run, name=f"beam-{stage.name}", daemon=True)
            thread.start()
            seen: set[str] = set()
            while True:
                finished = not thread.is_alive() or bool(failure)  # read before listing: nothing lands after
                for path in sorted(Path(out_dir).glob("*.pkl")):
                    if path.name not in seen:
                        seen.add(path.name)
                        yield from pickle.loads(path.read_bytes())
                if finished:
                    break
                time.sleep(POLL_S)
            if failure:  # a hung pipeline (dead worker) is abandoned: its thread is a daemon
                raise RuntimeError(f"stage {stage.name}: the Beam pipeline failed: {_cause(failure[0])}; items "
                                   "not reported stay to do (a rerun retries them; the Ray engine fails only the "
                                   "batch of a dead worker)") from failure[0]
            thread.join()
            if len(seen) != len(work):
                raise RuntimeError(f"stage {stage.name}: the Beam pipeline finished with {len(seen)} of {len(work)} "
                                   "batches written")

    def close(self) -> None:
        pass


@contextlib.contextmanager
def _worker_deaths(failure: list[BaseException]) -> Iterator[None]:
    """Catch the DirectRunner's report of a worker process that died (a segfault, OOM kill or os._exit in a
    stage): Beam raises it in a thread of its own and then waits for that worker forever, so the driver must
    notice and stop instead of hanging."""
    previous = threading.excepthook

    def hook(args: threading.ExceptHookArgs) -> None:
        if isinstance(args.exc_value, RuntimeError) and "Worker subprocess exited" in str(args.exc_value):
            failure.append(args.exc_value)
        else:
            previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def _cause(exc: BaseException) -> str:
    lines = [line for line in str(exc).splitlines() if line.strip()]
    return lines[-1][:500] if lines else type(exc).__name__
