"""The flow stage: optical flow pairs + motion statistics for every ingested item, one artifact per item.

Workers stream an item's frames (never the whole video), form pairs (t, t+Δ) on the configured grid, run the
backend in batches, accumulate statistics at the working size and store float16 flow at the store size. Items
from our simulators can use exact flow instead (`flow.sim_for_sim_tiers`). The driver records artifacts and
statistics in the catalog; a rerun skips items whose input and flow settings are unchanged.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Mapping

import cv2
import numpy as np
from rich.console import Console

from catalog import Catalog
from common.fingerprint import fingerprint
from flow_extraction.artifacts import artifact_path, write_flow_artifact
from flow_extraction.base import ScaledBackend
from flow_extraction.config import FlowConfig, backend_module
from flow_extraction.frames import fit_canvas, iter_source_frames, native_frame_index, place, resampled_count
from flow_extraction.stats import MotionFilter, StatsAccumulator
from pipelines.config import PipelineConfig
from pipelines.driver import ItemStage, Manifest, StageReport, run_item_stage
from pipelines.stages import BadInput, Outcome, Resources, Stage
from sources import SOURCES


def delta_frames(delta_s: float, fps: float) -> int:
    return max(1, int(round(delta_s * fps)))


def pair_starts(n_frames: int, dframes: int, grid: str) -> np.ndarray:
    step = 1 if grid == "native" else dframes
    return np.arange(0, max(n_frames - dframes, 0), step, dtype=np.int64)


@dataclass
class FlowBackends:
    """What a flow worker loads once: the frame backend (DIS or DPFlow) and, if enabled, the exact sim flow."""

    frames: Any
    sim: Any | None = None


def make_backends(flow_cfg: dict[str, Any]) -> FlowBackends:
    fc = FlowConfig(**flow_cfg)
    frames = backend_module(fc).from_config(fc)
    if fc.flow_hw() != tuple(fc.working_size):
        frames = ScaledBackend(frames, tuple(fc.working_size), fc.flow_hw())
    sim = None
    if fc.sim_for_sim_tiers:
        from flow_extraction.sim_flow import SimFlowBackend

        sim = SimFlowBackend()
    return FlowBackends(frames, sim)


def sim_media(row: Mapping[str, Any], camera: int) -> tuple[str, str] | None:
    """(file, camera) holding exact-flow extras for this item, or None when it has none."""
    extras = json.loads(row.get("extras") or "{}")
    if not extras.get("sim_extras"):
        return None
    cams = row["cameras"]
    cam = cams[min(camera, len(cams) - 1)]
    uri = row["media_uris"][min(camera, len(cams) - 1)]
    if cam not in extras.get("sim_cameras", cams):  # e.g. a wrist view rendered without depth: flow from pixels
        return None
    adapter = SOURCES.get(row["source"])
    path = adapter.sim_media(row, cam, uri) if adapter is not None else None
    return (path, cam) if path else None


class _Writer:
    """Accumulates pairs' statistics at the size the flow arrives at (the canvas, or `flow_size`; vectors in
    canvas pixels either way) and their downsampled flow for storage."""

    def __init__(self, n_pairs: int, field_hw: tuple[int, int], store_hw: tuple[int, int], motion: MotionFilter,
                 store_frames: bool = False, canvas_w: int | None = None):
        patch = max(1, round(motion.patch_px * field_hw[1] / canvas_w)) if canvas_w else None
        self.stats = StatsAccumulator(field_hw, motion, patch)
        self.field_hw = tuple(field_hw)
        self.store_hw = store_hw
        self.flow = np.zeros((n_pairs, 2, *store_hw), np.float16)
        self.valid = np.zeros((n_pairs, *store_hw), bool)
        self.frames = np.zeros((n_pairs, 3, *store_hw), np.uint8) if store_frames else None
        self.n = 0
        self.n_frames = 0
        self._mask, self._mask_stored = None, None

    def add_frames(self, frames) -> None:
        """First frames of the next pairs, already at the store size (RGB [B, h, w, 3], `place`)."""
        if self.frames is None:
            return
        for frame in frames:
            self.frames[self.n_frames] = frame.transpose(2, 0, 1)
            self.n_frames += 1

    def add(self, flow: np.ndarray, valid: np.ndarray) -> None:
        """flow [B, 2, h, w] (zeroed where invalid, in place); valid [B, h, w], or one mask [h, w] that holds for
        every pair (the letterbox: statistics in whole-batch operations, the stored mask resized once)."""
        if valid.ndim == 2:
            self.stats.add_batch(flow, valid)
            stored = self._stored_mask(valid)
            invalid = ~valid
        else:
            for f, v in zip(flow, valid):
                self.stats.add(f, v)
            stored = np.stack([field_mask(v, self.store_hw) for v in valid])
            invalid = ~valid[:, None]
        np.copyto(flow, np.float32(0), where=invalid)  # padding and occluded pixels store zero flow, not noise
        self.flow[self.n : self.n + len(flow)] = self._shrink(flow)
        self.valid[self.n : self.n + len(flow)] = stored  # a stored pixel is valid only if every pixel under it was
        self.n += len(flow)

    def _shrink(self, flow: np.ndarray) -> np.ndarray:
        """Flow fields [B, 2, h, w] → the store size, area-averaged, in one resize: the 2B fields stacked as one
        tall image, whose area blocks never straddle two fields (field k's last row maps to stored row k·h')."""
        b, c, h, w = flow.shape
        tall = cv2.resize(flow.reshape(b * c * h, w), (self.store_hw[1], b * c * self.store_hw[0]),
                          interpolation=cv2.INTER_AREA)
        return tall.reshape(b, c, *self.store_hw)

    def _stored_mask(self, mask: np.ndarray) -> np.ndarray:
        if self._mask is not mask:
            self._mask, self._mask_stored = mask, field_mask(mask, self.store_hw)
        return self._mask_stored


def _frame_flow(row, fc: FlowConfig, backend, pairs: np.ndarray, writer_factory) -> tuple[_Writer, Any]:
    """Stream frames; keep only the Δ+1 most recent; run the backend on full batches of pairs. Each decoded frame
    is prepared once as it arrives, not once per pair it belongs to: placed straight at the flow size (`place`:
    the canvas frame area-shrunk, without making the canvas), turned grey there for DIS, and, if it starts a pair,
    placed at the store size too (its stored first frame, made as exact sim flow's are)."""
    canvas_hw, flow_hw, store_hw = tuple(fc.working_size), fc.flow_hw(), tuple(fc.store_size)
    starts = set(int(s) for s in pairs[:, 0])
    dframes = int(pairs[0, 1] - pairs[0, 0])
    recent: deque = deque(maxlen=dframes + 1)  # (stored first frame or None, the frame the backend gets)
    batch_a, batch_b, firsts = [], [], []
    writer, canvas = None, None
    grey = getattr(backend.backend if isinstance(backend, ScaledBackend) else backend, "grey", None)

    def run_batch() -> None:
        flow = backend.compute(np.stack(batch_a), np.stack(batch_b))
        writer.add(flow, mask)
        writer.add_frames(firsts)

    for idx, frame, canvas in iter_source_frames(row, canvas_hw, fc.camera, fc.fps):
        if writer is None:
            writer = writer_factory(flow_hw)
            mask = field_mask(canvas.valid_mask(), flow_hw)
        keep = writer.frames is not None and idx in starts  # a pair's first frame is stored with it
        small, *first = place(frame, canvas, [flow_hw, store_hw] if keep else [flow_hw])
        recent.append((first[0] if keep else None, grey(small) if grey else small))
        if idx - dframes in starts:
            batch_a.append(recent[0][1])
            batch_b.append(recent[-1][1])
            firsts.append(recent[0][0])
        if len(batch_a) == fc.batch_size:
            run_batch()
            batch_a, batch_b, firsts = [], [], []
    if batch_a:
        run_batch()
    return writer, canvas


def field_mask(canvas_mask: np.ndarray, field_hw: tuple[int, int]) -> np.ndarray:
    """The canvas's valid mask at a field size: a field pixel is valid only if every canvas pixel under it is."""
    if canvas_mask.shape == tuple(field_hw):
        return canvas_mask
    small = cv2.resize(canvas_mask.astype(np.float32), (field_hw[1], field_hw[0]), interpolation=cv2.INTER_AREA)
    return small > 0.999


def _first_frames(row, fc: FlowConfig, pairs: np.ndarray, writer: _Writer) -> None:
    """Exact sim flow never decodes the video; the stored first frames still come from it (same camera, canvas)."""
    starts = set(int(s) for s in pairs[:, 0])
    for idx, frame, canvas in iter_source_frames(row, tuple(fc.working_size), fc.camera, fc.fps):
        if idx in starts:
            writer.add_frames(place(frame, canvas, [writer.store_hw]))
        if writer.n_frames == len(pairs):
            break


def _sim_flow(row, fc: FlowConfig, sim, media: tuple[str, str], pairs: np.ndarray, writer_factory, fps: float):
    from flow_extraction.sim_flow import to_canvas

    writer = writer_factory(tuple(fc.working_size))
    native_pairs = native_frame_index(pairs, float(row["fps"]), fps)
    canvas = None
    for i in range(0, len(native_pairs), fc.batch_size):
        flow, valid = sim.compute_item(media[0], media[1], native_pairs[i : i + fc.batch_size])
        if canvas is None:  # the camera's own size: a wrist view may be smaller than the main one (row height/width)
            canvas = fit_canvas(flow.shape[-2:], tuple(fc.working_size))
        flow_c, valid_c = to_canvas(flow, valid, canvas.scale, (canvas.offset_x, canvas.offset_y), tuple(fc.working_size))
        writer.add(flow_c, valid_c)
    if writer.frames is not None:
        _first_frames(row, fc, pairs, writer)
    return writer, canvas


def compute_item_flow(task: Mapping[str, Any], backends: FlowBackends) -> dict[str, Any]:
    """Stage function: one item → one flow artifact + its statistics."""
    row, fc = task["row"], FlowConfig(**task["flow"])
    n_frames, fps = resampled_count(int(row["frame_count"]), float(row["fps"]), fc.fps)
    dframes = delta_frames(fc.delta_s, fps)
    starts = pair_starts(n_frames, dframes, fc.grid)
    if len(starts) == 0:
        raise BadInput(f"too short for flow: {n_frames} frames at {fps:.2f} fps, Δ = {dframes} frames")
    pairs = np.stack([starts, starts + dframes], 1)
    motion = MotionFilter(fc.static_pair_px, fc.max_static_fraction)
    def make_writer(field_hw):
        return _Writer(len(pairs), field_hw, tuple(fc.store_size), motion, fc.store_frames, fc.working_size[1])

    media = sim_media(row, fc.camera) if backends.sim is not None else None
    if media is not None:
        writer, canvas = _sim_flow(row, fc, backends.sim, media, pairs, make_writer, fps)
        describe = backends.sim.describe()
    else:
        writer, canvas = _frame_flow(row, fc, backends.frames, pairs, make_writer)
        describe = backends.frames.describe()
    if writer is None or writer.n != len(pairs):
        raise BadInput(f"flow for {writer.n if writer else 0} of {len(pairs)} pairs: the media ended early")
    if writer.frames is not None and writer.n_frames != len(pairs):
        raise BadInput(f"first frames for {writer.n_frames} of {len(pairs)} pairs: the media ended early")
    stats = writer.stats.finish()
    meta = {
        **describe, "item_id": row["item_id"], "delta_s": fc.delta_s, "delta_frames": dframes, "grid": fc.grid,
        "fps": fps, "n_frames": n_frames, "working_size": list(fc.working_size), "flow_size": list(writer.field_hw),
        "store_size": list(fc.store_size),
        "units": "pixels of the working canvas, first->second; x right, y down",
        "canvas": dataclasses.asdict(canvas), "colour_max_radius": fc.colour_max_radius,
    }
    path = Path(task["out_path"])
    size, checksum = write_flow_artifact(path, writer.flow, writer.valid, pairs, meta, writer.frames)
    return {"path": str(path), "bytes": size, "checksum": checksum, "stats": stats, "describe": describe,
            "delta_frames": dframes}


def flow_stage(fc: FlowConfig) -> Stage:
    cfg = dataclasses.asdict(fc)
    return Stage("flow", compute_item_flow, setup=functools.partial(make_backends, cfg),
                 resources=Resources(num_cpus=1, num_gpus=fc.num_gpus, batch_size=1))


# flow settings that do not change an artifact's content
_NOT_IN_OUTPUT = ("num_gpus", "batch_size", "colour_max_radius")
# item fields that decide which frames the flow is computed on (clips of one video share its checksum)
_ITEM_WINDOW = ("input_checksum", "media_uris", "start_s", "frame_count", "fps", "width", "height", "extras")


def settings_fingerprint(fc: FlowConfig, row: Mapping[str, Any]) -> str:
    """Changing the item's media/window or a flow setting that shapes the output redoes the item; nothing else.
    `flow_size` counts (as the size it resolves to) only where the frame backend runs at a size other than the
    canvas (so full-size workdirs made before the setting keep their fingerprints) and not for items that get
    exact sim flow (made at the canvas); a `dis_*` knob counts when it is set (null: the preset's) and DIS makes
    the item's flow."""
    flow = {k: v for k, v in dataclasses.asdict(fc).items() if k not in _NOT_IN_OUTPUT}
    exact = fc.sim_for_sim_tiers and sim_media(row, fc.camera) is not None
    for knob in [k for k, v in flow.items() if k.startswith("dis_") and k != "dis_preset"
                 and (v is None or exact or fc.backend != "dis")]:
        flow.pop(knob)  # a knob left to the preset, or one DIS does not run for: earlier fingerprints stay valid
    flow.pop("flow_size")
    if fc.flow_hw() != tuple(fc.working_size) and not exact:
        flow["flow_size"] = list(fc.flow_hw())  # the size it resolves to: null and its value name one output
    if fc.sim_for_sim_tiers:
        from flow_extraction.sim_flow import SIM_FLOW_VERSION

        flow["sim_flow_version"] = SIM_FLOW_VERSION
    # keyed as before the column became input_blake2b, so fingerprints (and finished items) survive the rename
    item = {k: row.get("input_blake2b" if k == "input_checksum" else k) for k in _ITEM_WINDOW}
    return fingerprint({"flow": flow, "item": item})


@dataclass
class FlowReport:
    run_id: str
    stage: StageReport
    per_source: list[dict[str, Any]] = field(default_factory=list)


def run_flow(cfg: PipelineConfig, catalog: Catalog, runner: Any, force: bool = False, progress: bool = True,
             console: Console | None = None) -> FlowReport:
    fc = cfg.flow
    prepare = getattr(backend_module(fc), "prepare", None)
    if prepare is not None:  # e.g. DPFlow: fail before any worker starts when the weights cannot be found
        fc = prepare(fc)
    root = cfg.artifacts_dir / "flow"

    def plan(catalog: Catalog) -> Iterator[dict[str, Any]]:  # streamed: the driver draws it in chunks
        return ({"item_id": r["item_id"], "input_uri": r["input_uri"], "row": r, "flow": dataclasses.asdict(fc),
                 "out_path": str(artifact_path(root, r["item_id"])), "input_fingerprint": settings_fingerprint(fc, r)}
                for r in catalog.iter_rows("SELECT * FROM items ORDER BY item_id"))  # items whose ingest is done

    def record(catalog: Catalog, outcomes: list[Outcome], run_id: str) -> None:
        catalog.upsert("flow_stats", [
            {"item_id": o.item_id, "run_id": run_id, "backend": o.result["describe"]["backend"],
             "checkpoint": o.result["describe"].get("checkpoint"), "delta_s": fc.delta_s,
             "delta_frames": o.result["delta_frames"], "grid": fc.grid, "artifact_path": o.result["path"],
             **o.result["stats"]}
            for o in outcomes
        ])

    run = run_item_stage(ItemStage(
        flow_stage(fc), plan, cfg.to_dict(), folders=[root], artifact_kind="flow", record=record,
        manifest=Manifest(cfg.manifests_dir / "flow.parquet", "flow", flow_manifest),
    ), catalog, runner, force=force, progress=progress, console=console)
    return FlowReport(run.run_id, run.report, flow_stats_by_source(catalog).to_pylist())


def flow_manifest(catalog: Catalog):
    """Items with a flow artifact: what global stages (VAE training, labelling) read instead of listing folders."""
    return catalog.sql(
        """
        SELECT i.item_id, i.source, i.tier, i.group_id, i.split, i.embodiment, i.has_actions, i.action_dim,
               i.action_semantics, i.action_timing,
               i.fps AS native_fps, i.frame_count, i.input_uri, i.extras,
               f.artifact_path, f.n_pairs, f.delta_frames, f.delta_s, f.grid, f.backend, f.is_static, f.mean_px,
               x.path AS actions_path
        FROM items i JOIN flow_stats f USING (item_id) JOIN done_items('flow') USING (item_id)
        LEFT JOIN (SELECT a.item_id, a.path FROM artifacts a JOIN done_items('ingest') USING (item_id)
                   WHERE a.stage = 'ingest' AND a.kind = 'actions') x ON x.item_id = i.item_id
        ORDER BY i.item_id
        """
    )


def flow_stats_by_source(catalog: Catalog):
    return catalog.sql(
        """
        SELECT split_part(item_id, '/', 1) AS source, backend, count(*) AS items, sum(n_pairs) AS pairs,
               round(avg(mean_px), 2) AS mean_px, round(avg(p90_px), 2) AS p90_px, round(avg(jitter_px), 3) AS jitter_px,
               count(*) FILTER (WHERE is_static) AS static
        FROM flow_stats GROUP BY ALL ORDER BY source, backend
        """
    )
