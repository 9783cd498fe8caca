"""DPFlow backend: checkpoint resolution and errors, checkpoint round trips, the BGR convention, batching.

No test downloads anything: released weights are faked by writing our own (random) checkpoint under the release
file name into a temporary TORCH_HOME, and `torch.hub.download_url_to_file` is patched to fail loudly.
Inputs are one 64x96 pair (about 0.3-0.6 s per forward on CPU); the ptlflow import (~10 s) is paid once.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import flow_extraction  # noqa: F401  (torchvision CPU shim before ptlflow)
from flow_extraction.base import FlowConfigError
from flow_extraction.dpflow import (
    CHECKPOINT_FILES,
    DPFlowBackend,
    cached_checkpoint_path,
    resolve_checkpoint,
    save_checkpoint,
)

H, W = 64, 96


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """2 cores shared with other test processes: oversubscribing makes DPFlow 25x slower (deps.md §5)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _textured_pairs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """n RGB pairs of a smooth random colour texture, the second shifted by a few pixels: real motion to find.

    The red and blue channels are independent, so swapping them changes the input a lot.
    """
    import cv2

    rng = np.random.default_rng(seed)
    big = cv2.resize(rng.integers(0, 256, (12, 18, 3), dtype=np.uint8), (W + 16, H + 16), interpolation=cv2.INTER_CUBIC)
    firsts, seconds = [], []
    for i in range(n):
        dy, dx = rng.integers(-4, 5, size=2)
        firsts.append(big[8 : 8 + H, 8 : 8 + W])
        seconds.append(big[8 + dy : 8 + dy + H, 8 + dx : 8 + dx + W])
    return np.stack(firsts), np.stack(seconds)


@pytest.fixture(scope="module")
def pair():
    return _textured_pairs(1)


@pytest.fixture(scope="module")
def random_backend():
    return DPFlowBackend(None, allow_random=True, batch_size=1)


@pytest.fixture(scope="module")
def random_flow(random_backend, pair):
    return random_backend.compute(*pair)


@pytest.fixture(scope="module")
def saved_ckpt(random_backend, tmp_path_factory) -> Path:
    return save_checkpoint(random_backend, tmp_path_factory.mktemp("ckpt") / "dpflow-random.ckpt")


@pytest.fixture
def empty_torch_home(tmp_path, monkeypatch) -> Path:
    """A fresh TORCH_HOME, and any attempt to download fails the test instead of reaching for the network."""
    import torch.hub

    def no_download(url, *args, **kwargs):
        raise AssertionError(f"tried to download {url}")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir() elsewhere would override TORCH_HOME
    monkeypatch.setattr(torch.hub, "download_url_to_file", no_download)
    return tmp_path / "torch_home"


# --- cheap checks: no model built --------------------------------------------------------------------------


def test_module_import_does_not_import_ptlflow():
    code = (
        "import sys, flow_extraction.dpflow as d\n"
        "try:\n    d.DPFlowBackend(None)\nexcept d.FlowConfigError:\n    pass\n"
        "print('ptlflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "False"


def test_none_without_allow_random_is_refused():
    with pytest.raises(FlowConfigError, match="DPFlow needs a checkpoint"):
        DPFlowBackend(None)
    with pytest.raises(FlowConfigError, match="needs a checkpoint"):
        resolve_checkpoint(None)
    assert resolve_checkpoint(None, allow_random=True) is None


@pytest.mark.parametrize("name", sorted(CHECKPOINT_FILES))
def test_missing_named_checkpoint_names_cache_path_and_file(name, empty_torch_home):
    with pytest.raises(FlowConfigError) as err:
        resolve_checkpoint(name)
    msg = str(err.value)
    expected = empty_torch_home / "hub" / "checkpoints" / CHECKPOINT_FILES[name]
    assert str(expected) in msg
    assert CHECKPOINT_FILES[name] in msg
    assert "allow_download=True" in msg and "local checkpoint file" in msg
    # With downloads allowed the name passes resolution (ptlflow would fetch it; nothing is built here).
    assert resolve_checkpoint(name, allow_download=True) == name


def test_backend_with_missing_named_checkpoint_fails_fast(empty_torch_home):
    start = time.perf_counter()
    with pytest.raises(FlowConfigError, match="dpflow-things-2012b5d6.ckpt"):
        DPFlowBackend("things")
    assert time.perf_counter() - start < 5  # refused before any model import or build


def test_missing_file_path_is_named(tmp_path):
    missing = tmp_path / "nope" / "weights.ckpt"
    with pytest.raises(FlowConfigError, match="weights.ckpt"):
        resolve_checkpoint(missing)
    with pytest.raises(FlowConfigError, match="thing"):  # a typo of a name is neither a name nor a file
        resolve_checkpoint("thing")


def test_existing_file_resolves_to_absolute_path(tmp_path, monkeypatch):
    (tmp_path / "w.ckpt").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    assert resolve_checkpoint("w.ckpt") == str(tmp_path / "w.ckpt")


def test_fp16_on_cpu_and_missing_cuda_are_config_errors(saved_ckpt):
    import torch

    with pytest.raises(FlowConfigError, match="fp16"):
        DPFlowBackend(saved_ckpt, device="cpu", fp16=True)
    if not torch.cuda.is_available():
        with pytest.raises(FlowConfigError, match="CUDA"):
            DPFlowBackend(saved_ckpt, device="cuda")


# --- with the model ----------------------------------------------------------------------------------------


def test_release_file_names_match_ptlflow():
    import ptlflow

    urls = ptlflow.get_model_reference("dpflow").pretrained_checkpoints
    assert {name: url.rsplit("/", 1)[-1] for name, url in urls.items()} == CHECKPOINT_FILES


def test_random_weights_end_to_end(random_backend, random_flow):
    flow = random_flow
    assert flow.shape == (1, 2, H, W)
    assert flow.dtype == np.float32
    assert np.isfinite(flow).all()
    assert flow.std() > 0  # not a constant field
    info = random_backend.describe()
    assert info["backend"] == "dpflow"
    assert info["checkpoint"] == "random" and info["random_weights"] is True
    assert "RANDOM" in info["note"]
    assert info["device"] == "cpu" and info["precision"] == "fp32"
    assert info["params"] == 10_021_508  # DPFlow's size in ptlflow 0.4.2


def test_save_and_reload_from_file_gives_identical_flow(saved_ckpt, random_flow, pair):
    import torch

    ckpt = torch.load(saved_ckpt, weights_only=True)  # what ptlflow's loader does
    assert set(ckpt) == {"state_dict", "hyper_parameters"}
    assert ckpt["hyper_parameters"]["enc_hidden_chs"] == [64, 96, 128]

    reloaded = DPFlowBackend(saved_ckpt)
    np.testing.assert_array_equal(reloaded.compute(*pair), random_flow)
    info = reloaded.describe()
    assert info["random_weights"] is False
    assert info["checkpoint"] == saved_ckpt.name
    assert info["checkpoint_path"] == str(saved_ckpt)
    assert info["checkpoint_sha256"] == hashlib.sha256(saved_ckpt.read_bytes()).hexdigest()


def test_input_is_bgr(random_backend, random_flow, pair):
    """compute(RGB) must equal the raw model on a hand-built BGR tensor, and differ from it on RGB."""
    import torch

    first, second = pair

    def raw_model(channel_order: slice) -> np.ndarray:
        images = np.stack([first, second], axis=1)[..., channel_order]  # [1, 2, H, W, 3]
        tensor = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 1, 4, 2, 3).float() / 255.0
        with torch.inference_mode():
            return random_backend.model({"images": tensor})["flows"][:, 0].numpy()

    np.testing.assert_array_equal(random_flow, raw_model(slice(None, None, -1)))  # BGR
    unswapped = raw_model(slice(None))  # RGB fed as is
    assert np.abs(unswapped - random_flow).max() > 0.5


