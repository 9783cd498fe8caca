"""The evaluation's picture: input flow beside decode(μ) for a few held-out pairs, at a fixed colour radius."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from flow_extraction.colour import flow_to_rgb


@dataclass
class Example:
    """One pair kept for the picture: input flow and reconstruction in working-canvas pixels at image_size²."""

    item_id: str
    pair_index: int
    source: str
    flow_px: np.ndarray  # [2, H, W]
    recon_px: np.ndarray  # [2, H, W]
    valid: np.ndarray  # [H, W] bool
    epe_px: float
    motion_px: float  # mean flow magnitude over valid pixels: the picture prefers pairs that move



CELL = 128  # px per flow image in the picture (nearest-neighbour upscaling keeps the model's resolution visible)
LABEL_H = 18  # px of text strip above each row
HEADER_H = 40  # px of the top strip: column titles + colour key
GAP = 6


def picture_size(n_rows: int) -> tuple[int, int]:
    """(height, width) of the reconstruction picture with `n_rows` pairs."""
    return HEADER_H + n_rows * (LABEL_H + CELL + GAP), 3 * GAP + 2 * CELL + HEADER_H


def pick_examples(candidates: list[Example], n: int) -> list[Example]:
    """Up to n pairs, round-robin over sources so every group shows up, most motion first within a source."""
    by_source: dict[str, list[Example]] = {}
    for e in sorted(candidates, key=lambda e: -e.motion_px):
        by_source.setdefault(e.source, []).append(e)
    queues = [by_source[s] for s in sorted(by_source)]
    picked: list[Example] = []
    while len(picked) < n and any(queues):
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop(0))
    return picked


def _flow_image(flow_px: np.ndarray, radius: float, valid: np.ndarray | None = None) -> np.ndarray:
    """[2,H,W] pixels → BGR uint8 [CELL, CELL, 3]; invalid pixels grey, so excluded areas are visible."""
    rgb = flow_to_rgb(flow_px, radius)
    if valid is not None:
        rgb = np.where(valid[..., None], rgb, np.uint8(128))
    return cv2.resize(np.ascontiguousarray(rgb[..., ::-1]), (CELL, CELL), interpolation=cv2.INTER_NEAREST)


def _colour_key(size: int, radius: float) -> np.ndarray:
    """The colour wheel itself (flow = position from the centre, up to 1.2 × radius) as a legend."""
    axis = np.linspace(-1.2 * radius, 1.2 * radius, size)
    u, v = np.meshgrid(axis, axis)
    return np.ascontiguousarray(flow_to_rgb(np.stack([u, v]), radius)[..., ::-1])


def _text(img: np.ndarray, text: str, x: int, y: int, scale: float = 0.38) -> None:
    cv2.putText(img, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 1, cv2.LINE_AA)


def draw_reconstructions(examples: list[Example], radius: float) -> np.ndarray:
    """BGR picture: per pair a label strip (item id, pair, EPE) above input flow | decode(μ), fixed radius."""
    h, w = picture_size(len(examples))
    img = np.full((h, w, 3), 255, np.uint8)
    _text(img, "input flow", GAP, 14)
    _text(img, "decode(mu)", 2 * GAP + CELL, 14)
    _text(img, f"radius {radius:g} px", GAP, 32)
    img[2:HEADER_H - 2, w - HEADER_H + 2:w - 2] = _colour_key(HEADER_H - 4, radius)
    y = HEADER_H
    max_chars = (w - 2 * GAP) // 7  # ~7 px per character at this font scale
    for e in examples:
        label = f"{e.item_id} #{e.pair_index}  EPE {e.epe_px:.2f}px"
        if len(label) > max_chars:  # keep the tail: pair index and EPE matter more than an id's prefix
            label = "..." + label[-(max_chars - 3):]
        _text(img, label, GAP, y + LABEL_H - 5)
        y += LABEL_H
        img[y:y + CELL, GAP:GAP + CELL] = _flow_image(e.flow_px, radius, e.valid)
        img[y:y + CELL, 2 * GAP + CELL:2 * GAP + 2 * CELL] = _flow_image(e.recon_px, radius)
        y += CELL + GAP
    return img


def encode_png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise RuntimeError("cv2 could not encode the reconstruction picture")
    return buf.tobytes()


__all__ = ["Example", "draw_reconstructions", "encode_png", "pick_examples", "picture_size"]
