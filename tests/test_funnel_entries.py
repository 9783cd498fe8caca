"""The funnel counts per configured source entry (dataset root), not per adapter kind: four LeRobot datasets are four
rows in `pyramid status` and in the audit's funnel, each with its own counts."""

from __future__ import annotations

from typer.testing import CliRunner

from audit import AuditConfig
from audit.context import AuditContext
from audit.funnel import funnel
from catalog import Catalog
from catalog.entries import entry_of
from jobs.cli import app
from pipelines.config import config_from_dict
from samples.lerobot_ds import write_lerobot
from tests.test_sources_oxe_quirks import cli_ingest

ROOTS = {"arm_a": 2, "arm_b": 3, "arm_c": 2, "arm_d": 1}  # repo name -> episodes


def test_four_lerobot_roots_are_four_funnel_rows_in_status_and_audit(tmp_path):
    for i, (name, n) in enumerate(ROOTS.items()):
        write_lerobot(tmp_path / "data" / name, n, seed=i, version="v2.1", size=(48, 64))
    # arm_c's second episode lost its only video: quarantined there, and only there
    (tmp_path / "data" / "arm_c" / "videos" / "chunk-000" / "observation.images.cam_high" / "episode_000001.mp4").unlink()
    sources = [{"kind": "lerobot", "root": f"data/{name}"} for name in ROOTS]
    result, items, state = cli_ingest(tmp_path, sources)
    assert result.exit_code == 0, result.output
    assert len(items) == sum(ROOTS.values()) - 1

    status = CliRunner().invoke(app, ["status", "--workdir", str(tmp_path)], terminal_width=250)
    assert status.exit_code == 0, status.output
    table = status.output.split("Funnel per source entry and stage", 1)[1].split("└", 1)[0]
    rows = {line.split("│")[2].strip(): [c.strip() for c in line.split("│")[1:-1]]
            for line in table.splitlines() if "│ lerobot" in line and "│ ingest" in line}
    assert set(rows) == {f"data/{name}" for name in ROOTS}
    columns = ["source", "root", "tier", "stage", "seen", "done", "quarantined", "failed", "train/val/test"]
    by_root = {root: dict(zip(columns, cells)) for root, cells in rows.items()}
    for name, n in ROOTS.items():
        row = by_root[f"data/{name}"]
        assert row["seen"] == str(n) and row["tier"] == "6"
        assert row["quarantined"] == ("1" if name == "arm_c" else "0")
        assert row["done"] == str(n - (name == "arm_c"))
        assert sum(int(x) for x in row["train/val/test"].split("/")) == n - (name == "arm_c")

    cfg = config_from_dict({"workdir": str(tmp_path), "sources": sources})
    with Catalog(cfg.catalog_path, read_only=True) as cat:
        rows = funnel(AuditContext(cfg, cat, AuditConfig()))
    assert [(r["source"], r["entry"], r["in"], r["quarantined"]) for r in rows] == [
        ("lerobot", f"lerobot:data/{name}", n, int(name == "arm_c")) for name, n in ROOTS.items()]
    assert rows[2]["reasons"] and "episode_000001.mp4" in rows[2]["reasons"][0]["reason"]


def test_an_item_goes_to_the_longest_root_of_its_kind_else_its_only_entry_else_its_kind():
    entries = [("lerobot:data", "lerobot", ["/w/data"]), ("lerobot:data/x", "lerobot", ["/w/data/x"]),
               ("ssv2:clips", "ssv2", ["/w/clips"])]
    assert entry_of("lerobot/x/episode_0", "/w/data/x/data/chunk-000/e.parquet", entries) == "lerobot:data/x"
    assert entry_of("lerobot/y/episode_0", "/w/data/y/e.parquet", entries) == "lerobot:data"
    assert entry_of("lerobot/z/episode_0", "/elsewhere/e.parquet", entries) == "lerobot"  # two entries: not guessed
    assert entry_of("ssv2/1", "/moved/1.webm", entries) == "ssv2:clips"  # its kind's only entry
    assert entry_of("oxe/a/train/0", "/w/oxe/a", entries) == "oxe"  # no entry of its kind configured
    assert entry_of("lerobot/x/episode_0", "/w/data/xy/e.parquet", entries) == "lerobot:data"  # not a path prefix
