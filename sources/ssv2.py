"""Something-Something v2 (tier L1, web video): one item per `<id>.webm`, as 20BN / Qualcomm release it.
Layout, splits and quirks: docs/formats.md#ssv2-ego4d."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
import sqlite3
import tempfile
from collections import Counter
from pathlib import Path
from typing import Any, Iterator

from sources.media import file_checksum, fingerprint, probe_video
from sources.base import Item, ItemRef, SourceAdapter, SourceError, read_json
from common.errors import BadInput

VIDEO_DIR = "20bn-something-something-v2"
LABEL_DIR = "labels"
# official label file -> the split name the catalog uses
SPLIT_FILES = {"train.json": "train", "validation.json": "val", "test.json": "test"}
DEFAULT_LICENCE = "SSv2 licence (Qualcomm / 20BN), research use"


def _sort_key(clip_id: str) -> tuple[int, int | str]:
    """Numeric ids in numeric order (SSv2 ids are integers as strings); anything else after them."""
    return (0, int(clip_id)) if clip_id.isdigit() else (1, clip_id)


def strip_brackets(template: str) -> str:
    """labels.json keys are templates with the brackets removed: "Holding [something]" -> "Holding something"."""
    return re.sub(r"\[(.*?)\]", r"\1", template)


def _read_json(path: Path) -> Any:
    return read_json(path, "ssv2")


# the official label files' record fields and their JSON types (test.json releases ids only)
LABELLED_FIELDS = {"id": str, "label": str, "template": str, "placeholders": list}
RECORD_FIELDS = {"train.json": LABELLED_FIELDS, "validation.json": LABELLED_FIELDS, "test.json": {"id": str}}


def check_record(name: str, index: int, entry: Any) -> None:
    """SourceError naming the file, the record and the field when a label record is not the official schema."""
    fields = RECORD_FIELDS[name]
    where = f"ssv2: labels/{name} record {index}"
    if not isinstance(entry, dict):
        raise SourceError(f"{where} is {type(entry).__name__}, not an object with {', '.join(fields)}")
    where += f" (id {entry['id']!r})" if "id" in entry else ""
    for field, kind in fields.items():
        if field not in entry:
            extra = sorted(set(entry) - set(fields))
            raise SourceError(f"{where}: field {field!r} is missing; official {name} records have "
                              f"{', '.join(fields)}" + (f" (this one has {', '.join(extra)})" if extra else ""))
        value = entry[field]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise SourceError(f"{where}: field {field!r} is {type(value).__name__} {str(value)[:40]!r}, the official "
                              f"files hold a {kind.__name__}" + (' (e.g. "78687")' if field == "id" else ""))
        if field == "placeholders" and not all(isinstance(v, str) for v in value):
            raise SourceError(f"{where}: field 'placeholders' must list strings, got {str(value)[:60]}")


def iter_json_array(path: Path, chunk: int = 1 << 20) -> Iterator[Any]:
    """The elements of a JSON file that holds one top-level array, parsed one at a time (52 k SSv2 label records
    are never held at once). A file that is not valid JSON, or not an array, is read whole for the same
    SourceError the whole-file reader gives."""
    decoder = json.JSONDecoder()
    with open(path, encoding="utf-8") as f:
        buf, pos, eof = "", 0, False

        def fill() -> None:
            nonlocal buf, pos, eof
            try:
                data = f.read(chunk)
            except UnicodeDecodeError as e:
                raise SourceError(f"ssv2: {path} is not valid JSON: {e}") from e
            eof = not data
            buf, pos = buf[pos:] + data, 0

        def skip_ws() -> None:
            nonlocal pos
            while True:
                while pos < len(buf) and buf[pos] in " \t\n\r":
                    pos += 1
                if pos < len(buf) or eof:
                    return
                fill()

        def not_an_array() -> SourceError:
            entries = _read_json(path)  # raises for invalid JSON
            return SourceError(f"ssv2: {path} must be a list of {{'id': ...}} entries, got {type(entries).__name__}")

        skip_ws()
        if buf[pos:pos + 1] != "[":
            raise not_an_array()
        pos += 1
        skip_ws()
        if buf[pos:pos + 1] == "]":
            return
        while True:
            while True:  # a value that ends exactly at the end of what was read may continue (a number): read on
                try:
                    value, end = decoder.raw_decode(buf, pos)
                    if end < len(buf) or eof:
                        break
                except json.JSONDecodeError:
                    if eof:
                        raise not_an_array() from None
                fill()
            pos = end
            yield value
            skip_ws()
            sep = buf[pos:pos + 1]
            pos += 1
            if sep == "]":
                skip_ws()
                if pos < len(buf):
                    raise not_an_array()
                return
            if sep != ",":
                raise not_an_array()
            skip_ws()


_NUMERIC = "(id GLOB '[0-9]*' AND id NOT GLOB '*[^0-9]*')"
# _sort_key in SQL: numeric ids in numeric order (by length, then digits, leading zeros aside), then the others
_ID_ORDER = (f"NOT {_NUMERIC}, CASE WHEN {_NUMERIC} THEN length(ltrim(id, '0')) END, "
             f"CASE WHEN {_NUMERIC} THEN ltrim(id, '0') END, id")


class LabelIndex:
    """The label files' records by id, in a temporary SQLite file (the driver holds no object per listed clip):
    each record is checked against the official schema as it streams in (SourceError naming file, record and
    field), and the webms on disk are listed next to them."""

    def __init__(self, label_dir: Path, video_dir: Path, folder: Path):
        self.db = sqlite3.connect(folder / "labels.sqlite")
        for pragma in ("journal_mode = OFF", "synchronous = OFF", "temp_store = FILE", "cache_size = -8000"):
            self.db.execute(f"PRAGMA {pragma}")
        self.db.execute("CREATE TABLE listed (id TEXT, file INTEGER, rec INTEGER, entry TEXT)")
        self.db.execute("CREATE TABLE disk (id TEXT PRIMARY KEY)")
        self.files = list(SPLIT_FILES)
        for fi, name in enumerate(self.files):
            path = label_dir / name
            if not path.exists():
                continue  # a partial download (e.g. no test.json): its ids fall back to the hash split
            rows = []
            for i, entry in enumerate(iter_json_array(path)):
                check_record(name, i, entry)
                rows.append((entry["id"], fi, i, json.dumps(entry)))
                if len(rows) >= 8192:
                    self.db.executemany("INSERT INTO listed VALUES (?, ?, ?, ?)", rows)
                    rows = []
            self.db.executemany("INSERT INTO listed VALUES (?, ?, ?, ?)", rows)
        self.db.execute("CREATE INDEX listed_id ON listed (id)")
        webms = (p.stem for p in video_dir.glob("*.webm"))
        while block := list(itertools.islice(webms, 8192)):
            self.db.executemany("INSERT OR IGNORE INTO disk VALUES (?)", [(i,) for i in block])

    def absent(self) -> tuple[int, Counter, list[str]]:
        """Listed clips the disk lacks: how many, per label file (the first that lists each), the first five."""
        absent = "SELECT id, min(file) AS file FROM listed WHERE id NOT IN (SELECT id FROM disk) GROUP BY id"
        per_file = Counter({self.files[f]: n for f, n in self.db.execute(
            f"SELECT file, count(*) FROM ({absent}) GROUP BY file")})
        first = [r[0] for r in self.db.execute(f"SELECT id FROM ({absent}) ORDER BY {_ID_ORDER} LIMIT 5")]
        return sum(per_file.values()), per_file, first

    def clips(self, listed_on_disk_only: bool) -> Iterator[tuple[str, list[tuple[str, dict[str, Any]]]]]:
        """(clip id, every (label file, entry) that lists it) for the clips on disk and, unless
        `listed_on_disk_only`, the listed ones the disk lacks, in `_sort_key` order."""
        listed = "SELECT id FROM listed" + (" WHERE id IN (SELECT id FROM disk)" if listed_on_disk_only else "")
        rows = self.db.execute(
            f"SELECT id, l.file, l.entry FROM (SELECT id FROM disk UNION {listed}) LEFT JOIN listed l USING (id) "
            f"ORDER BY {_ID_ORDER}, l.file, l.rec")
        for clip_id, group in itertools.groupby(rows, key=lambda r: r[0]):
            yield clip_id, [(self.files[f], json.loads(e)) for _, f, e in group if f is not None]

    def close(self) -> None:
        self.db.close()


def read_class_index(label_dir: Path) -> dict[str, str]:
    """labels.json: template without brackets -> class index as a string of digits (SourceError otherwise)."""
    path = label_dir / "labels.json"
    if not path.exists():
        return {}
    classes = _read_json(path)
    if not isinstance(classes, dict):
        raise SourceError(f"ssv2: labels/labels.json must map templates to class indices, got {type(classes).__name__}")
    for template, index in classes.items():
        if not isinstance(index, str) or not index.isdigit():
            raise SourceError(f"ssv2: labels/labels.json entry {template!r}: the class index is {index!r}, the "
                              'official file holds a string of digits (e.g. "0")')
    return classes


class SSv2Source(SourceAdapter):
    name = "ssv2"
    default_tier = 1
    OPTIONS = frozenset({"licence", "missing_clips"})

    def __init__(self, root, tier=None, **options):
        super().__init__(root, tier, **options)
        self.video_dir = self.root / VIDEO_DIR
        self.label_dir = self.root / LABEL_DIR
        # Without labels every split and instruction would be guessed; refuse the source instead.
        if not self.label_dir.is_dir():
            raise SourceError(f"ssv2: labels folder {self.label_dir} is missing (expected labels/train.json, "
                              "validation.json, test.json next to 20bn-something-something-v2/)")
        if not any((self.label_dir / f).exists() for f in SPLIT_FILES):
            raise SourceError(f"ssv2: {self.label_dir} holds none of {', '.join(SPLIT_FILES)}")
        self.missing_clips = str(options.get("missing_clips", "summary"))
        if self.missing_clips not in ("summary", "quarantine"):
            raise SourceError(f"ssv2: missing_clips must be summary or quarantine, got {self.missing_clips!r}")
        if not self.video_dir.is_dir():
            raise SourceError(f"ssv2: video folder {self.video_dir} is missing (concatenate and extract the "
                              "20bn-something-something-v2-?? tar parts into it)")

    def discover(self) -> Iterator[ItemRef]:
        classes = read_class_index(self.label_dir)
        with tempfile.TemporaryDirectory(prefix="ssv2-labels-") as tmp:
            index = LabelIndex(self.label_dir, self.video_dir, Path(tmp))
            try:
                n_absent, per_file, first = index.absent()
                summary = n_absent and self.missing_clips != "quarantine"
                if summary:
                    # a partial download: what is on disk is the dataset; the rest is one line, not a row per clip
                    files = ", ".join(f"{n} in {f}" for f, n in sorted(per_file.items()))
                    are = "clips are" if n_absent != 1 else "clip is"
                    self.notes.append(f"{n_absent} listed {are} not on disk ({files}; first: {', '.join(first)}); "
                                      "set the source option missing_clips: quarantine to list each one")
                for clip_id, entries in index.clips(listed_on_disk_only=bool(summary)):
                    yield self._ref(clip_id, entries, classes)
            finally:
                index.close()

    def _ref(self, clip_id: str, entries: list[tuple[str, dict[str, Any]]], classes: dict[str, str]) -> ItemRef:
        path = self.video_dir / f"{clip_id}.webm"
        details: dict[str, Any] = {"label_files": [name for name, _ in entries]}
        if entries:
            name, entry = entries[0]
            details.update(split=SPLIT_FILES[name], label=entry.get("label"), template=entry.get("template"),
                           placeholders=entry.get("placeholders"))
            if entry.get("template"):
                details["class_index"] = classes.get(strip_brackets(entry["template"]))
        # The label entry is part of the fingerprint so that a relabelled clip is redone on rerun.
        label_hash = hashlib.blake2b(json.dumps(entries, sort_keys=True).encode(), digest_size=8).hexdigest()
        return ItemRef(self.item_id(clip_id), clip_id, str(path), f"{fingerprint(path)}-{label_hash}", details)

    def probe(self, ref: ItemRef) -> Item:
        path = Path(ref.input_uri)
        details = ref.details
        label_files = details["label_files"]
        if len(label_files) > 1:
            # One clip in two official splits would leak between them; a person has to decide.
            raise BadInput(f"id {ref.native_id} is listed in {' and '.join(label_files)}: its official split is ambiguous")
        if not path.exists():
            where = f" (listed in {label_files[0]})" if label_files else ""
            raise BadInput(f"missing video file {VIDEO_DIR}/{path.name}{where}")
        info = probe_video(path)  # BadInput for empty, truncated or undecodable webm
        if info.fps <= 0:
            raise BadInput(f"video {path.name} declares no frame rate")
        label = details.get("label")
        return self.item(  # every SSv2 clip is its own recording (group_id: the item)
            ref,
            split=details.get("split") or None,
            media_uris=[str(path)],
            cameras=["video"],
            fps=info.fps,
            frame_count=info.frame_count,
            width=info.width,
            height=info.height,
            embodiment="human",
            language=[label] if label else [],  # test.json releases ids only
            licence=self.options.get("licence", DEFAULT_LICENCE),
            input_blake2b=file_checksum(path),
            input_bytes=path.stat().st_size,
            extras={"template": details.get("template"), "placeholders": details.get("placeholders"),
                    "class_index": details.get("class_index"),
                    "label_file": label_files[0] if label_files else None, "codec": info.codec},
        )
