"""The Hugging Face Hub side: `fetch` a dataset (or a subset of its files) into the local hub cache and ingest from
there, `push` shards with a generated dataset card. Offline use and caveats: docs/storage.md#hub."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Iterable, Sequence

from huggingface_hub import DatasetCardData
from huggingface_hub.utils import filter_repo_objects

SPLIT_TOKENS = ("train", "validation", "val", "test")
SHARD_EXTENSIONS = (".tar", ".parquet", ".jsonl", ".json", ".npz", ".mp4", ".h5")
DEFAULT_TAGS = ("motus-pyramid", "robotics", "latent-actions", "optical-flow")


class HubError(Exception):
    """A fetch or push that cannot be done, with what to do about it."""


def is_offline() -> bool:
    """HF_HUB_OFFLINE as set now (huggingface_hub reads it once at import; tests and CLIs set it later)."""
    from huggingface_hub import constants

    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in ("1", "ON", "YES", "TRUE")
    return bool(constants.HF_HUB_OFFLINE)


def default_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE)


def _repo_folder(repo_id: str, repo_type: str) -> str:
    return "--".join([f"{repo_type}s", *repo_id.split("/")])


def _files_under(folder: Path) -> list[str]:
    """Relative paths of the files in `folder` (links followed), without hidden folders such as .cache/."""
    out = []
    for p in sorted(folder.rglob("*")):
        rel = p.relative_to(folder)
        if any(part.startswith(".") for part in rel.parts) or not p.is_file():
            continue
        out.append(rel.as_posix())
    return out


# ------------------------------------------------------------------------------------------------ fetch


def fetch(repo_id: str, local_dir: str | Path | None = None, allow_patterns: str | Sequence[str] | None = None,
          revision: str | None = None, repo_type: str = "dataset", *, cache_dir: str | Path | None = None,
          offline: bool | None = None) -> Path:
    """The repo's files (those matching `allow_patterns`) on local disk: `local_dir` (symlinks into the cache),
    or the cache's snapshot folder when `local_dir` is None."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import (GatedRepoError, LocalEntryNotFoundError, OfflineModeIsEnabled,
                                        RepositoryNotFoundError)

    offline = is_offline() if offline is None else offline
    revision = revision or "main"
    patterns = [allow_patterns] if isinstance(allow_patterns, str) else (list(allow_patterns) if allow_patterns else None)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    where = f"{repo_type} repo {repo_id!r} (revision {revision})"
    try:
        snapshot = Path(snapshot_download(repo_id, repo_type=repo_type, revision=revision, cache_dir=str(cache),
                                          allow_patterns=patterns, local_files_only=offline))
    except (LocalEntryNotFoundError, OfflineModeIsEnabled) as e:
        if local_dir is not None and _matching(Path(local_dir), patterns):
            return Path(local_dir)  # fetched into local_dir before, cache since emptied: the links still resolve
        how = ("fetch it once with network access (unset HF_HUB_OFFLINE), copy a hub cache that holds it into "
               f"{cache} (or set HF_HUB_CACHE), or put the files on disk and register them with "
               "pipelines.hub.add_to_cache")
        state = "offline (HF_HUB_OFFLINE=1)" if offline else "the Hub could not be reached"
        raise HubError(f"{where} is not in the hub cache {cache} and {state}: {how}") from e
    except (RepositoryNotFoundError, GatedRepoError) as e:
        raise HubError(f"{where}: {type(e).__name__}: the repo does not exist or needs a token with access") from e
    except ValueError as e:  # huggingface_hub refuses a file name that would leave the snapshot folder
        if "Invalid" not in str(e):
            raise
        raise HubError(f"{where}: {e}") from e
    files = [f for f in filter_repo_objects(_files_under(snapshot), allow_patterns=patterns)]
    if not files:
        hint = " (offline: only files fetched earlier are in the cache)" if offline else ""
        raise HubError(f"{where}: no file matches allow_patterns {patterns}{hint}")
    if local_dir is None:
        return snapshot
    return _link_tree(snapshot, files, Path(local_dir))


def _matching(folder: Path, patterns: list[str] | None) -> list[str]:
    if not folder.is_dir():
        return []
    return list(filter_repo_objects(_files_under(folder), allow_patterns=patterns))


