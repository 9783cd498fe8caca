"""A real two-node Ray cluster on this machine (head + one worker node, 1 CPU each, token auth as Ray 2.60 does
it): the per-item stages run on it through `--ray-address`, work lands on both nodes, and the catalog says the same
as an in-process run of the same samples. The recipe is README's "A Ray cluster, step by step"."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.slow

SOURCES = """
sources:
  - {kind: robotwin, root: samples/robotwin}
  - {kind: task_agnostic, root: samples/task_agnostic/aloha_random}
flow: {store_size: [32, 32]}
vae: {image_size: 32, widths: [8, 16, 32, 64, 128], latent_channels: 64, hidden: 64, batch_size: 8, steps: 4,
      checkpoint_every: 2, threads: 1}
shards: {language_encoder: none}
"""
RAY = str(Path(sys.executable).with_name("ray"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _nodes_alive(address: str, env: dict[str, str]) -> int:
    out = subprocess.run([RAY, "status", f"--address={address}"], capture_output=True, text=True, env=env, timeout=60)
    return out.stdout.count(" node_") if out.returncode == 0 else 0


def _start_node(args: list[str], temp_dir: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    # --block keeps `ray start` in the foreground and stops the node's processes when it is terminated, so the
    # test stops its own cluster and never runs `ray stop` (which would stop every Ray instance on the machine)
    return subprocess.Popen([RAY, "start", *args, "--num-cpus=1", f"--temp-dir={temp_dir}", "--block",
                             "--disable-usage-stats"], env=env, stdout=log.open("w"), stderr=subprocess.STDOUT,
                            start_new_session=True)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)


@pytest.fixture
def cluster(tmp_path):
    """(address, env): a head and a worker node sharing a token passed by environment (nothing written to
    ~/.ray). Temp dirs are short paths: Ray's socket paths must fit in 107 characters."""
    temp = Path(tempfile.mkdtemp(prefix="rc", dir="/tmp"))
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32),
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    port = _free_port()
    address = f"127.0.0.1:{port}"
    procs = [_start_node(["--head", f"--port={port}", "--include-dashboard=false"], temp / "head", env,
                         tmp_path / "head.log")]
    try:
        for wanted in (1, 2):
            deadline = time.time() + 120
            while _nodes_alive(address, env) < wanted:
                assert all(p.poll() is None for p in procs), (tmp_path / "head.log").read_text()[-2000:]
                assert time.time() < deadline, f"the cluster did not reach {wanted} node(s)"
                time.sleep(1)
            if wanted == 1:
                procs.append(_start_node([f"--address={address}"], temp / "worker", env, tmp_path / "worker.log"))
        yield address, env
    finally:
        for p in reversed(procs):
            _stop(p)
        shutil.rmtree(temp, ignore_errors=True)


def _pyramid(args: list[str], workdir: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "jobs.cli", *args, "--config", str(workdir / "sim.yaml"),
                          "--workdir", str(workdir)], capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    return out


def _catalog_facts(workdir: Path) -> dict[str, list]:
    """What a run decided per item, with run ids, times and the workdir's own path taken out."""
    con = duckdb.connect(str(workdir / "catalog.duckdb"), read_only=True)
    try:
        q = {"items": "SELECT item_id, source, tier, split, frame_count, input_blake2b FROM items ORDER BY item_id",
             "stages": "SELECT item_id, stage, status, reason FROM item_stages ORDER BY item_id, stage",
             "artifacts": "SELECT item_id, stage, kind, bytes, blake2b FROM artifacts WHERE item_id IS NOT NULL "
                          "ORDER BY item_id, stage, kind",
             "flow": "SELECT item_id, backend, n_pairs, mean_px, p90_px, static_pair_fraction FROM flow_stats ORDER BY item_id",
             "shards": "SELECT split, n_samples, item_ids FROM shards ORDER BY split, path"}
        return {k: con.execute(sql).fetchall() for k, sql in q.items()}
    finally:
        con.close()


def _node_counts(workdir: Path, job: str) -> dict[str, int]:
    con = duckdb.connect(str(workdir / "catalog.duckdb"), read_only=True)
    try:
        counts = con.execute("SELECT counts FROM runs WHERE job = ? AND status = 'ok' ORDER BY started_at DESC "
                             "LIMIT 1", [job]).fetchone()[0]
    finally:
        con.close()
    return json.loads(counts).get("nodes", {})


def test_per_item_stages_on_a_two_node_cluster_match_a_local_run(cluster, tmp_path, sim_samples):
    address, env = cluster
    runs = {}
    for name in ("on_cluster", "local"):
        wd = tmp_path / name
        shutil.copytree(sim_samples, wd / "samples")
        (wd / "sim.yaml").write_text(SOURCES)
        runs[name] = wd
    local_env = {k: v for k, v in env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    for stage in ("ingest", "flow", "label", "shard"):
        if stage == "label":  # a global step, in-process on the driver: the same tiny VAE both times (seeded)
            for wd in runs.values():
                _pyramid(["vae", "train"], wd, local_env)
        out = _pyramid([stage, "--ray-address", address], runs["on_cluster"], env)
        assert f"[{stage}] items per node:" in out.stderr, out.stderr[-2000:]
        nodes = _node_counts(runs["on_cluster"], stage)
        assert len(nodes) == 2, nodes  # both nodes ran items
        _pyramid([stage, "--engine", "local"], runs["local"], local_env)
        assert _node_counts(runs["local"], stage) == {}  # in-process: no nodes to count
    cluster_facts, local_facts = _catalog_facts(runs["on_cluster"]), _catalog_facts(runs["local"])
    assert len(cluster_facts["items"]) == 5 and len(cluster_facts["flow"]) == 5 and cluster_facts["shards"]
    assert {s for _, _, s, _ in cluster_facts["stages"]} == {"done"}
    assert cluster_facts == local_facts
