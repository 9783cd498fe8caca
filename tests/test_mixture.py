"""The pyramid as a mixture: tier/source weights in the shard loader give the weighted proportions whatever the
groups' sizes, the default still mixes by clip count, bad weights are clear errors, and the trainer logs the
realised mixture. Real shards (samples/shard_sets.py), small index-coded clips."""

from __future__ import annotations

import csv
import json
from collections import Counter

import numpy as np
import pytest
import torch

from samples.shard_sets import LANG_DIM, index_coded_clip, write_shard_set
from training_hooks.loader import LoaderConfig, make_loader

torch.set_num_threads(1)

H, W = 32, 32
SIZES = {"big": 16, "mid": 4, "tiny": 1}  # clips per source: by count 0.76 / 0.19 / 0.05
WEIGHTS = {"big": 0.5, "mid": 0.3, "tiny": 0.2}
TIER = {"big": 1, "mid": 3, "tiny": 4}


def cfg(**kw) -> LoaderConfig:
    return LoaderConfig(**{"height": H, "width": W, "num_video_frames": 2, "video_step": 2, "shuffle_buffer": 8, **kw})


@pytest.fixture(scope="module")
def pyramid(tmp_path_factory):
    """21 train clips of 3 sources (tiers 1, 3, 4), interleaved over 6 shards, so every shard mixes sources."""
    clips = []
    for k in range(max(SIZES.values())):
        for source, n in SIZES.items():
            if k < n:
                clips.append(index_coded_clip(f"{source}/{k:03d}", 12, (H, W), tier=TIER[source], source=source))
    clips.append(index_coded_clip("big/val", 12, (H, W), tier=1, source="big", split="val"))
    root = tmp_path_factory.mktemp("mixture") / "shards"
    write_shard_set(root, clips, samples_per_shard=4)
    return root


def sources(loader, windows: int) -> Counter:
    seen: Counter = Counter()
    for batch in loader:
        seen.update(i.split("/")[0] for i in batch["item_id"])
        if sum(seen.values()) >= windows:
            return seen
    raise AssertionError(f"the loader ended after {sum(seen.values())} windows")


def shares(counts: Counter) -> dict[str, float]:
    total = sum(counts.values())
    return {k: counts[k] / total for k in SIZES}


def test_source_weights_set_the_proportions_whatever_the_sizes(pyramid):
    got = shares(sources(make_loader(pyramid, "train", cfg(source_weights=WEIGHTS), batch_size=8), 800))
    # 800 draws: one standard deviation of a share is ≤ 0.018; by clip count they would be 0.76 / 0.19 / 0.05
    for source, weight in WEIGHTS.items():
        assert got[source] == pytest.approx(weight, abs=0.05), got


def test_tier_weights_hold_with_two_worker_threads(pyramid):
    tier_weights = {1: 1.0, "3": 1.0, "L4": 2.0}  # shares 0.25 / 0.25 / 0.5
    loader = make_loader(pyramid, "train", cfg(tier_weights=tier_weights), batch_size=8, num_workers=2)
    tiers: Counter = Counter()
    for batch in loader:
        tiers.update(batch["tier"].tolist())
        if sum(tiers.values()) >= 800:
            break
    total = sum(tiers.values())
    assert tiers[1] / total == pytest.approx(0.25, abs=0.05)
    assert tiers[3] / total == pytest.approx(0.25, abs=0.05)
    assert tiers[4] / total == pytest.approx(0.5, abs=0.05)


def test_unnamed_groups_get_no_windows(pyramid):
    got = sources(make_loader(pyramid, "train", cfg(source_weights={"mid": 1, "tiny": 1}), batch_size=4), 200)
    assert got["big"] == 0 and got["mid"] > 60 and got["tiny"] > 60


def test_default_mixes_by_clip_count(pyramid):
    """No weights: one epoch gives every clip once, so each source's share is its clip count's."""
    got = sources(make_loader(pyramid, "train", cfg(), batch_size=1, drop_last=False), sum(SIZES.values()))
    assert dict(got) == SIZES
    resampled = shares(sources(make_loader(pyramid, "train", cfg(resampled=True), batch_size=8), 800))
    total = sum(SIZES.values())
    for source, n in SIZES.items():  # endless shard draws weighted by sample count: still by clip count
        assert resampled[source] == pytest.approx(n / total, abs=0.06), resampled


