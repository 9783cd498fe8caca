"""The shard stage and the Motus-layout export, on real generated items (ingest → flow → VAE → labels → shards)."""

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from catalog import Catalog
from flow_extraction.frames import iter_frames
from pipelines import shard as shard_module
from pipelines.config import ConfigError, load_config
from pipelines.export import MOTUS_FOLDERS, export_motus, motus_stem
from pipelines.flow import run_flow
from pipelines.ingest import ingest
from pipelines.label import read_latents, run_label
from pipelines.runners import make_runner
from pipelines.shard import clean_stale, plan_shards, run_shard
from sources import load_actions
from jobs.vae import run_vae_train
from manifests.shard_format import decode_sample, group_samples, read_tar
from tests.pipeline_setup import TINY as SETUP_TINY, labelled_workdir

TINY = {**SETUP_TINY, "shards.target_mb": 0.5}


@pytest.fixture(scope="module")
def labelled(tmp_path_factory, sim_samples):
    """A workdir whose robotwin and task-agnostic items are labelled, and a first shard set written."""
    cfg = labelled_workdir(tmp_path_factory.mktemp("shards"), sim_samples, **TINY)
    with Catalog(cfg.catalog_path) as cat:
        report = run_shard(cfg, cat, make_runner("local"), progress=False)
    return cfg, report


def shard_rows(cfg):
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        return cat.sql("SELECT * FROM shards ORDER BY path").to_pylist()


def samples_in(path):
    return [decode_sample(k, g) for k, g in group_samples(read_tar(path))]


def test_every_labelled_item_is_in_exactly_one_shard_of_its_split_with_its_values(labelled):
    cfg, report = labelled
    rows = shard_rows(cfg)
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        items = {r["item_id"]: r for r in cat.items().to_pylist()}
        latents = {r["item_id"]: r["path"] for r in cat.sql("SELECT item_id, path FROM artifacts WHERE stage = 'label'").to_pylist()}
    assert report.stage.counts["done"] == len(latents) == 5
    assert len(rows) >= 2 and {r["split"] for r in rows} <= {"train", "val", "test"}
    seen = []
    for r in rows:
        assert Path(r["path"]).exists() and r["bytes"] == Path(r["path"]).stat().st_size
        assert r["sha256"] == hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest()
        samples = samples_in(r["path"])
        assert [s.meta.item_id for s in samples] == r["item_ids"] and r["n_samples"] == len(samples)
        for s in samples:
            item = items[s.meta.item_id]
            assert s.meta.split == item["split"] == r["split"]
            seen.append(s.meta.item_id)
            expected, _ = read_latents(latents[s.meta.item_id])
            np.testing.assert_array_equal(s.latent_action, expected)
            assert s.n_frames == item["frame_count"] == len(expected) + 1
            np.testing.assert_allclose(s.actions, load_actions(item).astype(np.float32), rtol=0, atol=0)
            assert s.meta.action_semantics == item["action_semantics"] and len(item["action_semantics"]) == \
                s.actions.shape[1] and s.meta.action_timing == item["action_timing"] == "after"
            first = s.frames([0])[0]
            _, source_first, _ = next(iter_frames(item, (384, 320)))
            assert first.shape == (384, 320, 3) and np.abs(first.astype(int) - source_first).mean() < 3
            assert s.lines == list(item["language"] or [])
            if s.lines:  # robotwin items carry instructions: one [L, 384] MiniLM embedding per line
                assert len(s.language) == len(s.lines) and all(e.shape[1] == 384 and e.shape[0] >= 3 for e in s.language)
    assert sorted(seen) == sorted(latents)  # exactly once each
    index = json.loads((report.root / "index.json").read_text())
    assert index["stats"]["split"] == "train" and len(index["stats"]["latent_action"]["q01"]) == 14
    assert index["stats"]["language"] == {"encoder": "all-MiniLM-L6-v2", "dim": 384}
    assert sorted(sh["path"] for sh in index["shards"]) == sorted(str(Path(r["path"]).relative_to(report.root)) for r in rows)


