"""Source roots in object storage (`root: s3://bucket/prefix`): the tree is mirrored into a local cache under the
workdir, kept in step with the bucket's listing, and read like any local root (docs/storage.md, the source cache)."""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from common import storage

LISTING = ".listing.json"
CHECKPOINT_S = 5.0  # how often a long download records its progress in the listing
FORMAT = "motus-pyramid/source-cache/v1"


@dataclass
class CacheReport:
    url: str  # redacted
    local: Path
    fetched: list[str] = field(default_factory=list)
    kept: int = 0
    removed: list[str] = field(default_factory=list)
    bytes_fetched: int = 0

    def summary(self) -> str:
        return (f"{self.url} → {self.local}: {len(self.fetched)} file(s) fetched ({self.bytes_fetched / 1e6:.1f} MB), "
                f"{self.kept} unchanged, {len(self.removed)} removed")


def _version(info: dict[str, Any]) -> str:
    """What changes when an object is rewritten: the ETag where the store gives one, else the modification time."""
    for key in ("ETag", "etag", "md5Hash", "LastModified", "last_modified", "mtime", "updated"):
        value = info.get(key)
        if value:
            return str(value).strip('"')
    return ""


def _mtime(info: dict[str, Any]) -> float | None:
    for key in ("LastModified", "last_modified", "mtime", "updated"):
        value = info.get(key)
        if isinstance(value, datetime):
            return value.timestamp()
        if isinstance(value, (int, float)):
            return float(value)
    return None


def remote_listing(url: str) -> dict[str, dict[str, Any]]:
    """{path relative to `url`: {size, version, mtime}} of every object under the prefix, in one listing."""
    fs, inner = storage.filesystem(url)
    base = inner.rstrip("/") + "/"
    try:
        found = fs.find(inner, detail=True)
    except FileNotFoundError:
        found = {}
    except Exception as e:  # noqa: BLE001 - botocore's errors (no credentials, no bucket) carry no secret, but redact
        raise storage_error(url, e) from None
    out = {}
    for key, info in found.items():
        if not key.startswith(base) or info.get("type", "file") != "file" or key.endswith("/"):
            continue
        out[key[len(base):]] = {"size": int(info.get("size") or 0), "version": _version(info), "mtime": _mtime(info)}
    return out


def storage_error(url: str, e: BaseException) -> OSError:
    return OSError(f"cannot list {storage.describe(url)}: {storage.redact(f'{type(e).__name__}: {e}')}")


def _safe(rel: str) -> bool:
    parts = rel.split("/")
    return bool(rel) and not rel.startswith("/") and ".." not in parts and all(parts)


def mirror(url: str, local: str | os.PathLike) -> CacheReport:
    """Bring the local mirror of `url` in the folder `local` (`PipelineConfig.source_dir`) up to date with the
    bucket: unchanged files kept, new or changed ones fetched, vanished ones removed (docs/storage.md)."""
    local = Path(local)
    report = CacheReport(storage.redact(url), local)
    remote = remote_listing(url)
    if not remote:
        raise FileNotFoundError(f"source root {storage.describe(url)} holds no objects (check the URL, the "
                                "endpoint and the credential variables)")
    unsafe = sorted(rel for rel in remote if not _safe(rel))
    if unsafe:
        raise ValueError(f"source root {storage.redact(url)}: object names that are not plain relative paths "
                         f"cannot be mirrored to disk: {', '.join(unsafe[:3])}")
    listing_path = local / LISTING
    try:
        before = json.loads(listing_path.read_text()).get("files", {})
    except (OSError, ValueError):
        before = {}
    local.mkdir(parents=True, exist_ok=True)

    def unchanged(rel: str) -> bool:
        old, info, dest = before.get(rel), remote[rel], local / rel
        return bool(old and old.get("size") == info["size"] and old.get("version") == info["version"]
                    and dest.is_file() and dest.stat().st_size == info["size"])

    def write_listing(files: dict[str, Any]) -> None:
        storage.write_bytes(listing_path, json.dumps({"format": FORMAT, "url": report.url, "files": files},
                                                     indent=1, sort_keys=True).encode())

    # the listing vouches only for files that are in place: first those kept, then each fetched one as it lands
    # (written every CHECKPOINT_S), so a killed run's next run fetches only what it had not fetched yet
    current = {rel: remote[rel] for rel in remote if unchanged(rel)}
    report.kept = len(current)
    write_listing(current)
    last = time.monotonic()
    for rel, info in sorted(remote.items()):
        if rel in current:
            continue
        dest = local / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            storage.get_file(storage.join(url, rel), dest)
        except Exception as e:  # noqa: BLE001
            raise OSError(f"cannot fetch {storage.redact(storage.join(url, rel))}: "
                          f"{storage.redact(f'{type(e).__name__}: {e}')}") from None
        if info["mtime"] is not None:
            os.utime(dest, (info["mtime"], info["mtime"]))
        current[rel] = info
        report.fetched.append(rel)
        report.bytes_fetched += info["size"]
        if time.monotonic() - last >= CHECKPOINT_S:
            write_listing(current)
            last = time.monotonic()
    for path in sorted(p for p in local.rglob("*") if p.is_file() or p.is_symlink()):
        rel = path.relative_to(local).as_posix()
        if rel != LISTING and rel not in remote:
            path.unlink()
            report.removed.append(rel)
    for folder in sorted((p for p in local.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
        if not any(folder.iterdir()):
            folder.rmdir()
    write_listing(current)
    return report
