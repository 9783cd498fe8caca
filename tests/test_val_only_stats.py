"""A shard set without train shards (e.g. one SSv2 validation download) still gets latent statistics, from the
splits it has and marked so in index.json; its loader normalises with them; an index written before (no
latent_action stats) makes the loader say exactly what to do instead of a KeyError."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.shard import train_stats
from samples.shard_sets import clip_members, footage_clips, write_shard_set
from training_hooks.loader import LoaderConfig, make_loader
from manifests.shard_format import write_tar


def _samples(tmp_path, clips):
    """The per-item sample tars the shard stage computes statistics from."""
    out = []
    for clip in clips:
        path = tmp_path / "samples" / f"{clip.item_id.replace('/', '_')}.tar"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_tar(path, clip_members(clip))
        out.append({"split": clip.split, "path": path, "item_id": clip.item_id})
    return out


def _clips(splits):
    clips = footage_clips(len(splits), size=(96, 80), n_frames=(30, 40), seed=4)
    for clip, split in zip(clips, splits):
        clip.split = split
    return clips


def test_stats_come_from_train_when_there_is_one_else_from_the_splits_there_are(tmp_path):
    mixed = _clips(["train", "train", "val", "test"])
    stats = train_stats(_samples(tmp_path / "a", mixed))
    assert stats["split"] == "train" and "note" not in stats
    assert stats["latent_action"]["items"] == 2
    assert stats["latent_action"]["rows"] == sum(len(c.latent) for c in mixed[:2])

    val_only = _clips(["val", "test", "val"])
    stats = train_stats(_samples(tmp_path / "b", val_only))
    assert stats["split"] == ["val", "test"] and stats["note"] == "no train shards: statistics from val and test"
    assert stats["latent_action"]["items"] == 3
    pooled = np.concatenate([c.latent for c in val_only])
    np.testing.assert_allclose(stats["latent_action"]["mean"], pooled.mean(0), rtol=1e-4, atol=1e-5)


def test_loader_normalises_a_validation_only_set_and_explains_an_old_index(tmp_path, caplog):
    clips = _clips(["val"] * 3)
    root = tmp_path / "shards"
    write_shard_set(root, clips, samples_per_shard=2, stats=train_stats(_samples(tmp_path, clips)))
    cfg = LoaderConfig(height=80, width=96, num_video_frames=2, video_step=6, action_ratio=1, windows_per_clip=1)
    batch = next(iter(make_loader(root, "val", cfg, batch_size=2, drop_last=False)))
    assert batch["video_frames"].shape[:2] == (2, 2) and batch["action_sequence"].shape == (2, 2, 14)
    stats = json.loads((root / "index.json").read_text())["stats"]["latent_action"]
    # q01/q99 normalisation with the val statistics: every value inside [-1.5, 1.5] (the clip) and not all zero
    assert float(batch["action_sequence"].abs().max()) <= 1.5 and float(batch["action_sequence"].abs().sum()) > 0
    assert stats["items"] == 3
    assert "no train shards: statistics from val" in caplog.text

    # an index written before: stats of the (absent) train split only, no latent_action
    index = json.loads((root / "index.json").read_text())
    index["stats"] = {"split": "train", "actions": {}}
    (root / "index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError) as err:
        make_loader(root, "val", cfg, batch_size=2)
    message = str(err.value)
    assert str(root / "index.json") in message and "its shards hold val split(s)" in message
    assert "rebuild the set with `pyramid shard`" in message and "normalise='none'" in message
    # without normalisation it loads
    batch = next(iter(make_loader(root, "val", LoaderConfig(**{**cfg.__dict__, "normalise": "none"}), batch_size=2)))
    assert batch["action_sequence"].shape == (2, 2, 14)


def test_audit_accepts_val_stats_only_for_a_set_without_train_shards(workdir):
    from catalog import Catalog
    from tests.test_audit import ingested, register_shards, run_checks

    cfg = ingested(workdir)
    with Catalog(cfg.catalog_path) as cat:
        ids = [r["item_id"] for r in cat.items().to_pylist()]
    marked = {"split": ["val"], "note": "no train shards: statistics from val", "latent_action": {"items": len(ids)}}
    root, _ = register_shards(cfg, [("val", ids)], stats=marked)
    out = run_checks(cfg, "normalisation_from_train")["normalisation_from_train"]
    assert not out.failures and f"{root / 'index.json'}: stats.split" in out.checked
    # the same stats beside train shards are a leak
    register_shards(cfg, [("train", ids[:2]), ("val", ids[2:])], stats=marked)
    failures = run_checks(cfg, "normalisation_from_train")["normalisation_from_train"].failures
    assert sorted(failures.values()) == ["computed from val",
                                         f"latent-action stats cover {len(ids)} clips; the train shards hold 2"]