def test_rerun_skips_and_a_rebuild_from_scratch_gives_byte_identical_shards(labelled, tmp_path):
    cfg, first = labelled
    before = {r["path"]: r["sha256"] for r in shard_rows(cfg)}
    with Catalog(cfg.catalog_path) as cat:
        again = run_shard(cfg, cat, make_runner("local"), progress=False)
    assert again.unchanged and again.stage.processed == 0
    shutil.rmtree(cfg.artifacts_dir / "samples")
    shutil.rmtree(first.root)
    with Catalog(cfg.catalog_path) as cat:
        rebuilt = run_shard(cfg, cat, make_runner("local"), force=True, progress=False)
    assert not rebuilt.unchanged and rebuilt.stage.counts["done"] == 5
    assert {r["path"]: r["sha256"] for r in shard_rows(cfg)} == before


@pytest.mark.slow
def test_another_folder_with_a_resumed_vae_gives_byte_identical_shards(labelled, tmp_path, sim_samples):
    """The same config run in another folder, its VAE training stopped after a checkpoint and resumed, writes the
    same shards byte for byte: provenance names the checkpoint by content and paths enter hashes relative."""
    cfg, _ = labelled
    root = tmp_path / "somewhere" / "else"
    shutil.copytree(sim_samples, root / "samples")
    other = load_config(None, workdir=str(root), **{**TINY, "vae.checkpoint_every": 1})
    other.sources = [s for s in other.sources if s.kind in ("robotwin", "task_agnostic")]
    runner = make_runner("local")
    with Catalog(other.catalog_path) as cat:
        ingest(other, cat, runner, progress=False)
        run_flow(other, cat, runner, progress=False)
        run_vae_train(other, cat, steps=1, progress=False)
        assert run_vae_train(other, cat, progress=False).resumed_from == 1
        run_label(other, cat, runner, progress=False)
        run_shard(other, cat, runner, progress=False)
    here = {Path(r["path"]).relative_to(cfg.path("shards")).as_posix(): r["sha256"] for r in shard_rows(cfg)}
    there = {Path(r["path"]).relative_to(other.path("shards")).as_posix(): r["sha256"] for r in shard_rows(other)}
    assert here and there == here
    manifests = [json.loads((c.manifests_dir / "latent_stats.json").read_text())["checkpoint"] for c in (cfg, other)]
    assert manifests == ["vae/checkpoints/last.pt"] * 2


class Killed(BaseException):
    """Like a SIGINT: not an Exception, so nothing on the way up swallows it."""


def test_a_killed_shard_write_registers_nothing_and_keeps_the_previous_set(labelled, monkeypatch):
    cfg, first = labelled
    before = shard_rows(cfg)
    calls = []

    def dying_write_tar(path, members):
        calls.append(path)
        if len(calls) == 2:
            raise Killed("killed mid-write")
        return real_write_tar(path, members)

    real_write_tar = shard_module.write_tar
    monkeypatch.setattr(shard_module, "write_tar", dying_write_tar)
    with Catalog(cfg.catalog_path) as cat, pytest.raises(Killed):
        shard_module.write_shard_set(first.root, plan_shards(
            cat.sql("SELECT a.item_id, a.path, a.bytes, i.split, i.tier FROM artifacts a JOIN items i USING (item_id) "
                    "WHERE a.stage = 'shard'").to_pylist(), 1.0, False), {}, {}, "run-killed")
    assert len(calls) == 2 and not list(first.root.parent.glob("*.staging-*"))
    assert shard_rows(cfg) == before  # nothing registered; the previous set is intact on disk
    for r in before:
        assert hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest() == r["sha256"]


def test_a_run_killed_between_the_renames_gets_its_previous_set_back(tmp_path):
    root = tmp_path / "shards"
    (tmp_path / "shards.old-r1").mkdir()
    (tmp_path / "shards.old-r1" / "index.json").write_text("{}")
    (tmp_path / "shards.staging-r1").mkdir()
    removed = clean_stale(root)
    assert (root / "index.json").exists() and removed == [tmp_path / "shards.staging-r1"]
    assert not (tmp_path / "shards.staging-r1").exists()


