"""Per-embodiment latent normalisation: the shard job writes train-split latent stats per source next to the global
ones, the loader maps each window with its embodiment's stats (`loader.latent_normalise_by: embodiment`), a source
without train stats falls back to the global map (logged), and a shard set written before is refused with the fix."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from manifests.shard_format import write_tar
from samples.shard_sets import clip_members, decode_index, index_coded_clip, write_shard_set
from pipelines.shard import ColumnStats, train_stats
from training_hooks.loader import LoaderConfig, make_loader

H, W = 96, 80
SCALE = {"arm": 1.0, "hand": 10.0}  # the "hand" source's latent rows are 10× the "arm" source's


def _clips():
    """Two embodiments of index-coded clips (latent row j = j · SCALE), one val clip of a third source."""
    clips = []
    for source, n in (("arm", 3), ("hand", 2)):
        for k in range(n):
            clip = index_coded_clip(f"{source}/ep{k}", 40 + 10 * k, (H, W))
            clip.latent = clip.latent * SCALE[source]
            clips.append(clip)
    clips.append(index_coded_clip("other/ep0", 30, (H, W), split="val"))
    return clips


def _stats(tmp_path, clips):
    """The shard job's statistics, from per-item sample tars as the shard stage writes them."""
    samples = []
    for clip in clips:
        path = tmp_path / "samples" / f"{clip.item_id.replace('/', '_')}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tar(path, clip_members(clip))
        samples.append({"split": clip.split, "path": path, "item_id": clip.item_id})
    return train_stats(samples)