def test_batches_match_single_pairs(random_backend, monkeypatch):
    first, second = _textured_pairs(3, seed=1)
    singles = random_backend.compute(first, second)  # batch_size 1
    monkeypatch.setattr(random_backend, "batch_size", 2)  # batches of 2 and 1
    batched = random_backend.compute(first, second)
    # Different batch sizes may pick different conv kernels: equal up to float rounding, not bit for bit.
    np.testing.assert_allclose(batched, singles, atol=1e-3)
    assert np.abs(singles[0] - singles[1]).max() > 0.1  # the pairs themselves differ, so order is checked


def test_cached_checkpoint_by_name_loads_offline(empty_torch_home, random_backend, saved_ckpt, random_flow, pair,
                                                tmp_path, monkeypatch):
    cached = save_checkpoint(random_backend, cached_checkpoint_path("things"))
    assert cached == empty_torch_home / "hub" / "checkpoints" / "dpflow-things-2012b5d6.ckpt"
    # A stray file called "things" in the working directory must not be taken for the checkpoint.
    monkeypatch.chdir(tmp_path)
    (tmp_path / "things").write_bytes(b"not a checkpoint")

    assert resolve_checkpoint("things") == "things"
    by_name = DPFlowBackend("things")
    flow = by_name.compute(*pair)
    np.testing.assert_array_equal(flow, DPFlowBackend(saved_ckpt).compute(*pair))
    np.testing.assert_array_equal(flow, random_flow)
    info = by_name.describe()
    assert info["checkpoint"] == "things"
    assert info["checkpoint_path"] == str(cached)
    assert info["checkpoint_sha256"] == hashlib.sha256(cached.read_bytes()).hexdigest()
    assert info["checkpoint_matches_release_hash"] is False  # our random weights are not the release


def test_unloadable_file_is_a_config_error(tmp_path):
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"definitely not a torch checkpoint")
    with pytest.raises(FlowConfigError, match="junk.ckpt"):
        DPFlowBackend(junk)


def test_rejects_bad_frames(random_backend, pair):
    first, second = pair
    with pytest.raises(ValueError, match="uint8"):
        random_backend.compute(first.astype(np.float32), second.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        random_backend.compute(first, second[:, :32])


@pytest.mark.slow
def test_working_size_pair(random_backend):
    """One pair at the working size H x W = 384 x 320 (about 1-2 s warm on an idle CPU; far more when loaded)."""
    rng = np.random.default_rng(2)
    first = rng.integers(0, 256, (1, 384, 320, 3), dtype=np.uint8)
    second = np.roll(first, (2, 3), axis=(1, 2))
    random_backend.compute(first, second)  # warm-up: the first call at a new size is slower
    start = time.perf_counter()
    flow = random_backend.compute(first, second)
    print(f"DPFlow 384x320 pair: {time.perf_counter() - start:.2f} s")
    assert flow.shape == (1, 2, 384, 320) and flow.dtype == np.float32
    assert np.isfinite(flow).all()
