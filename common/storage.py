"""Local paths and object-storage URLs (`s3://`, `gs://`, `hf://`, any fsspec protocol) behind one small set of
calls: open, list, read, and write finished files so that no reader sees half of one. Credentials come from the
environment (docs/storage.md); `redact` keeps them out of anything printed."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import sys
import uuid
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit, urlunsplit

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# the variables botocore reads for S3 and S3-compatible stores (MinIO, R2, Ceph, moto)
S3_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL_S3",
          "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "AWS_REGION", "AWS_PROFILE")
_SECRET_ENV = ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "HF_TOKEN", "GOOGLE_APPLICATION_CREDENTIALS")
_SIGNED_QUERY = re.compile(r"(?i)(X-Amz-(?:Signature|Credential|Security-Token)|Signature|AWSAccessKeyId|token)=[^&\s]*")


def scheme(path: str | os.PathLike) -> str | None:
    """`s3` for `s3://bucket/key`; None for a local path (`file://` counts as local)."""
    m = _SCHEME.match(str(path))
    return None if m is None or m.group(1).lower() == "file" else m.group(1).lower()


def is_url(path: str | os.PathLike) -> bool:
    """True for an object-storage (or any non-local fsspec) URL."""
    return scheme(path) is not None


def local_path(path: str | os.PathLike) -> Path:
    """A local path from a path or a `file://` URL; a remote URL is a ValueError."""
    text = str(path)
    if is_url(text):
        raise ValueError(f"{redact(text)} is not a local path")
    return Path(text[len("file://"):] if text.lower().startswith("file://") else text)


def join(base: str | os.PathLike, *parts: str) -> str | Path:
    """`base/part/...`: a URL stays a URL (string), a local path a Path."""
    if not is_url(base):
        return local_path(base).joinpath(*parts)
    tail = "/".join(p.strip("/") for p in parts if p)
    return f"{str(base).rstrip('/')}/{tail}" if tail else str(base)


def parent(path: str | os.PathLike) -> str | Path:
    if not is_url(path):
        return local_path(path).parent
    head, _, _ = str(path).rstrip("/").rpartition("/")
    return head


def name(path: str | os.PathLike) -> str:
    return str(path).rstrip("/").rpartition("/")[2] if is_url(path) else local_path(path).name


def cache_key(url: str | os.PathLike) -> str:
    """A stable local relative path for a URL (a source root's mirror, pipelines/source_cache.py): a hash of its
    redacted form, then its last path part as it is, so that a mirrored dataset folder keeps its name (adapters
    derive item ids from it)."""
    import hashlib

    clean = redact(url).rstrip("/")
    tail = name(clean)
    if not tail or tail in (".", "..") or "\\" in tail or "\x00" in tail:
        tail = "root"
    return f"{hashlib.sha256(clean.encode()).hexdigest()[:16]}/{tail}"


# --- credentials --------------------------------------------------------------------------------------------------

def storage_options(protocol: str | None) -> dict[str, Any]:
    """fsspec options for `protocol` from the environment. S3: the endpoint from AWS_ENDPOINT_URL_S3 or
    AWS_ENDPOINT_URL (S3-compatible stores), region from AWS_REGION / AWS_DEFAULT_REGION; keys are left to
    botocore's own chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_SESSION_TOKEN, profile, instance role),
    so they never pass through our objects. Listings are not cached: other processes write the same bucket."""
    if protocol not in ("s3", "s3a"):
        return {}
    client: dict[str, Any] = {}
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
    if endpoint:
        client["endpoint_url"] = endpoint
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    if region:
        client["region_name"] = region
    return {"client_kwargs": client, "use_listings_cache": False}


def filesystem(path: str | os.PathLike):
    """(fsspec filesystem, path inside it) for a URL or a local path."""
    import fsspec

    if not is_url(path):
        return fsspec.filesystem("file"), str(local_path(path).absolute())
    proto = scheme(path)
    try:
        fs, inner = fsspec.core.url_to_fs(str(path), **storage_options(proto))
    except ImportError as exc:
        raise ValueError(f"no filesystem for {proto}:// ({exc}); install the fsspec backend for it") from None
    return fs, inner


def redact(text: str | os.PathLike) -> str:
    """`text` with credentials removed: user:password in URLs, signed query parameters, and the values of the
    secret variables in the environment, wherever they appear."""
    out = str(text)

    def strip_userinfo(m: re.Match) -> str:
        url = m.group(0)
        parts = urlsplit(url)
        if "@" in parts.netloc:
            parts = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2])
        return urlunsplit(parts)

    out = re.sub(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"]+", strip_userinfo, out)
    out = _SIGNED_QUERY.sub(lambda m: f"{m.group(1)}=***", out)
    for var in _SECRET_ENV + ("AWS_ACCESS_KEY_ID",):
        value = os.environ.get(var)
        if value and len(value) >= 4:
            out = out.replace(value, "***")
    return out


def describe(path: str | os.PathLike) -> str:
    """Where `path` is, for logs: the URL (redacted) and, for S3, the endpoint and which credential variables are
    set (names only)."""
    if not is_url(path):
        return str(path)
    text = redact(path)
    if scheme(path) in ("s3", "s3a"):
        endpoint = storage_options("s3")["client_kwargs"].get("endpoint_url", "AWS default")
        have = [v for v in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN") if os.environ.get(v)]
        text += f" (endpoint {redact(endpoint)}; credentials: {', '.join(have) or 'botocore default chain'})"
    return text


# --- reading ------------------------------------------------------------------------------------------------------

def open_file(path: str | os.PathLike, mode: str = "rb") -> IO:
    """A file object for reading (`rb`, `r`); writing goes through `write_bytes` / `put_file`."""
    if mode not in ("rb", "r"):
        raise ValueError(f"open_file reads only (mode rb or r), not {mode!r}: write with write_bytes/put_file")
    if not is_url(path):
        return open(local_path(path), mode)
    fs, inner = filesystem(path)
    return fs.open(inner, mode)


def sha256_file(path: str | os.PathLike) -> str:
    """sha256 (hex) of a file, local or in a bucket, read in 1 MiB blocks (the one sha256 helper)."""
    h = hashlib.sha256()
    with open_file(path) as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def exists(path: str | os.PathLike) -> bool:
    fs, inner = filesystem(path)
    return fs.exists(inner)


def is_file(path: str | os.PathLike) -> bool:
    fs, inner = filesystem(path)
    return fs.isfile(inner)


def size(path: str | os.PathLike) -> int:
    fs, inner = filesystem(path)
    return int(fs.size(inner))


def read_bytes(path: str | os.PathLike) -> bytes:
    if not is_url(path):
        return local_path(path).read_bytes()
    fs, inner = filesystem(path)
    try:
        return fs.cat_file(inner)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such object: {redact(path)}") from None


def read_range(path: str | os.PathLike, start: int, end: int) -> bytes:
    """Bytes [start, end) of a file: one ranged GET for a URL."""
    if not is_url(path):
        with open(local_path(path), "rb") as f:
            f.seek(start)
            return f.read(end - start)
    fs, inner = filesystem(path)
    try:
        return fs.cat_file(inner, start=start, end=end)
    except FileNotFoundError:
        raise FileNotFoundError(f"no such object: {redact(path)}") from None


def read_text(path: str | os.PathLike) -> str:
    return read_bytes(path).decode()


def list_files(root: str | os.PathLike) -> dict[str, int]:
    """{path relative to `root` (with `/`): size} of every file under `root`, in one listing; {} if none."""
    fs, inner = filesystem(root)
    if not fs.exists(inner):
        return {}
    base = inner.rstrip("/") + "/"
    found = fs.find(inner, detail=True)
    return {k[len(base):]: int(v.get("size") or 0) for k, v in found.items()
            if k.startswith(base) and v.get("type", "file") == "file"}


# --- writing ------------------------------------------------------------------------------------------------------

def _local_temp(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write a finished file: locally to a temp name then renamed; to an object store as one PUT, which the store
    makes visible only once it is complete."""
    if is_url(path):
        fs, inner = filesystem(path)
        fs.pipe_file(inner, data)
        return
    dest = local_path(path)
    tmp = _local_temp(dest)
    try:
        tmp.write_bytes(data)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def put_file(local: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy a finished local file to `path` (upload for a URL: a multipart upload too appears only once
    completed); locally through a temp name in the destination folder."""
    if is_url(path):
        fs, inner = filesystem(path)
        fs.put_file(str(local), inner)
        return
    dest = local_path(path)
    tmp = _local_temp(dest)
    try:
        shutil.copyfile(local, tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


def get_file(path: str | os.PathLike, local: str | os.PathLike) -> Path:
    """Download `path` to the local file `local` (through a temp name: a killed download leaves no file)."""
    dest = Path(local)
    tmp = _local_temp(dest)
    try:
        if is_url(path):
            fs, inner = filesystem(path)
            fs.get_file(inner, str(tmp))
        else:
            shutil.copyfile(local_path(path), tmp)
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)
    return dest


def remove(path: str | os.PathLike, recursive: bool = False) -> None:
    """Delete a file (or, `recursive`, everything under a prefix/folder); a missing one is not an error."""
    fs, inner = filesystem(path)
    if fs.exists(inner):
        fs.rm(inner, recursive=recursive)


def main(argv: list[str] | None = None) -> int:
    """`python -m common.storage cat URL...`: the objects' bytes to stdout (webdataset's `pipe:` URLs)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2 or args[0] != "cat":
        print("usage: python -m common.storage cat URL [URL ...]", file=sys.stderr)
        return 2
    out = sys.stdout.buffer
    for url in args[1:]:
        with open_file(url) as f:
            shutil.copyfileobj(f, out, 1 << 20)
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
