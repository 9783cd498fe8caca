"""Ego4D (tier L2, egocentric human video): clips cut as windows around narrations or FHO state changes, read from
the Ego4D CLI's output. Layout, options and quirks: docs/formats.md#ssv2-ego4d."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any, Iterator

from sources.media import VideoInfo, fingerprint
from sources.base import Item, ItemRef, SourceAdapter, SourceError, read_json
from sources.ego4d_video import VideoFacts, FrameSpan, _video_facts, clear_video_cache, cut_window
from common.errors import BadInput

DEFAULT_LICENCE = "Ego4D licence agreement, research use"
CAMERA = "head"  # Ego4D is filmed by a head-mounted camera
CLIP_MODES = ("narrations", "fho")
# fho_main.json critical frames, in time order (pre_45/30/15: 45/30/15 frames before pre_frame)
CRITICAL_FRAMES = ("pre_45", "pre_30", "pre_15", "pre_frame", "contact_frame", "pnr_frame", "post_frame")


# ------------------------------------------------------------------------------------------- narration text

_CAMERA_WEARER = re.compile(r"^\s*#C\s+(C\s+)?", re.IGNORECASE)
# After "#O" Ego4D usually names the person ("#O man X ...", "#O a woman ..."); "Someone man X" would read badly,
# so the tag is dropped before such a noun phrase and becomes "Someone" only before a verb ("#O talks ...").
_OTHER_PERSON = re.compile(r"^\s*#O\s+", re.IGNORECASE)
_PERSON_WORDS = re.compile(r"(a|an|the|man|woman|person|lady|boy|girl|child|kid|people|men|women)\b", re.IGNORECASE)
_UNSURE = re.compile(r"#unsure\b", re.IGNORECASE)
# Inside a narration a lone capital "C" is the camera wearer ("#O man X gives the card to C").
_WEARER_MENTION = re.compile(r"(?<![\w-])C(?![\w-])")


def clean_narration(text: str) -> str:
    """Ego4D's narration markup -> a plain instruction.

    "#C C picks a bag" -> "The person picks a bag"; "#O talks" -> "Someone talks"; "#O man X waves" ->
    "Man X waves"; "... to C" -> "... to the person"; "#unsure" is removed and whitespace collapsed.
    """
    text = _UNSURE.sub(" ", text)
    if _CAMERA_WEARER.match(text):
        text = _CAMERA_WEARER.sub("The person ", text, count=1)
    elif _OTHER_PERSON.match(text):
        rest = _OTHER_PERSON.sub("", text, count=1)
        text = rest if _PERSON_WORDS.match(rest) else "Someone " + rest
    text = _WEARER_MENTION.sub("the person", text)
    text = " ".join(text.split())
    return text[:1].upper() + text[1:]


def _hash(obj: Any) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=8).hexdigest()


def _passes(option: Any) -> list[int]:
    """`narration_passes`: [1, 2] or 2 (meaning passes 1 and 2); default pass 1 only."""
    if option is None:
        return [1]
    if isinstance(option, int) and not isinstance(option, bool):
        return list(range(1, option + 1))
    if isinstance(option, (list, tuple)) and option:
        return sorted({int(p) for p in option})
    raise SourceError(f"ego4d: narration_passes must be a list of pass numbers or a count, got {option!r}")


# ------------------------------------------------------------------------------------------- the adapter


class Ego4DSource(SourceAdapter):
    name = "ego4d"
    default_tier = 2
    OPTIONS = frozenset({"after_s", "before_s", "clips", "fho_center", "fho_file", "fho_interval", "fho_pad_s",
                           "fho_window_s", "licence", "min_frames", "missing_videos", "narration_passes", "use_clips",
                           "version"})

    def __init__(self, root, tier=None, **options):
        super().__init__(root, tier, **options)
        self.version = options.get("version") or self._newest_version()
        self.base = self.root / self.version
        if not (self.base / "ego4d.json").exists():
            raise SourceError(f"ego4d: {self.base / 'ego4d.json'} is missing (download it with the Ego4D CLI's --metadata)")
        self.use_clips = bool(options.get("use_clips", False))
        self.clips = options.get("clips") or "narrations"
        if self.clips not in CLIP_MODES:
            raise SourceError(f"ego4d: clips must be one of {', '.join(CLIP_MODES)}, got {self.clips!r}")
        self.fho_file = str(options.get("fho_file", "annotations/fho_main.json"))
        self.fho_interval = tuple(options.get("fho_interval") or ("pre_frame", "post_frame"))
        self.fho_pad_s = float(options.get("fho_pad_s", 0.0))
        self.fho_window_s = None if options.get("fho_window_s") is None else float(options["fho_window_s"])
        self.fho_center = str(options.get("fho_center", "pnr_frame"))
        if self.clips == "fho":
            self._check_fho_options()
        self.missing_videos = str(options.get("missing_videos", "summary"))
        if self.missing_videos not in ("summary", "quarantine"):
            raise SourceError(f"ego4d: missing_videos must be summary or quarantine, got {self.missing_videos!r}")
        self.passes = _passes(options.get("narration_passes"))
        self.before_s = float(options.get("before_s", 1.0))
        self.after_s = float(options.get("after_s", 3.0))
        self.min_frames = int(options.get("min_frames", 2))  # a 1-frame clip carries no motion
        if self.before_s < 0 or self.after_s < 0 or self.before_s + self.after_s <= 0:
            raise SourceError(f"ego4d: before_s={self.before_s} and after_s={self.after_s} give an empty window")
        if self.clips == "fho" and not self.use_clips:
            if not (self.base / self.fho_file).exists():
                raise SourceError(f"ego4d: {self.base / self.fho_file} is missing; FHO clips need it "
                                  "(download --datasets annotations --benchmarks FHO)")
        elif not self.use_clips and not (self.base / "annotations" / "narration.json").exists():
            raise SourceError(f"ego4d: {self.base / 'annotations' / 'narration.json'} is missing; narration clips need it "
                              "(download --datasets annotations, or set use_clips=True)")

    def _check_fho_options(self) -> None:
        if len(self.fho_interval) != 2 or any(k not in CRITICAL_FRAMES for k in self.fho_interval):
            raise SourceError(f"ego4d: fho_interval must name two critical frames of {', '.join(CRITICAL_FRAMES)}, "
                              f"got {list(self.fho_interval)}")
        if CRITICAL_FRAMES.index(self.fho_interval[0]) >= CRITICAL_FRAMES.index(self.fho_interval[1]):
            raise SourceError(f"ego4d: fho_interval {list(self.fho_interval)} does not run forward in time")
        if self.fho_pad_s < 0:
            raise SourceError(f"ego4d: fho_pad_s must be >= 0, got {self.fho_pad_s}")
        if self.fho_window_s is not None and self.fho_window_s <= 0:
            raise SourceError(f"ego4d: fho_window_s must be > 0, got {self.fho_window_s}")
        if self.fho_center not in CRITICAL_FRAMES:
            raise SourceError(f"ego4d: fho_center must be one of {', '.join(CRITICAL_FRAMES)}, got {self.fho_center!r}")

    def _fho_window_options(self) -> dict[str, Any]:
        if self.fho_window_s is not None:
            return {"fho_window_s": self.fho_window_s, "fho_center": self.fho_center, "min_frames": self.min_frames}
        return {"fho_interval": list(self.fho_interval), "fho_pad_s": self.fho_pad_s, "min_frames": self.min_frames}

    def _newest_version(self) -> str:
        versions = [p.name for p in self.root.glob("v*") if re.fullmatch(r"v\d+", p.name) and (p / "ego4d.json").exists()]
        if not versions:
            raise SourceError(f"ego4d: no v<N>/ego4d.json under {self.root} (is it the Ego4D CLI's output directory?)")
        return max(versions, key=lambda v: int(v[1:]))

    def _load(self, relative: str) -> Any:
        return read_json(self.base / relative, "ego4d")

    # --- discovery (driver) ---

    def discover(self) -> Iterator[ItemRef]:
        meta = self._load("ego4d.json")
        if not isinstance(meta, dict) or not isinstance(meta.get("videos"), list):
            raise SourceError(f"ego4d: {self.base / 'ego4d.json'} has no videos[] list")
        videos = {v["video_uid"]: v for v in meta["videos"] if isinstance(v, dict) and "video_uid" in v}
        if self.use_clips:
            yield from self._discover_clip_files(meta.get("clips") or [])
        elif self.clips == "fho":
            yield from self._discover_fho(videos)
        else:
            yield from self._discover_narrations(videos)

    def _discover_narrations(self, videos: dict[str, dict]) -> Iterator[ItemRef]:
        narrations = self._load("annotations/narration.json")
        if not isinstance(narrations, dict):
            raise SourceError(f"ego4d: {self.base / 'annotations' / 'narration.json'} must map video_uid -> passes")
        window = {"before_s": self.before_s, "after_s": self.after_s, "min_frames": self.min_frames}
        absent: dict[str, int] = {}
        for uid in sorted(narrations):
            path = self.base / "full_scale" / f"{uid}.mp4"
            if self._absent(path):
                absent[uid] = sum(len((narrations[uid] or {}).get(f"narration_pass_{p}", {}).get("narrations") or [])
                                  for p in self.passes)
                continue
            video_fp = fingerprint(path)  # one stat per video, not per narration
            vmeta = videos.get(uid, {}).get("video_metadata") or {}
            common = {"video_uid": uid, "in_ego4d_json": uid in videos, "metadata_frames": vmeta.get("num_frames"),
                      "metadata_fps": vmeta.get("fps"), "scenarios": videos.get(uid, {}).get("scenarios"), **window}
            for p in self.passes:
                entries = (narrations[uid] or {}).get(f"narration_pass_{p}", {}).get("narrations") or []
                for i, n in enumerate(entries):
                    key = n.get("annotation_uid") or f"pass{p}-{i}"
                    native_id = f"{uid}/{key}"
                    details = {**common, "pass": p, "index": i, "narration": n}
                    # the narration and the window options are part of the input: changing either redoes the clip
                    yield ItemRef(self.item_id(native_id), native_id, str(path),
                                  f"{video_fp}-{_hash([n, window])}", details)
        self._note_absent(absent, "narrated in annotations/narration.json", "narrations")

    def _discover_fho(self, videos: dict[str, dict]) -> Iterator[ItemRef]:
        fho = self._load(self.fho_file)
        if not isinstance(fho, dict) or not isinstance(fho.get("videos"), list):
            raise SourceError(f"ego4d: {self.base / self.fho_file} has no videos[] list")
        window = self._fho_window_options()
        absent: dict[str, int] = {}
        for v in sorted((v for v in fho["videos"] if isinstance(v, dict) and "video_uid" in v),
                        key=lambda v: v["video_uid"]):
            uid = v["video_uid"]
            path = self.base / "full_scale" / f"{uid}.mp4"
            if self._absent(path):
                absent[uid] = sum(len(i.get("narrated_actions") or []) for i in v.get("annotated_intervals") or [])
                continue
            video_fp = fingerprint(path)
            vmeta = videos.get(uid, {}).get("video_metadata") or v.get("video_metadata") or {}
            common = {"video_uid": uid, "in_ego4d_json": uid in videos, "metadata_frames": vmeta.get("num_frames"),
                      "metadata_fps": vmeta.get("fps"), "scenarios": videos.get(uid, {}).get("scenarios"), **window}
            for i, interval in enumerate(v.get("annotated_intervals") or []):
                for j, action in enumerate(interval.get("narrated_actions") or []):
                    if not action.get("critical_frames") or action.get("is_rejected") \
                            or action.get("is_valid_action") is False or action.get("is_invalid_annotation"):
                        continue  # not an accepted state change
                    key = action.get("uid") or f"interval{i}-action{j}"
                    native_id = f"{uid}/fho/{key}"
                    # only what the item uses goes into it (fho actions also carry per-frame boxes)
                    kept = {k: action.get(k) for k in ("uid", "narration_text", "narration_timestamp_sec",
                                                       "critical_frames", "structured_verb", "structured_noun",
                                                       "freeform_verb", "state_transition")}
                    details = {**common, "interval": i, "index": j, "clip_uid": interval.get("clip_uid"),
                               "action": kept}
                    yield ItemRef(self.item_id(native_id), native_id, str(path),
                                  f"{video_fp}-{_hash([kept, window])}", details)
        self._note_absent(absent, f"annotated in {self.fho_file}", "narrated actions")

    def _absent(self, path: Path) -> bool:
        """A video the annotations name but the disk lacks, skipped by default (a `--video_uids` partial download:
        the annotation files list every video); `missing_videos: quarantine` keeps it as quarantined items."""
        return self.missing_videos != "quarantine" and not path.exists()

    def _note_absent(self, absent: dict[str, int], listed: str, what: str) -> None:
        if absent:
            n = len(absent)
            self.notes.append(f"{n} video{'s' if n != 1 else ''} {listed} {'are' if n != 1 else 'is'} not on disk ({sum(absent.values())} {what}; first: "
                              f"{', '.join(list(absent)[:3])}); set the source option missing_videos: quarantine to "
                              "list each one")

    def _discover_clip_files(self, clips: list) -> Iterator[ItemRef]:
        parents = {c["clip_uid"]: c for c in clips if isinstance(c, dict) and "clip_uid" in c}
        narrations = {}
        if (self.base / "annotations" / "narration.json").exists():
            narrations = self._load("annotations/narration.json")
        for path in sorted((self.base / "clips").glob("*.mp4")):
            clip = parents.get(path.stem, {})
            uid = clip.get("video_uid")
            details = {"clip_uid": path.stem, "video_uid": uid,
                       "video_start_sec": clip.get("video_start_sec"), "video_end_sec": clip.get("video_end_sec"),
                       "language": self._clip_language(clip, narrations.get(uid) or {})}
            native_id = f"clips/{path.stem}"
            yield ItemRef(self.item_id(native_id), native_id, str(path), f"{fingerprint(path)}-{_hash(details)}", details)

    def _clip_language(self, clip: dict, video_narrations: dict) -> list[str]:
        """The narrations of the parent video that fall inside the clip's span of it."""
        start, end = clip.get("video_start_sec"), clip.get("video_end_sec")
        if start is None or end is None:
            return []
        lines = []
        for p in self.passes:
            for n in (video_narrations.get(f"narration_pass_{p}") or {}).get("narrations") or []:
                t = n.get("timestamp_sec")
                if t is not None and start <= t < end and (text := clean_narration(n.get("narration_text", ""))):
                    lines.append(text)
        return lines

    # --- probing (workers) ---

    def probe(self, ref: ItemRef) -> Item:
        if self.use_clips:
            return self._probe_clip_file(ref)
        return self._probe_fho(ref) if self.clips == "fho" else self._probe_narration(ref)

    def _probe_narration(self, ref: ItemRef) -> Item:
        d = ref.details
        n = d["narration"]
        path = Path(ref.input_uri)
        listed = "listed in ego4d.json" if d["in_ego4d_json"] else "narrated in narration.json"
        facts = _video_facts(path, f"missing video file {self.version}/full_scale/{path.name} ({listed})")
        info = facts.info
        t = self._timestamp(n, d)
        start, end = t - self.before_s, t + self.after_s
        stream_end = info.frame_count / info.fps
        win = self._checked_window(f"narration at {t:.3f} s", start, end, info, d)
        extras = {
            "video_uid": d["video_uid"], "version": self.version, "narration_pass": d["pass"],
            "narration_index": d["index"], "annotation_uid": n.get("annotation_uid"), "narration_time_s": t,
            "narration_text_raw": n.get("narration_text"), "start_frame": win.first_frame,
            "window_requested_s": [start, end],
            "window_clipped": start < 0 or end > stream_end,  # cut by the video's start or its real end
            "scenarios": d.get("scenarios"),
        }
        extras.update(self._mismatch(d, info))
        text = clean_narration(n.get("narration_text", ""))
        return self._row(ref, path, facts, win, [text] if text else [], f"ego4d/{d['video_uid']}", extras)

    def _checked_window(self, what: str, start: float, end: float, info, d: dict[str, Any]):
        """The frames of [start, end) s inside the REAL stream (probed, not ego4d.json's count), or BadInput."""
        stream_end = info.frame_count / info.fps
        if start >= stream_end:
            claimed = f"; ego4d.json claims {d['metadata_frames']} frames" if d.get("metadata_frames") else ""
            raise BadInput(f"{what}: window [{start:.3f}, {end:.3f}] s lies entirely beyond the real "
                           f"stream end ({stream_end:.3f} s = {info.frame_count} frames at {info.fps:g} fps{claimed})")
        if end <= 0:
            raise BadInput(f"{what}: window [{start:.3f}, {end:.3f}] s ends before the video starts")
        win = cut_window(start, end, info.fps, info.frame_count)
        if win.frame_count < self.min_frames:
            raise BadInput(f"{what}: only {win.frame_count} frame(s) of its window lie inside the real "
                           f"stream ({info.frame_count} frames at {info.fps:g} fps); at least {self.min_frames} needed")
        return win

    def _probe_fho(self, ref: ItemRef) -> Item:
        d = ref.details
        a = d["action"]
        path = Path(ref.input_uri)
        listed = "listed in ego4d.json" if d["in_ego4d_json"] else f"annotated in {Path(self.fho_file).name}"
        facts = _video_facts(path, f"missing video file {self.version}/full_scale/{path.name} ({listed})")
        info = facts.info
        # critical frames count frames of the full-scale video at the fps the annotators saw (ego4d.json's)
        frame_fps = float(d.get("metadata_fps") or info.fps)
        critical = a.get("critical_frames") or {}
        name = a.get("uid") or f"interval {d['interval']} action {d['index']}"

        def frame_time(key: str) -> float:
            value = critical.get(key)
            if value is None:
                raise BadInput(f"FHO action {name}: critical frame {key} is missing "
                               f"(it has {sorted(k for k, v in critical.items() if v is not None)})")
            return float(value) / frame_fps

        if self.fho_window_s is not None:
            centre = frame_time(self.fho_center)
            start, end = centre - self.fho_window_s / 2, centre + self.fho_window_s / 2
            anchors = {self.fho_center: critical[self.fho_center]}
        else:
            k0, k1 = self.fho_interval
            t0, t1 = frame_time(k0), frame_time(k1)
            if t1 <= t0:
                raise BadInput(f"FHO action {name}: {k1} ({critical[k1]}) is not after {k0} ({critical[k0]})")
            # both critical frames belong to the clip: it ends where frame k1 ends
            start, end = t0 - self.fho_pad_s, t1 + 1.0 / frame_fps + self.fho_pad_s
            anchors = {k0: critical[k0], k1: critical[k1]}
        stream_end = info.frame_count / info.fps
        win = self._checked_window(f"FHO action {name}", start, end, info, d)
        extras = {
            "video_uid": d["video_uid"], "version": self.version, "clips": "fho", "fho_uid": a.get("uid"),
            "clip_uid": d.get("clip_uid"), "interval_index": d["interval"], "action_index": d["index"],
            "critical_frames": critical, "window_frames": anchors, "critical_frame_fps": frame_fps,
            "narration_time_s": a.get("narration_timestamp_sec"), "narration_text_raw": a.get("narration_text"),
            "structured_verb": a.get("structured_verb"), "structured_noun": a.get("structured_noun"),
            "start_frame": win.first_frame, "window_requested_s": [start, end],
            "window_clipped": start < 0 or end > stream_end, "scenarios": d.get("scenarios"),
        }
        extras.update(self._mismatch(d, info))
        text = clean_narration(a.get("narration_text") or "")
        return self._row(ref, path, facts, win, [text] if text else [], f"ego4d/{d['video_uid']}", extras)

    def _probe_clip_file(self, ref: ItemRef) -> Item:
        d = ref.details
        path = Path(ref.input_uri)
        facts = _video_facts(path, f"missing clip file {self.version}/clips/{path.name}")
        win = FrameSpan(0, facts.info.frame_count, facts.info.fps)
        # grouping with the parent video keeps a clip in the same split as the rest of that recording
        group = f"ego4d/{d['video_uid']}" if d.get("video_uid") else ref.item_id
        extras = {"clip_uid": d["clip_uid"], "video_uid": d.get("video_uid"), "version": self.version,
                  "video_start_sec": d.get("video_start_sec"), "video_end_sec": d.get("video_end_sec")}
        return self._row(ref, path, facts, win, d["language"], group, extras)

    @staticmethod
    def _timestamp(n: dict, d: dict) -> float:
        if n.get("timestamp_sec") is not None:
            return float(n["timestamp_sec"])
        if n.get("timestamp_frame") is not None and d.get("metadata_fps"):
            return float(n["timestamp_frame"]) / float(d["metadata_fps"])
        raise BadInput(f"narration {n.get('annotation_uid') or d['index']} has neither timestamp_sec nor timestamp_frame")

    @staticmethod
    def _mismatch(d: dict, info: VideoInfo) -> dict[str, Any]:
        """What ego4d.json claims versus what the stream holds, recorded only where they disagree."""
        out: dict[str, Any] = {}
        if d.get("metadata_frames") is not None and int(d["metadata_frames"]) != info.frame_count:
            out.update(metadata_frames=int(d["metadata_frames"]), stream_frames=info.frame_count)
        if d.get("metadata_fps") and abs(float(d["metadata_fps"]) - info.fps) > 1e-3:
            out.update(metadata_fps=float(d["metadata_fps"]), stream_fps=info.fps)
        return out

    def _row(self, ref: ItemRef, path: Path, facts: VideoFacts, win: FrameSpan, language: list[str], group: str,
             extras: dict[str, Any]) -> Item:
        return self.item(
            ref,
            group_id=group,
            media_uris=[str(path)],
            cameras=[CAMERA],
            fps=facts.info.fps,
            frame_count=win.frame_count,
            width=facts.info.width,
            height=facts.info.height,
            duration_s=win.duration_s,
            start_s=win.start_s,
            embodiment="human",
            language=language,
            licence=self.options.get("licence", DEFAULT_LICENCE),
            input_blake2b=facts.checksum,
            input_bytes=facts.size,
            extras=extras,
        )


__all__ = ["Ego4DSource", "clean_narration", "clear_video_cache", "cut_window"]