def test_bad_weights_are_clear_errors(pyramid):
    with pytest.raises(ValueError, match=r"'nope'.*no clips in the train split.*big, mid, tiny"):
        make_loader(pyramid, "train", cfg(source_weights={"big": 1, "nope": 1}), batch_size=4)
    with pytest.raises(ValueError, match=r"tier\(s\) 2 with no clips"):
        make_loader(pyramid, "train", cfg(tier_weights={2: 1}), batch_size=4)
    with pytest.raises(ValueError, match=r"source_weights\['mid'\] is negative"):
        cfg(source_weights={"big": 1, "mid": -0.5}).validate()
    with pytest.raises(ValueError, match="all zero"):
        cfg(source_weights={"big": 0, "mid": 0.0}).validate()
    with pytest.raises(ValueError, match="not a pyramid tier"):
        cfg(tier_weights={7: 1}).validate()
    with pytest.raises(ValueError, match="not both"):
        cfg(tier_weights={1: 1}, source_weights={"big": 1}).validate()


def test_trainer_logs_the_realised_mixture(pyramid, tmp_path):
    """metrics.csv gets each tier's share per row; mixture.json, the result and the checkpoint the counts."""
    from training_hooks.motus_config import MotusConfig
    from training_hooks.train import TrainConfig, shard_batches, train

    model = MotusConfig(work_size=[16, 16], patch_size=8, n_layers=1, n_heads=2, head_dim=8, d_video=16,
                        d_action=16, d_und=16, text_dim=LANG_DIM, num_video_frames=2, action_dim=14, rope_dims=4)
    tc = TrainConfig(model=model, steps=30, batch_size=8, warmup_steps=2, log_every=10, checkpoint_every=30,
                     eval_every=100, eval_windows=2, eval_steps=1)
    loader = {"height": H, "width": W, "video_step": 2, "max_text_len": 4, "shuffle_buffer": 8,
              "tier_weights": {1: 0.5, 3: 0.3, 4: 0.2}}
    make_train, make_val = shard_batches(pyramid, loader, tc, num_workers=0)
    result = train(tc, make_train, make_val, tmp_path / "run", progress=False)
    windows = 30 * 8
    tiers = result.mixture["tier"]
    assert sum(v["windows"] for v in tiers.values()) == windows
    assert tiers["1"]["share"] == pytest.approx(0.5, abs=0.1) and tiers["4"]["share"] == pytest.approx(0.2, abs=0.1)
    assert {k: v["windows"] for k, v in result.mixture["source"].items()} == \
        {s: tiers[str(TIER[s])]["windows"] for s in SIZES}
    assert json.loads((tmp_path / "run" / "mixture.json").read_text())["tier"] == tiers
    with open(result.metrics_path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert {"tier_1", "tier_3", "tier_4"} <= set(rows[0])
    assert np.isclose(sum(float(rows[-1][f"tier_{k}"]) for k in range(1, 7)), 1.0)
    assert result.eval["samples"] == 2  # the val split is read without weights (it holds one source)


def test_a_weighted_stream_fills_batches_from_fewer_clips(pyramid):
    """Stage 3 on a few target episodes: one clip weighted alone still fills batches of 4 (its stream repeats);
    unweighted, the trainer refuses a train split smaller than a batch."""
    from training_hooks.motus_config import MotusConfig
    from training_hooks.train import TrainConfig, shard_batches

    tc = TrainConfig(model=MotusConfig(text_dim=LANG_DIM, num_video_frames=2), batch_size=4)
    loader = {"height": H, "width": W, "video_step": 2, "shuffle_buffer": 1}
    make_train, _ = shard_batches(pyramid, {**loader, "source_weights": {"tiny": 1}}, tc, num_workers=0)
    batches = make_train(0, 0, 1)
    ids = [i for _ in range(3) for i in next(batches)["item_id"]]
    assert ids == ["tiny/000"] * 12
    few = dict(tc.__dict__, batch_size=32)
    with pytest.raises(ValueError, match="21 train clips.*fewer than batch_size 32"):
        shard_batches(pyramid, loader, TrainConfig(**few), num_workers=0)
