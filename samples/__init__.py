"""Sample pyramid generators: small datasets in each tier's official on-disk layout, made offline."""
