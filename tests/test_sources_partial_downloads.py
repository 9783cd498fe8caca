"""SSv2 and Ego4D as users download them (issue 14): official label files with the wrong schema stop with an error
naming file, record and field; partial downloads ingest what is on disk and say once per source what is not.

Trees are the project's generated SSv2/Ego4D samples in the released layouts (tests/test_sources_ssv2_ego4d.py),
edited here; expected counts come from the label and annotation files read here.
"""

from __future__ import annotations

import json
from collections import Counter

import pytest
from typer.testing import CliRunner

from jobs.cli import app
from sources import SourceError
from sources.ssv2 import SSv2Source
from tests.test_sources_ssv2_ego4d import N_CLIPS, ego, load, real_trees, run, ssv2, trees  # noqa: F401  fixtures


def test_label_files_with_the_wrong_schema_stop_with_file_record_and_field(trees):
    labels = trees / "samples" / "ssv2" / "labels"
    official = load(labels / "train.json")
    # what an unofficial export looks like: integer ids, label_id instead of template/placeholders
    wrong = [{"id": int(e["id"]), "label": e["label"], "label_id": 3} for e in official]
    (labels / "train.json").write_text(json.dumps(wrong))
    with pytest.raises(SourceError) as e:
        list(SSv2Source(trees / "samples" / "ssv2").discover())
    assert str(e.value) == (f"ssv2: labels/train.json record 0 (id {int(official[0]['id'])}): field 'id' is int "
                            f"'{int(official[0]['id'])}', the official files hold a str (e.g. \"78687\")")
    (labels / "train.json").write_text(json.dumps([{k: v for k, v in e.items() if k != "id"} | {"id": str(e["id"])}
                                                   for e in wrong]))
    with pytest.raises(SourceError, match=r"ssv2: labels/train.json record 0 \(id '\d+'\): field 'template' is missing; "
                                          r"official train.json records have id, label, template, placeholders "
                                          r"\(this one has label_id\)"):
        list(SSv2Source(trees / "samples" / "ssv2").discover())
    (labels / "train.json").write_text(json.dumps(official[:1] + [{**official[1], "placeholders": "a cup"}]))
    with pytest.raises(SourceError, match=r"record 1 \(id '\d+'\): field 'placeholders' is str 'a cup', the official "
                                          "files hold a list"):
        list(SSv2Source(trees / "samples" / "ssv2").discover())
    (labels / "train.json").write_text(json.dumps(official))
    classes = load(labels / "labels.json")
    first = next(iter(classes))
    (labels / "labels.json").write_text(json.dumps({**classes, first: int(classes[first])}))
    # through ingest: the source is skipped with that error (exit code 1 in the CLI), nothing half-ingested
    report, items, _, _ = run(trees, ssv2(trees))
    (label, error), = report.source_errors.items()
    assert label.startswith("ssv2:") and not items
    assert error == (f"ssv2: labels/labels.json entry {first!r}: the class index is {int(classes[first])!r}, the "
                     'official file holds a string of digits (e.g. "0")')


def test_partial_downloads_are_one_line_per_source_not_a_quarantine_row_per_clip(trees):
    ssv2_root, base = trees / "samples" / "ssv2", trees / "samples" / "ego4d" / "v2"
    listed = {f: [e["id"] for e in load(ssv2_root / "labels" / f)] for f in ("train.json", "validation.json",
                                                                             "test.json")}
    all_ids = sorted(i for ids in listed.values() for i in ids)
    kept = set(all_ids[:3])
    gone = [i for i in all_ids if i not in kept]
    for i in gone:
        (ssv2_root / "20bn-something-something-v2" / f"{i}.webm").unlink()
    per_file = Counter(f for f, ids in listed.items() for i in ids if i in gone)
    narrations = load(base / "annotations" / "narration.json")
    gone_uid = sorted(narrations)[0]
    (base / "full_scale" / f"{gone_uid}.mp4").unlink()  # a --video_uids download: narration.json lists every video
    n_gone = len(narrations[gone_uid]["narration_pass_1"]["narrations"])

    report, items, state, status = run(trees, ssv2(trees), ego(trees))
    assert status == "ok" and not [s for s in state.values() if s["status"] != "done"]
    assert {it["native_id"] for it in items if it["source"] == "ssv2"} == kept
    assert not [it for it in items if it["source"] == "ego4d" and it["native_id"].startswith(gone_uid)]
    notes = {label.split(":")[0]: lines for label, lines in report.source_notes.items()}
    files = ", ".join(f"{n} in {f}" for f, n in sorted(per_file.items()))
    assert notes["ssv2"] == [f"{len(gone)} listed clips are not on disk ({files}; first: "
                             f"{', '.join(sorted(gone, key=int)[:5])}); set the source option missing_clips: "
                             "quarantine to list each one"]
    assert notes["ego4d"] == [f"1 video narrated in annotations/narration.json is not on disk ({n_gone} narrations; "
                              f"first: {gone_uid}); set the source option missing_videos: quarantine to list each one"]
    # `pyramid status` shows the lines; the audit's --fail-on error is not flooded by quarantine rows
    out = CliRunner().invoke(app, ["status", "--workdir", str(trees)], terminal_width=250)
    assert out.exit_code == 0 and f"{len(gone)} listed clips are not on disk" in out.output
    assert "1 video narrated in" in out.output

    # the option lists them: one quarantined item per absent clip, with the file that lists it
    _, _, state, _ = run(trees, ssv2(trees, missing_clips="quarantine"), ego(trees, missing_videos="quarantine"))
    reasons = {k: v["reason"] for k, v in state.items() if v["status"] == "quarantined"}
    assert {k for k in reasons if k.startswith("ssv2/")} == {f"ssv2/{i}" for i in gone}
    assert sum(k.startswith(f"ego4d/{gone_uid}/") for k in reasons) == n_gone
