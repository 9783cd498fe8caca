"""The checks, one module per category; importing this package registers them all."""

from audit.checks import (content, dataset, duplicates, integrity, label_quality, labels, language, motion, shards,
                          splits, state)

__all__ = ["content", "dataset", "duplicates", "integrity", "label_quality", "labels", "language", "motion", "shards",
           "splits", "state"]
