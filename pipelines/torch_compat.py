"""Moved to `common/torch_compat.py`. Kept because venvs bootstrapped before the move run
`import pipelines.torch_compat` at every interpreter start (the .pth line `install-pth` wrote there)."""

from common.torch_compat import install_import_hook, install_torchvision_shim, set_worker_threads  # noqa: F401
