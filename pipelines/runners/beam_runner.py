"""The Apache Beam runner: the same stage functions as a Beam pipeline (DirectRunner here; Flink, Spark or Dataflow
through `runner.beam_options`). Outcome files, failures, differences from Ray: docs/stages.md#beam."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as dt
import itertools
import json
import logging
import math
import os
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

from pipelines.stages import Outcome, Stage, execute_batch, iter_batches

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
            final = Path(out_dir) / f"{index:08d}.json"
            tmp = final.with_suffix(f".{uuid.uuid4().hex}.tmp")  # unique across hosts (retries may overlap)
            tmp.write_bytes(encode_outcomes(outcomes))
            os.replace(tmp, final)
            yield index

    return StageDoFn()


class BeamRunner:
    name = "beam"

    def __init__(self, runner: str = "DirectRunner", num_workers: int | None = None,
                 options: Sequence[str] = (), temp_dir: str | None = None, torch_threads: int = 1,
                 window: int = 50_000):
        self.runner, self.num_workers, self.options = runner, num_workers, list(options)
        self.window = window  # tasks per pipeline run
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

    def map(self, stage: Stage, tasks: Iterable[Mapping[str, Any]]) -> Iterator[Outcome]:
        """A stream of tasks runs as one pipeline per window of `window` tasks (one pipeline for a corpus that
        fits in one), so the driver never holds more than a window of tasks."""
        per_window = max(1, self.window // max(1, stage.resources.batch_size))
        stream = iter_batches(tasks, stage.resources.batch_size)
        while work := list(itertools.islice(stream, per_window)):
            yield from self._run(stage, work)

    def _run(self, stage: Stage, work: list[list[Mapping[str, Any]]]) -> Iterator[Outcome]:
        import apache_beam as beam

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
                for path in sorted(Path(out_dir).glob("*.json")):
                    if path.name not in seen:
                        seen.add(path.name)
                        yield from decode_outcomes(path.read_bytes())
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


# --- outcome files: JSON with tags for what JSON lacks ---------------------------------------------------------

def _plain(value: Any) -> Any:
    """`value` as JSON values, tagging tuples, non-string-keyed dicts, bytes, dates and numpy values."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not any(k.startswith("__") and k.endswith("__") for k in value):
            return {k: _plain(v) for k, v in value.items()}
        return {"__pairs__": [[_plain(k), _plain(v)] for k, v in value.items()]}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, tuple):
        return {"__tuple__": [_plain(v) for v in value]}
    if isinstance(value, (bytes, bytearray)):
        return {"__bytes__": base64.b64encode(bytes(value)).decode()}
    if isinstance(value, dt.datetime):
        return {"__datetime__": value.isoformat()}
    if isinstance(value, dt.date):
        return {"__date__": value.isoformat()}
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if type(value).__module__ == "numpy":
        import numpy as np

        if isinstance(value, np.ndarray):
            return {"__ndarray__": _plain(value.tolist()), "dtype": value.dtype.str, "shape": list(value.shape)}
        if isinstance(value, np.generic):
            return _plain(value.item())
    raise TypeError(f"{type(value).__qualname__} is not data this runner carries (JSON, tuples, bytes, dates, "
                    "numpy values)")


def _tagged(obj: dict[str, Any]) -> Any:
    if "__tuple__" in obj:
        return tuple(obj["__tuple__"])
    if "__pairs__" in obj:
        return {(tuple(k) if isinstance(k, list) else k): v for k, v in obj["__pairs__"]}
    if "__bytes__" in obj:
        return base64.b64decode(obj["__bytes__"])
    if "__datetime__" in obj:
        return dt.datetime.fromisoformat(obj["__datetime__"])
    if "__date__" in obj:
        return dt.date.fromisoformat(obj["__date__"])
    if "__ndarray__" in obj:
        import numpy as np

        return np.array(obj["__ndarray__"], dtype=np.dtype(obj["dtype"])).reshape(obj["shape"])
    return obj


def encode_outcomes(outcomes: Sequence[Outcome]) -> bytes:
    """One batch's outcomes as JSON bytes; an outcome whose result is not plain data becomes a failed one."""
    rows = []
    for o in outcomes:
        try:
            rows.append(_plain(dataclasses.asdict(o)))
        except TypeError as e:
            rows.append(_plain(dataclasses.asdict(Outcome(o.item_id, "failed", reason=f"result not storable: {e}",
                                                          duration_s=o.duration_s))))
    return json.dumps(rows).encode()


def decode_outcomes(data: bytes) -> list[Outcome]:
    return [Outcome(**row) for row in json.loads(data, object_hook=_tagged)]


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