def _link_tree(snapshot: Path, files: Iterable[str], local_dir: Path) -> Path:
    """local_dir/<rel> -> the cached blob, for each file (replacing stale links; never overwriting real files).
    Nothing is written outside local_dir and nothing links outside the repo's cache folder: a file name that is
    absolute or climbs with `..`, a folder of local_dir that is a symlink out of it, or a snapshot entry that
    resolves outside the cache (a doctored cache copied from elsewhere) is a HubError naming it."""
    repo_cache = snapshot.parent.parent.resolve()  # <cache>/<type>s--<owner>--<name>: blobs/, snapshots/, refs/
    local_root = local_dir.resolve()
    links = []
    for rel in files:  # every name checked before anything is written
        _check_repo_path(rel)
        target = (snapshot / rel).resolve()
        if not _is_within(target, repo_cache):
            raise HubError(f"{rel} of the cached snapshot {snapshot} resolves to {target}, outside the repo's cache "
                           f"folder {repo_cache}: refusing to link it (the cache was altered; fetch into a fresh one)")
        dst = local_dir / rel
        if not _is_within(dst.parent.resolve(), local_root):
            link = next((p for p in reversed(dst.parents) if p.is_symlink() and _is_within(p, local_dir)), dst.parent)
            raise HubError(f"{link} is a symlink out of {local_dir} (to {link.resolve()}): refusing to write {rel} "
                           "through it; remove the link or use another local_dir")
        links.append((rel, target, dst))
    for rel, target, dst in links:
        dst.parent.mkdir(parents=True, exist_ok=True)
        if dst.is_symlink():
            if dst.resolve() == target:
                continue
            dst.unlink()
        elif dst.exists():
            if dst.stat().st_size == target.stat().st_size:
                continue  # a real copy is already there (e.g. fetched by an earlier version with copies)
            raise HubError(f"{dst} exists and differs from {rel} of the fetched snapshot; remove it or use another local_dir")
        try:
            dst.symlink_to(target)
        except OSError:
            shutil.copy2(target, dst)  # file systems without symlinks
    return local_dir


def _check_repo_path(rel: str) -> None:
    """A repo file name is a relative POSIX path that stays inside the repo: no leading `/` and no `..`."""
    if not rel or PurePosixPath(rel).is_absolute() or ".." in PurePosixPath(rel).parts:
        raise HubError(f"repo file name {rel!r} is absolute or climbs out of the repo with '..': refusing to write "
                       "it (a file name on the Hub must be a relative path inside the repo)")


def _is_within(path: Path, folder: Path) -> bool:
    return path == folder or folder in path.parents


