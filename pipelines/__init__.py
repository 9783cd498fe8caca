"""The jobs: source adapters, stages, runners (Ray by default, Apache Beam as the alternative), config and CLI."""

from common.torch_compat import install_import_hook as _install_import_hook

_install_import_hook()
