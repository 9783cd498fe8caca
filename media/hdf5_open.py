"""Open an HDF5 file a user did not write as data only: its external links and virtual datasets may point at
other files, which HDF5 opens on access without asking (any path: another dataset, `/dev/zero`, a network mount).
`open_hdf5` walks the file's links before anything reads it and refuses a link or a virtual dataset whose target
file is not inside the file's own folder, naming it; targets inside that folder are followed as HDF5 would."""

from __future__ import annotations

import os
from pathlib import Path

import h5py

from common.errors import BadInput


class UnsafeHDF5(ValueError):
    """An HDF5 file links outside its folder."""


def _inside(target: str, folder: Path) -> bool:
    if target in (".", ""):  # a virtual dataset's source in the same file
        return True
    resolved = (folder / target).resolve() if not os.path.isabs(target) else Path(target).resolve()
    return resolved.is_relative_to(folder)


def check_links(h5: h5py.File, path: Path) -> None:
    """Raise `UnsafeHDF5` for the first external link or virtual-dataset source that leaves `path`'s folder."""
    folder = path.resolve().parent
    problems: list[str] = []

    def visit(name: str, link: h5py.HardLink | h5py.SoftLink | h5py.ExternalLink) -> None:
        if problems:
            return
        if isinstance(link, h5py.ExternalLink):
            if not _inside(link.filename, folder):
                problems.append(f"external link {name} → {link.filename}:{link.path}")
            return
        if isinstance(link, h5py.HardLink):
            obj = h5.get(name)
            if isinstance(obj, h5py.Dataset) and obj.is_virtual:
                outside = [m.file_name for m in obj.virtual_sources() if not _inside(m.file_name, folder)]
                if outside:
                    problems.append(f"virtual dataset {name} reads {outside[0]}")

    h5.visititems_links(visit)
    if problems:
        raise UnsafeHDF5(f"{path.name}: {problems[0]} outside its folder; not followed (HDF5 files are read as "
                         "data only)")


def open_hdf5(path: str | os.PathLike) -> h5py.File:
    """`h5py.File(path, "r")` after `check_links`; the caller closes it (`with open_hdf5(p) as h5:`)."""
    path = Path(path)
    h5 = h5py.File(path, "r")
    try:
        check_links(h5, path)
    except UnsafeHDF5:
        h5.close()
        raise
    except (RuntimeError, KeyError, ValueError) as e:  # HDF5 cannot walk its own link table: a damaged file
        h5.close()
        raise OSError(f"damaged HDF5 structure: {e}") from e
    return h5


def open_hdf5_input(path: str | os.PathLike) -> h5py.File:
    """`open_hdf5` for a source's input file: an unreadable or unsafe file is `BadInput` (quarantined), named."""
    try:
        return open_hdf5(path)
    except OSError as e:
        raise BadInput(f"unreadable HDF5 {Path(path).name}: {e}") from e
    except UnsafeHDF5 as e:
        raise BadInput(str(e)) from None
