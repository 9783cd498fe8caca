"""VAE data: action-change normalisation stats, the deterministic streaming pair sampler, and bad-data errors.

The corpus is synthetic but goes through the real file formats and adapters: flow artifacts written with
`write_flow_artifact`, ALOHA actions as a task-agnostic `actions.npy`, SO-100 actions as a RoboTwin HDF5
`joint_action/vector`, read back with `load_actions`. Each stored flow value encodes (item number, pair index)
so a test can check that a batch holds exactly the pairs it claims.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import h5py
import numpy as np

from flow_extraction.frames import native_frame_index
import pytest
import torch

from flow_extraction.artifacts import write_flow_artifact
from latent_action_vae.data import (ActionStats, PairSampler, action_changes, compute_action_stats,
                                    normalise_action_change, stats_from_dict, stats_to_dict)
from latent_action_vae.config import VAEConfig
from pipelines.stages import BadInput

STORE_HW = (12, 10)

# (source, tier, embodiment, action dims, native fps, frame count, Δ frames, split)
ITEMS = [
    ("ssv2", 1, "human", 0, 12.0, 20, 2, "train"),
    ("ssv2", 1, "human", 0, 12.0, 40, 2, "train"),
    ("ssv2", 1, "human", 0, 12.0, 30, 2, "val"),
    ("robotwin", 3, "so100_bimanual", 12, 20.0, 30, 4, "train"),
    ("robotwin", 3, "so100_bimanual", 12, 20.0, 50, 4, "train"),
    ("robotwin", 3, "so100_bimanual", 12, 20.0, 30, 4, "test"),
    ("task_agnostic", 4, "aloha_viperx_bimanual", 14, 25.0, 40, 5, "train"),
    ("task_agnostic", 4, "aloha_viperx_bimanual", 14, 25.0, 25, 5, "train"),
    ("task_agnostic", 4, "aloha_viperx_bimanual", 14, 25.0, 40, 5, "val"),
]


def write_item(root: Path, number: int, source: str, tier: int, embodiment: str, dim: int, fps: float,
               frames: int, dframes: int, split: str, rng: np.random.Generator) -> dict:
    item_id = f"{source}/item{number:02d}"
    starts = np.arange(frames - dframes)
    pairs = np.stack([starts, starts + dframes], 1)
    flow = np.zeros((len(pairs), 2, *STORE_HW), np.float32)
    flow[:, 0] = number  # channel 0: which item; channel 1: which pair (exact in float16)
    flow[:, 1] = np.arange(len(pairs))[:, None, None]
    valid = np.ones((len(pairs), *STORE_HW), bool)
    art = root / "artifacts" / f"{source}_item{number:02d}.flow.npz"
    write_flow_artifact(art, flow, valid, pairs, {"item_id": item_id, "fps": fps, "delta_frames": dframes})
    uri = root / "media" / f"item{number:02d}"
    if source == "task_agnostic":  # TaskAgnosticSource.load_actions reads <input_uri>/actions.npy
        uri.mkdir(parents=True)
        np.save(uri / "actions.npy", np.cumsum(rng.normal(size=(frames, dim)), 0))
    elif source == "robotwin":  # RoboTwinSource.load_actions reads joint_action/vector of the HDF5 at input_uri
        uri = uri.with_suffix(".hdf5")
        uri.parent.mkdir(parents=True, exist_ok=True)
        vector = np.cumsum(rng.normal(size=(frames, dim)), 0)
        vector[:, 0] = 0.5  # a joint that never moves: its change is always 0 → q01 == q99 → masked out
        with h5py.File(uri, "w") as h5:
            h5["joint_action/vector"] = vector
    return {"item_id": item_id, "source": source, "tier": tier, "group_id": item_id, "split": split,
            "embodiment": embodiment, "has_actions": dim > 0, "action_dim": dim, "native_fps": fps,
            "frame_count": frames, "input_uri": str(uri), "extras": "{}", "artifact_path": str(art),
            "n_pairs": len(pairs), "delta_frames": dframes, "number": number}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> list[dict]:
    root = tmp_path_factory.mktemp("vae_corpus")
    rng = np.random.default_rng(0)
    return [write_item(root, i, *spec, rng=rng) for i, spec in enumerate(ITEMS)]


@pytest.fixture(scope="module")
def train_rows(corpus) -> list[dict]:
    return [r for r in corpus if r["split"] == "train"]


@pytest.fixture(scope="module")
def stats(train_rows) -> dict[str, ActionStats]:
    return compute_action_stats(train_rows)


def cfg(**kw) -> VAEConfig:
    return VAEConfig(**{"batch_size": 32, "labelled_fraction": 0.25, **kw})


def private_copy(row: dict, tmp_path: Path) -> dict:
    """A row whose artifact and action files are copies we may damage."""
    row = dict(row)
    art = tmp_path / Path(row["artifact_path"]).name
    shutil.copy(row["artifact_path"], art)
    row["artifact_path"] = str(art)
    if row["has_actions"]:
        src = Path(row["input_uri"])
        dst = tmp_path / src.name
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dst)
        row["input_uri"] = str(dst)
    return row


# --- statistics and normalisation ----------------------------------------------------------------------------------
def test_action_stats_are_quantiles_of_train_action_changes(train_rows, stats):
    assert set(stats) == {"so100_bimanual", "aloha_viperx_bimanual"}
    aloha = [r for r in train_rows if r["embodiment"] == "aloha_viperx_bimanual"]
    deltas = []
    for r in aloha:  # recompute independently from the files
        a = np.load(Path(r["input_uri"]) / "actions.npy")
        deltas.append(a[r["delta_frames"]:] - a[: -r["delta_frames"]])
    deltas = np.concatenate(deltas)
    s = stats["aloha_viperx_bimanual"]
    assert s.dim == 14 and s.n_items == 2 and s.n_pairs == len(deltas) == sum(r["n_pairs"] for r in aloha)
    np.testing.assert_allclose(s.q01, np.quantile(deltas, 0.01, axis=0))
    np.testing.assert_allclose(s.q99, np.quantile(deltas, 0.99, axis=0))
    assert stats["so100_bimanual"].dim == 12 and stats["so100_bimanual"].q01[0] == stats["so100_bimanual"].q99[0] == 0
    again = stats_from_dict(json.loads(json.dumps(stats_to_dict(stats))))  # JSON round trip is exact
    assert again == stats


def test_action_stats_refuse_non_train_rows(corpus):
    with pytest.raises(ValueError, match="train rows only.*ssv2/item02"):
        compute_action_stats(corpus)


def test_frames_map_from_flow_rate_to_native_action_rate(corpus, tmp_path):
    row = private_copy(next(r for r in corpus if r["source"] == "task_agnostic"), tmp_path)
    ramp = np.arange(row["frame_count"], dtype=np.float64)[:, None] * np.arange(1, 15)  # a[t] = t·(1..14)
    np.save(Path(row["input_uri"]) / "actions.npy", ramp)
    pairs = np.array([[0, 2], [3, 5], [7, 9]])  # frames at 12.5 fps: native frame = 2 · frame at 25 fps
    np.testing.assert_array_equal(native_frame_index(pairs, 25.0, 12.5), pairs * 2)
    np.testing.assert_allclose(action_changes(row, pairs, 12.5), np.full((3, 1), 4.0) * np.arange(1, 15))
    with pytest.raises(ValueError, match=row["item_id"]):  # pairs beyond the actions' end
        action_changes(row, np.array([[0, 30]]), 12.5)


def test_normalise_maps_quantiles_to_unit_range_and_masks():
    s = ActionStats("arm3", 3, q01=(-2.0, 0.0, 1.0), q99=(2.0, 4.0, 1.0), n_pairs=10, n_items=1)
    delta = np.array([[-2.0, 4.0, 5.0], [0.0, 2.0, 1.0], [10.0, -3.0, 1.0]])
    target, mask = normalise_action_change(delta, s)
    assert target.shape == mask.shape == (3, 14) and target.dtype == np.float32 and mask.dtype == bool
    np.testing.assert_allclose(target[:, :2], [[-1, 1], [0, 0], [1, -1]])  # q01 → −1, q99 → 1, clipped
    assert (mask[:, :2]).all() and not mask[:, 2:].any()  # dim 2 is constant (q01 == q99); 3..13 are padding
    assert (target[:, 2:] == 0).all()
    with pytest.raises(ValueError, match="humanoid20"):
        normalise_action_change(np.zeros((1, 20)), ActionStats("humanoid20", 20, (0.0,) * 20, (1.0,) * 20, 1, 1))


# --- the sampler -------------------------------------------------------------------------------------------------
def assert_batches_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys() and a["item_ids"] == b["item_ids"]
    for k, v in a.items():
        if isinstance(v, torch.Tensor):
            assert v.dtype == b[k].dtype and torch.equal(v, b[k]), k


def test_batches_are_a_function_of_seed_and_step(train_rows, stats):
    s1 = PairSampler(train_rows, cfg(), stats, seed=7)
    s2 = PairSampler(list(reversed(train_rows)), cfg(), stats, seed=7, cache_items=1)  # other order, tiny cache
    s2.batch(11)  # a different history must not matter
    b = s1.batch(3)
    assert_batches_equal(b, s2.batch(3))
    assert_batches_equal(b, s1.batch(3))
    assert b["item_ids"] != s1.batch(4)["item_ids"] or not torch.equal(b["pair_index"], s1.batch(4)["pair_index"])
    assert b["item_ids"] != PairSampler(train_rows, cfg(), stats, seed=8).batch(3)["item_ids"]
    # the flow really is the claimed pair of the claimed item
    number = {r["item_id"]: r["number"] for r in train_rows}
    assert b["flow"].shape == (32, 2, *STORE_HW) and b["flow"].dtype == torch.float32
    assert b["valid"].shape == (32, *STORE_HW) and b["valid"].dtype == torch.bool
    assert b["pair_index"].dtype == torch.int64
    assert [int(v) for v in b["flow"][:, 0, 0, 0]] == [number[i] for i in b["item_ids"]]
    assert torch.equal(b["flow"][:, 1, 0, 0].long(), b["pair_index"])


@pytest.mark.parametrize("batch_size,fraction", [(32, 0.1), (32, 0.15), (32, 0.25), (10, 0.5), (7, 1.0), (32, 0.0)])
def test_labelled_share_and_masks(train_rows, stats, batch_size, fraction):
    sampler = PairSampler(train_rows, cfg(batch_size=batch_size, labelled_fraction=fraction), stats, seed=1)
    emb = {r["item_id"]: r["embodiment"] for r in train_rows}
    for step in range(5):
        b = sampler.batch(step)
        n_lab = round(batch_size * fraction)
        assert len(b["item_ids"]) == batch_size and int(b["labelled"].sum()) == n_lab
        assert b["labelled"][:n_lab].all()  # labelled samples come first
        for i, item in enumerate(b["item_ids"]):
            dims = int(b["action_mask"][i].sum())
            if not b["labelled"][i]:
                assert dims == 0 and (b["action"][i] == 0).all()
            elif emb[item] == "so100_bimanual":
                assert dims == 11 and not b["action_mask"][i, 0]  # 12 dims, one constant in train → masked
                assert not b["action_mask"][i, 12:].any()
            else:
                assert emb[item] == "aloha_viperx_bimanual" and dims == 14
        assert b["action"].abs().max() <= 1 and (b["action"][~b["action_mask"]] == 0).all()


def test_so100_rows_have_twelve_real_dims_when_all_move(train_rows, stats):
    moving = dict(stats)
    s = stats["so100_bimanual"]
    moving["so100_bimanual"] = ActionStats(s.embodiment, 12, (-1.0,) + s.q01[1:], (1.0,) + s.q99[1:], 1, 1)
    b = PairSampler(train_rows, cfg(labelled_fraction=1.0), moving, seed=2).batch(0)
    counts = {int(b["action_mask"][i].sum()) for i in range(32)}
    assert counts == {12, 14} and b["labelled"].all()


def test_targets_match_normalised_action_changes(train_rows, stats):
    b = PairSampler(train_rows, cfg(labelled_fraction=0.5), stats, seed=3).batch(0)
    rows = {r["item_id"]: r for r in train_rows}
    for i in np.flatnonzero(b["labelled"].numpy()):
        row = rows[b["item_ids"][i]]
        p = int(b["pair_index"][i])
        pair = np.array([[p, p + row["delta_frames"]]])
        target, mask = normalise_action_change(action_changes(row, pair, row["native_fps"]), stats[row["embodiment"]])
        np.testing.assert_array_equal(b["action"][i].numpy(), target[0])
        np.testing.assert_array_equal(b["action_mask"][i].numpy(), mask[0])
        assert b["pair_frames"][i].tolist() == pair[0].tolist()


def test_no_labelled_items_means_no_labelled_samples(train_rows, stats):
    human = [r for r in train_rows if not r["has_actions"]]
    b = PairSampler(human, cfg(labelled_fraction=0.5), stats, seed=0).batch(0)
    assert not b["labelled"].any() and len(b["item_ids"]) == 32
    b = PairSampler(train_rows, cfg(labelled_fraction=0.5), {}, seed=0).batch(0)  # no stats: nothing labelled
    assert not b["labelled"].any()


def tier_counts(sampler, rows, steps=60) -> dict[int, int]:
    tier = {r["item_id"]: r["tier"] for r in rows}
    counts = {1: 0, 3: 0, 4: 0}
    for step in range(steps):
        for item in sampler.batch(step)["item_ids"]:
            counts[tier[item]] += 1
    return counts


def test_tier_weights_steer_the_mixture(train_rows, stats):
    never = tier_counts(PairSampler(train_rows, cfg(tier_weights={"1": 0.0}), stats, seed=0), train_rows)
    assert never[1] == 0 and never[3] > 0 and never[4] > 0
    counts = tier_counts(PairSampler(train_rows, cfg(labelled_fraction=0.0, tier_weights={"1": 6.0, "4": 2.0}),
                                     stats, seed=0), train_rows)  # tier 3 missing → weight 1: expect 6:1:2
    total = sum(counts.values())
    assert abs(counts[1] / total - 6 / 9) < 0.04 and abs(counts[3] / total - 1 / 9) < 0.03
    assert abs(counts[4] / total - 2 / 9) < 0.03
    with pytest.raises(ValueError, match="weight 0"):
        PairSampler(train_rows, cfg(tier_weights={"1": 0, "3": 0, "4": 0}), stats, seed=0)


def test_items_drawn_in_proportion_to_their_pairs(train_rows, stats):
    ssv2 = [r for r in train_rows if r["source"] == "ssv2"]  # 18 and 38 pairs
    sampler = PairSampler(ssv2, cfg(batch_size=64), stats, seed=0)
    ids = [i for step in range(40) for i in sampler.batch(step)["item_ids"]]
    share = ids.count(ssv2[1]["item_id"]) / len(ids)
    assert abs(share - 38 / 56) < 0.03


def test_lru_cache_is_bounded_and_does_not_change_batches(train_rows, stats):
    big = PairSampler(train_rows, cfg(), stats, seed=5)
    small = PairSampler(train_rows, cfg(), stats, seed=5, cache_items=2)
    for step in range(8):
        assert_batches_equal(big.batch(step), small.batch(step))
        assert len(small.cached_item_ids) <= 2
    assert len(big.cached_item_ids) == len(train_rows) and big.loads == len(train_rows)
    assert small.loads > len(train_rows)  # it evicted and reloaded instead of growing


# --- one ordered pass ----------------------------------------------------------------------------------------------
def test_iter_batches_covers_every_pair_once_in_item_order(corpus, stats):
    sampler = PairSampler(corpus, cfg(), stats, seed=0)
    seen = [(i, int(p)) for b in sampler.iter_batches(16) for i, p in zip(b["item_ids"], b["pair_index"])]
    expected = [(r["item_id"], p) for r in sorted(corpus, key=lambda r: r["item_id"]) for p in range(r["n_pairs"])]
    assert seen == expected
    limited = [b for b in sampler.iter_batches(16, max_pairs=60)]
    ids = [i for b in limited for i in b["item_ids"]]
    assert len(ids) == 60 and len(limited) == 4
    total = sum(r["n_pairs"] for r in corpus)
    for r in corpus:  # spread evenly: each item keeps its share of the pairs
        assert abs(ids.count(r["item_id"]) - 60 * r["n_pairs"] / total) <= 1
    labelled = list(sampler.iter_batches(50, labelled_only=True))
    assert all(b["labelled"].all() for b in labelled)
    assert {i.split("/")[0] for b in labelled for i in b["item_ids"]} == {"robotwin", "task_agnostic"}
    assert sum(len(b["item_ids"]) for b in labelled) == sum(r["n_pairs"] for r in corpus if r["has_actions"])


def test_summary_counts(corpus, stats):
    s = PairSampler(corpus, cfg(), stats, seed=0).summary()
    assert s["items"] == 9 and s["pairs"] == sum(r["n_pairs"] for r in corpus)
    assert s["by_split"]["val"]["items"] == 2 and s["by_tier"]["3"]["items"] == 3
    assert s["by_labelled"]["labelled"]["items"] == 6 and s["labelled_per_batch"] == 8


# --- bad data ------------------------------------------------------------------------------------------------------
def test_non_finite_flow_is_rejected_naming_the_item(train_rows, stats, tmp_path):
    row = private_copy(train_rows[0], tmp_path)
    with np.load(row["artifact_path"]) as z:
        flow, valid, pairs, meta = z["flow"].copy(), z["valid"], z["pairs"], json.loads(str(z["meta"]))
    flow[3, 1, 2, 2] = np.nan
    meta.pop("format")
    write_flow_artifact(row["artifact_path"], flow, valid, pairs, meta)
    sampler = PairSampler([row], cfg(), stats, seed=0)
    with pytest.raises(ValueError, match=f"non-finite flow in {row['item_id']}"):
        sampler.batch(0)


def test_nan_actions_are_rejected_naming_the_item(train_rows, stats, tmp_path):
    row = private_copy(next(r for r in train_rows if r["source"] == "task_agnostic"), tmp_path)
    actions = np.load(Path(row["input_uri"]) / "actions.npy")
    actions[4, 2] = np.nan
    np.save(Path(row["input_uri"]) / "actions.npy", actions)
    with pytest.raises((BadInput, ValueError), match=row["item_id"]):
        compute_action_stats([row])
    with pytest.raises((BadInput, ValueError), match=row["item_id"]):
        PairSampler([row], cfg(labelled_fraction=1.0), stats, seed=0).batch(0)


def test_pair_count_disagreeing_with_manifest_is_rejected(train_rows, stats):
    row = {**train_rows[0], "n_pairs": train_rows[0]["n_pairs"] + 1}
    with pytest.raises(ValueError, match=f"{row['item_id']}.*manifest"):
        PairSampler([row], cfg(), stats, seed=0).batch(0)
