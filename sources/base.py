"""The source-adapter interface every tier plugs into: `discover()` lists inputs in the driver, `probe(ref)` reads one
in a worker and returns its `Item` record. Contract (splits, BadInput, links): docs/formats.md#adapters."""

from __future__ import annotations

import difflib
import json
import os
import re
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Iterator, Mapping, Sequence

import numpy as np

from manifests import actions
from manifests.items import Item


# a file of a Hugging Face hub cache: <cache>/<type>s--<owner>--<name>/blobs/<git sha1 or sha256>
_HUB_BLOB = re.compile(r"/(?:datasets|models|spaces)--[^/]+/blobs/(?:[0-9a-f]{40}|[0-9a-f]{64})$")


class SourceError(Exception):
    """The source as a whole cannot be read (wrong root, missing dataset-level metadata)."""


def read_json(path: Path, who: str, shown: str | Path | None = None) -> Any:
    """A dataset-level JSON file, or `SourceError` naming it when it is not JSON (or not UTF-8 text)."""
    try:
        return json.loads(Path(path).read_bytes().decode("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SourceError(f"{who}: {shown if shown is not None else path} is not valid JSON: {e}") from e


@dataclass(frozen=True)
class ItemRef:
    """What discovery knows about an item: enough for a worker to find and probe it."""

    item_id: str
    native_id: str
    input_uri: str
    fingerprint: str
    details: dict[str, Any] = field(default_factory=dict)


# Options every adapter takes; an adapter adds its own in `OPTIONS`.
COMMON_OPTIONS = frozenset({"link_roots"})
# ... and those of adapters whose items carry actions (read by `action_meaning`)
ACTION_OPTIONS = frozenset({"action_semantics", "action_timing"})


class SourceAdapter(ABC):
    name: ClassVar[str]
    default_tier: ClassVar[int]
    OPTIONS: ClassVar[frozenset[str]] = frozenset()  # the source options this adapter reads

    def __init__(self, root: str | Path, tier: int | None = None, **options: Any):
        self.root = Path(root)
        self.tier = tier or self.default_tier
        self.options = options
        # one line per source-level finding of discover() (e.g. "5 listed clips are not on disk"), shown by ingest
        # and `pyramid status` instead of one quarantine row per item
        self.notes: list[str] = []
        if not self.root.exists():
            raise SourceError(f"{self.name}: root {self.root} does not exist")
        self.check_options(options)
        links = options.get("link_roots") or []
        if isinstance(links, (str, os.PathLike)) or not all(isinstance(p, (str, os.PathLike)) for p in links):
            raise SourceError(f"{self.name}: the option link_roots is a list of folders, not {links!r}")
        # where an item's files may really be: the root (itself possibly a link) and the folders the user names
        self.link_roots = [Path(os.path.realpath(self.root)),
                           *(Path(os.path.realpath(Path(p).expanduser())) for p in links)]

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> None:
        """SourceError naming a source option this adapter does not read (a typo would otherwise be ignored)."""
        known = COMMON_OPTIONS | cls.OPTIONS
        for key in sorted(set(options) - known):
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise SourceError(f"{cls.name}: unknown source option {key!r}{hint}; this source reads "
                              f"{', '.join(sorted(known))}")

    def item_id(self, native_id: str) -> str:
        return f"{self.name}/{native_id}"

    @abstractmethod
    def discover(self) -> Iterator[ItemRef]: ...

    @abstractmethod
    def probe(self, ref: ItemRef) -> Item: ...

    @classmethod
    def load_actions(cls, row: dict[str, Any]) -> np.ndarray:
        """The item's actions, float64 [frame_count, action_dim] at the item's native fps (labelled sources only)."""
        raise NotImplementedError(f"{cls.name} items carry no actions")

    @classmethod
    def sim_media(cls, row: dict[str, Any], camera: str, uri: str) -> str | None:
        """The file holding exact-flow extras (depth, segmentation, poses) for `camera` of an item whose extras
        say it has them, or None: flow from pixels. Sources written by our simulators say where they keep them."""
        return None

    def outside_root(self, uri: str | None) -> str | None:
        """Why the local file named by `uri` (the path before any `#`) must not be read: it resolves, through a
        symlink, outside the source root and `link_roots`; None when it may be read (inside them, a hub cache
        blob, or not a local path)."""
        path = (uri or "").split("#", 1)[0]
        if not path or "://" in path:
            return None
        real = Path(os.path.realpath(path))
        if any(real == r or r in real.parents for r in self.link_roots) or _HUB_BLOB.search(real.as_posix()):
            return None
        return (f"{path} is a symlink (or lies under one) to {real}, outside the source root {self.root}: not "
                "read; list the target folder in the source option link_roots to ingest it")

    def item(self, ref: ItemRef, **known: Any) -> Item:
        """The item record of `ref`: its ids, tier and input from here, the rest what the adapter knows (the
        record's defaults say what follows from it)."""
        return Item(item_id=ref.item_id, source=self.name, native_id=ref.native_id, tier=self.tier,
                    input_uri=ref.input_uri, **known)


def action_meaning(options: Mapping[str, Any], names: Sequence[str], default: Any, timing: str,
                   where: str) -> tuple[list[str], str, str]:
    """(per-dim semantics, timing, where they came from) of a source's actions: the source options
    `action_semantics` (one `kind[:part]` for all dims, or a list per dim) and `action_timing` win over the
    adapter's own reading `default` (same forms). Bad values are a SourceError naming the source."""
    spec, came_from = (options["action_semantics"], "option") if options.get("action_semantics") else (default, "")
    timing = str(options.get("action_timing") or timing)
    try:
        semantics = actions.validate(actions.expand(spec, names, where), len(names), timing, where)
    except ValueError as e:
        raise SourceError(str(e)) from None
    return semantics, timing, came_from
