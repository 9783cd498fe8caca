"""Held-out evaluation of the compact Motus: action MSE of VLA and IDM (one sample and the posterior mean), IDM on
swapped video, the zero and per-embodiment-mean baselines (and, where the windows carry a state as wide as the
action, holding that state), WM video; overall, per tier and per embodiment."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F

from training_hooks.motus import Motus

Batch = dict[str, torch.Tensor]


def window_groups(batch: Batch) -> list[str]:
    """Each window's embodiment for the per-embodiment baseline: the batch's `embodiment` where it has one, else
    the source named by its item id (`source/native_id`; the shard loader's batches carry tier and item id), else
    "all"."""
    n = batch["action_sequence"].shape[0]
    names = batch.get("embodiment") or [""] * n
    ids = batch.get("item_id") or [""] * n
    return [e or (i.split("/")[0] if i else "") or "all" for e, i in zip(names, ids)]


class ActionMeans:
    """Running per-embodiment means of the training targets (each window's actions averaged over its steps): the
    per-embodiment-mean baseline every evaluation prints. Kept in checkpoints, so a resumed run keeps them."""

    def __init__(self, state: dict[str, list] | None = None):
        self.sums = {k: (torch.tensor(v[0]), int(v[1])) for k, v in (state or {}).items()}

    def add(self, batch: Batch) -> None:
        per_window = batch["action_sequence"].detach().float().mean(dim=1).cpu()
        for group, row in zip(window_groups(batch), per_window):
            total, n = self.sums.get(group, (torch.zeros_like(row), 0))
            self.sums[group] = (total + row, n + 1)

    def means(self) -> dict[str, torch.Tensor]:
        out = {k: total / n for k, (total, n) in self.sums.items()}
        if out:  # windows of an embodiment training never saw get the mean over all
            out[""] = sum(t for t, _ in self.sums.values()) / sum(n for _, n in self.sums.values())
        return out

    def state(self) -> dict[str, list]:
        return {k: [t.tolist(), n] for k, (t, n) in self.sums.items()}


# action errors per evaluation: one sample (eval_steps Euler steps) and the posterior mean E[actions | inputs]
# (the average of `mean_samples` samples of `mean_steps` Euler steps; with mean_samples 1, one step from t=1,
# x0 = ε − v); idm_swapped gives IDM another window's future frames (a model that reads the video gets worse);
# zero, embodiment_mean and hold_state (stage 3: every action = the window's initial state) are the baselines
ACTION_ERRORS = ("vla", "vla_mean", "idm", "idm_mean", "idm_swapped", "zero", "embodiment_mean", "hold_state")


@torch.no_grad()
def posterior_mean(sample, first: torch.Tensor, video: torch.Tensor | None, cond: dict[str, Any], samples: int,
                   steps: int) -> torch.Tensor:
    """E[actions | inputs] of a sampling mode (`model.vla` or `model.idm`): the mean of `samples` samples drawn in
    one batch, each of `steps` Euler steps; `samples` 1 takes one step from t=1 instead (x0 = ε − v), which needs
    the network to pass the noise through exactly and reads high on an undertrained model."""
    if samples <= 1:
        return sample(first, video, num_steps=1, **cond) if video is not None else sample(first, num_steps=1, **cond)
    rep = {k: v.repeat_interleave(samples, 0) if torch.is_tensor(v) else v for k, v in cond.items()}
    inputs = [first.repeat_interleave(samples, 0)] + ([video.repeat_interleave(samples, 0)] if video is not None else [])
    out = sample(*inputs, num_steps=steps, **rep)
    return out.view(first.shape[0], samples, *out.shape[1:]).mean(1)


def evaluate(model: Motus, batches: Iterable[Batch], num_steps: int = 10, seed: int = 0,
             action_means: dict[str, torch.Tensor] | None = None, max_windows: int | None = None,
             mean_samples: int = 8, mean_steps: int = 4) -> dict[str, Any]:
    """Mean squared errors over held-out windows, overall, per tier and per embodiment (`window_groups`): the
    actions of VLA (frame + language) and IDM (+ the clean video), each as one sample and as the posterior mean
    (`posterior_mean`: `mean_samples` samples of `mean_steps` steps averaged),
    IDM on swapped video, the zero and per-embodiment-mean baselines (`action_means`, from training; None: the
    means of these windows), and WM video (from clean actions; at the working resolution, so upsampling blur does
    not count). The sampling noise is seeded, so evaluations at different steps are comparable."""
    model.eval()
    device = next(model.parameters()).device
    g = torch.Generator().manual_seed(seed)
    rows: list[dict[str, Any]] = []
    video_sum, video_count = 0.0, 0
    for batch in batches:
        if max_windows is not None and len(rows) >= max_windows:
            break
        keep = None if max_windows is None else max_windows - len(rows)
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        first, video, actions = batch["first_frame"][:keep], batch["video_frames"][:keep], \
            batch["action_sequence"][:keep].float()
        B = first.shape[0]
        state = batch.get("initial_state")
        cond = {"language": batch["language_embedding"][:keep].float(), "language_mask": batch["language_mask"][:keep],
                "state": state[:keep] if state is not None else None, "generator": g}

        def err(pred: torch.Tensor) -> torch.Tensor:
            return ((pred - actions) ** 2).mean(dim=(1, 2))

        errors = {"vla": err(model.vla(first, num_steps=num_steps, **cond)),
                  "vla_mean": err(posterior_mean(model.vla, first, None, cond, mean_samples, mean_steps)),
                  "idm": err(model.idm(first, video, num_steps=num_steps, **cond)),
                  "idm_mean": err(posterior_mean(model.idm, first, video, cond, mean_samples, mean_steps)),
                  "zero": err(torch.zeros_like(actions))}
        if state is not None and state.shape[-1] == actions.shape[-1]:
            # every action = the window's initial state: the bar for absolute joint targets (normalised units)
            errors["hold_state"] = err(state[:keep, None, :].float().expand_as(actions))
        if B > 1:  # another window's future frames (the next one in the batch)
            errors["idm_swapped"] = err(posterior_mean(model.idm, first, video.roll(1, dims=0), cond, mean_samples,
                                                       mean_steps))
        target = model.patches_to_frames(model.frames_to_patches(video))
        wm = model.wm(first, actions, full_size=False, num_steps=num_steps, **cond)
        video_sum += F.mse_loss(wm, target, reduction="sum").item()
        video_count += target.numel()
        tiers = batch.get("tier")
        for i, group in enumerate(window_groups(batch)[:B]):
            row = {k: v[i].item() for k, v in errors.items()}
            row.update(tier=int(tiers[i]) if tiers is not None else -1, embodiment=group, actions=actions[i].cpu())
            rows.append(row)
    model.train()
    if not rows:
        return {"samples": 0}
    means = action_means
    if not means:  # no training statistics: the means of these windows
        acc = ActionMeans()
        for row in rows:
            acc.add({"action_sequence": row["actions"][None], "embodiment": [row["embodiment"]]})
        means = acc.means()
    for row in rows:
        actions = row.pop("actions")
        row["embodiment_mean"] = ((actions - means.get(row["embodiment"], means[""])) ** 2).mean().item()

    def summary(selected: list[dict[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in ACTION_ERRORS:
            values = [r[key] for r in selected if key in r]
            if values:
                out[f"{key}_action_mse"] = sum(values) / len(values)
        return {**out, "samples": len(selected)}

    result = summary(rows)
    result["wm_video_mse"] = video_sum / video_count
    for name, key in (("by_tier", "tier"), ("by_embodiment", "embodiment")):
        result[name] = {str(v): summary([r for r in rows if r[key] == v]) for v in sorted({r[key] for r in rows})}
    return result


def format_eval(result: dict[str, Any]) -> str:
    """An evaluation as a small table: action MSE of each mode and baseline, overall, per tier and per embodiment."""
    if not result.get("samples"):
        return "eval: no held-out windows"
    keys = [k for k in ACTION_ERRORS if f"{k}_action_mse" in result]
    heads = {"vla": "VLA 1x", "vla_mean": "VLA mean", "idm": "IDM 1x", "idm_mean": "IDM mean",
             "idm_swapped": "IDM swap", "zero": "zero", "embodiment_mean": "emb mean", "hold_state": "hold state"}
    baselines = " / ".join(heads[k] for k in ("zero", "embodiment_mean", "hold_state") if k in keys)
    lines = [f"eval: action MSE on {result['samples']} held-out windows (1x: one sample; mean: posterior mean; "
             f"swap: IDM given another window's video; {baselines}: baselines); WM video MSE "
             f"{result.get('wm_video_mse', float('nan')):.4f}",
             f"  {'':<24}{'n':>5}" + "".join(f"{heads[k]:>10}" for k in keys)]
    groups = [("all", result)]
    for name, label in (("by_tier", "tier {}"), ("by_embodiment", "{}")):
        breakdown = result.get(name, {})
        if len(breakdown) > 1:  # one group would repeat the "all" row
            groups += [(label.format(k), v) for k, v in breakdown.items()]
    for name, values in groups:
        cells = "".join(f"{values[f'{k}_action_mse']:>10.4f}" if f"{k}_action_mse" in values else f"{'-':>10}"
                        for k in keys)
        lines.append(f"  {name[:24]:<24}{values['samples']:>5}{cells}")
    return "\n".join(lines)
