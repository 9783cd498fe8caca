"""Frames into Motus batches, the float buffers they live in, and the decoding threads that fill them; the shard
loader drives these. Why it is fast and why threads equal processes: docs/trainer.md#loader ("Workers")."""

from __future__ import annotations

import mmap
import queue
import sys
import threading
from typing import Any, Iterator

import cv2
import numpy as np
import torch

from flow_extraction.frames import fit_canvas, to_canvas
from manifests.shard_format import Sample
from manifests.shard_video import decode_jpeg_frame

# --- frames into batches ------------------------------------------------------------------------------------------

_SCALE = np.float32(1.0 / 255.0)


class Undecodable(Exception):
    """A sample whose frames do not decode (its cause says why): the clip is skipped and counted."""


class FrameBatch:
    """The frames of one batch being filled, row by row: float32 `first_frame` [B, 3, H, W] and `video_frames`
    [B, F, 3, H, W] from a buffer pool (in the consuming process), or uint8 `frames` [B, F+1, H, W, 3] in shared
    memory (in a worker process, for `widen_frames`).

    Float rows: each JPEG is decoded into a small reused HWC buffer that stays in cache, split into planes and
    scaled into its CHW slot in one pass, so a frame's bytes go through memory once (decode, stack and widen as
    separate passes over the whole batch cost a third more). uint8 rows: decoded straight into the shared slot."""

    def __init__(self, batch_size: int, cfg: Any, pool: BufferPool | None):
        H, W, F = cfg.height, cfg.width, cfg.num_video_frames
        self.hw, self.pool = (H, W), pool
        if pool is not None:
            self.first, self.video = pool.take((batch_size, 3, H, W)), pool.take((batch_size, F, 3, H, W))
            self.first_np, self.video_np = self.first.numpy(), self.video.numpy()
            self.hwc, self.planes = _scratch(H, W)
        else:
            storage = torch.UntypedStorage._new_shared(batch_size * (F + 1) * H * W * 3)
            self.frames = torch.empty(0, dtype=torch.uint8).set_(storage).view(batch_size, F + 1, H, W, 3)
            self.frames_np = self.frames.numpy()

    def write(self, b: int, sample: Sample, wanted: list[int]) -> None:
        """Row b: frames `wanted` (condition first; clamped repeats at a clip's end are decoded once). Raises
        `Undecodable` when the sample's frames do not decode."""
        try:
            size = sample.frame_size
            jpeg = sample.meta.video_format == "jpeg"
            unique = sorted(set(wanted))
            decoded = None if jpeg else dict(zip(unique, sample.frames(unique)))  # mp4: one pass up to the last
        except Exception as exc:  # noqa: BLE001 - whatever the container library raises
            raise Undecodable(sample.key) from exc
        fitted = size == self.hw
        canvas = None if fitted else fit_canvas(size, self.hw)
        first_k: dict[int, int] = {}
        for k, i in enumerate(wanted):
            if i in first_k:
                self._copy(b, first_k[i], k)
                continue
            first_k[i] = k
            if jpeg:
                target = self._slot_u8(b, k) if fitted else np.empty((*size, 3), np.uint8)
                try:
                    frame = decode_jpeg_frame(sample.meta, sample.video, i, target)
                except (ValueError, IndexError, KeyError) as exc:
                    raise Undecodable(sample.key) from exc
            else:
                frame = decoded[i]
            if canvas is not None:
                frame = to_canvas(frame, canvas)
            self._store(b, k, frame)

    def _slot_u8(self, b: int, k: int) -> np.ndarray:
        return self.hwc if self.pool is not None else self.frames_np[b, k]

    def _dst(self, b: int, k: int) -> np.ndarray:
        return self.first_np[b] if k == 0 else self.video_np[b, k - 1]

    def _store(self, b: int, k: int, frame: np.ndarray) -> None:
        if self.pool is None:
            if frame is not self.frames_np[b, k]:
                self.frames_np[b, k] = frame
            return
        _widen(frame, self.planes, self._dst(b, k))

    def _copy(self, b: int, src: int, dst: int) -> None:
        if self.pool is None:
            self.frames_np[b, dst] = self.frames_np[b, src]
        else:
            self._dst(b, dst)[...] = self._dst(b, src)

    def finish(self, labels: dict[str, Any]) -> dict[str, Any]:
        """The batch: frames (only the filled rows) first, then the labels."""
        n = len(labels["item_id"])
        if self.pool is None:
            return {"frames": self.frames[:n], **labels}
        return {"first_frame": self.first[:n], "video_frames": self.video[:n], **labels}