def add_to_cache(folder: str | Path, repo_id: str, cache_dir: str | Path | None = None, revision: str = "main",
                 repo_type: str = "dataset") -> Path:
    """Register the files of `folder` in the hub cache as `repo_id`@`revision`, the layout `snapshot_download`
    writes (blobs/<sha256>, snapshots/<commit>/<path> -> blob, refs/<revision> = commit), so that offline
    `fetch` finds them. The commit id is derived from the content. Returns the snapshot folder."""
    folder = Path(folder)
    files = _files_under(folder)
    if not files:
        raise HubError(f"{folder} holds no files to cache")
    storage = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / _repo_folder(repo_id, repo_type)
    listing = hashlib.sha1()
    blobs = {}
    for rel in files:
        digest = hashlib.sha256()
        with open(folder / rel, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
        blobs[rel] = digest.hexdigest()
        listing.update(f"{rel}\0{blobs[rel]}\n".encode())
    commit = listing.hexdigest()
    snapshot = storage / "snapshots" / commit
    (storage / "blobs").mkdir(parents=True, exist_ok=True)
    for rel, blob in blobs.items():
        blob_path = storage / "blobs" / blob
        if not blob_path.exists():
            shutil.copyfile(folder / rel, blob_path)
        link = snapshot / rel
        link.parent.mkdir(parents=True, exist_ok=True)
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(os.path.relpath(blob_path, link.parent))
    ref = storage / "refs" / revision
    ref.parent.mkdir(parents=True, exist_ok=True)
    ref.write_text(commit)
    return snapshot


# ------------------------------------------------------------------------------------------------ push


@dataclass
class PushPlan:
    repo_id: str
    files: list[tuple[str, int]]  # (path in repo, bytes), README.md excluded
    card: str
    private: bool
    uploaded: bool = False
    commit_url: str | None = None
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def total_bytes(self) -> int:
        return sum(n for _, n in self.files)


def _size_category(n: int) -> str:
    for limit, name in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if n < limit:
            return name
    return "n>1M"


def _split_of(rel: str) -> str | None:
    for part in reversed(Path(rel).parts):
        m = re.match(r"(train|validation|val|test)(?:[-_.].*)?$", Path(part).stem if "." in part else part)
        if m:
            return "validation" if m.group(1) in ("val", "validation") else m.group(1)
    return None


def _configs(files: Sequence[str]) -> list[dict[str, Any]]:
    """Hub viewer `configs`: one data_files entry per split, when the shards are laid out by split."""
    by_split: dict[str, set[str]] = {}
    for rel in files:
        ext = Path(rel).suffix
        split = _split_of(rel)
        if not split or ext not in (".tar", ".parquet"):
            continue
        parent = Path(rel).parent.as_posix()
        if Path(rel).parent.name in (split, "val" if split == "validation" else split):
            pattern = f"{parent}/*{ext}"
        else:
            token = Path(rel).name.split("-")[0].split("_")[0]
            pattern = f"{parent + '/' if parent != '.' else ''}{token}[-_]*{ext}"
        by_split.setdefault(split, set()).add(pattern)
    if not by_split:
        return []
    order = {"train": 0, "validation": 1, "test": 2}
    return [{"config_name": "default",
             "data_files": [{"split": s, "path": sorted(p)} for s, p in sorted(by_split.items(), key=lambda kv: order[kv[0]])]}]


def generate_card(repo_id: str, files: Sequence[tuple[str, int]], licence: str = "other",
                  summary: dict[str, Any] | None = None, tags: Sequence[str] = DEFAULT_TAGS) -> str:
    """README.md for the dataset repo: YAML front matter the Hub reads, then what the shards are."""
    rels = [rel for rel, _ in files]
    data = DatasetCardData(
        license=licence,
        pretty_name=repo_id.split("/")[-1],
        tags=list(tags),
        task_categories=["robotics"],
        size_categories=[_size_category(len(files))],
        configs=_configs(rels) or None,
    )
    by_ext: dict[str, list[int]] = {}
    for rel, n in files:
        by_ext.setdefault(Path(rel).suffix or "(none)", []).append(n)
    lines = [
        "---", data.to_yaml(), "---", "",
        f"# {repo_id.split('/')[-1]}", "",
        "Shards written by motus-pyramid (the Motus data pyramid: web video, egocentric video, simulation, "
        "task-agnostic motion, multi-robot and target-robot demonstrations), with optical flow, latent-action "
        "labels and catalog manifests.", "",
        f"{len(files)} files, {sum(n for _, n in files) / 1e6:.1f} MB.", "",
        "| file type | files | MB |", "|---|---|---|",
    ]
    lines += [f"| {ext} | {len(ns)} | {sum(ns) / 1e6:.2f} |" for ext, ns in sorted(by_ext.items())]
    if summary:
        lines += ["", "## Contents", "", "| key | value |", "|---|---|"]
        lines += [f"| {k} | {v} |" for k, v in summary.items()]
    lines += ["", "## Use", "", f"`pyramid fetch {repo_id}` (or `huggingface_hub.snapshot_download(\"{repo_id}\", "
              "repo_type=\"dataset\")`), then ingest or train from the local folder.", ""]
    return "\n".join(lines)


def push(shards_dir: str | Path, repo_id: str, token: str | None = None, private: bool = True,
         card: str | None = None, *, dry_run: bool = False, licence: str = "other",
         summary: dict[str, Any] | None = None, revision: str | None = None,
         commit_message: str | None = None) -> PushPlan:
    """Upload `shards_dir` to the dataset repo `repo_id` with a README.md card (`card`, or a generated one)."""
    shards_dir = Path(shards_dir)
    if not shards_dir.is_dir():
        raise HubError(f"shards folder {shards_dir} does not exist")
    rels = [rel for rel in _files_under(shards_dir) if rel != "README.md"]
    if not rels:
        raise HubError(f"shards folder {shards_dir} holds no files to push")
    files = [(rel, (shards_dir / rel).stat().st_size) for rel in rels]
    text = card if card is not None else generate_card(repo_id, files, licence=licence, summary=summary)
    plan = PushPlan(repo_id, files, text, private)
    if dry_run:
        return plan
    if is_offline():
        raise HubError(f"cannot push to {repo_id!r} while HF_HUB_OFFLINE=1; unset it (and log in or pass a token), "
                       "or use dry_run=True to see what would be uploaded")
    from huggingface_hub import CommitOperationAdd, HfApi

    api = HfApi(token=token)
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    ops = [CommitOperationAdd(path_in_repo=rel, path_or_fileobj=str(shards_dir / rel)) for rel in rels]
    ops.append(CommitOperationAdd(path_in_repo="README.md", path_or_fileobj=text.encode()))
    info = api.create_commit(repo_id, ops, repo_type="dataset", revision=revision,
                             commit_message=commit_message or f"motus-pyramid: {len(rels)} shard files")
    plan.uploaded, plan.commit_url = True, getattr(info, "commit_url", None)
    return plan
