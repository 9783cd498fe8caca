"""`pyramid export lerobot`: the shards as LeRobot v3.0 datasets, read back by lerobot's own `LeRobotDataset`."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from jobs.cli import app
from pipelines.export_lerobot import ACTION, CAMERA, LATENT, export_lerobot
from samples.shard_sets import decode_index, footage_clips, index_coded_clip, write_shard_set
from manifests.shard_format import decode_sample, group_samples, read_tar


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """Two ALOHA clips with actions (index-coded: frame i shows i, latent row j is j, action row t is t + 0.01·d),
    one with language and one without, two clips of footage without actions, and a val clip the default leaves out."""
    tmp = tmp_path_factory.mktemp("lerobot_export")
    clips = [index_coded_clip("arm/0", 24, action_dim=14, lines=["pick the cube"]),
             index_coded_clip("arm/1", 31, action_dim=14),
             index_coded_clip("arm/val", 20, action_dim=14, split="val")]
    clips += footage_clips(2, n_frames=(12, 16))
    write_shard_set(tmp / "shards", clips, samples_per_shard=3)
    foreign = tmp / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("not an export")
    with pytest.raises(FileExistsError, match="export.json"):
        export_lerobot(tmp / "shards", foreign)
    assert (foreign / "keep.txt").exists()
    out = tmp / "lerobot"
    result = CliRunner().invoke(app, ["export", "lerobot", str(out), "--shards", str(tmp / "shards")])
    assert result.exit_code == 0, result.output
    return tmp, out, {c.item_id: c for c in clips}, result.output


def open_dataset(root, monkeypatch):
    import pipelines  # noqa: F401  the torchvision shim before lerobot
    import datasets.config
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    # lerobot's reader goes through `datasets`, which caches an Arrow copy: keep it out of ~/.cache
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(root.parent / "hf_datasets_cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return LeRobotDataset(f"local/{root.name}", root=root)


def test_lerobot_reads_episodes_frames_actions_latents_and_tasks(exported, monkeypatch):
    tmp, out, clips, output = exported
    summary = json.loads((out / "export.json").read_text())
    assert sorted(summary["datasets"]) == ["aloha-30fps", "none-30fps-noaction"]
    assert "aloha-30fps: 2 episodes, 55 frames, 30 fps, action [14]" in output.replace("\n", "")
    ds = open_dataset(out / "aloha-30fps", monkeypatch)
    assert ds.meta.info["codebase_version"] == "v3.0" and ds.fps == 30 and ds.meta.robot_type == "aloha"
    ids = summary["datasets"]["aloha-30fps"]["item_ids"]
    assert ids == ["arm/0", "arm/1"]  # train only: the val clip stays out
    assert ds.num_episodes == 2 and list(ds.meta.episodes["length"]) == [24, 31] and ds.num_frames == 55
    assert ds.features[ACTION]["shape"] == (14,) and ds.features[LATENT]["shape"] == (14,)
    table = ds.hf_dataset.with_format("numpy")
    for episode, item_id in enumerate(ids):
        clip = clips[item_id]
        rows = np.flatnonzero(np.asarray(table["episode_index"]) == episode)
        np.testing.assert_array_equal(np.stack(table[rows][ACTION]), clip.actions)
        latents = np.stack(table[rows][LATENT])
        np.testing.assert_array_equal(latents[:-1], clip.latent)  # frame t carries the motion starting at t
        assert latents.dtype == np.float32 and not latents[-1].any()  # no motion starts at the last frame
        for t in (0, len(rows) // 2, len(rows) - 1):  # the video frame lerobot decodes is frame t of the clip
            item = ds[int(rows[t])]
            assert int(item["frame_index"]) == t and int(item["episode_index"]) == episode
            assert int(decode_index(item[CAMERA].numpy()[None])[0]) == t
    tasks = [ds[int(np.flatnonzero(np.asarray(table["episode_index"]) == e)[0])]["task"] for e in (0, 1)]
    assert tasks == ["pick the cube", "aloha robot: random joint exploration"]  # a clip without language: caption
    every_latent = np.concatenate([np.vstack([clips[i].latent, np.zeros((1, 14))]) for i in ids])
    np.testing.assert_allclose(ds.meta.stats[LATENT]["mean"], every_latent.mean(0), rtol=1e-5)
    np.testing.assert_allclose(ds.meta.stats[ACTION]["max"], np.vstack([clips[i].actions for i in ids]).max(0))


def test_clips_without_actions_form_their_own_dataset_and_a_reexport_replaces_the_last(exported, monkeypatch):
    tmp, out, clips, _ = exported
    ds = open_dataset(out / "none-30fps-noaction", monkeypatch)
    assert ACTION not in ds.features and LATENT in ds.features and CAMERA in ds.features
    samples = [decode_sample(k, m) for sh in sorted((tmp / "shards" / "train").glob("*.tar"))
               for k, m in group_samples(read_tar(sh))]
    footage = [s for s in samples if s.actions is None]
    assert [s.meta.item_id for s in footage] == ["clip/000", "clip/001"]
    assert list(ds.meta.episodes["length"]) == [s.n_frames for s in footage]
    table = ds.hf_dataset.with_format("numpy")
    np.testing.assert_array_equal(np.stack(table[: footage[0].n_frames][LATENT])[:-1], footage[0].latent_action)
    assert ds[0]["task"] == footage[0].lines[0]
    # exporting every split into the same folder replaces the previous export whole
    again = export_lerobot(tmp / "shards", out, splits=None)
    assert again.datasets["aloha-30fps"].item_ids == ["arm/0", "arm/1", "arm/val"]
    assert json.loads((out / "export.json").read_text())["datasets"]["aloha-30fps"]["episodes"] == 3
    assert not list(out.parent.glob(".lerobot.staging-*")) and not (out / "aloha-30fps" / "images").exists()


def test_two_action_spaces_under_one_embodiment_stop_the_export_before_writing(tmp_path):
    clips = [index_coded_clip("arm/0", 12, action_dim=14), index_coded_clip("arm/1", 12, action_dim=7)]
    write_shard_set(tmp_path / "shards", clips, stats={"split": "train", "actions": {}})  # no stats over both widths
    with pytest.raises(ValueError, match=r"aloha-30fps: arm/1 has action_dim 7, arm/0 has 14"):
        export_lerobot(tmp_path / "shards", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(ValueError, match="empty instruction"):
        export_lerobot(tmp_path / "shards", tmp_path / "out", caption=" ")