def test_plan_orders_by_stable_hash_and_respects_the_target_size():
    samples = [{"item_id": f"s/{i}", "split": "train" if i % 4 else "val", "tier": 1 + i % 2, "bytes": 100}
               for i in range(20)]
    shards = plan_shards(samples, 350, per_tier=False)
    assert [sh["path"] for sh in shards if sh["split"] == "val"] == ["val/pyramid-val-000000.tar",
                                                                      "val/pyramid-val-000001.tar"]
    assert all(len(sh["samples"]) <= 3 for sh in shards)
    assert sorted(s["item_id"] for sh in shards for s in sh["samples"]) == sorted(s["item_id"] for s in samples)
    assert plan_shards(list(reversed(samples)), 350, False) == shards  # input order does not matter
    per_tier = plan_shards(samples, 10_000, per_tier=True)
    assert {(sh["split"], sh["tier"]) for sh in per_tier} == {("train", 1), ("train", 2), ("val", 1)}
    assert "train/pyramid-train-t2-000000.tar" in {sh["path"] for sh in per_tier}


def test_export_writes_the_motus_stage2_layout(labelled, tmp_path):
    cfg, report = labelled
    out = tmp_path / "motus"
    result = export_motus(report.root, out, splits=None, allow_text_width=True)  # every split into one tree
    assert result.per_source == {"robotwin": 2, "task_agnostic": 3} and result.embedding_dim == 384
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        items = cat.items().to_pylist()
    for item in items:
        root, stem = out / item["source"], motus_stem(item["item_id"])
        assert sorted(p.name for p in root.iterdir()) == sorted(MOTUS_FOLDERS)
        latent = torch.load(root / "latent_action_dim14" / f"{stem}.pt")
        assert latent.dtype == torch.float32 and latent.shape == (item["frame_count"] - 1, 14)
        qpos = torch.load(root / "qpos" / f"{stem}.pt")
        assert qpos.shape == (item["frame_count"], item["action_dim"])
        lines = (root / "metas" / f"{stem}.txt").read_text().splitlines()
        assert lines and all(line.strip() for line in lines)  # Motus raises "Empty instruction text" otherwise
        if not item["language"]:  # task-agnostic motion: a caption naming the embodiment
            assert lines == [f"{item['embodiment']} robot: random joint exploration"]
        embeddings = torch.load(root / "umt5_wan" / f"{stem}.pt")
        assert isinstance(embeddings, list) and len(embeddings) == len(lines) >= 1
        assert all(e.ndim == 2 and e.shape[1] == 384 for e in embeddings)
        import av

        with av.open(str(root / "videos" / f"{stem}.mp4")) as c:
            frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
        assert len(frames) == item["frame_count"] and frames[0].shape == (384, 320, 3)
    meta = json.loads((out / "export.json").read_text())
    assert meta["embedding_dim"] == 384 and len(meta["items"]) == len(items)
    assert meta["shorter_than_window"] == sorted(i["item_id"] for i in items if i["frame_count"] < 49) == result.short


def test_bad_shard_settings_are_named():
    with pytest.raises(ConfigError, match="shards.video_format"):
        load_config(None, **{"shards.video_format": "gif"})
    with pytest.raises(ConfigError, match="language_encoder_path"):
        load_config(None, **{"shards.language_encoder": "umt5"})


def test_umt5_encoder_loads_from_a_local_folder(tmp_path):
    import transformers

    from pipelines.language import load_text_encoder

    minilm = load_text_encoder("minilm", max_tokens=16)
    config = transformers.UMT5Config(vocab_size=minilm.tokenizer.vocab_size, d_model=32, d_kv=8, d_ff=64,
                                     num_layers=2, num_heads=4)
    transformers.UMT5EncoderModel(config).save_pretrained(tmp_path)
    minilm.tokenizer.save_pretrained(tmp_path)
    umt5 = load_text_encoder("umt5", tmp_path, max_tokens=16)
    a, b = umt5.encode(["pick up the red cube", "open " * 40])
    assert umt5.dim == 32 and a.shape == (7, 32) and b.shape == (16, 32)  # trimmed to real tokens; truncated
    with pytest.raises(FileNotFoundError, match="language_encoder_path"):
        load_text_encoder("umt5", tmp_path / "missing")


