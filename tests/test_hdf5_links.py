"""HDF5 files are data, never a way to read other files: a RoboTwin episode whose image dataset is an external link
or a virtual dataset pointing outside its folder is quarantined with the link named, before HDF5 opens the target;
a link to a file beside it is followed as HDF5 would."""

from __future__ import annotations

import shutil

import h5py
import numpy as np
import pytest

from catalog import Catalog
from media.hdf5_open import UnsafeHDF5, open_hdf5
from pipelines.config import config_from_dict
from pipelines.ingest import ingest
from pipelines.runners import LocalRunner

RGB = "observation/head_camera/rgb"


def _move_out(episode, target, key=RGB):
    """Move `key` of `episode` into the file `target` (dataset "rgb") and return its data."""
    with h5py.File(episode, "r+") as h5:
        data = h5[key][()]
        del h5[key]
    with h5py.File(target, "w") as out:
        out.create_dataset("rgb", data=data)
    return data


def test_external_links_and_virtual_datasets_outside_the_folder_are_quarantined(tmp_path, sim_samples):
    root = tmp_path / "robotwin"
    shutil.copytree(sim_samples / "robotwin", root)
    secret_dir = tmp_path / "elsewhere"
    secret_dir.mkdir()
    eps = sorted(root.rglob("episode*.hdf5"))
    assert len(eps) == 2
    # episode 0: the image dataset is an external link to a file outside the episode's folder
    _move_out(eps[0], secret_dir / "secret.h5")
    with h5py.File(eps[0], "r+") as h5:
        h5[RGB] = h5py.ExternalLink(str(secret_dir / "secret.h5"), "rgb")
    # episode 1: a virtual dataset whose source is outside, then (checked below) a link to a file beside it
    data = _move_out(eps[1], secret_dir / "secret1.h5")
    layout = h5py.VirtualLayout(shape=data.shape, dtype=data.dtype)
    layout[:] = h5py.VirtualSource(str(secret_dir / "secret1.h5"), "rgb", shape=data.shape)
    with h5py.File(eps[1], "r+") as h5:
        h5.create_virtual_dataset(RGB, layout)

    cfg = config_from_dict({"workdir": str(tmp_path / "work"), "runner": {"engine": "local"},
                            "sources": [{"kind": "robotwin", "root": str(root)}]})
    with Catalog(cfg.catalog_path) as cat:
        ingest(cfg, cat, LocalRunner(), progress=False)
        state = {r["item_id"]: r for r in cat.sql("SELECT * FROM item_stages").to_pylist()}
    reasons = {k.rsplit("/", 1)[-1]: (v["status"], v["reason"]) for k, v in state.items()}
    assert reasons["episode0"][0] == "quarantined"
    assert f"external link {RGB}" in reasons["episode0"][1] and "outside its folder" in reasons["episode0"][1]
    assert reasons["episode1"][0] == "quarantined"
    assert f"virtual dataset {RGB} reads" in reasons["episode1"][1] and "secret1.h5" in reasons["episode1"][1]

    # the same data in a file beside the episode, linked relatively: followed, frames read through the link
    beside = eps[1].parent / "head_camera_rgb.h5"
    shutil.copy(secret_dir / "secret1.h5", beside)
    with h5py.File(eps[1], "r+") as h5:
        del h5[RGB]
        h5[RGB] = h5py.ExternalLink(beside.name, "rgb")
    with open_hdf5(eps[1]) as h5:
        assert np.array_equal(h5[RGB][()], data)


def test_a_relative_link_that_climbs_out_is_refused_before_it_is_followed(tmp_path):
    inner = tmp_path / "root" / "data"
    inner.mkdir(parents=True)
    with h5py.File(tmp_path / "outside.h5", "w") as f:
        f["x"] = np.arange(3)
    with h5py.File(inner / "episode0.hdf5", "w") as f:
        f["x"] = h5py.ExternalLink("../../outside.h5", "x")
        f["ok"] = np.zeros(2)
    with pytest.raises(UnsafeHDF5, match=r"episode0.hdf5: external link x → \.\./\.\./outside\.h5:x outside"):
        open_hdf5(inner / "episode0.hdf5")
