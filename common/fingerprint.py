"""Input fingerprints: the short hash each per-item stage records per item, so a rerun redoes only what changed."""

from __future__ import annotations

import hashlib
import json
from typing import Any


def canonical_json(value: Any) -> str:
    """JSON with sorted keys; what JSON lacks (dates, paths) written with str()."""
    return json.dumps(value, sort_keys=True, default=str)


def fingerprint(*parts: Any, sep: str = "|") -> str:
    """blake2b-64 (hex) of the parts joined by `sep`: a str as it is, anything else as canonical JSON. Each stage
    keeps the parts and separator it always had, so fingerprints stored in existing workdirs still match."""
    text = sep.join(p if isinstance(p, str) else canonical_json(p) for p in parts)
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()
