"""The DC-AE latent-action VAE: model, losses, training, evaluation, and encoding clips to latent actions."""

import common.torch_compat as _torch_compat

_torch_compat.install_import_hook()
