"""The report's figures, drawn with matplotlib's Agg backend (no display needed) and returned as PNG bytes."""

from __future__ import annotations

import io
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402  (after choosing the backend)
import numpy as np  # noqa: E402

PALETTE = plt.get_cmap("tab10").colors


def source_colours(sources: Sequence[str]) -> dict[str, tuple]:
    return {s: PALETTE[i % len(PALETTE)] for i, s in enumerate(sorted(sources))}


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def stacked_histogram(values: Mapping[str, Sequence[float]], title: str, xlabel: str, colours: Mapping[str, tuple],
                      bins: int = 20, log_x: bool = False) -> bytes:
    """One histogram per source, stacked, sharing bins."""
    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    data = {s: np.asarray(v, float) for s, v in values.items() if len(v)}
    everything = np.concatenate(list(data.values())) if data else np.zeros(1)
    if log_x:
        positive = everything[everything > 0]
        lo = float(positive.min()) / 1.5 if len(positive) else 1e-3
        edges = np.geomspace(lo, max(everything.max(), lo * 10), bins + 1)
        ax.set_xscale("log")
        data = {s: np.clip(v, lo, None) for s, v in data.items()}
    else:
        lo, hi = float(everything.min()), float(everything.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1, bins + 1)
    if data:
        ax.hist(list(data.values()), bins=edges, stacked=True, label=list(data), color=[colours[s] for s in data])
        ax.legend(fontsize=7, frameon=False)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=8)
    ax.set_ylabel("items", fontsize=8)
    ax.tick_params(labelsize=7)
    return _png(fig)


def resolution_scatter(points: Mapping[str, Sequence[tuple[int, int]]], colours: Mapping[str, tuple]) -> bytes:
    """Width × height of every item, one colour per source (sizes repeat, so markers are hollow)."""
    fig, ax = plt.subplots(figsize=(5.2, 3.0))
    for source, wh in points.items():
        if wh:
            w, h = np.asarray(wh).T
            ax.scatter(w, h, s=40, facecolors="none", edgecolors=[colours[source]], label=f"{source} ({len(wh)})")
    ax.set_title("resolution", fontsize=10)
    ax.set_xlabel("width (px)", fontsize=8)
    ax.set_ylabel("height (px)", fontsize=8)
    ax.tick_params(labelsize=7)
    if any(points.values()):
        ax.legend(fontsize=7, frameon=False, loc="center left", bbox_to_anchor=(1, 0.5))
    return _png(fig)


def per_dim_spread(stats: Mapping[str, Mapping[str, Sequence[float]]], title: str, colours: Mapping[str, tuple]) -> bytes:
    """Per dim, each source's mean ± std side by side: how sources differ on every latent dim."""
    fig, ax = plt.subplots(figsize=(10.5, 3.2))
    sources = list(stats)
    width = 0.8 / max(len(sources), 1)
    for k, source in enumerate(sources):
        mean, std = np.asarray(stats[source]["mean"]), np.asarray(stats[source]["std"])
        x = np.arange(len(mean)) - 0.4 + (k + 0.5) * width
        ax.errorbar(x, mean, yerr=std, fmt="o", ms=3, lw=1, color=colours[source], label=source)
    ax.axhline(0, color="#999", lw=0.5)
    ax.set_xticks(range(len(next(iter(stats.values()))["mean"])) if stats else [])
    ax.set_xlabel("dim", fontsize=8)
    ax.set_title(title, fontsize=10)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, frameon=False, ncol=min(len(sources), 8), loc="upper center", bbox_to_anchor=(0.5, -0.14))
    return _png(fig)


def action_boxes(per_embodiment: Mapping[str, tuple[list[str], np.ndarray]]) -> bytes:
    """Per embodiment, a box per action dim (whiskers at the 1st and 99th percentiles)."""
    n = len(per_embodiment)
    fig, axes = plt.subplots(n, 1, figsize=(10.5, 2.3 * n), squeeze=False)
    for ax, (embodiment, (names, actions)) in zip(axes[:, 0], per_embodiment.items()):
        ax.boxplot([actions[:, d] for d in range(actions.shape[1])], whis=(1, 99), showfliers=False)
        ax.set_xticks(range(1, len(names) + 1), [n.replace("_", " ") for n in names], rotation=30, ha="right",
                      fontsize=6)
        ax.set_title(f"{embodiment}: {len(actions)} action rows", fontsize=9)
        ax.tick_params(axis="y", labelsize=7)
    fig.tight_layout()
    return _png(fig)
