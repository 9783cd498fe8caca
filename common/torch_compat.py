"""Process set-up for torch on this stack: the torchvision CPU shim (installed lazily, also through a .pth file in the
venv) and one torch thread per worker. Why: README.md, "Dependencies"."""

from __future__ import annotations

import importlib.abc
import os
import sys

_SHIM_LIB = None


def install_torchvision_shim() -> None:
    """Define torchvision's C++ op schemas when its compiled ops cannot load (CPU torch + CUDA torchvision)."""
    global _SHIM_LIB
    if _SHIM_LIB is not None:
        return
    import torch

    try:
        torch.ops.torchvision.nms  # the real ops are loaded (a matching torchvision build)
        return
    except (AttributeError, RuntimeError):
        pass
    if _torchvision_ops_load():
        return
    lib = torch.library.Library("torchvision", "DEF")
    lib.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    lib.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _SHIM_LIB = lib


def _torchvision_ops_load() -> bool:
    """Load torchvision's compiled ops (`_C`) if they load with this torch (a matching build, e.g. CUDA torch with
    its own torchvision): then they register the real op schemas and the shim must stay out, since defining the
    schemas first would make that registration abort the process. False when they cannot load (CPU torch with the
    CUDA torchvision wheel: a failed dlopen registers nothing) or torchvision is not installed."""
    import importlib.machinery
    import importlib.util

    import torch

    spec = importlib.util.find_spec("torchvision")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            path = os.path.join(folder, "_C" + suffix)
            if os.path.exists(path):
                try:
                    torch.ops.load_library(path)
                except (OSError, RuntimeError):
                    return False
                return True
    return False


class _ShimBeforeTorchvision(importlib.abc.MetaPathFinder):
    """Runs the shim when `torchvision` is first imported, then lets the normal finders do the import."""

    def find_spec(self, fullname, path=None, target=None):  # noqa: D102
        if fullname == "torchvision":
            sys.meta_path.remove(self)
            install_torchvision_shim()
        return None


def install_import_hook() -> None:
    if "torchvision" in sys.modules or any(isinstance(f, _ShimBeforeTorchvision) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _ShimBeforeTorchvision())


def set_worker_threads(n: int = 1) -> None:
    """One torch/OpenCV thread per worker: on 2 cores oversubscription made DPFlow 25-50x slower (deps.md §5)."""
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n)
    if "torch" in sys.modules:
        import torch

        torch.set_num_threads(n)
    if "cv2" in sys.modules:
        import cv2

        cv2.setNumThreads(n)


PTH_NAME = "motus_pyramid_torchvision_shim.pth"
# a .pth line that starts with `import` is executed by `site` at interpreter start; it must never fail
PTH_LINE = ('import sys; exec("try:\\n import common.torch_compat as _tc\\n _tc.install_import_hook()\\n'
            'except Exception:\\n pass")\n')


def install_pth(site_dir: str | os.PathLike | None = None) -> str:
    """Write the start-up hook into `site_dir` (default: this interpreter's site-packages); returns its path."""
    import sysconfig

    folder = os.fspath(site_dir) if site_dir is not None else sysconfig.get_paths()["purelib"]
    path = os.path.join(folder, PTH_NAME)
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write(PTH_LINE)
    os.replace(tmp, path)
    return path


WORKER_ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}


if __name__ == "__main__":  # python -m common.torch_compat install-pth [SITE_DIR]  (scripts/bootstrap.sh)
    if len(sys.argv) < 2 or sys.argv[1] != "install-pth":
        sys.exit("usage: python -m common.torch_compat install-pth [SITE_DIR]")
    print(install_pth(sys.argv[2] if len(sys.argv) > 2 else None))
