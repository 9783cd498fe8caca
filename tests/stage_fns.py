"""Stage functions for runner tests. They live in an importable module so Ray workers can load them."""

import os

from pipelines.stages import BadInput


def square_or_complain(task, context):
    x = task["x"]
    if x == 3:
        raise BadInput("three is a bad input")
    if x == 5:
        raise ZeroDivisionError("boom")
    return {"y": x * x, "context": context, "pid": os.getpid()}


def make_context():
    import torch

    return {"threads": torch.get_num_threads()}


def die_on_seven(task, context):
    if task["x"] == 7:
        os._exit(3)  # a worker crash (segfault/OOM stand-in), not an exception
    return {"y": task["x"]}


def broken_setup():
    raise FileNotFoundError("no such checkpoint: /nowhere/model.ckpt")


def write_square(task, context):
    """A stage that writes one file per item (the square of x), as flow and label do."""
    from manifests.io import atomic_write_text

    if task["x"] == 3:
        raise BadInput("three is a bad input")
    size, checksum = atomic_write_text(task["out_path"], str(task["x"] ** 2))
    return {"path": task["out_path"], "bytes": size, "checksum": checksum}


def slow_square(task, context):
    """A square that takes a while (a long job to watch from another process)."""
    import time

    time.sleep(float(task.get("sleep", 0.2)))
    return {"y": task["x"] ** 2}
