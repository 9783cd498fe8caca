"""Shard loaders that yield the Motus batch contract, the compact Motus trainer, and training launch."""

import common.torch_compat as _torch_compat

_torch_compat.install_import_hook()
