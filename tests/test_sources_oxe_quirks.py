"""Open X-Embodiment as published: the quirks real RLDS shards have (issue 14), each in the real builder layout.

Shards come from the sample writer and are then edited the way real downloads differ from it (records re-encoded
with the Example codec; the features.json of a dataset outside the key table written here from its published
schema). Expected values come from the records read with the independent protobuf oracle of test_sources_oxe.
"""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from catalog import Catalog
from pipelines.cli import app
from pipelines.config import config_from_dict
from pipelines.samples.oxe_rlds import write_oxe
from pipelines.sources.tfrecord import encode_example, parse_example, write_records
from tests.test_sources_oxe import oracle_example, oracle_records

FRACTAL, BRIDGE = "fractal20220817_data", "bridge_dataset"


def shard(root: Path, dataset: str, split: str = "train") -> Path:
    return root / dataset / "0.1.0" / f"{dataset}-{split}.tfrecord-00000-of-00001"


def edit_records(path: Path, edits: dict[int, dict]) -> None:
    """Replace features of some records of a shard (record index -> {feature: new value})."""
    records = oracle_records(path)
    for i, change in edits.items():
        ep = parse_example(records[i])
        ep.update(change)
        records[i] = encode_example(ep)
    write_records(path, records)


def cli_ingest(workdir: Path, sources: list[dict]):
    """`pyramid ingest` as a user runs it; returns the CLI result and the catalog's items and stage states."""
    cfg = workdir / "pyramid.yaml"
    cfg.write_text(json.dumps({"sources": sources}))  # YAML is a superset of JSON
    result = CliRunner().invoke(app, ["ingest", "--config", str(cfg), "--workdir", str(workdir), "--engine", "local"])
    with Catalog(config_from_dict({"workdir": str(workdir)}).catalog_path, read_only=True) as cat:
        items = {r["item_id"]: r for r in cat.items().to_pylist()}
        state = {r["item_id"]: r for r in cat.sql("SELECT * FROM item_stages").to_pylist()}
    return result, items, state


def test_empty_or_undecodable_camera_bytes_use_another_camera_else_quarantine(tmp_path):
    root = tmp_path / "oxe"
    write_oxe(root, 3, seed=0, dataset=FRACTAL, steps=(8, 10), image_size=(48, 64))
    write_oxe(root, 2, seed=1, dataset=BRIDGE, steps=(8, 10), image_size=(48, 64))
    fractal, bridge = shard(root, FRACTAL), shard(root, BRIDGE)
    t0, t1 = (len(oracle_example(r)["steps/is_first"]) for r in oracle_records(fractal)[:2])
    # fractal has one camera: record 0 stores it as b'' in every step, record 1 as bytes that are no image
    edit_records(fractal, {0: {"steps/observation/image": [b""] * t0},
                           1: {"steps/observation/image": [b"\x00not a jpeg"] * t1}})
    # bridge has two: image_0 is empty in record 0, image_1 still decodes
    b0 = len(oracle_example(oracle_records(bridge)[0])["steps/is_first"])
    edit_records(bridge, {0: {"steps/observation/image_0": [b""] * b0}})

    result, items, state = cli_ingest(tmp_path, [{"kind": "oxe", "root": str(root)}])
    assert result.exit_code == 0, result.output  # bad input is quarantined, not a failed run
    by_status = {k: v["status"] for k, v in state.items()}
    assert "failed" not in by_status.values()
    reasons = {k: v["reason"] for k, v in state.items() if v["status"] == "quarantined"}
    assert set(reasons) == {f"oxe/{FRACTAL}/train/0", f"oxe/{FRACTAL}/train/1"}
    assert reasons[f"oxe/{FRACTAL}/train/0"] == (
        f"no camera of {fractal.name} record 0 decodes: steps/observation/image {t0} of {t0} steps are empty bytes")
    assert reasons[f"oxe/{FRACTAL}/train/1"] == (
        f"no camera of {fractal.name} record 1 decodes: steps/observation/image step 0 does not decode (not JPEG/PNG)")
    # the bridge episode ingests with the camera that decodes, and says which one it left out and why
    it = items[f"oxe/{BRIDGE}/train/0"]
    assert it["cameras"] == ["image_1"] and it["frame_count"] == b0 and (it["height"], it["width"]) == (48, 64)
    assert it["media_uris"][0].endswith("key=steps/observation/image_1")
    assert json.loads(it["extras"])["cameras_skipped"] == {"image_0": f"{b0} of {b0} steps are empty bytes"}
    assert items[f"oxe/{BRIDGE}/train/1"]["cameras"] == ["image_0", "image_1"]
    assert json.loads(items[f"oxe/{BRIDGE}/train/1"]["extras"])["cameras_skipped"] == {}
    assert f"oxe/{FRACTAL}/val/0" in items  # the undamaged episode

    status = CliRunner().invoke(app, ["status", "--workdir", str(tmp_path)])
    assert status.exit_code == 0 and "empty bytes" in status.output
