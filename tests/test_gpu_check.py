"""The prepared GPU check (`bench/gpu_check.sh`) runs every row on CPU with `--cpu`, so it is ready for a device."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_gpu_check_runs_every_row_on_cpu(tmp_path):
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "GPU_CHECK_WHEELS": str(tmp_path / "none")}
    out = tmp_path / "gpu_check.txt"
    done = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--cpu", "--out", str(out)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rows = json.loads(out.with_suffix(".json").read_text())["rows"]
    assert {r["component"] for r in rows} == {"dpflow", "vae-train", "label-encode", "label-item", "motus-train"}
    assert all(float(r["items/s"]) > 0 and "ERROR" not in r["note"] for r in rows), rows
    assert "motus-train" in out.read_text()