def _scratch(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """An HWC uint8 frame and a [3, H, W] uint8 plane buffer: reused per frame so they stay in cache."""
    return np.empty((height, width, 3), np.uint8), np.empty((3, height, width), np.uint8)


def _widen(frame: np.ndarray, planes: np.ndarray, out: np.ndarray) -> None:
    """RGB uint8 [H, W, 3] → float32 [3, H, W] in [0, 1], into `out`: cv2.split into the contiguous planes, then
    one scale over them; every pass is contiguous (a strided permute-and-convert cost 3x more)."""
    cv2.split(frame, [planes[0], planes[1], planes[2]])
    np.multiply(planes, _SCALE, out=out, casting="unsafe")


def collate_labels(items: list[dict[str, Any]], max_text_len: int, lang_dim: int) -> dict[str, Any]:
    """Per-window labels → batch tensors: `action_sequence`, `language_embedding` (zero-padded to max_text_len),
    `language_mask`, `item_id`, `tier`, and `initial_state` when every window has one."""
    B = len(items)
    width = next((it["language"].shape[1] for it in items if it["language"] is not None), lang_dim)
    language = np.zeros((B, max_text_len, width), np.float32)
    mask = np.zeros((B, max_text_len), bool)
    for b, item in enumerate(items):
        if item["language"] is not None:
            L = item["language"].shape[0]
            language[b, :L] = item["language"]
            mask[b, :L] = True
    batch = {"action_sequence": torch.from_numpy(np.stack([it["actions"] for it in items]).astype(np.float32, copy=False)),
             "language_embedding": torch.from_numpy(language), "language_mask": torch.from_numpy(mask),
             "item_id": [it["item_id"] for it in items],
             "tier": torch.tensor([it["tier"] for it in items], dtype=torch.int64)}
    if all(it["state"] is not None for it in items):
        batch["initial_state"] = torch.from_numpy(np.stack([it["state"] for it in items]).astype(np.float32, copy=False))
    return batch


def pad_actions(x: np.ndarray, want: int, embodiment: str | None) -> np.ndarray:
    """Real actions [..., d] zero-padded to `want` dims (more than `want` is an error naming the embodiment)."""
    d = x.shape[-1]
    if d > want:
        raise ValueError(f"embodiment {embodiment!r} has {d}-d actions, more than action_dim {want}")
    if d == want:
        return x
    return np.concatenate([x, np.zeros((*x.shape[:-1], want - d), x.dtype)], -1)


def widen_frames(batch: dict[str, Any], pool: BufferPool) -> dict[str, Any]:
    """A worker process's batch: uint8 `frames` [B, F+1, H, W, 3] → float32 `first_frame` [B, 3, H, W] and
    `video_frames` [B, F, 3, H, W] in [0, 1] from `pool`, in place of `frames`; the other keys keep their order."""
    frames = batch.pop("frames").numpy()
    B, n, H, W, _ = frames.shape
    first, video = pool.take((B, 3, H, W)), pool.take((B, n - 1, 3, H, W))
    first_np, video_np = first.numpy(), video.numpy()
    _, planes = _scratch(H, W)
    for b in range(B):
        for i in range(n):
            _widen(frames[b, i], planes, first_np[b] if i == 0 else video_np[b, i - 1])
    return {"first_frame": first, "video_frames": video, **batch}


def _fresh_array(shape: tuple[int, ...]) -> np.ndarray:
    """An uninitialised float32 array; large ones in anonymous memory advised to use huge pages."""
    nbytes = 4 * int(np.prod(shape))
    if nbytes < (8 << 20):
        return np.empty(shape, np.float32)
    buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    try:
        buf.madvise(mmap.MADV_HUGEPAGE)
    except (AttributeError, OSError):  # no THP on this kernel: plain pages
        pass
    return np.frombuffer(buf, np.float32).reshape(shape)


class BufferPool:
    """Float32 batch buffers, reused once nothing references them any more; one pool per loader iteration,
    shared by its threads.

    A batch of 384×320 frames is 13 MB of float32 per sample; freshly allocated every batch, the kernel's
    first-touch page faults cost about a third of the loader's CPU on our 2-core VM (huge pages, where the kernel
    allows them, help for the first batches). A buffer is a numpy array that the `torch.from_numpy` tensor and
    every view of it keep a reference to, so when its reference count is back to the pool's own, no batch, tensor
    or view uses it and it is handed out again. A consumer that keeps batches only makes the pool allocate more
    (it keeps at most `limit` per shape: the batches that can be in flight at once)."""

    def __init__(self, limit: int = 4):
        self.limit, self.buffers = limit, {}
        self.lock = threading.Lock()

    def take(self, shape: tuple[int, ...]) -> torch.Tensor:
        shape = tuple(shape)
        with self.lock:
            buffers = self.buffers.setdefault(shape, [])
            for arr in buffers:
                if sys.getrefcount(arr) == 3:  # the list, this loop variable and getrefcount's argument: unused
                    return torch.from_numpy(arr)
            arr = _fresh_array(shape)
            if len(buffers) < self.limit:
                buffers.append(arr)
            return torch.from_numpy(arr)


# --- workers ----------------------------------------------------------------------------------------------------

def worker_init(_worker_id: int) -> None:
    from common.torch_compat import set_worker_threads

    # torch only: OpenCV's pool is not fork-safe (cv2.setNumThreads in a forked worker can hang in
    # pthread_cond_destroy on the parent's pool), so make_loader sets OpenCV to one thread before the fork
    set_worker_threads(1)


_END = object()


class _Raised:
    def __init__(self, exc: BaseException):
        self.exc = exc


def threaded_batches(dataset: Any, n: int, pool: BufferPool, prefetch: int) -> Iterator[dict[str, Any]]:
    """`n` threads, thread w running `dataset.batches(w, n, pool)` into a queue of `prefetch`; batches taken
    round-robin; an exception in a thread is raised here."""
    stop = threading.Event()
    queues: list[queue.Queue] = [queue.Queue(prefetch) for _ in range(n)]

    def offer(q: queue.Queue, item: Any) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce(worker: int) -> None:
        try:
            for batch in dataset.batches(worker, n, pool):
                if not offer(queues[worker], batch):
                    return  # the consumer stopped
            offer(queues[worker], _END)
        except BaseException as exc:  # noqa: BLE001 - raised again in the consumer
            offer(queues[worker], _Raised(exc))

    threads = [threading.Thread(target=produce, args=(w,), name=f"shard-loader-{w}", daemon=True) for w in range(n)]
    for t in threads:
        t.start()
    try:
        active = list(range(n))
        while active:
            for w in list(active):
                got = queues[w].get()
                if got is _END:
                    active.remove(w)
                elif isinstance(got, _Raised):
                    raise got.exc
                else:
                    yield got
    finally:
        stop.set()  # producers notice within 0.1 s of finishing their batch
        # a garbage collection inside a producer can close an abandoned loader there: joining the others from
        # it could wait on a lock that producer holds (the pool's), so only another thread joins
        if threading.current_thread() not in threads:
            for t in threads:
                t.join()
