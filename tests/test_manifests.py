import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from manifests import ITEMS, SplitRatios, assign_split, read_manifest, validate_rows, write_manifest


def item_row(i: int, group: str) -> dict:
    return dict(item_id=f"src/{i}", source="src", native_id=str(i), tier=3, group_id=group, split="train",
                has_actions=True, input_uri=f"/data/{i}", action_names=["a", "b"], fps=16.7)


def test_validate_rows_builds_items_table_with_declared_types():
    table = validate_rows(ITEMS, [item_row(0, "g0"), item_row(1, "g1")])
    assert table.schema.equals(ITEMS)
    assert table.num_rows == 2
    assert table.column("action_names").to_pylist() == [["a", "b"], ["a", "b"]]
    assert table.column("frame_count").null_count == 2


def test_validate_rows_rejects_unknown_and_missing_columns_by_name():
    with pytest.raises(ValueError, match="unknown columns.*'fsp'"):
        validate_rows(ITEMS, [{**item_row(0, "g"), "fsp": 3}])
    row = item_row(0, "g")
    del row["group_id"]
    with pytest.raises(ValueError, match="group_id"):
        validate_rows(ITEMS, [row])
    with pytest.raises(ValueError, match="frame_count"):
        validate_rows(ITEMS, [{**item_row(0, "g"), "frame_count": "many"}])


def test_split_assignment_is_stable_across_processes():
    import subprocess
    import sys

    ratios = SplitRatios(0.6, 0.2, 0.2)
    groups = [f"video_{i}" for i in range(400)]
    first = [assign_split(g, ratios) for g in groups]
    # another interpreter with another hash seed must agree (Python's hash() would not: it is salted per process)
    code = ("from manifests import SplitRatios, assign_split; "
            "print(','.join(assign_split(f'video_{i}', SplitRatios(0.6, 0.2, 0.2)) for i in range(400)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={"PYTHONHASHSEED": "12345", "PATH": ""}).stdout.strip()
    assert out.split(",") == first
    share = {s: first.count(s) / len(first) for s in ("train", "val", "test")}
    assert share["train"] == pytest.approx(0.6, abs=0.07)
    assert share["val"] == pytest.approx(0.2, abs=0.07)
    # a different salt draws a different partition
    other = [assign_split(g, SplitRatios(0.6, 0.2, 0.2, salt="other")) for g in groups]
    assert other != first


def test_split_ratios_must_sum_to_one():
    with pytest.raises(ValueError, match="sum to 1"):
        SplitRatios(0.8, 0.3, 0.1)


def test_manifest_write_is_atomic_and_reads_back(tmp_path):
    table = validate_rows(ITEMS, [item_row(i, f"g{i}") for i in range(5)])
    path = write_manifest(table, tmp_path / "m" / "items.parquet", {"run_id": "r1"})
    assert [p.name for p in path.parent.iterdir()] == ["items.parquet"]  # no temp files left behind
    back = read_manifest(path, ITEMS)
    assert back.equals(table)
    assert pq.read_schema(path).metadata[b"run_id"] == b"r1"
    with pytest.raises(ValueError, match="lacks columns"):
        bad = tmp_path / "bad.parquet"
        pq.write_table(pa.table({"item_id": ["x"]}), bad)
        read_manifest(bad, ITEMS)
