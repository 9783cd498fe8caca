"""The shard loader yields exactly the Motus batch contract: shapes, window rule, normalisation, order, splitting,
bad samples. Shard sets are written in the real format by samples/shard_sets.py (real footage + index-coded clips)."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from samples.shard_sets import decode_index, footage_clips, index_coded_clip, write_shard_set
from manifests.shard_format import read_index
from training_hooks.loader import LoaderConfig, make_loader

H, W = 96, 80
CONTRACT = {"first_frame", "video_frames", "action_sequence", "language_embedding", "language_mask", "item_id", "tier"}


def cfg(**kw) -> LoaderConfig:
    return LoaderConfig(height=H, width=W, **kw)


def batches(loader) -> list[dict]:
    return list(loader)


def item_ids(loader) -> list[str]:
    return [i for b in loader for i in b["item_id"]]


@pytest.fixture(scope="module")
def footage(tmp_path_factory):
    """4 train shards of real footage (6 clips with 14-d or 6-d actions, 2 without), and a val shard."""
    clips = (footage_clips(6, size=(H, W), actions=[("aloha", 14), ("so100", 6)], prefix="act")
             + footage_clips(2, size=(H, W), seed=1, prefix="noact")
             + footage_clips(2, size=(H, W), seed=2, split="val", prefix="val"))
    root = tmp_path_factory.mktemp("footage") / "shards"
    write_shard_set(root, clips, samples_per_shard=2)
    return root, clips


@pytest.fixture(scope="module")
def probes(tmp_path_factory):
    """Index-coded clips: a long one (c varies), a short one (everything clamps), both with 14-d actions."""
    clips = [index_coded_clip("probe/long", 100, (H, W), action_dim=14),
             index_coded_clip("probe/short", 20, (H, W), action_dim=14)]
    root = tmp_path_factory.mktemp("probes") / "shards"
    write_shard_set(root, clips, samples_per_shard=1)
    return root


def test_latent_batch_matches_the_motus_contract(footage):
    root, _ = footage
    loader = make_loader(root, "train", cfg(), batch_size=3)
    got = batches(loader)
    assert len(got) == 2  # 8 train clips, batch 3, drop_last
    b = got[0]
    assert set(b) == CONTRACT
    assert b["first_frame"].shape == (3, 3, H, W) and b["first_frame"].dtype == torch.float32
    assert b["video_frames"].shape == (3, 8, 3, H, W) and b["video_frames"].dtype == torch.float32
    assert b["action_sequence"].shape == (3, 8, 14) and b["action_sequence"].dtype == torch.float32
    assert b["language_embedding"].shape == (3, 32, 384) and b["language_embedding"].dtype == torch.float32
    assert b["language_mask"].shape == (3, 32) and b["language_mask"].dtype == torch.bool
    assert b["tier"].dtype == torch.int64 and set(b["tier"].tolist()) <= set(range(1, 7))
    assert len(b["item_id"]) == 3 and all(isinstance(i, str) for i in b["item_id"])
    for key in ("first_frame", "video_frames"):
        assert 0.0 <= float(b[key].min()) and float(b[key].max()) <= 1.0
        assert float(b[key].std()) > 0.05  # real footage, not blank frames
    # embedding rows beyond each line's length are zero and masked out
    emb, mask = b["language_embedding"], b["language_mask"]
    assert torch.equal(emb.abs().sum(-1) > 0, mask)
    assert (b["action_sequence"].abs() <= 1.5).all()  # q01q99 clips to ±1.5


def test_real_batch_has_initial_state_pads_actions_and_skips_clips_without(footage):
    root, clips = footage
    loader = make_loader(root, "train", cfg(action_mode="real"), batch_size=2)
    got = batches(loader)
    assert len(got) == 3  # 6 clips with actions
    assert loader.skipped == {"no_actions": 2}
    emb = {c.item_id: c.embodiment for c in clips}
    for b in got:
        assert set(b) == CONTRACT | {"initial_state"}
        assert b["action_sequence"].shape == (2, 8, 14) and b["initial_state"].shape == (2, 14)
        for k, item in enumerate(b["item_id"]):
            if emb[item] == "so100":  # 6-d actions, zero-padded to 14
                assert (b["action_sequence"][k, :, 6:] == 0).all() and (b["initial_state"][k, 6:] == 0).all()
                assert (b["action_sequence"][k, :, :6] != 0).any()


def test_window_rule_latent_indices_follow_the_formula(probes):
    loader = make_loader(probes, "train", cfg(normalise="none", windows_per_clip=12), batch_size=4, seed=3)
    seen_c = set()
    for b in loader:
        cs, video = decode_index(b["first_frame"].numpy()), decode_index(b["video_frames"].numpy())
        for k, item in enumerate(b["item_id"]):
            T = 100 if item == "probe/long" else 20
            c = int(cs[k])
            assert 0 <= c <= max(0, T - 1 - 48)
            assert video[k].tolist() == [min(c + (i + 1) * 6, T - 1) for i in range(8)]
            rows = b["action_sequence"][k]
            assert torch.equal(rows, rows[:, :1].expand(-1, 14))  # row j of the probe is all j
            assert rows[:, 0].tolist() == [min(c + i * 6, T - 2) for i in range(8)]
            seen_c.add((item, c))
    assert ("probe/short", 0) in seen_c  # T=20: c=0, video clamps at 19, rows at 18
    assert len({c for item, c in seen_c if item == "probe/long"}) > 3  # c is drawn, not fixed


def test_window_rule_with_action_ratio(probes):
    loader = make_loader(probes, "train", cfg(normalise="none", action_ratio=2, windows_per_clip=6), batch_size=2)
    for b in loader:
        assert b["action_sequence"].shape[1] == 16
        for k, item in enumerate(b["item_id"]):
            T = 100 if item == "probe/long" else 20
            c = int(decode_index(b["first_frame"][k].numpy()))
            assert b["action_sequence"][k, :, 0].tolist() == [min(c + j * 3, T - 2) for j in range(16)]
            assert decode_index(b["video_frames"][k].numpy()).tolist() == [min(c + (i + 1) * 6, T - 1) for i in range(8)]


def test_window_rule_real_mode(probes):
    loader = make_loader(probes, "train", cfg(action_mode="real", normalise="none", action_ratio=2,
                                              windows_per_clip=6), batch_size=2)
    n = 0
    for b in loader:
        for k, item in enumerate(b["item_id"]):
            T = 100 if item == "probe/long" else 20
            c = int(decode_index(b["first_frame"][k].numpy()))
            rows = [min(c + (j + 1) * 3, T - 1) for j in range(16)]
            acts = b["action_sequence"][k]
            assert acts[:, 0].tolist() == rows  # action row t = t + 0.01·d
            assert torch.allclose(acts[:, 5] - acts[:, 0], torch.full((16,), 0.05), atol=1e-4)
            assert b["initial_state"][k, 0].item() == c
            # video frame i is the action at position (i+1)·r − 1: the last frame lands on the last action
            assert decode_index(b["video_frames"][k].numpy()).tolist() == [rows[(i + 1) * 2 - 1] for i in range(8)]
            n += 1
    assert n == 12


def test_frames_of_another_size_are_resized_with_padding(tmp_path):
    # footage kept at its source aspect 40 px high (bikes 40x94, carphone 40x48): fitted into 96x80, black bars
    clips = footage_clips(2, size=(40, 94), fit="height", n_frames=(12, 14))
    write_shard_set(tmp_path / "s", clips)
    b = next(iter(make_loader(tmp_path / "s", "train", cfg(), batch_size=2)))
    stored = {c.item_id: c.frames.shape[1:3] for c in clips}
    assert {tuple(v) for v in stored.values()} == {(40, 94), (40, 48)}
    for k, item in enumerate(b["item_id"]):
        sh, sw = stored[item]
        h = round(sh * min(H / sh, W / sw))  # 34 rows of bikes, 67 of carphone, full width
        top = (H - h) // 2
        frames = b["video_frames"][k]
        assert frames[:, :, :top].max() == 0 and frames[:, :, top + h:].max() == 0
        assert frames[:, :, top:top + h].mean() > 0.05 and frames[:, :, top + h // 2, :3].max() > 0


def test_normalisation_uses_the_index_stats(tmp_path):
    stats = {"latent_action": {"q01": [0.0] * 14, "q99": [10.0] * 14, "mean": [5.0] * 14, "std": [2.0] * 14},
             "actions": {"aloha": {"q01": [0.0] * 14, "q99": [100.0] * 14, "mean": [0.0] * 14, "std": [1.0] * 14}}}
    write_shard_set(tmp_path / "s", [index_coded_clip("probe/long", 100, (H, W), action_dim=14)], stats=stats)

    def latent_rows(b, k):  # the raw rows of window k: row j of the probe is all j
        c = int(decode_index(b["first_frame"][k].numpy()))
        return c, torch.tensor([float(min(c + i * 6, 98)) for i in range(8)])

    for b in make_loader(tmp_path / "s", "train", cfg(normalise="q01q99", windows_per_clip=8), batch_size=4):
        for k in range(4):
            _, raw = latent_rows(b, k)
            want = (raw / 10.0 * 2 - 1).clamp(-1.5, 1.5)  # q01 (0) -> -1, q99 (10) -> +1, beyond clipped
            assert torch.allclose(b["action_sequence"][k, :, 3], want, atol=1e-5)
    b = next(iter(make_loader(tmp_path / "s", "train", cfg(normalise="meanstd", windows_per_clip=4), batch_size=4)))
    _, raw = latent_rows(b, 0)
    assert torch.allclose(b["action_sequence"][0, :, 0], (raw - 5.0) / 2.0, atol=1e-5)
    # real actions use their embodiment's stats, initial_state too
    b = next(iter(make_loader(tmp_path / "s", "train", cfg(action_mode="real", windows_per_clip=4), batch_size=4)))
    c, _ = latent_rows(b, 0)
    assert b["initial_state"][0, 0].item() == pytest.approx(c / 100.0 * 2 - 1, abs=1e-5)
    assert b["action_sequence"][0, 0, 0].item() == pytest.approx(min(c + 6, 99) / 100.0 * 2 - 1, abs=1e-5)


def test_same_seed_and_epoch_give_the_same_order_another_epoch_another(footage):
    root, _ = footage

    def run(seed, epoch):
        got = batches(make_loader(root, "train", cfg(), batch_size=1, seed=seed, epoch=epoch))
        return [b["item_id"][0] for b in got], torch.cat([b["first_frame"] for b in got])

    order, frames = run(7, 0)
    again, frames_again = run(7, 0)
    assert order == again and torch.equal(frames, frames_again)
    next_epoch = run(7, 1)[0]
    assert sorted(next_epoch) == sorted(order) and next_epoch != order
    assert run(8, 0)[0] != order


def test_ranks_and_workers_see_disjoint_items_covering_the_split(footage, tmp_path):
    root, clips = footage
    train = sorted(c.item_id for c in clips if c.split == "train")
    per_rank = [item_ids(make_loader(root, "train", cfg(), batch_size=1, rank=r, world_size=2)) for r in (0, 1)]
    assert not set(per_rank[0]) & set(per_rank[1]) and sorted(per_rank[0] + per_rank[1]) == train
    # 2 ranks x 2 workers = 4 consumers over 4 shards: shard-level split across processes
    per_rank = [item_ids(make_loader(root, "train", cfg(), batch_size=1, num_workers=2, rank=r, world_size=2))
                for r in (0, 1)]
    assert sorted(per_rank[0] + per_rank[1]) == train and len(set(per_rank[0] + per_rank[1])) == len(train)
    # one shard for 3 ranks: sample-level fallback, still disjoint and complete
    one = footage_clips(7, size=(H, W), n_frames=(8, 10), languages=False)
    write_shard_set(tmp_path / "one", one, samples_per_shard=10)
    per_rank = [item_ids(make_loader(tmp_path / "one", "train", cfg(), batch_size=1, rank=r, world_size=3))
                for r in range(3)]
    assert sorted(sum(per_rank, [])) == sorted(c.item_id for c in one)
    assert [len(p) for p in per_rank] == [3, 2, 2]


def test_resampled_stream_is_endless(footage):
    root, _ = footage
    it = iter(make_loader(root, "train", cfg(resampled=True, shuffle_buffer=4), batch_size=4))
    assert len([next(it) for _ in range(5)]) == 5  # 20 windows from 8 clips


def test_language_line_is_picked_at_random_and_missing_language_is_masked(tmp_path):
    rng = np.random.default_rng(0)
    with_lang = index_coded_clip("lang/two", 30, (H, W), lines=["short", "long"],
                                 language=[rng.normal(size=(5, 384)).astype(np.float16),
                                           rng.normal(size=(40, 384)).astype(np.float16)])
    without = index_coded_clip("lang/none", 30, (H, W))
    write_shard_set(tmp_path / "s", [with_lang, without], samples_per_shard=1)
    lengths = set()
    for b in make_loader(tmp_path / "s", "train", cfg(windows_per_clip=16), batch_size=4):
        for k, item in enumerate(b["item_id"]):
            n = int(b["language_mask"][k].sum())
            if item == "lang/none":
                assert n == 0 and b["language_embedding"][k].abs().max() == 0
            else:
                lengths.add(n)
                line = with_lang.language[0 if n == 5 else 1][:32].astype(np.float32)
                assert np.array_equal(b["language_embedding"][k, :n].numpy(), line)
    assert lengths == {5, 32}  # both lines picked; the 40-token line truncated to max_text_len


@pytest.mark.parametrize("workers,kind", [(0, "thread"), (2, "thread"), (2, "process")])
def test_bad_samples_are_skipped_and_counted(tmp_path, workers, kind):
    clips = footage_clips(6, size=(H, W), n_frames=(14, 16)) + [index_coded_clip("short/one", 1, (H, W))]
    write_shard_set(tmp_path / "s", clips, samples_per_shard=2, corrupt=["clip/002"])
    loader = make_loader(tmp_path / "s", "train", cfg(worker_kind=kind), batch_size=2, num_workers=workers,
                         drop_last=False)
    got = batches(loader)
    assert sorted(i for b in got for i in b["item_id"]) == ["clip/000", "clip/001", "clip/003", "clip/004", "clip/005"]
    assert loader.skipped == {"undecodable_frames": 1, "too_short": 1}  # counted across workers
    if workers == 0:  # the corrupt clip's slot went to the next window: only the last batch is partial
        assert [len(b["item_id"]) for b in got] == [2, 2, 1]


def test_thread_and_process_workers_give_the_same_batches_in_the_same_order(footage):
    root, _ = footage

    def run(kind):
        got = batches(make_loader(root, "train", cfg(worker_kind=kind, windows_per_clip=2), batch_size=3,
                                  num_workers=2, seed=5, drop_last=False))
        return ([b["item_id"] for b in got], torch.cat([b["first_frame"] for b in got]),
                torch.cat([b["video_frames"] for b in got]), torch.cat([b["action_sequence"] for b in got]))

    threads, processes = run("thread"), run("process")
    assert threads[0] == processes[0] and sum(map(len, threads[0])) == 16  # 8 train clips x 2 windows
    for a, b in zip(threads[1:], processes[1:]):
        assert torch.equal(a, b)
    assert 0.0 <= float(threads[2].min()) and float(threads[2].max()) <= 1.0 and float(threads[2].std()) > 0.05


def test_frames_are_the_decoded_jpegs_scaled_to_unit_range(tmp_path):
    clip = footage_clips(1, size=(H, W), n_frames=(20, 21))[0]
    write_shard_set(tmp_path / "s", [clip])
    b = next(iter(make_loader(tmp_path / "s", "train", cfg(normalise="none", video_step=2), batch_size=1)))
    from manifests.shard_format import decode_sample, group_samples, map_tar
    (key, members), = group_samples(map_tar(next((tmp_path / "s").rglob("*.tar"))))
    sample = decode_sample(key, members)
    # the condition index c: the decoded frame the first frame equals
    T = sample.n_frames
    decoded = torch.from_numpy(sample.frames(range(T))).permute(0, 3, 1, 2).float() / 255.0
    c = int(torch.argmin(((decoded - b["first_frame"][0]) ** 2).flatten(1).mean(1)))
    assert torch.allclose(b["first_frame"][0], decoded[c], atol=1e-6)
    assert torch.allclose(b["video_frames"][0], decoded[[min(c + 2 * (i + 1), T - 1) for i in range(8)]],
                          atol=1e-6)


def test_mp4_shards_give_the_window_rule_frames(tmp_path):
    clip = index_coded_clip("probe/mp4", 40, (H, W))
    write_shard_set(tmp_path / "s", [clip], video_format="mp4")
    n = 0
    for b in make_loader(tmp_path / "s", "train", cfg(normalise="none", windows_per_clip=4), batch_size=2):
        for k in range(2):
            c = int(decode_index(b["first_frame"][k].numpy()))
            assert b["action_sequence"][k, 0, 0].item() == c
            assert decode_index(b["video_frames"][k].numpy()).tolist() == [min(c + 6 * (i + 1), 39) for i in range(8)]
            n += 1
    assert n == 4


def test_stopping_early_stops_the_worker_threads(footage):
    root, _ = footage

    def loader_threads():
        return [t for t in threading.enumerate() if t.name.startswith("shard-loader-")]

    assert loader_threads() == []
    it = iter(make_loader(root, "train", cfg(resampled=True), batch_size=2, num_workers=2))
    next(it)
    assert len(loader_threads()) == 2
    it.close()  # what a training loop's `break` does when the generator is collected
    assert loader_threads() == []


def test_missing_shard_file_is_a_clear_error(footage, tmp_path):
    clips = footage_clips(4, size=(H, W), n_frames=(8, 9), languages=False)
    index = write_shard_set(tmp_path / "s", clips, samples_per_shard=2)
    loader = make_loader(tmp_path / "s", "train", cfg(), batch_size=1)  # opened while complete
    gone = tmp_path / "s" / index["shards"][1]["path"]
    gone.unlink()
    with pytest.raises(FileNotFoundError, match="pyramid-train-000001.tar"):
        read_index(tmp_path / "s")
    with pytest.raises(FileNotFoundError, match="pyramid-train-000001.tar"):
        make_loader(tmp_path / "s", "train", cfg(), batch_size=1)
    with pytest.raises(FileNotFoundError, match="pyramid-train-000001.tar"):
        list(loader)
    loader.num_workers = 2  # raised in a worker thread, re-raised to the consumer
    with pytest.raises(FileNotFoundError, match="pyramid-train-000001.tar"):
        list(loader)
    with pytest.raises(ValueError, match="no shards for split 'test'"):
        make_loader(footage[0], "test", cfg(), batch_size=1)


def test_config_errors_name_the_problem(probes):
    with pytest.raises(ValueError, match="multiple of action_ratio"):
        make_loader(probes, "train", cfg(video_step=6, action_ratio=4), batch_size=1)
    with pytest.raises(ValueError, match="'aloha' has 14-d actions"):
        list(make_loader(probes, "train", cfg(action_mode="real", action_dim=7, normalise="none"), batch_size=1))


def test_video_step_in_seconds_gives_every_frame_rate_the_same_time_span(tmp_path):
    clips = [index_coded_clip("probe/12fps", 100, (H, W), fps=12.0), index_coded_clip("probe/50fps", 100, (H, W), fps=50.0)]
    root = tmp_path / "shards"
    write_shard_set(root, clips, samples_per_shard=1)
    loader = make_loader(root, "train", cfg(normalise="none", video_step_s=0.2, windows_per_clip=3), batch_size=2)
    steps = {"probe/12fps": 2, "probe/50fps": 10}  # 0.2 s at 12 and 50 fps
    n = 0
    for b in loader:
        for k, item in enumerate(b["item_id"]):
            c, step = int(decode_index(b["first_frame"][k].numpy())), steps[item]
            assert decode_index(b["video_frames"][k].numpy()).tolist() == [min(c + (i + 1) * step, 99) for i in range(8)]
            assert b["action_sequence"][k, :, 0].tolist() == [min(c + i * step, 98) for i in range(8)]
            n += 1
    assert n == 6


def test_shards_without_embeddings_use_the_configured_text_width(tmp_path):
    root = tmp_path / "shards"
    write_shard_set(root, [index_coded_clip(f"probe/{i}", 30, (H, W)) for i in range(2)], samples_per_shard=1)
    index = read_index(root)
    assert not (index["stats"].get("language") or {}).get("dim")
    b = next(iter(make_loader(root, "train", cfg(text_dim=384), batch_size=2)))
    assert b["language_embedding"].shape == (2, 32, 384) and not b["language_mask"].any()


def test_real_mode_skips_embodiments_without_train_stats(tmp_path):
    clips = [index_coded_clip("probe/a", 40, (H, W), action_dim=14),
             index_coded_clip("probe/b", 40, (H, W), action_dim=14, embodiment="unseen", split="val")]
    root = tmp_path / "shards"
    write_shard_set(root, clips, samples_per_shard=1)  # stats come from train: no "unseen" entry
    loader = make_loader(root, "val", cfg(action_mode="real"), batch_size=1, drop_last=False)
    assert list(loader) == [] and loader.skipped == {"no_action_stats": 1}
