"""The stages' input fingerprints, now made by one helper, equal the recipes each stage wrote by hand before, so
workdirs made before the change are not redone (the recipes are written out here as they were)."""

import dataclasses
import datetime as dt
import hashlib
import json

from common.fingerprint import fingerprint
from flow_extraction.config import FlowConfig
from pipelines.config import PipelineConfig, SourceConfig
from pipelines.flow import _ITEM_WINDOW, _NOT_IN_OUTPUT, settings_fingerprint
from pipelines.ingest import item_fingerprint
from pipelines.label import latents_fingerprint
from pipelines.shard import sample_fingerprint, shard_settings
from sources import ItemRef


def blake64(text: str) -> str:
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


ROW = {"item_id": "robotwin/t/ep0", "source": "robotwin", "cameras": ["head_camera"], "input_blake2b": "0f" * 16, "media_uris": ["samples/ep0.hdf5#cam/rgb"],
       "start_s": None, "frame_count": 41, "fps": 16.7, "width": 320, "height": 240, "language": ["pick it", "up"],
       "extras": json.dumps({"sim_extras": True}), "tier": 3, "ingested_at": dt.datetime(2026, 1, 2, 3, 4, 5)}


def test_ingest_fingerprint_is_the_old_recipe():
    cfg = PipelineConfig()
    sc = SourceConfig(kind="ego4d", root="samples/ego4d", tier=2, options={"before_s": 1.0, "clips": "fho"})
    ref = ItemRef("ego4d/v1/c3", "v1/c3", "samples/ego4d/v1.mp4", "size=12|mtime=3")
    settings = json.dumps([sc.tier, sc.options, dataclasses.asdict(cfg.splits)], sort_keys=True, default=str)
    assert item_fingerprint(ref, sc, cfg) == blake64(f"{ref.fingerprint}|{settings}")
    moved = dataclasses.replace(cfg, splits=dataclasses.replace(cfg.splits, salt="other"))
    assert item_fingerprint(ref, sc, moved) != item_fingerprint(ref, sc, cfg)


def test_flow_fingerprint_is_the_old_recipe_with_and_without_sim_flow():
    from flow_extraction.sim_flow import SIM_FLOW_VERSION

    # full size with the preset's own DIS settings, as every workdir before flow_size and the dis_* knobs was made
    canvas = {"flow_size": [384, 320], "dis_refinement_iterations": None}
    for fc in (FlowConfig(**canvas), FlowConfig(sim_for_sim_tiers=False, grid="delta", fps=10.0, **canvas)):
        # flow_size and the knobs came later: at the canvas / left to the preset they are left out, so these stay
        flow = {k: v for k, v in dataclasses.asdict(fc).items()
                if k not in (*_NOT_IN_OUTPUT, "flow_size") and not (k.startswith("dis_") and k != "dis_preset")}
        if fc.sim_for_sim_tiers:
            flow["sim_flow_version"] = SIM_FLOW_VERSION
        item = {k: ROW.get("input_blake2b" if k == "input_checksum" else k) for k in _ITEM_WINDOW}
        old = blake64(json.dumps({"flow": flow, "item": item}, sort_keys=True, default=str))
        assert settings_fingerprint(fc, ROW) == old
    assert settings_fingerprint(FlowConfig(), ROW) != settings_fingerprint(FlowConfig(delta_s=0.4), ROW)


def test_flow_size_redoes_frame_flow_items_but_not_exact_sim_flow_items():
    canvas = FlowConfig(flow_size=[384, 320])
    assert FlowConfig().flow_hw() == (192, 160)  # the default: twice the 96×80 store
    faster = FlowConfig(flow_size=[128, 106], dis_refinement_iterations=2)  # README "Flow": faster, not the default
    assert settings_fingerprint(FlowConfig(), ROW) != settings_fingerprint(faster, ROW)  # switching redoes items
    assert settings_fingerprint(FlowConfig(), ROW) == settings_fingerprint(FlowConfig(flow_size=[192, 160]), ROW)
    assert settings_fingerprint(FlowConfig(), ROW) != settings_fingerprint(canvas, ROW)
    sim = {"sim_for_sim_tiers": True}
    assert (settings_fingerprint(FlowConfig(**sim), ROW)
            == settings_fingerprint(FlowConfig(flow_size=[384, 320], **sim), ROW)  # exact flow: made at the canvas
            == settings_fingerprint(FlowConfig(dis_refinement_iterations=2, **sim), ROW))  # and not by DIS
    wrist = {**ROW, "cameras": ["left_camera"]}  # no exact flow for this view: computed from pixels
    assert (settings_fingerprint(FlowConfig(**sim), wrist)
            != settings_fingerprint(FlowConfig(flow_size=[384, 320], **sim), wrist))


def test_label_fingerprint_is_the_old_recipe():
    assert latents_fingerprint("ab" * 16, "cd" * 8) == blake64(f"{'ab' * 16}:{'cd' * 8}")


def test_sample_fingerprint_is_the_old_recipe():
    settings = shard_settings(PipelineConfig())
    settings_fp = blake64(json.dumps(settings, sort_keys=True))
    old = blake64(json.dumps(["ee" * 16, ROW, settings_fp], sort_keys=True, default=str))
    assert sample_fingerprint("ee" * 16, ROW, settings) == old
    assert sample_fingerprint("ee" * 16, {**ROW, "language": ["other"]}, settings) != old


def test_helper_joins_strings_as_they_are_and_the_rest_as_sorted_json():
    assert fingerprint("a", {"b": 1, "a": [2]}) == blake64('a|{"a": [2], "b": 1}')
    assert fingerprint("a", "b", sep=":") == blake64("a:b")
    assert len(fingerprint(dt.date(2026, 1, 1))) == 16


def test_the_adapters_file_fingerprint_is_the_old_recipe(tmp_path):
    from sources.media import fingerprint as files_fingerprint

    a, b = tmp_path / "a.mp4", tmp_path / "b.parquet"
    a.write_bytes(b"12345")
    st = a.stat()
    old = blake64("|".join([f"a.mp4:{st.st_size}:{st.st_mtime_ns}", "b.parquet:missing"]))
    assert files_fingerprint([a, b]) == old
