"""The in-process runner: one worker, the calling process. Same semantics as the Ray runner."""

from __future__ import annotations

from typing import Any, Iterable, Iterator, Mapping

from pipelines.stages import Outcome, Stage, execute_batch, iter_batches


class LocalRunner:
    name = "local"

    def map(self, stage: Stage, tasks: Iterable[Mapping[str, Any]]) -> Iterator[Outcome]:
        """Tasks are drawn one batch at a time (a stream is never materialised); no tasks, no `setup`."""
        context, started = None, False
        for batch in iter_batches(tasks, stage.resources.batch_size):
            if not started:
                context, started = (stage.setup() if stage.setup else None), True
            yield from execute_batch(stage, batch, context)

    def close(self) -> None:
        pass
