"""GPU check: throughput of the project's GPU-bound code paths on synthetic in-memory inputs, as one table.

    bench/gpu_check.sh            # on a CUDA machine (the wrapper installs carried wheels from .whl/ first)
    bench/gpu_check.sh --cpu      # tiny sizes on CPU, a few minutes: checks that every path runs

Rows (each measured in its own try/except: a failure prints an error row and the rest still run):
- dpflow: DPFlowBackend as the flow stage builds it (`pipelines.flow.make_backends` with `dpflow_random_init`,
  random weights: speed only), RGB uint8 pairs through `compute` (host → device → host included), fp16 on CUDA,
  batch 1/4/8 at 768×640 (≈0.49 MP, 2× the working canvas), plus fp32 batch 1 and the 384×320 working size;
- vae-train: `latent_action_vae.train.train_step` on the real `LatentActionVAE` (default VAEConfig), fp32;
- label-encode: the label stage's encoder loop (`prepare` + `encode`, chunks of 128) on the device;
  label-item: the real `pipelines.label.label_item` (CPU, as the label stage runs it today) on a flow artifact;
- motus-train: one training step of the real compact Motus exactly as `training_hooks.train.train` takes it
  (forward with a seeded CPU generator, backward, clip, AdamW, cosine schedule), model and batch on the device.

Nothing is downloaded and no catalog, sample pyramid or video decoding is needed. `av` (video decoding, ~40 MB
wheel) is replaced by a stub module when it is not installed: no row decodes video.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import importlib.machinery
import json
import os
import platform
import sys
import tempfile
import time
import traceback
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def _stub_missing_av() -> str:
    """flow_extraction.frames imports av at module level; no row decodes video, so a stub is enough."""
    try:
        if os.environ.get("GPU_CHECK_STUB_AV") == "1":  # to test the stub where PyAV is installed
            raise ImportError("GPU_CHECK_STUB_AV=1")
        import av  # noqa: F401

        return "installed"
    except ImportError:
        stub = types.ModuleType("av")
        # a spec, so that importlib.util.find_spec("av") works (diffusers probes it at import); with no
        # distribution metadata behind it, diffusers then counts av as not available
        stub.__spec__ = importlib.machinery.ModuleSpec("av", None)

        def _missing(*_a, **_k):
            raise RuntimeError("PyAV is not installed on this machine (gpu_check stub): no video decoding here")

        stub.open = _missing
        stub.error = types.SimpleNamespace(FFmpegError=type("FFmpegError", (Exception,), {}))
        sys.modules["av"] = stub
        return "stub (not installed)"


AV_STATUS = _stub_missing_av()

import common.torch_compat  # noqa: E402  (the torchvision shim hook, before anything imports ptlflow)

common.torch_compat.install_import_hook()

import numpy as np  # noqa: E402
import torch  # noqa: E402

COLUMNS = ("component", "batch", "size", "device", "dtype", "items/s", "unit", "steps/s", "peak GiB", "note")


def error_note(exc: BaseException) -> str:
    """'ERROR Type: first line', plus the root cause when the error wraps another (diffusers' lazy imports do)."""
    def one(e: BaseException) -> str:
        text = str(e).strip().splitlines()
        return f"{type(e).__name__}: {text[0][:240] if text else ''}"

    root = exc
    while (root.__cause__ or root.__context__) is not None and root is not (root.__cause__ or root.__context__):
        root = root.__cause__ or root.__context__
    return "ERROR " + one(exc) + ("" if root is exc else " <- " + one(root))


class Bench:
    def __init__(self, device: str, budget_s: float, min_s: float):
        self.device, self.min_s = device, min_s
        self.deadline = time.perf_counter() + budget_s
        self.rows: list[dict] = []

    def sync(self) -> None:
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def measure(self, fn, items: int, warmup: int = 1, min_iters: int = 3) -> tuple[float, float, int, float]:
        """(items/s, steps/s, iterations, seconds): `warmup` untimed calls, then at least `min_iters` calls and
        `min_s` seconds (stopping early only when the time budget runs out)."""
        for _ in range(warmup):
            fn()
        self.sync()
        n, t0 = 0, time.perf_counter()
        while True:
            fn()
            self.sync()
            n += 1
            el = time.perf_counter() - t0
            if (n >= min_iters and el >= self.min_s) or (n >= 1 and self.left() < 0):
                break
        return n * items / el, n / el, n, el

    def row(self, component: str, batch, size: str, dtype: str, fn=None, items: int = 1, unit: str = "",
            note: str = "", warmup: int = 1, min_iters: int = 3, need_s: float = 5.0, device: str | None = None):
        dev = device or self.device
        r = {"component": component, "batch": batch, "size": size, "device": dev, "dtype": dtype,
             "items/s": "", "unit": unit, "steps/s": "", "peak GiB": "", "note": note}
        if self.left() < need_s:
            r["note"] = "SKIPPED: time budget spent"
        else:
            try:
                if dev.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                rate, steps, n, el = self.measure(fn, items, warmup, min_iters)
                r["items/s"], r["steps/s"] = f"{rate:.2f}", f"{steps:.3f}"
                r["note"] = (note + "; " if note else "") + f"{n} timed calls in {el:.1f} s"
                if dev.startswith("cuda"):
                    r["peak GiB"] = f"{torch.cuda.max_memory_allocated() / 2**30:.2f}"
            except Exception as exc:  # noqa: BLE001 - every failure becomes an error row
                r["note"] = error_note(exc)
                traceback.print_exc()
        self.rows.append(r)
        print("ROW " + " | ".join(str(r[c]) for c in COLUMNS), flush=True)
        return r

    def error(self, component: str, exc: BaseException, size: str = "") -> None:
        traceback.print_exc()
        r = {c: "" for c in COLUMNS}
        r.update(component=component, size=size, device=self.device,
                 note=error_note(exc))
        self.rows.append(r)
        print("ROW " + " | ".join(str(r[c]) for c in COLUMNS), flush=True)


# --- inputs ---------------------------------------------------------------------------------------------------
def smooth_pairs(n: int, h: int, w: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """RGB uint8 pairs [n, h, w, 3]: smooth random texture, the second frame shifted by a few pixels."""
    import cv2

    rng = np.random.default_rng(seed)
    first = np.empty((n, h, w, 3), np.uint8)
    for i in range(n):
        low = rng.integers(0, 256, (max(h // 16, 2), max(w // 16, 2), 3), dtype=np.uint8)
        first[i] = cv2.resize(low, (w, h), interpolation=cv2.INTER_CUBIC)
    second = np.roll(first, shift=(3, 5), axis=(1, 2))
    return first, second


def vae_batch(vc, b: int, h: int, w: int, device: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """A PairSampler-shaped batch: stored flow [B,2,h,w] in canvas pixels, valid mask, 14-d action targets."""
    from latent_action_vae.data import ACTION_WIDTH

    g = torch.Generator().manual_seed(seed)
    flow = torch.randn(b, 2, h, w, generator=g) * 4
    valid = torch.rand(b, h, w, generator=g) > 0.05
    action = torch.rand(b, ACTION_WIDTH, generator=g) * 2 - 1
    action_mask = torch.zeros(b, ACTION_WIDTH, dtype=torch.bool)
    action_mask[:, :7] = True
    labelled = torch.arange(b) < max(1, int(round(b * vc.labelled_fraction)))
    batch = {"flow": flow, "valid": valid, "action": action, "action_mask": action_mask, "labelled": labelled}
    return {k: v.to(device) for k, v in batch.items()}


# --- components -----------------------------------------------------------------------------------------------
def bench_dpflow(bench: Bench, tiny: bool) -> None:
    from flow_extraction.config import FlowConfig
    from pipelines.flow import make_backends

    cuda = bench.device.startswith("cuda")
    h, w = (96, 128) if tiny else (768, 640)
    batches = (1, 2) if tiny else (1, 4, 8)
    size = f"{h}x{w} ({h * w / 1e6:.2f} MP)"
    t0 = time.perf_counter()
    try:
        # the model itself at the sizes below: flow_size = the canvas, so the stage's down-scaling wrapper
        # (ScaledBackend, for the default 192×160) is not put around it
        fc = FlowConfig(backend="dpflow", dpflow_checkpoint=None, dpflow_random_init=True, batch_size=batches[0])
        fc = dataclasses.replace(fc, flow_size=list(fc.working_size))
        backend = make_backends(dataclasses.asdict(fc)).frames  # device "auto": CUDA when present, fp16 there
    except Exception as exc:  # noqa: BLE001
        bench.error("dpflow", exc, size)
        return
    info = backend.describe()
    print(f"dpflow backend built in {time.perf_counter() - t0:.1f} s: {info}", flush=True)
    if backend.device != bench.device.split(":")[0] and not (cuda and backend.device.startswith("cuda")):
        print(f"WARNING: dpflow picked device {backend.device}, the check runs on {bench.device}", flush=True)
    first, second = smooth_pairs(max(batches), h, w)
    for b in batches:
        backend.batch_size = b  # what FlowConfig.batch_size sets; one model call per compute() below
        bench.row("dpflow", b, size, backend.precision, lambda b=b: backend.compute(first[:b], second[:b]), items=b,
                  unit="pairs/s", note="random init, make_backends", device=backend.device, need_s=10,
                  min_iters=1 if tiny else 3)
    if cuda and not tiny:
        # the pipeline's working canvas (384×320), batch 8 = FlowConfig's default batch_size
        f2, s2 = smooth_pairs(8, 384, 320, seed=1)
        backend.batch_size = 8
        bench.row("dpflow", 8, "384x320 (0.12 MP)", backend.precision, lambda: backend.compute(f2, s2), items=8,
                  unit="pairs/s", note="working canvas", device=backend.device, need_s=10)
        del backend
        torch.cuda.empty_cache()
        try:
            from flow_extraction.dpflow import DPFlowBackend

            fp32 = DPFlowBackend(None, allow_random=True, fp16=False, batch_size=1)
        except Exception as exc:  # noqa: BLE001
            bench.error("dpflow", exc, size)
            return
        bench.row("dpflow", 1, size, fp32.precision, lambda: fp32.compute(first[:1], second[:1]), items=1,
                  unit="pairs/s", note="fp32 for comparison", device=fp32.device, need_s=10)


def bench_vae_and_label(bench: Bench, tiny: bool, tmp: Path) -> None:
    from latent_action_vae.model import LatentActionVAE
    from latent_action_vae.train import CHECKPOINT_KIND, train_step
    from flow_extraction.config import FlowConfig
    from latent_action_vae.config import VAEConfig

    dev = bench.device
    vc = VAEConfig()
    sh, sw = FlowConfig().store_size  # the stored flow (96×80) that training and labelling read
    model, opt = None, None
    try:
        torch.manual_seed(vc.seed)  # as latent_action_vae.train.build
        model = LatentActionVAE(vc).to(dev)
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=vc.lr,
                                weight_decay=vc.weight_decay)
        print(f"vae: {model.describe()['params']:,} parameters, token shape {model.token_shape}", flush=True)
    except Exception as exc:  # noqa: BLE001
        bench.error("vae-train", exc)
    if model is not None:
        for b in ((8,) if tiny else (vc.batch_size, 256)):
            batch = vae_batch(vc, b, sh, sw, dev)
            step = iter(range(10**9))
            bench.row("vae-train", b, f"{sh}x{sw}->{vc.image_size}^2", "fp32",
                      lambda batch=batch: train_step(model, opt, batch, vc, next(step)), items=b, unit="samples/s",
                      note="train_step" + (" (default batch)" if b == vc.batch_size else ""), warmup=2)

    # labelling: the label stage's encoder loop on the device (pipelines.label.label_item, moved to `dev`)
    n_pairs = 256 if tiny else 4096
    flow = (np.random.default_rng(0).standard_normal((n_pairs, 2, sh, sw)) * 4).astype(np.float16)
    valid = np.ones((n_pairs, sh, sw), bool)
    if model is not None:
        model.eval()

        def encode_all():
            mus = []
            with torch.inference_mode():
                for i in range(0, n_pairs, 128):
                    x, _, _ = model.prepare(torch.from_numpy(flow[i:i + 128].astype(np.float32)).to(dev),
                                            torch.from_numpy(valid[i:i + 128]).to(dev))
                    mus.append(model.encode(x)[0].cpu().numpy())
            return np.concatenate(mus)

        bench.row("label-encode", 128, f"{sh}x{sw}->{vc.image_size}^2", "fp32", encode_all, items=n_pairs,
                  unit="pairs/s", note=f"prepare+encode, {n_pairs} pairs, host<->device incl.")

    # the real stage function, on CPU as the label stage runs it (load_labeller has no device setting)
    try:
        from flow_extraction.artifacts import write_flow_artifact
        from pipelines.label import label_item, load_labeller

        cpu_model = LatentActionVAE(vc) if model is None else model.to("cpu")
        ckpt = tmp / "vae.pt"
        torch.save({"kind": CHECKPOINT_KIND, "model": cpu_model.state_dict(),
                    "vae_config": dataclasses.asdict(vc)}, ckpt)
        n_item = 128 if tiny else 512
        pairs = np.stack([np.arange(n_item), np.arange(n_item) + 5], 1)
        art = tmp / "item.flow.npz"
        write_flow_artifact(art, flow[:n_item], valid[:n_item], pairs,
                            {"fps": 25.0, "n_frames": n_item + 5, "delta_frames": 5, "grid": "native",
                             "backend": "synthetic"})
        labeller = load_labeller(str(ckpt), threads=1)  # runner.torch_threads default
        task = {"item_id": "bench/0", "flow_path": str(art), "checkpoint": str(ckpt), "checkpoint_sha": "bench",
                "out_path": str(tmp / "item.latent.npz")}
    except Exception as exc:  # noqa: BLE001
        bench.error("label-item", exc)
        return
    threads = torch.get_num_threads()
    bench.row("label-item", 128, f"{sh}x{sw}->{vc.image_size}^2", "fp32", lambda: label_item(task, labeller),
              items=n_item, unit="pairs/s", note=f"pipelines.label.label_item, 1 torch thread, {n_item} pairs",
              device="cpu", min_iters=2)
    torch.set_num_threads(threads)


def bench_motus(bench: Bench, tiny: bool) -> None:
    from training_hooks.motus import Motus
    from training_hooks.train import (SyntheticMotion, TrainConfig, derive_seed, lr_multiplier, make_optimizer)

    dev = bench.device
    cfg = TrainConfig()
    try:
        torch.manual_seed(cfg.seed)  # as training_hooks.train.build_model
        model = Motus(cfg.model).to(dev).train()
        opt = make_optimizer(model, cfg)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_multiplier(cfg))
        info = model.describe()
        print(f"motus: {info['params']:,} parameters, tokens {info['tokens']}", flush=True)
    except Exception as exc:  # noqa: BLE001
        bench.error("motus-train", exc)
        return
    sizes = (2,) if tiny else (cfg.batch_size, 32)
    data = SyntheticMotion(max(sizes), cfg.model, seed=0)
    H, W = data.image_size
    for b in sizes:
        batch = {k: v.to(dev) for k, v in data.batch(range(b)).items()}
        counter = iter(range(10**9))

        def step(batch=batch):
            s = next(counter)
            generator = torch.Generator().manual_seed(derive_seed(cfg.seed, s, 0))
            losses = model(batch, generator=generator)
            opt.zero_grad(set_to_none=True)
            losses["loss"].backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            sched.step()

        bench.row("motus-train", b, f"{H}x{W}->{cfg.model.work_size[0]}x{cfg.model.work_size[1]}", "fp32", step,
                  items=b, unit="samples/s", note="train loop body" + (" (default batch)" if b == cfg.batch_size else ""),
                  warmup=2)


def bench_threads() -> int:
    return max(1, min(os.cpu_count() or 1, 16))


def prepare_diffusers() -> str:
    """Import diffusers' AutoencoderDC; if that fails inside diffusers' optional transformers/peft integration
    (versions of the machine's own packages), retry once with that integration off: the VAE needs neither."""
    try:
        from diffusers import AutoencoderDC  # noqa: F401

        return "ok"
    except Exception as exc:  # noqa: BLE001
        first = error_note(exc)
    for name in [m for m in sys.modules if m == "diffusers" or m.startswith("diffusers.")]:
        del sys.modules[name]
    try:
        import diffusers.utils.import_utils as iu

        iu._transformers_available = False
        iu._peft_available = False
        from diffusers import AutoencoderDC  # noqa: F401,F811

        return f"ok with transformers/peft integration off (bench only), after {first}"
    except Exception as exc:  # noqa: BLE001
        return f"FAILED: {first}; retry: {error_note(exc)}"


# --- report ---------------------------------------------------------------------------------------------------
def environment(device: str) -> list[str]:
    lines = [f"python {platform.python_version()} ({sys.executable}), torch {torch.__version__}, "
             f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None}, "
             f"{os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}"]
    if device.startswith("cuda"):
        p = torch.cuda.get_device_properties(0)
        lines.append(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, capability {p.major}.{p.minor}, "
                     f"{p.multi_processor_count} SMs; TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, "
                     f"TF32 cuDNN {torch.backends.cudnn.allow_tf32}, cudnn.benchmark {torch.backends.cudnn.benchmark}")
    else:
        lines.append("GPU: none (--cpu)")
    vers = []
    for name in ("numpy", "ptlflow", "timm", "diffusers", "lightning", "huggingface_hub", "cv2", "duckdb"):
        try:
            mod = importlib.import_module(name)
            where = "carried" if "gpucheck-site" in (getattr(mod, "__file__", "") or "") else "env"
            vers.append(f"{name} {getattr(mod, '__version__', '?')} ({where})")
        except Exception as exc:  # noqa: BLE001
            vers.append(f"{name} MISSING ({type(exc).__name__})")
    vers.append(f"av {AV_STATUS}")
    vers.append(f"AutoencoderDC import {prepare_diffusers()}")
    lines.append("packages: " + ", ".join(vers))
    return lines


def format_table(rows: list[dict]) -> str:
    widths = {c: max(len(c), *(len(str(r[c])) for r in rows)) for c in COLUMNS}
    out = ["| " + " | ".join(c.ljust(widths[c]) for c in COLUMNS) + " |",
           "|" + "|".join("-" * (widths[c] + 2) for c in COLUMNS) + "|"]
    out += ["| " + " | ".join(str(r[c]).ljust(widths[c]) for c in COLUMNS) + " |" for r in rows]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cpu", action="store_true", help="tiny sizes on CPU (a check that every path runs)")
    ap.add_argument("--budget-s", type=float, default=None, help="stop starting new rows after this (default 300)")
    ap.add_argument("--min-s", type=float, default=None, help="seconds timed per row at least (default 3; --cpu 1)")
    ap.add_argument("--only", default="dpflow,vae,motus", help="comma list of dpflow, vae, motus")
    ap.add_argument("--out", default=None, help="also write the table here (default $OUT/gpu_check.txt if OUT is set)")
    args = ap.parse_args()
    t_start = time.perf_counter()
    if args.cpu:
        device = "cpu"
        torch.set_num_threads(1)  # a shared 2-core box: one thread (oversubscription slows torch badly)
    else:
        if not torch.cuda.is_available():
            print(f"ERROR: CUDA is not available (torch {torch.__version__}); use --cpu for the CPU check",
                  file=sys.stderr)
            return 2
        device = "cuda"
        torch.set_num_threads(bench_threads())
    bench = Bench(device, args.budget_s or (240 if args.cpu else 300), args.min_s or (1.0 if args.cpu else 3.0))
    env = environment(device)
    print("\n".join(env), flush=True)
    only = set(args.only.split(","))
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as tmp:
        for name, fn in (("dpflow", lambda: bench_dpflow(bench, args.cpu)),
                         ("vae", lambda: bench_vae_and_label(bench, args.cpu, Path(tmp))),
                         ("motus", lambda: bench_motus(bench, args.cpu))):
            if name not in only:
                continue
            t0 = time.perf_counter()
            try:
                fn()
            except Exception as exc:  # noqa: BLE001 - an import or set-up failure of one component
                bench.error(name, exc)
            print(f"[{name}] {time.perf_counter() - t0:.1f} s", flush=True)
            if device.startswith("cuda"):
                torch.cuda.empty_cache()
    table = format_table(bench.rows)
    dpflow_fp16 = [float(r["items/s"]) for r in bench.rows
                   if r["component"] == "dpflow" and r["dtype"] == "fp16" and "MP)" in r["size"]
                   and r["size"].startswith(("768x640",)) and r["items/s"]]
    verdict = ""
    if dpflow_fp16:
        best = max(dpflow_fp16)
        verdict = f"DPFlow fp16 at 768x640 (0.49 MP): best {best:.2f} pairs/s; target >= 10: " + \
                  ("MET" if best >= 10 else "NOT MET")
    text = "\n".join(["# gpu_check" + (" --cpu" if args.cpu else ""), *env, "", table, "", verdict,
                      f"total wall {time.perf_counter() - t_start:.1f} s"]).rstrip() + "\n"
    print("\n" + text, flush=True)
    out = args.out or (os.path.join(os.environ["OUT"], "gpu_check.txt") if os.environ.get("OUT") else None)
    if out:
        Path(out).parent.mkdir(parents=True, exist_ok=True)
        Path(out).write_text(text)
        Path(out).with_suffix(".json").write_text(json.dumps({"env": env, "rows": bench.rows}, indent=1))
    return 0 if all("ERROR" not in r["note"] for r in bench.rows) else 1


if __name__ == "__main__":
    sys.exit(main())
