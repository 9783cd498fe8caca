"""Shared fixtures: a small sample pyramid made once per test session with the project's own generators."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("MUJOCO_GL", "egl")
os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def sim_samples(tmp_path_factory) -> Path:
    """Small RoboTwin and task-agnostic trees (good items only), shared read-only by tests; copy before damaging."""
    from samples.sim_robotwin import write_robotwin
    from samples.sim_task_agnostic import write_task_agnostic

    root = tmp_path_factory.mktemp("samples")
    write_task_agnostic(root / "task_agnostic" / "aloha_random", n_episodes=3, n_frames=20, seed=1)
    write_robotwin(root / "robotwin", n_episodes=2, seed=0)
    return root


@pytest.fixture
def workdir(tmp_path, sim_samples) -> Path:
    """A fresh workdir holding a private copy of the sample trees."""
    shutil.copytree(sim_samples, tmp_path / "samples")
    return tmp_path


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for all Ray tests (starting Ray costs seconds)."""
    import ray

    from pipelines.runners.ray_runner import init_ray

    init_ray(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """moto's S3 server on a free localhost port for the session (tests/s3_server.py); skipped without moto."""
    from tests.s3_server import MotoServer, moto_available

    why = moto_available()
    if why:
        pytest.skip(why)
    server = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def s3_bucket(s3_server, monkeypatch, request) -> str:
    """`s3://<fresh bucket>` on the test server, with the AWS_* variables pointing at it for this test."""
    import uuid

    from common import storage

    for var in storage.S3_ENV:
        monkeypatch.delenv(var, raising=False)
    for var, value in s3_server.env().items():
        monkeypatch.setenv(var, value)
    bucket = f"test-{uuid.uuid4().hex[:12]}"
    import boto3

    boto3.client("s3", endpoint_url=s3_server.endpoint).create_bucket(Bucket=bucket)
    return f"s3://{bucket}"