def tiny_umt5(folder: Path, words: list[str]) -> Path:
    """A random UMT5 encoder as wide as UMT5-XXL (d_model 4096, Motus's text width) and tiny otherwise (1 layer, 2
    heads, d_ff 16), with a word-level tokenizer over `words` (others are <unk>), saved as a transformers folder."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(["<pad>", "</s>", "<unk>", *sorted(set(words))])}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    transformers.PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", pad_token="<pad>",
                                         eos_token="</s>").save_pretrained(folder)
    config = transformers.UMT5Config(vocab_size=len(vocab), d_model=4096, d_kv=8, d_ff=16, num_layers=1, num_heads=2,
                                     pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    transformers.UMT5EncoderModel(config).save_pretrained(folder)
    return folder


def test_umt5_shards_export_4096_wide_embeddings_that_the_released_loader_reads(labelled, tmp_path):
    from tests.motus_reader import instruction, read_episode, scan_episodes

    cfg, report = labelled
    # the MiniLM shards (E 384) cannot feed the released Motus's Linear 4096 -> 3072: the export says so
    with pytest.raises(ValueError, match="Linear 4096 -> 3072.*allow-text-width"):
        export_motus(report.root, tmp_path / "narrow")
    assert not (tmp_path / "narrow").exists()
    # shard a copy of the workdir (the catalog stores relative paths) with a local UMT5 folder
    work = tmp_path / "work"
    shutil.copytree(cfg.path("."), work)
    encoder = tiny_umt5(tmp_path / "umt5", ["beat", "the", "block", "with", "hammer", "pick", "cube"])
    umt5_cfg = load_config(None, workdir=str(work), **TINY, **{"shards.language_encoder": "umt5",
                                                               "shards.language_encoder_path": str(encoder)})
    umt5_cfg.sources = cfg.sources
    with Catalog(umt5_cfg.catalog_path) as cat:
        shards = run_shard(umt5_cfg, cat, make_runner("local"), progress=False)
        items = {motus_stem(r["item_id"]): r for r in cat.items().to_pylist()}
    result = export_motus(shards.root, tmp_path / "motus", splits=None)
    assert result.embedding_dim == 4096 and result.encoder == "umt5:umt5" and result.motus_width
    episodes = scan_episodes(tmp_path / "motus")
    assert sorted(ep["video"].stem for ep in episodes) == sorted(items) and len(episodes) == 5
    for ep in episodes:
        item = items[ep["video"].stem]
        language = torch.load(ep["lang"])
        lines = ep["text"].read_text().splitlines()
        assert isinstance(language, list) and len(language) == len(lines)  # index i picks line i
        assert all(e.dtype == torch.float32 and e.ndim == 2 and e.shape[1] == 4096 for e in language)
        if item["language"]:  # real token states, one row per word and </s>-less word-level tokens
            assert [e.shape[0] for e in language] == [len(line.split()) for line in lines] and language[0].abs().sum() > 0
        else:  # the caption's no-text conditioning
            assert [tuple(e.shape) for e in language] == [(1, 4096)] and not language[0].any()
        sample = read_episode(ep)
        assert sample is not None and sample["instruction"] == lines[sample["language_index"]].strip() != ""
        assert torch.equal(sample["language_embedding"], language[sample["language_index"]])
        assert sample["action_sequence"].shape == (8, 14) and sample["action_sequence"].dtype == torch.float32
        assert sample["video_frames"].shape == (8, 384, 320, 3) and sample["first_frame"].shape == (384, 320, 3)
        assert sample["video_frame_count"] == sample["latent_rows"] + 1 == item["frame_count"]
    # the check our captions exist for: an empty metas file is refused by the loader
    episodes[0]["text"].write_text("\n  \n")
    with pytest.raises(ValueError, match="Empty instruction text"):
        instruction(episodes[0]["text"], 0)


def test_export_defaults_to_train_replaces_a_previous_export_and_refuses_other_folders(labelled, tmp_path):
    cfg, report = labelled
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        train_ids = {r["item_id"] for r in cat.items().to_pylist() if r["split"] == "train"}
    out = tmp_path / "motus"
    everything = export_motus(report.root, out, splits=None, allow_text_width=True)
    assert sum(everything.per_source.values()) == 5
    train_only = export_motus(report.root, out, allow_text_width=True)  # re-export into the same folder: the old tree goes
    exported = {i["item_id"] for i in json.loads((out / "export.json").read_text())["items"]}
    assert exported == train_ids and sum(train_only.per_source.values()) == len(train_ids) < 5
    videos = sorted(p.stem for p in out.glob("*/videos/*.mp4"))
    assert videos == sorted(motus_stem(i) for i in train_ids)  # no clip of the previous export lingers
    # Motus's episode caches (any version, per dataset folder or above) go with a re-export
    caches = [out / "cached_episodes.pkl", *(out / src / "cached_episodes.v2.pkl" for src in train_only.per_source)]
    for cache in caches:
        cache.write_bytes(b"stale")
    again = tmp_path / "motus_again"
    export_motus(report.root, again, allow_text_width=True)
    export_motus(report.root, out, allow_text_width=True)
    assert not any(c.exists() for c in caches)
    files = sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(again) for p in again.rglob("*") if p.is_file())
    assert all((out / f).read_bytes() == (again / f).read_bytes() for f in files)  # byte-identical exports
    with pytest.raises(ValueError, match="empty instruction"):
        export_motus(report.root, tmp_path / "no_caption", caption="  ", allow_text_width=True)
    foreign = tmp_path / "not_an_export"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError, match="export.json"):
        export_motus(report.root, foreign, allow_text_width=True)
    assert (foreign / "notes.txt").read_text() == "keep me"


def test_samples_are_rebuilt_when_their_catalog_row_or_file_changes(labelled):
    cfg, _ = labelled
    with Catalog(cfg.catalog_path) as cat:
        item = cat.sql("SELECT item_id, language FROM items WHERE source = 'robotwin' ORDER BY item_id LIMIT 1").to_pylist()[0]
        cat.con.execute(f"UPDATE {cat.table('items')} SET language = ? WHERE item_id = ?", [["a new instruction"], item["item_id"]])
        sample_path = Path(cat.sql("SELECT path FROM artifacts WHERE stage = 'shard' AND item_id <> ? LIMIT 1",
                                   [item["item_id"]]).to_pylist()[0]["path"])
        sample_path.unlink()
        report = run_shard(cfg, cat, make_runner("local"), progress=False)
    assert report.stage.counts["done"] == 2 and not report.unchanged
    assert sample_path.exists()
    texts = {s.meta.item_id: s.lines for r in shard_rows(cfg) for s in samples_in(r["path"])}
    assert texts[item["item_id"]] == ["a new instruction"]


def test_a_set_swapped_in_but_never_registered_is_rewritten(labelled):
    cfg, report = labelled
    with Catalog(cfg.catalog_path) as cat:  # as if killed after the swap: the catalog still lists other rows
        cat.con.execute(f"UPDATE {cat.table('shards')} SET sha256 = 'stale' WHERE path = (SELECT min(path) FROM {cat.table('shards')})")
        again = run_shard(cfg, cat, make_runner("local"), progress=False)
    assert not again.unchanged
    for r in shard_rows(cfg):
        assert r["sha256"] == hashlib.sha256(Path(r["path"]).read_bytes()).hexdigest()


def test_streaming_column_stats_match_numpy_within_a_bin():
    from pipelines.shard import ColumnStats

    rng = np.random.default_rng(0)
    chunks = [np.c_[rng.normal(0, 2, n), rng.exponential(1, n), np.full(n, 3.0)] for n in (1, 50, 30000, 777)]
    stats = ColumnStats()
    for c in chunks:
        stats.add(c)
    for c in chunks:
        stats.add_to_histogram(c)
    got, x = stats.describe(), np.concatenate(chunks)
    assert got["rows"] == len(x)
    np.testing.assert_allclose(got["mean"], x.mean(0), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(got["std"], x.std(0), rtol=1e-6, atol=1e-9)
    assert got["min"] == x.min(0).tolist() and got["max"] == x.max(0).tolist()
    bin_width = (x.max(0) - x.min(0)) / ColumnStats.BINS
    for q in ("q01", "q99"):
        exact = np.quantile(x, 0.01 if q == "q01" else 0.99, axis=0)
        assert np.all(np.abs(np.array(got[q]) - exact) <= bin_width + 1e-12), (q, got[q], exact)
    assert got["q01"][2] == got["q99"][2] == 3.0  # a constant dimension


def test_hugging_face_datasets_opens_every_shard_of_the_shard_job(labelled, tmp_path):
    """`datasets.load_dataset("webdataset")`, streaming and not, on shards packed several samples to a tar, some
    samples with language and some without (the case that made it refuse the shards before format v2)."""
    import datasets

    cfg, _ = labelled
    shutil.copytree(Path(cfg.workdir), tmp_path / "w")
    big = load_config(None, workdir=str(tmp_path / "w"), **{**TINY, "shards.target_mb": 64})
    big.sources = cfg.sources
    with Catalog(big.catalog_path) as cat:
        report = run_shard(big, cat, make_runner("local"), progress=False)
        latents = {r["item_id"]: r["path"] for r in cat.sql("SELECT item_id, path FROM artifacts WHERE stage = 'label'").to_pylist()}
        language = {r["item_id"]: list(r["language"] or []) for r in cat.items().to_pylist()}
    train = [r for r in report.shards if r["split"] == "train"]
    assert len(train) == 1 and train[0]["n_samples"] == 3
    assert {bool(language[i]) for i in train[0]["item_ids"]} == {True, False}  # mixed member contents in one tar
    files = {split: [r["path"] for r in report.shards if r["split"] == split] for split in ("train", "val", "test")}
    files = {k: v for k, v in files.items() if v}
    for streaming in (True, False):
        ds = datasets.load_dataset("webdataset", data_files=files, streaming=streaming,
                                   cache_dir=str(tmp_path / f"hf-{streaming}"))
        for split, paths in files.items():
            rows = list(ds[split])
            assert [r["json"]["item_id"] for r in rows] == [i for r in report.shards if r["split"] == split
                                                            for i in r["item_ids"]]
            for r in rows:
                item = r["json"]["item_id"]
                expected, _ = read_latents(latents[item])
                np.testing.assert_array_equal(np.asarray(r["la14.npy"], np.float32), expected)
                assert r["txt"].split("\n") == language[item] if language[item] else r["txt"] == ""
                assert len(r["json"]["vae_checkpoint_blake2b"]) == 32  # blake2b-128, hex


def test_a_copied_workdir_works_where_it_lands(labelled, tmp_path):
    """Catalog paths are relative to the workdir: a copy reports, audits and loads its own files, even with the
    original gone (here: renamed away for the test)."""
    from typer.testing import CliRunner

    from audit import run_audit
    from jobs.cli import app
    from rich.console import Console

    from training_hooks.loader import LoaderConfig, make_loader

    cfg, _ = labelled
    quiet = Console(quiet=True)
    with Catalog(cfg.catalog_path) as cat:
        before = {r.check.name: r.status for r in run_audit(cfg, cat, out_dir=tmp_path / "r0", console=quiet).results}
    src = Path(cfg.workdir).resolve()
    dst = tmp_path / "elsewhere" / "copy"
    shutil.copytree(src, dst)
    hidden = src.with_name(src.name + "-away")
    src.rename(hidden)
    try:
        moved = load_config(None, workdir=str(dst), **TINY)
        moved.sources = cfg.sources
        with Catalog(moved.catalog_path, read_only=True) as cat:
            files = cat.sql("SELECT path FROM artifacts UNION ALL SELECT path FROM shards UNION ALL "
                            "SELECT unnest(media_uris) FROM items").column(0).to_pylist()
        assert files and all(f.startswith(str(dst)) for f in files)
        assert all(Path(f.split("#")[0]).exists() for f in files)
        status = CliRunner().invoke(app, ["status", "--workdir", str(dst)])
        assert status.exit_code == 0 and "robotwin" in status.output and str(src) not in status.output
        with Catalog(moved.catalog_path) as cat:
            after = {r.check.name: r.status for r in run_audit(moved, cat, out_dir=tmp_path / "r1", console=quiet).results}
        assert after == before and after["shard_files"] == "pass"
        batch = next(iter(make_loader(dst / "shards", "train", LoaderConfig(height=32, width=32, num_video_frames=2,
                                                                             video_step=2), batch_size=1)))
        assert batch["video_frames"].shape == (1, 2, 3, 32, 32)
    finally:
        hidden.rename(src)
