"""Optical-flow backends (DPFlow through ptlflow, OpenCV DIS, exact flow from simulation), colouring, statistics."""

import common.torch_compat as _torch_compat

_torch_compat.install_import_hook()
