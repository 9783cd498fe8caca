"""Checkpoints are data: named by what they hold (not by their pickle bytes), and loaded with weights_only=True,
so a file holding an object that would run code when unpickled is refused with a clear error."""

from __future__ import annotations

import dataclasses
import io
import os
import pickle

import pytest
import torch

from latent_action_vae.model import LatentActionVAE
from latent_action_vae.train import CHECKPOINT_KIND, checkpoint_identity, load_vae, read_vae_checkpoint
from manifests.checkpoints import UnsafeCheckpoint, content_identity, load_checkpoint
from pipelines.config import VAEConfig

SMALL = dict(image_size=32, widths=[8, 16, 32, 64, 128], latent_channels=64, hidden=32)


def vae_state(model: LatentActionVAE, vc: VAEConfig, **extra) -> dict:
    return {"kind": CHECKPOINT_KIND, "model": model.state_dict(), "step": 3, "vae_config": dataclasses.asdict(vc),
            "action_stats": {"arm": {"embodiment": "arm", "dim": 2, "q01": [-1.0, -2.0], "q99": [1.0, 2.0],
                                     "n_pairs": 5, "n_items": 1}}, **extra}


def test_equal_content_pickled_differently_has_one_identity(tmp_path):
    torch.manual_seed(0)
    vc = VAEConfig(**SMALL)
    model = LatentActionVAE(vc)
    state = vae_state(model, vc, code_version="abc")
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    torch.save(state, a)
    # the same weights as copies in another key order, with run-only settings and bookkeeping that differ
    copied = {k: v.clone() for k, v in reversed(list(model.state_dict().items()))}
    other = vae_state(model, dataclasses.replace(vc, steps=99, threads=4, log_every=7), code_version="def+dirty")
    torch.save({**other, "model": copied, "step": 9}, b)
    assert a.read_bytes() != b.read_bytes()
    ida, idb = checkpoint_identity(read_vae_checkpoint(a)), checkpoint_identity(read_vae_checkpoint(b))
    assert ida == idb and len(ida) == 32
    # one changed weight, one changed learning setting, one changed statistic: another identity each
    changed = {k: v.clone() for k, v in model.state_dict().items()}
    name = next(iter(changed))
    changed[name].view(-1)[0] += 1e-6
    torch.save({**state, "model": changed}, b)
    assert checkpoint_identity(read_vae_checkpoint(b)) != ida
    torch.save({**state, "vae_config": dataclasses.asdict(dataclasses.replace(vc, beta=vc.beta * 2))}, b)
    assert checkpoint_identity(read_vae_checkpoint(b)) != ida
    stats = {"arm": {**state["action_stats"]["arm"], "q99": [1.0, 2.5]}}
    torch.save({**state, "action_stats": stats}, b)
    assert checkpoint_identity(read_vae_checkpoint(b)) != ida


def test_identity_covers_dtype_and_shape_not_only_bytes():
    zeros = torch.zeros(4, dtype=torch.float32)
    assert content_identity({"w": zeros}, {}) != content_identity({"w": zeros.view(2, 2)}, {})
    assert content_identity({"w": zeros}, {}) != content_identity({"w": zeros.view(torch.int32)}, {})
    assert content_identity({"w": zeros}, {"a": 1, "b": [1, 2]}) == content_identity({"w": zeros.clone()},
                                                                                   {"b": (1, 2), "a": 1})


class RunsCode:
    """Unpickling this calls os.system: what a hostile checkpoint from a hub could hold."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_a_checkpoint_that_would_run_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    vc = VAEConfig(**SMALL)
    path = tmp_path / "last.pt"
    torch.save(vae_state(LatentActionVAE(vc), vc, payload=RunsCode()), path)
    with pytest.raises(UnsafeCheckpoint, match=r"refused to load this VAE checkpoint.*would run code"):
        load_vae(path)
    assert not (tmp_path / "PWNED").exists()
    # the same checkpoint without the object loads
    torch.save(vae_state(LatentActionVAE(vc), vc), path)
    model, state = load_vae(path)
    assert state["step"] == 3 and isinstance(model, LatentActionVAE)


def test_a_plain_pickle_is_refused_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "plain.pt"
    path.write_bytes(pickle.dumps({"kind": CHECKPOINT_KIND, "x": RunsCode()}))
    with pytest.raises(UnsafeCheckpoint, match="refused"):
        load_checkpoint(path)
    assert not (tmp_path / "PWNED").exists()
    buf = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buf)
    buf.seek(0)
    assert torch.equal(load_checkpoint(buf)["w"], torch.ones(2))
