"""The checks, one module per category; importing this package registers them all."""

from audit.checks import content, duplicates, integrity, labels, motion, shards, splits

__all__ = ["content", "duplicates", "integrity", "labels", "motion", "shards", "splits"]
