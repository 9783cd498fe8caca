"""The in-process runner: one worker, the calling process. Same semantics as the Ray runner."""

from __future__ import annotations

from typing import Any, Iterator, Mapping, Sequence

from pipelines.stages import Outcome, Stage, batches, execute_batch


class LocalRunner:
    name = "local"

    def map(self, stage: Stage, tasks: Sequence[Mapping[str, Any]]) -> Iterator[Outcome]:
        if not tasks:
            return
        context = stage.setup() if stage.setup else None
        for batch in batches(tasks, stage.resources.batch_size):
            yield from execute_batch(stage, batch, context)

    def close(self) -> None:
        pass