@pytest.fixture(scope="module")
def shard_set(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("latnorm")
    clips = _clips()
    stats = _stats(tmp, clips)
    root = tmp / "shards"
    write_shard_set(root, clips, samples_per_shard=2, stats=stats)
    return root, clips, stats


def test_the_shard_job_writes_train_latent_stats_per_embodiment_and_keeps_the_global_ones(shard_set):
    _, clips, stats = shard_set
    per = stats["latent_action_by_embodiment"]
    assert sorted(per) == ["arm", "hand"]  # the val-only source has none
    for source, s in per.items():
        rows = np.concatenate([c.latent for c in clips if c.item_id.startswith(source + "/")])
        assert s["items"] == (3 if source == "arm" else 2) and s["rows"] == len(rows)
        alone = ColumnStats()  # the job's streaming estimator (checked against numpy in test_shards.py) on these rows
        alone.add(rows)
        alone.add_to_histogram(rows)
        want = alone.describe()
        assert s["q01"] == want["q01"] and s["q99"] == want["q99"]
        assert s["mean"][3] == pytest.approx(rows[:, 3].mean(), rel=1e-6)
        assert s["q99"][0] == pytest.approx(np.quantile(rows[:, 0], 0.99), abs=1.0 * SCALE[source])
    # the hand's spread is 10× the arm's on the same frame indices; the global stats pool both (train only)
    assert per["hand"]["q99"][0] > 5 * per["arm"]["q99"][0]
    pooled = np.concatenate([c.latent for c in clips if c.split == "train"])
    assert stats["latent_action"]["items"] == 5 and stats["latent_action"]["rows"] == len(pooled)
    assert stats["latent_action"]["mean"][0] == pytest.approx(pooled[:, 0].mean(), rel=1e-6)


def _windows(root, split, by, n_batches=4):
    """(item id, raw latent rows, normalised rows) of the windows of `split`; raw rows from the frame index code."""
    cfg = LoaderConfig(height=H, width=W, latent_normalise_by=by, windows_per_clip=4, shuffle_buffer=1)
    out = []
    for b in make_loader(root, split, cfg, batch_size=2, drop_last=False):
        for k, item in enumerate(b["item_id"]):
            c = int(decode_index(b["first_frame"][k].numpy()))
            n = int(item.split("ep")[1]) * 10 + (40 if not item.startswith("other") else 30)
            raw = np.array([min(c + i * 6, n - 2) for i in range(8)], np.float32) * SCALE.get(item.split("/")[0], 1.0)
            out.append((item, raw, b["action_sequence"][k, :, 0].numpy()))
    return out


def test_the_loader_maps_each_window_with_its_embodiments_stats(shard_set):
    root, _, stats = shard_set
    per, pooled = stats["latent_action_by_embodiment"], stats["latent_action"]

    def mapped(raw, s):
        lo, hi = s["q01"][0], s["q99"][0]
        return np.clip((raw - (lo + hi) / 2) * 2 / (hi - lo), -1.5, 1.5)

    seen = set()
    for item, raw, got in _windows(root, "train", "embodiment"):
        source = item.split("/")[0]
        seen.add(source)
        np.testing.assert_allclose(got, mapped(raw, per[source]), atol=1e-4)
    assert seen == {"arm", "hand"}
    for item, raw, got in _windows(root, "train", "global"):  # the default: one map for all
        np.testing.assert_allclose(got, mapped(raw, pooled), atol=1e-4)
    # per embodiment, both sources span about −1..1; globally the arm's windows sit in a corner of the range
    by_emb = {s: np.concatenate([g for i, _, g in _windows(root, "train", "embodiment") if i.startswith(s)])
              for s in ("arm", "hand")}
    assert by_emb["arm"].max() - by_emb["arm"].min() > 1.5 and by_emb["hand"].max() - by_emb["hand"].min() > 1.5
    arm_global = np.concatenate([g for i, _, g in _windows(root, "train", "global") if i.startswith("arm")])
    assert arm_global.max() - arm_global.min() < 0.5


def test_a_source_without_train_stats_falls_back_to_the_global_map_with_a_warning(shard_set, caplog):
    root, _, stats = shard_set
    pooled = stats["latent_action"]
    got = _windows(root, "val", "embodiment")
    assert got and all(item.startswith("other/") for item, _, _ in got)
    lo, hi = pooled["q01"][0], pooled["q99"][0]
    for _, raw, norm in got:
        np.testing.assert_allclose(norm, np.clip((raw - (lo + hi) / 2) * 2 / (hi - lo), -1.5, 1.5), atol=1e-4)
    assert "no train-split latent stats for embodiment 'other'" in caplog.text
    assert caplog.text.count("no train-split latent stats for embodiment 'other'") == 1  # once, not per window


def test_an_old_shard_set_is_refused_with_the_fix_and_still_loads_globally(shard_set, tmp_path):
    root, clips, stats = shard_set
    old = {k: v for k, v in stats.items() if k != "latent_action_by_embodiment"}
    write_shard_set(tmp_path / "old", clips, samples_per_shard=2, stats=old)
    cfg = LoaderConfig(height=H, width=W, latent_normalise_by="embodiment")
    with pytest.raises(ValueError) as err:
        make_loader(tmp_path / "old", "train", cfg, batch_size=2)
    message = str(err.value)
    assert str(tmp_path / "old" / "index.json") in message and "latent_action_by_embodiment" in message
    assert "`pyramid shard`" in message and "latent_normalise_by: global" in message
    batch = next(iter(make_loader(tmp_path / "old", "train", LoaderConfig(height=H, width=W), batch_size=2)))
    assert batch["action_sequence"].shape == (2, 8, 14) and torch.isfinite(batch["action_sequence"]).all()
    # without normalisation the grouping does not matter
    none = LoaderConfig(height=H, width=W, normalise="none", latent_normalise_by="embodiment")
    assert next(iter(make_loader(tmp_path / "old", "train", none, batch_size=2)))["action_sequence"].abs().max() > 1.5
    with pytest.raises(ValueError, match="latent_normalise_by 'source' is not one of"):
        make_loader(root, "train", LoaderConfig(height=H, width=W, latent_normalise_by="source"), batch_size=2)
