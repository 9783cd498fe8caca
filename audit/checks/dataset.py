"""Dataset: what a LeRobot dataset's own files say about themselves, read straight from disk (audit/lerobot_tables.py)
as robot-data doctors do: timestamps, frame and global indices, task references, info.json and the stored
statistics against the data, rows and files no episode owns, empty or git-lfs pointer files, and the camera
streams' lengths and rates from their container headers (nothing is decoded).

Each rule is a function over one dataset's `Tables` returning subject → reason, so it can be tried on a dataset on
disk without a catalog; the subject is the episode's item id (`lerobot/<repo>/episode_<index>`), or the dataset
(`lerobot/<repo>`) for what belongs to no episode. Episodes the ingest quarantined are judged too."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import av
import numpy as np

from audit.config import AuditConfig
from audit.context import AuditContext
from audit.lerobot_tables import STAT_NAMES, Tables, dataset_tables
from audit.registry import Outcome, check

LFS_POINTER = b"version https://git-lfs.github.com/spec"


def _episode_rows(t: Tables, column: str):
    """(episode index, item id, that column's values in file order) of every listed episode with data rows."""
    values = t.columns.get(column)
    if values is None:
        return
    for index, rows in sorted(t.rows().items()):
        if index in t.episodes:
            yield index, t.item_id(index), values[rows]


# ------------------------------------------------------------------------------------------------ timing
def monotonic(t: Tables, s: AuditConfig) -> dict[str, str]:
    out = {}
    for _, item, ts in _episode_rows(t, "timestamp"):
        bad = np.nonzero(np.diff(ts) <= 0)[0]
        if bad.size:
            k = int(bad[0])
            out[item] = (f"{bad.size} step(s) where the timestamp does not increase; first at frame {k + 1}: "
                         f"{ts[k]:.4f} s then {ts[k + 1]:.4f} s")
    return out


def spacing(t: Tables, s: AuditConfig) -> dict[str, str]:
    if t.fps <= 0:
        return {}
    period, out = 1.0 / t.fps, {}
    for _, item, ts in _episode_rows(t, "timestamp"):
        if len(ts) < 2:
            continue
        step = np.diff(ts.astype(np.float64))
        off = np.abs(step - period)
        if off.max() > s.timestamp_tolerance_s:
            k = int(off.argmax())
            out[item] = (f"{int((off > s.timestamp_tolerance_s).sum())} step(s) off the 1/fps grid by more than "
                         f"{s.timestamp_tolerance_s:g} s; worst at frame {k + 1}: Δt {step[k] * 1e3:.2f} ms, expected "
                         f"{period * 1e3:.2f} ms (loading it needs tolerance_s ≥ {off.max():.2g})")
    return out


def drift(t: Tables, s: AuditConfig) -> dict[str, str]:
    if t.fps <= 0:
        return {}
    out = {}
    for _, item, ts in _episode_rows(t, "timestamp"):
        span, expected = float(ts[-1] - ts[0]), (len(ts) - 1) / t.fps
        if abs(span - expected) > 0.5 / t.fps:
            out[item] = (f"the timestamps span {span:.3f} s, {len(ts)} frames at {t.fps:g} fps span {expected:.3f} s "
                         f"({(span - expected) * t.fps:+.1f} frames: dropped or repeated frames, or a clock at "
                         f"another rate)")
    return out


# ------------------------------------------------------------------------------------------------ indices
def frame_indices(t: Tables, s: AuditConfig) -> dict[str, str]:
    out = {}
    for _, item, fi in _episode_rows(t, "frame_index"):
        if not np.array_equal(fi, np.arange(len(fi))):
            k = int(np.argmax(fi != np.arange(len(fi))))
            out[item] = f"frame_index is not 0..{len(fi) - 1}: row {k} has {fi[k]:g}"
    return out


def global_index(t: Tables, s: AuditConfig) -> dict[str, str]:
    """The `index` column of an episode runs start..start+n−1, start = the rows of the episodes before it."""
    if "index" not in t.columns:
        return {}
    out, start = {}, 0
    rows = t.rows()
    for index in sorted(t.episodes):
        r = rows.get(index)
        if r is None:
            continue
        idx = t.columns["index"][r]
        want = start + np.arange(len(r))
        if not np.array_equal(idx, want):
            out[t.item_id(index)] = (f"index runs {idx[0]:g}..{idx[-1]:g}, expected {want[0]}..{want[-1]} (the rows "
                                     f"of the episodes before it): frames of two episodes share global indices or "
                                     f"a sampler skips some")
        start += len(r)
    return out


def task_indices(t: Tables, s: AuditConfig) -> dict[str, str]:
    ti = t.columns.get("task_index")
    if not t.tasks or ti is None:
        return {}
    order, _, _ = t.segments()
    ti, ep = ti[order].astype(np.float64), t.columns["episode_index"][order]
    bad = np.isfinite(ti) & ~np.isin(ti, list(t.tasks))
    out = {}
    for index in np.unique(ep[bad]):
        values = np.unique(ti[bad & (ep == index)]).astype(int).tolist()
        out[t.item_id(index)] = f"task_index {values[:5]} is not in the task table (it has {len(t.tasks)} tasks)"
    return out


# ------------------------------------------------------------------------------------------------ metadata
def info_matches(t: Tables, s: AuditConfig) -> dict[str, str]:
    """info.json totals and features that the files contradict (totals of episodes and frames: stream_matches_metadata)."""
    info, problems = t.info, []
    if t.tasks and isinstance(info.get("total_tasks"), int) and info["total_tasks"] != len(t.tasks):
        problems.append(f"total_tasks {info['total_tasks']}, the task table has {len(t.tasks)}")
    if not t.v3 and isinstance(info.get("total_videos"), int):
        files = sum(len(ep["videos"]) for ep in t.episodes.values())
        if info["total_videos"] != files:
            problems.append(f"total_videos {info['total_videos']}, the episodes have {files} camera files")
    features = info.get("features") or {}
    absent = [k for k, f in features.items() if isinstance(f, dict) and f.get("dtype") not in ("video", "image")
              and k not in t.columns and k not in (t.action_key, t.state_key)]
    if t.columns and absent:
        problems.append(f"features {absent[:4]} are declared but not in the data")
    problems += [p for p in t.problems if "values, info.json says" in p]
    return {t.name: "; ".join(problems)} if problems else {}


def orphans(t: Tables, s: AuditConfig) -> dict[str, str]:
    """Data rows of episodes the metadata does not list, and data files no listed episode points at."""
    problems = []
    ep = t.columns.get("episode_index")
    if ep is not None and len(ep):
        orphan = ~np.isin(ep, list(t.episodes))
        if orphan.any():
            which = sorted({int(i) for i in ep[orphan]})
            problems.append(f"{int(orphan.sum())} of {len(ep)} data rows ({orphan.mean():.0%}) belong to episodes "
                            f"the metadata does not list: {which[:5]}{' ...' if len(which) > 5 else ''}")
    used = {e["data_file"] for e in t.episodes.values()}
    unused = [f for f in t.data_files if f not in used]
    if unused and t.episodes:
        problems.append(f"{len(unused)} data file(s) no episode points at: {', '.join(unused[:3])}")
    return {t.name: "; ".join(problems)} if problems else {}


def segment_stats(values: np.ndarray, starts: np.ndarray) -> dict[str, np.ndarray]:
    """min, max, mean, std (ddof 0) and range [E, D] of consecutive row segments starting at `starts`."""
    counts = np.diff(np.append(starts, len(values)))[:, None]
    dims_first = np.ascontiguousarray(values.T)  # reductions along contiguous rows: several times faster
    mean = np.add.reduceat(dims_first, starts, axis=1).T / counts
    sq = np.add.reduceat(dims_first * dims_first, starts, axis=1).T / counts
    lo, hi = np.minimum.reduceat(dims_first, starts, axis=1).T, np.maximum.reduceat(dims_first, starts, axis=1).T
    return {"min": lo, "max": hi, "mean": mean, "std": np.sqrt(np.maximum(sq - mean * mean, 0)), "range": hi - lo}


def _stale(stored: dict[str, Any], fresh: dict[str, np.ndarray], key: str, s: AuditConfig) -> str | None:
    scale = np.maximum(fresh["range"], 1.0)
    for stat in STAT_NAMES:
        if stat not in stored:
            continue
        old = np.asarray(stored[stat], np.float64).ravel()
        if old.shape != fresh[stat].shape:
            return f"{key} {stat} has {old.size} values, the data {fresh[stat].size}"
        off = np.abs(old - fresh[stat]) > s.stats_tolerance * scale
        if off.any():
            d = int(np.argmax(off))
            return f"{key} {stat}[{d}] is {old[d]:.4g}, the data gives {fresh[stat][d]:.4g} ({int(off.sum())} dims off)"
    return None


def _stale_suspects(t: Tables, episodes: np.ndarray, per_episode: dict[str, dict[str, np.ndarray]],
                    s: AuditConfig) -> list[int]:
    """Positions (in `episodes`) of the episodes whose stored stats may disagree with the data: all stored flat
    vectors of the data's width compared at once; anything else (other shapes, odd values) is left to `_stale`."""
    suspects: set[int] = set()
    for key, fresh in per_episode.items():
        scale = np.maximum(fresh["range"], 1.0)
        stored = [((t.episodes[int(e)].get("stats") or {}).get(key) or {}) for e in episodes]
        for stat in STAT_NAMES:
            values = [x.get(stat) if isinstance(x, dict) else None for x in stored]
            width = fresh[stat].shape[1]
            flat = np.array([(v.ndim == 1 and len(v) == width) if isinstance(v, np.ndarray) else
                             (isinstance(v, list) and len(v) == width and not (v and isinstance(v[0], list)))
                             for v in values], bool)
            suspects.update(n for n in np.nonzero(~flat)[0].tolist() if values[n] is not None)
            if not flat.any():
                continue
            rows = np.nonzero(flat)[0]
            try:
                old = np.asarray([values[n] for n in rows], np.float64)
            except (TypeError, ValueError):
                suspects.update(rows.tolist())
                continue
            off = (np.abs(old - fresh[stat][rows]) > s.stats_tolerance * scale[rows]).any(1)
            suspects.update(rows[off].tolist())
    return sorted(suspects)


def stale_stats(t: Tables, s: AuditConfig) -> dict[str, str]:
    """Per-episode stats (episodes_stats.jsonl, v3 stats/ columns) and meta/stats.json against the data."""
    out: dict[str, str] = {}
    order, episodes, starts = t.segments()
    if not len(order):
        return out
    vectors = [(k, a[order]) for k, a in ((t.action_key, t.action), (t.state_key, t.state)) if k and a is not None]
    per_episode = {k: segment_stats(a, starts) for k, a in vectors}
    for n in _stale_suspects(t, episodes, per_episode, s):  # the others agree: no need to word a reason
        index = episodes[n]
        stored = t.episodes[int(index)].get("stats") or {}
        found = [why for k, _ in vectors if k in stored and (why := _stale(
            stored[k], {stat: v[n] for stat, v in per_episode[k].items()}, k, s))]
        if found:
            out[t.item_id(index)] = "stored stats disagree with the data: " + "; ".join(found)
    if isinstance(t.stats, dict):
        found = [why for k, a in vectors if isinstance(t.stats.get(k), dict) and (why := _stale(
            t.stats[k], {stat: v[0] for stat, v in segment_stats(a, np.zeros(1, np.int64)).items()}, k, s))]
        if found:
            out[t.name] = "meta/stats.json disagrees with the data: " + "; ".join(found)
    return out


# ------------------------------------------------------------------------------------------------ files
def file_problem(path: Path) -> str | None:
    """'zero bytes' or 'a git-lfs pointer' for such a file, None for others (and for missing ones)."""
    try:
        if path.stat().st_size == 0:
            return "zero bytes"
        with open(path, "rb") as f:
            head = f.read(len(LFS_POINTER))
    except OSError:
        return None
    return "a git-lfs pointer, not the file (run `git lfs pull`)" if head == LFS_POINTER else None


def bad_files(t: Tables, s: AuditConfig) -> dict[str, str]:
    owners: dict[str, list[int]] = {}
    for index, ep in t.episodes.items():
        owners.setdefault(ep["data_file"], []).append(index)
    for f, eps in t.video_files().items():
        owners.setdefault(f, []).extend(eps)
    for f in t.data_files:
        owners.setdefault(f, [])
    found: dict[str, list[str]] = {}
    for f, eps in sorted(owners.items()):
        why = file_problem(t.root / f)
        if why:
            for subject in [t.item_id(i) for i in sorted(set(eps))] or [t.name]:
                found.setdefault(subject, []).append(f"{f} is {why}")
    return {k: "; ".join(v[:3]) + (" ..." if len(v) > 3 else "") for k, v in found.items()}


def per_video(t: Tables, read: Callable[[Any, Any], Any]) -> dict[str, Any]:
    """Video file → read(container, its video stream), or why the file could not be opened or read."""
    out: dict[str, Any] = {}
    for f in t.video_files():
        path = t.root / f
        if not path.exists() or file_problem(path):
            out[f] = "missing or not a video"
            continue
        try:
            with av.open(str(path)) as c:
                out[f] = read(c, c.streams.video[0])
        except (av.FFmpegError, IndexError, OSError) as e:
            out[f] = f"unreadable: {e}"
    return out


def headers(t: Tables) -> dict[str, tuple[int, float] | str]:
    """Video file → (frames, average rate) from its container header (packets counted when the header has no
    frame count), or why it could not be read. Nothing is decoded."""
    return per_video(t, lambda c, v: (int(v.frames) or sum(1 for p in c.demux(v) if p.size),
                                      float(v.average_rate or v.base_rate or 0)))


def camera_lengths(t: Tables, s: AuditConfig, heads: dict | None = None) -> dict[str, str]:
    """Cameras of one episode with different frame counts: the v3.0 windows (metadata), the v2.x files (headers)."""
    if len(t.cameras) < 2:
        return {}
    heads = headers(t) if heads is None and not t.v3 else heads
    out = {}
    for index, ep in sorted(t.episodes.items()):
        counts = {}
        for cam, v in ep["videos"].items():
            if t.v3:
                if v["to"] is not None and t.fps > 0:
                    counts[cam] = int(round((v["to"] - v["from"]) * t.fps))
            elif isinstance(heads.get(v["file"]), tuple):
                counts[cam] = heads[v["file"]][0]
        if len(set(counts.values())) > 1:
            out[t.item_id(index)] = "cameras disagree on the frame count: " + ", ".join(
                f"{cam.rsplit('.', 1)[-1]} {n}" for cam, n in counts.items()) + f" (episode length {ep.get('length')})"
    return out


def camera_rates(t: Tables, s: AuditConfig, heads: dict | None = None) -> dict[str, str]:
    """Camera streams whose rate (info.json video.fps, the container's average rate) is not the dataset's fps."""
    if t.fps <= 0:
        return {}
    heads = headers(t) if heads is None else heads
    out: dict[str, list[str]] = {}
    for cam in t.cameras:
        declared = ((t.info.get("features") or {}).get(cam) or {}).get("info") or {}
        fps = declared.get("video.fps")
        if isinstance(fps, (int, float)) and abs(fps - t.fps) > s.rate_tolerance * t.fps:
            out.setdefault(t.name, []).append(f"info.json gives {cam} video.fps {fps:g}, the dataset {t.fps:g}")
    for f, eps in t.video_files().items():
        h = heads.get(f)
        if isinstance(h, tuple) and h[1] > 0 and abs(h[1] - t.fps) > s.rate_tolerance * t.fps:
            for i in sorted(set(eps)):
                out.setdefault(t.item_id(i), []).append(f"{f} plays at {h[1]:.3g} fps, the dataset's fps is {t.fps:g}")
    return {k: "; ".join(v[:3]) for k, v in out.items()}


# ------------------------------------------------------------------------------------------------ the checks
def apply(ctx: AuditContext, rule: Callable[[Tables, AuditConfig], dict[str, str]], dataset_level: bool = False,
          **kw) -> Outcome:
    tables = dataset_tables(ctx)
    if not tables:
        return Outcome.skipped("no LeRobot dataset among the sources")
    out = Outcome()
    for t in tables:
        out.checked += [t.name] if dataset_level else [t.item_id(i) for i in sorted(t.episodes)]
        extra = {k: v(ctx, t) for k, v in kw.items()}
        for subject, reason in rule(t, ctx.settings, **extra).items():
            out.fail(subject, reason)
    return out


def _heads(ctx: AuditContext, t: Tables) -> dict:
    return ctx.memo(f"headers:{t.root}", lambda: headers(t))


@check("timestamps_monotonic", "dataset", "error",
       "Within an episode the timestamp column must increase at every row: a clock that steps back, rows written "
       "out of order or a frame recorded twice breaks every reader that looks frames up by time.")
def timestamps_monotonic(ctx: AuditContext) -> Outcome:
    return apply(ctx, monotonic)


@check("timestamp_spacing", "dataset", "warning",
       "Consecutive timestamps must be 1/fps apart within timestamp_tolerance_s (LeRobot's own default tolerance, "
       "1e-4 s): a reader that looks frames up by time fails or picks a neighbouring frame.")
def timestamp_spacing(ctx: AuditContext) -> Outcome:
    return apply(ctx, spacing)


@check("timestamp_drift", "dataset", "warning",
       "An episode's timestamps span more or less than (frames − 1)/fps by over half a frame: frames dropped or "
       "repeated, or a clock running at another rate than the one info.json declares.")
def timestamp_drift(ctx: AuditContext) -> Outcome:
    return apply(ctx, drift)


@check("frame_indices", "dataset", "error",
       "frame_index must run 0..length−1 in every episode (ingest quarantines episodes where it does not).")
def frame_indices_check(ctx: AuditContext) -> Outcome:
    from audit.checks.integrity import from_quarantine

    return from_quarantine(ctx, "frame_indices", apply(ctx, frame_indices))


@check("global_index", "dataset", "error",
       "The global index column must run on from episode to episode (episode k starts at the rows of the episodes "
       "before it): samplers and delta-timestamp lookups use it, so a gap or an overlap feeds them other frames.")
def global_index_check(ctx: AuditContext) -> Outcome:
    return apply(ctx, global_index)


@check("task_index_valid", "dataset", "error",
       "Every task_index of the data points at a task of the task table (tasks.jsonl / tasks.parquet); a dangling one "
       "leaves the episode without its instruction.")
def task_index_valid(ctx: AuditContext) -> Outcome:
    return apply(ctx, task_indices)


@check("info_matches_data", "dataset", "warning",
       "info.json says what the files contradict: total_tasks against the task table, total_videos against the "
       "episodes' camera files, declared features missing from the data or of another width.")
def info_matches_data(ctx: AuditContext) -> Outcome:
    return apply(ctx, info_matches, dataset_level=True)


@check("orphan_rows", "dataset", "error",
       "Data rows whose episode_index the episodes metadata does not list, and data files no episode points at: a "
       "reader that loads every file mixes them in (one public dataset had 44% orphan rows).")
def orphan_rows(ctx: AuditContext) -> Outcome:
    return apply(ctx, orphans, dataset_level=True)


@check("stale_stats", "dataset", "warning",
       "Stored statistics (per episode: episodes_stats.jsonl or the v3 stats/ columns; meta/stats.json) whose min, "
       "max, mean or std of action and state disagree with the data beyond stats_tolerance of the range: every "
       "training run normalises with them.")
def stale_stats_check(ctx: AuditContext) -> Outcome:
    out = apply(ctx, stale_stats)
    for t in dataset_tables(ctx):
        if isinstance(t.stats, dict) and t.name not in out.checked:
            out.checked.append(t.name)
    return out


@check("media_files", "dataset", "error",
       "Zero-byte files and git-lfs pointer files (a clone without `git lfs pull`) in place of an episode's video "
       "or data file; the ingest quarantines such episodes, this says why.")
def media_files(ctx: AuditContext) -> Outcome:
    return apply(ctx, bad_files)


@check("camera_lengths", "dataset", "warning",
       "Camera streams of one episode with different frame counts (v3.0 windows from the metadata, v2.x files from "
       "their container headers, nothing decoded): views that drift apart in time.")
def camera_lengths_check(ctx: AuditContext) -> Outcome:
    return apply(ctx, camera_lengths, heads=_heads)


@check("camera_rates", "dataset", "warning",
       "A camera stream whose rate (info.json video.fps, the container's average rate) differs from the dataset's "
       "fps by more than rate_tolerance: frames are matched to the wrong rows.")
def camera_rates_check(ctx: AuditContext) -> Outcome:
    return apply(ctx, camera_rates, heads=_heads)


def packet_times(t: Tables) -> dict[str, tuple[np.ndarray, float] | str]:
    """Video file → (its frames' presentation times in seconds, in presentation order; one tick of its clock), from
    the packets (demuxed, nothing decoded), or why it could not be read."""
    def read(c, v):
        pts = np.sort(np.array([p.pts for p in c.demux(v) if p.pts is not None and p.size], np.int64))
        return pts * float(v.time_base), float(v.time_base)

    return per_video(t, read)


def pts_drift(t: Tables, s: AuditConfig, pts: dict | None = None) -> dict[str, str]:
    """Frames whose presentation time in the video (minus the episode's from_timestamp) is not the timestamp its
    data row records, beyond pts_tolerance_s plus half a tick of the container's clock."""
    pts = packet_times(t) if pts is None else pts
    rows, ts_all = t.rows(), t.columns.get("timestamp")
    if ts_all is None:
        return {}
    out: dict[str, list[str]] = {}
    for index, ep in sorted(t.episodes.items()):
        r = rows.get(index)
        if r is None or not len(r):
            continue
        ts = ts_all[r].astype(np.float64)
        for cam, v in ep["videos"].items():
            got = pts.get(v["file"])
            if not isinstance(got, tuple):
                continue  # media_files / camera checks report unreadable files
            times, tick = got
            start = float(v.get("from") or 0.0)
            if v.get("to") is not None:
                times = times[(times >= start - tick / 2) & (times < float(v["to"]) - tick / 2)]
            times = times - start
            n = min(len(ts), len(times))
            if not n:
                continue
            off = times[:n] - ts[:n]
            bad = np.abs(off) > s.pts_tolerance_s + tick / 2
            if bad.any():
                k = int(np.abs(off).argmax())
                out.setdefault(t.item_id(index), []).append(
                    f"{cam.rsplit('.', 1)[-1]}: {int(bad.sum())} of {n} frames sit off their timestamps; worst frame "
                    f"{k} at {times[k]:.4f} s in the video, its timestamp {ts[k]:.4f} s ({off[k] * 1e3:+.1f} ms)")
    return {k: "; ".join(v[:3]) for k, v in out.items()}


def _pts(ctx: AuditContext, t: Tables) -> dict:
    return ctx.memo(f"pts:{t.root}", lambda: packet_times(t))


@check("pts_drift", "dataset", "warning",
       "A camera's presentation timestamps (the pts in the video container, read from its packets, nothing decoded) "
       "disagree with the timestamps the data rows record, frame by frame, beyond pts_tolerance_s: a reader that "
       "seeks the video by the recorded time (LeRobot's) gets another frame or refuses the episode.")
def pts_drift_check(ctx: AuditContext) -> Outcome:
    return apply(ctx, pts_drift, pts=_pts)
