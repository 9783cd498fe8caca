"""Entry points: the CLI, the demo and the VAE jobs. They stand above the pipeline and the audit (both of which they
call), so no package below imports them."""
