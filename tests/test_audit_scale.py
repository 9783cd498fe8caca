"""The audit's outputs at 100 k items: audit.html lists the top failing items of each check and stays small, and
audit_failures.csv holds every failing (check, item) pair with its reason."""

import csv

from audit.config import AuditConfig
from audit.on_disk import DiskContext
from audit.registry import Outcome, all_checks
from audit.run import CSV_COLUMNS, AuditResult, CheckResult, write_outputs
from pipelines.config import load_config

N_ITEMS = 100_000


def synthetic_rows(n):
    return [{"item_id": f"synthetic/clip_{i:06d}", "source": "synthetic", "native_id": f"clip_{i:06d}", "tier": "L1",
             "input_uri": f"/data/synthetic/clip_{i:06d}.mp4", "group_id": f"clip_{i:06d}", "split": "train",
             "fps": 30.0, "frame_count": 90, "duration_s": 3.0, "width": 160, "height": 120,
             "media_uris": [f"/data/synthetic/clip_{i:06d}.mp4"], "cameras": ["main"], "embodiment": None,
             "action_dim": None, "action_names": [], "action_semantics": None, "action_timing": None,
             "has_actions": False, "language": [], "extras": None} for i in range(n)]


def test_a_report_of_100k_failing_verdicts_stays_bounded_and_the_csv_holds_them_all(tmp_path):
    rows = synthetic_rows(N_ITEMS)
    ids = [r["item_id"] for r in rows]
    cfg = load_config(None, workdir=str(tmp_path), **{"runner.engine": "local"})
    settings = AuditConfig()
    ctx = DiskContext(cfg, settings, rows, [], {}, decode=False, label=f"synthetic:{tmp_path}")
    failing = {"media_readable": ids[::2], "black_frames": ids[1::3], "duration": ids[::6],
               "exact_duplicates": ids[:1000]}  # 50 000 + 33 333 + 16 667 + 1 000 verdicts
    results = []
    for check in all_checks():
        out = Outcome(checked=ids) if check.name in failing else Outcome.skipped("not part of this test")
        for item_id in failing.get(check.name, []):
            out.failures[item_id] = f"{check.name} failed for {item_id}"
        if check.name == "exact_duplicates":
            out.sets = [ids[:1000]] + [[ids[i], ids[i + 1]] for i in range(2000, 2100, 2)]
        results.append(CheckResult(check, out, 0.0))
    result = AuditResult("scale-test", results, tmp_path / "audit.html", tmp_path / "audit.json", 0.0)
    summary = {"checks": [r.to_json() for r in results]}
    write_outputs(result, summary, ctx)

    expected = sum(len(v) for v in failing.values())
    assert expected > 100_000
    with open(result.csv_path, newline="") as f:
        reader = csv.reader(f)
        assert tuple(next(reader)) == CSV_COLUMNS
        body = list(reader)
    assert len(body) == expected
    assert {(r[0], r[3]) for r in body} == {(name, i) for name, v in failing.items() for i in v}
    html = result.report_path.read_text()
    assert len(html.encode()) < 1_500_000, len(html.encode())  # a few hundred rows, not 100 k
    top = settings.failing_items_in_report
    # items failing the most checks come first: clip 0 fails media_readable, duration and exact_duplicates
    assert html.index("synthetic/clip_000000") < html.index("synthetic/clip_000002")
    assert f"… and {50_000 - top} more (all in audit_failures.csv)" in html
    assert "audit_failures.csv</a>" in html and "… and 992 more members" in html
    assert html.count("<code>synthetic/clip_") <= 4 * top + 20 * 8 + 3 * settings.items_per_source_in_report + 20
