"""The audit report: one self-contained HTML file (inline CSS, pictures as base64 PNG, no scripts, no network)
that opens anywhere, with links to the items' files relative to where the report lies."""

from __future__ import annotations

import base64
import heapq
import html
import json
import os
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterable

import cv2
import numpy as np

from audit import plots
from audit.context import AuditContext
from audit.frames import contact_sheet, sample_frames
from audit.funnel import COLUMNS, funnel
from flow_extraction.artifacts import read_flow_artifact
from flow_extraction.colour import flow_to_rgb
from common.errors import BadInput

if TYPE_CHECKING:
    from audit.run import AuditResult, CheckResult

CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1180px;margin:0 auto;padding:16px 24px 48px}
header{background:#1d2330;color:#fff;padding:18px 24px}header h1{margin:0 0 4px;font-size:22px}
header p{margin:2px 0;color:#c9cfdb;font-size:13px}header code{background:#2c3446;color:#fff}
nav{margin:10px 0 0}nav a{color:#9cc3ff;margin-right:14px;font-size:13px}
h2{margin:28px 0 8px;font-size:18px;border-bottom:2px solid #dde1e8;padding-bottom:4px}
h3{margin:18px 0 6px;font-size:15px}
table{border-collapse:collapse;background:#fff;margin:6px 0 10px;font-size:13px}
th,td{border:1px solid #dde1e8;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.n{text-align:right;font-variant-numeric:tabular-nums}
.badge{display:inline-block;border-radius:10px;padding:1px 9px;font-size:12px;font-weight:600;color:#fff}
.error{background:#c62828}.warning{background:#d98a00}.info{background:#1e6fb8}.pass{background:#2e7d32}
.muted{color:#6b7383}.notrun{background:#8a93a3}.crashed{background:#6a1b9a}
tr.fail td{background:#fff6f5}tr.skipped td{color:#8a93a3}
.cards{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.card{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:10px 14px;min-width:150px}
.card b{display:block;font-size:22px}
.figs{display:flex;flex-wrap:wrap;gap:10px}.figs img{background:#fff;border:1px solid #dde1e8}
.item{background:#fff;border:1px solid #dde1e8;border-radius:6px;padding:8px 10px;margin:8px 0}
.item img{display:block;margin-top:4px;max-width:100%}img.flow{border:1px solid #c3c9d4;image-rendering:pixelated}
.pics{display:flex;gap:10px;align-items:flex-start;flex-wrap:wrap}
code{font-size:12px;background:#eef1f5;padding:0 3px;border-radius:3px}
a{color:#1e5fb0}
"""


def _esc(x: object) -> str:
    return html.escape(str(x), quote=True)


def _img(png: bytes, alt: str, css_class: str = "") -> str:
    cls = f' class="{css_class}"' if css_class else ""
    return f'<img alt="{_esc(alt)}"{cls} src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _rgb_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def _table(header: Iterable[str], rows: Iterable[Iterable[str]], numeric: set[int] = frozenset(),
           row_class: Iterable[str] | None = None) -> str:
    """Cells are HTML already (escape text before passing it)."""
    classes = list(row_class) if row_class is not None else None
    head = "".join(f"<th>{h}</th>" for h in header)
    body = []
    for i, row in enumerate(rows):
        cells = "".join(f'<td class="n">{c}</td>' if j in numeric else f"<td>{c}</td>" for j, c in enumerate(row))
        cls = f' class="{classes[i]}"' if classes and classes[i] else ""
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<table><tr>{head}</tr>{''.join(body)}</table>"


def item_facts(row: dict | None, flow: dict | None) -> str:
    """The one-line facts of an item in the report (split, duration, fps, size, mean flow); a value the source did
    not give (an on-disk audit of a stream with no frame rate has no duration) reads '?'."""
    if not row:
        return ""

    def num(key: str, fmt: str) -> str:
        v = row.get(key)
        return "?" if v is None else format(v, fmt)

    facts = (f'{_esc(row.get("split") or "?")} · {num("duration_s", ".2f")} s · {num("fps", ".4g")} fps · '
             f'{num("width", ".0f")}×{num("height", ".0f")}')
    if flow:
        facts += f' · mean flow {flow["mean_px"]:.2f} px' + (" · <b>static</b>" if flow["is_static"] else "")
    return facts


class Report:
    PICTURE_HEIGHT = 72  # px of the contact sheets (flow pictures are a quarter taller)
    SET_MEMBERS = 8  # members shown per duplicate set

    def __init__(self, result: "AuditResult", ctx: AuditContext):
        self.result, self.ctx = result, ctx
        self.dir = result.report_path.parent.resolve()
        sources = {r["source"] for r in ctx.items} | {i.split("/", 1)[0] for i in ctx.seen}
        self.colours = plots.source_colours(sorted(sources))
        self.quarantine_uri = {r["item_id"]: r["input_uri"] for r in ctx.quarantine}

    # --- pieces ---------------------------------------------------------------------------------------------
    def link(self, path: str | None, label: str) -> str:
        if not path:
            return ""
        target = Path(path.split("#", 1)[0])
        try:
            href = os.path.relpath(target, self.dir)
        except ValueError:  # another drive (Windows)
            href = target.as_uri()
        return f'<a href="{_esc(Path(href).as_posix())}">{_esc(label)}</a>'

    def files(self, item_id: str) -> str:
        row = self.ctx.items_by_id.get(item_id)
        links = []
        if row:
            links.append(self.link(row["input_uri"], "input"))
            media = (row["media_uris"] or [None])[0]
            if media and media.split("#", 1)[0] != row["input_uri"]:
                links.append(self.link(media, "media"))
        elif item_id in self.quarantine_uri:
            links.append(self.link(self.quarantine_uri[item_id], "input"))
        if item_id in self.ctx.flow_stats:
            links.append(self.link(self.ctx.flow_stats[item_id]["artifact_path"], "flow"))
        if item_id in self.ctx.latent_paths:
            links.append(self.link(self.ctx.latent_paths[item_id], "latents"))
        return " · ".join(x for x in links if x)

    def pictures(self, item_id: str) -> str:
        """Contact sheet of sampled frames and the flow colour image of the middle pair (what exists of them)."""
        ctx, out, height = self.ctx, [], self.PICTURE_HEIGHT
        row = ctx.items_by_id.get(item_id)
        if row and getattr(ctx, "decode", True):  # an audit of a dataset on disk decodes only when asked to
            try:
                _, frames = sample_frames(row, ctx.settings.frames_per_item, tuple(ctx.settings.frame_size),
                                          ctx.cfg.flow.camera)
                out.append(_img(_rgb_png(contact_sheet(frames, height)), f"frames of {item_id}"))
            except BadInput as e:
                out.append(f'<span class="muted">frames do not decode: {_esc(e)}</span>')
        fs = ctx.flow_stats.get(item_id)
        if fs:
            try:
                art = read_flow_artifact(fs["artifact_path"])
            except (OSError, ValueError, KeyError) as e:
                out.append(f'<span class="muted">flow unreadable: {_esc(e)}</span>')
            else:
                mid = len(art.flow) // 2
                radius = float(art.meta.get("colour_max_radius") or ctx.cfg.flow.colour_max_radius)
                rgb = flow_to_rgb(art.flow[mid].astype(np.float32), radius)
                ys, xs = np.nonzero(art.valid[mid])  # the picture, without the canvas padding
                if len(ys):
                    rgb = rgb[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
                flow_height = round(1.25 * height)
                rgb = cv2.resize(rgb, (round(rgb.shape[1] * flow_height / rgb.shape[0]), flow_height),
                                 interpolation=cv2.INTER_NEAREST)
                out.append(_img(_rgb_png(rgb), f"flow of {item_id}", "flow") +
                           f'<span class="muted">flow of pair {mid}; colour wheel radius {radius:g} px</span>')
        return f'<div class="pics">{"".join(f"<div>{x}</div>" for x in out)}</div>'

    def item_line(self, item_id: str) -> str:
        facts = item_facts(self.ctx.items_by_id.get(item_id), self.ctx.flow_stats.get(item_id))
        return f'<code>{_esc(item_id)}</code> <span class="muted">{facts}</span> {self.files(item_id)}'

    # --- sections -------------------------------------------------------------------------------------------
    def header(self) -> str:
        r, ctx = self.result, self.ctx
        failed = {s: sum(1 for c in r.results if c.status == "fail" and c.check.severity == s)
                  for s in ("error", "warning", "info")}
        cards = "".join(
            f'<div class="card"><span class="badge {s}">{s}</span><b>{n}</b>checks failed</div>'
            for s, n in failed.items())
        cards += (f'<div class="card"><span class="badge pass">pass</span><b>{sum(c.status == "pass" for c in r.results)}'
                  f'</b>checks passed</div><div class="card"><span class="badge notrun">not run</span>'
                  f'<b>{sum(c.status == "not run" for c in r.results)}</b>checks not run</div>')
        nav = "".join(f'<a href="#{k}">{v}</a>' for k, v in (
            ("funnel", "Funnel"), ("checks", "Checks"), ("failing", "Failing items"), ("duplicates", "Duplicate sets"),
            ("distributions", "Distributions"), ("latents", "Latent actions"), ("shards", "Shards"),
            ("gallery", "Items per source")))
        on_disk = getattr(ctx, "label", None)
        where = (f"dataset <code>{_esc(on_disk)}</code> (on disk, no pipeline)" if on_disk
                 else f"workdir <code>{_esc(Path(ctx.cfg.workdir).resolve())}</code>")
        return (f"<header><h1>Dataset audit</h1><p>{where} · "
                f"audit run <code>{_esc(r.run_id)}</code> · {len(ctx.items)} "
                f"{'items read' if on_disk else 'catalogued items'}, "
                f"{len(ctx.quarantine)} quarantine records · {len(r.results)} checks</p><nav>{nav}</nav></header>"
                f'<main><div class="cards">{cards}</div>')

    def checks(self) -> str:
        rows, classes = [], []
        for c in self.result.results:
            status = c.status
            badge = {"fail": c.check.severity, "pass": "pass", "not run": "notrun", "crashed": "crashed"}[status]
            label = status if status != "not run" else f"not run: {c.outcome.not_run}"
            rows.append([f'<a href="#check-{c.check.name}">{_esc(c.check.name)}</a>' if c.outcome.failures or
                         c.crashed else _esc(c.check.name), _esc(c.check.category),
                         f'<span class="badge {c.check.severity}">{c.check.severity}</span>',
                         str(len(c.outcome.checked)), str(len(c.outcome.failures)),
                         f'<span class="badge {badge}">{_esc(label)}</span>', _esc(c.check.explanation)])
            classes.append({"fail": "fail", "crashed": "fail", "not run": "skipped"}.get(status, ""))
        return ('<h2 id="checks">Checks</h2>' +
                _table(["check", "category", "severity", "checked", "failed", "status", "what it checks"], rows,
                       {3, 4}, classes))

    def funnel(self) -> str:
        rows = funnel(self.ctx)
        table = _table(["source", "root", "tier"] + list(COLUMNS),
                       [[_esc(r["source"]), _esc(r["entry"].partition(":")[2]), f"L{r['tier']}" if r["tier"] else ""]
                        + [str(r[c]) for c in COLUMNS] for r in rows], set(range(3, 3 + len(COLUMNS))))
        reasons = [[_esc(r["entry"]), _esc(q["stage"]), _esc(q["check"]), str(q["items"]), _esc(q["reason"])]
                   for r in rows for q in r["reasons"]]
        statics = [[_esc(i.split("/", 1)[0]), "flow", "static_clip", "1", _esc(fs["static_reason"] or "static")]
                   for i, fs in self.ctx.flow_stats.items() if fs["is_static"]]
        why = (_table(["source", "stage", "reported by", "items", "reason"], reasons + statics, {3})
               if reasons or statics else '<p class="muted">Nothing was quarantined or filtered.</p>')
        return ('<h2 id="funnel">Funnel per source entry and stage</h2><p class="muted">Each item is counted once, where '
                "it stopped: quarantined in some stage, marked static by the motion filter, flowed but not labelled "
                "yet, or labelled (and of those, sharded).</p>" + table + "<h3>Why items stopped</h3>" + why)

    def failing(self) -> str:
        """Per failing check: its count and its top items (those failing the most checks first), with a pointer to
        the CSV of all; the page stays the same size at 100 k items."""
        parts = ['<h2 id="failing">Failing items</h2>']
        failed = [c for c in self.result.results if c.outcome.failures or c.crashed]
        top = self.ctx.settings.failing_items_in_report
        csv_path = self.result.csv_path
        if not failed:
            parts.append('<p class="muted">No check failed.</p>')
        elif csv_path is not None:
            parts.append(f'<p class="muted">Every failing item of every check, with its reason: '
                         f'{self.link(str(csv_path), csv_path.name)}. Each check below lists its first {top}, items '
                         "that fail the most checks first.</p>")
        per_item: dict[str, int] = defaultdict(int)
        for c in failed:
            for s in c.outcome.failures:
                per_item[s] += 1
        for c in failed:
            n = len(c.outcome.failures)
            parts.append(f'<h3 id="check-{c.check.name}"><span class="badge {c.check.severity}">{c.check.severity}'
                         f"</span> {_esc(c.check.name)} — {n} of {len(c.outcome.checked)}</h3>")
            if c.crashed:
                parts.append(f"<pre>{_esc(c.crashed)}</pre>")
            shown = heapq.nsmallest(top, c.outcome.failures, key=lambda s: (-per_item[s], s))
            rows = [[f"<code>{_esc(s)}</code>", _esc(c.outcome.failures[s]), str(per_item[s]), self.files(s)]
                    for s in shown]
            if rows:
                parts.append(_table(["item", "why", "checks failed", "files"], rows, {2}))
            if n > len(shown):
                parts.append(f'<p class="muted">… and {n - len(shown)} more (all in '
                             f'{_esc(csv_path.name if csv_path else "audit.json")}).</p>')
        return "".join(parts)

    def duplicates(self) -> str:
        parts = ['<h2 id="duplicates">Duplicate sets</h2>']
        any_sets = False
        for name in ("exact_duplicates", "near_duplicates", "cross_split_duplicates"):
            c = self.result.result(name)
            if not c.outcome.sets:
                continue
            any_sets = True
            parts.append(f"<h3>{_esc(name)}: {len(c.outcome.sets)} set(s)</h3>")
            for members in c.outcome.sets[:20]:
                lines = []
                for m in members[:self.SET_MEMBERS]:
                    verdict = (f'<span class="badge {c.check.severity}">{_esc(c.outcome.failures[m])}</span>'
                               if m in c.outcome.failures else '<span class="badge pass">kept</span>')
                    pictures = "" if name == "cross_split_duplicates" else self.pictures(m)  # shown above
                    lines.append(f"<div>{self.item_line(m)} {verdict}{pictures}</div>")
                if len(members) > self.SET_MEMBERS:
                    lines.append(f'<div class="muted">… and {len(members) - self.SET_MEMBERS} more members</div>')
                parts.append(f'<div class="item">{"".join(lines)}</div>')
            if len(c.outcome.sets) > 20:
                parts.append(f'<p class="muted">… and {len(c.outcome.sets) - 20} more sets (in audit.json).</p>')
        if not any_sets:
            parts.append('<p class="muted">No duplicate sets.</p>')
        return "".join(parts)

    def distributions(self) -> str:
        ctx, col = self.ctx, self.colours
        by_source: dict[str, list[dict]] = defaultdict(list)
        for r in ctx.items:
            by_source[r["source"]].append(r)
        figs = [
            plots.stacked_histogram({s: [r["duration_s"] for r in rs if r["duration_s"] is not None]
                                     for s, rs in by_source.items()}, "duration", "seconds", col, log_x=True),
            plots.resolution_scatter({s: [(r["width"], r["height"]) for r in rs if r["width"]]
                                      for s, rs in by_source.items()}, col),
            plots.stacked_histogram({s: [r["fps"] for r in rs if r["fps"]] for s, rs in by_source.items()},
                                    "frame rate", "fps", col),
        ]
        flow = defaultdict(list)
        for item_id, fs in ctx.flow_stats.items():
            flow[item_id.split("/", 1)[0]].append(fs["mean_px"])
        if flow:
            figs.append(plots.stacked_histogram(flow, "flow magnitude (mean per item)", "px on the working canvas",
                                                col, log_x=True))
        out = ['<h2 id="distributions">Distributions</h2><div class="figs">'] + [_img(f, "distribution") for f in figs]
        out.append("</div>")
        actions = self._actions_by_embodiment()
        if actions:
            out.append("<h3>Action dims per embodiment</h3>" + _img(plots.action_boxes(actions), "action dims"))
        return "".join(out)

    def _actions_by_embodiment(self) -> dict[str, tuple[list[str], np.ndarray]]:
        chunks: dict[str, list[np.ndarray]] = defaultdict(list)
        names: dict[str, list[str]] = {}
        for item_id, a in self.ctx.actions.items():
            if isinstance(a, np.ndarray) and a.ndim == 2 and np.isfinite(a).all():
                row = self.ctx.items_by_id[item_id]
                emb = row["embodiment"]
                names.setdefault(emb, list(row["action_names"] or [f"dim{d}" for d in range(a.shape[1])]))
                if a.shape[1] == len(names[emb]):
                    chunks[emb].append(a)
        return {e: (names[e], np.concatenate(c)) for e, c in sorted(chunks.items())}

    def latents(self) -> str:
        c = self.result.result("latent_drift")
        out = ['<h2 id="latents">Latent actions per source</h2>']
        if c.outcome.not_run:
            return out[0] + f'<p class="muted">{_esc(c.outcome.not_run)}</p>' + self.label_quality()
        table = c.outcome.stats["per_source"]
        rows = [[_esc(s), str(t["items"]), str(t["rows"]), str(t["active_dims"]),
                 f'{t["max_abs_smd"]:.2f} (dim {t["max_smd_dim"]})' if "max_abs_smd" in t else "—",
                 _esc(", ".join(f"{m:+.2f}" for m in t["mean"][:4])), _esc(", ".join(f"{q:+.2f}" for q in t["q01"][:4])),
                 _esc(", ".join(f"{q:+.2f}" for q in t["q99"][:4]))] for s, t in table.items()]
        out.append(_table(["source", "items", "rows", "active dims", "max |SMD| vs other sources", "mean (d0–d3)",
                           "q01 (d0–d3)", "q99 (d0–d3)"], rows, {1, 2, 3}))
        out.append(f'<p class="muted">Active dim: std above 10% of the largest per-dim std of the corpus '
                   f'({c.outcome.stats["active_floor"]:.3f}). All dims, per source (mean ± std):</p>')
        out.append(_img(plots.per_dim_spread(table, "latent action dims per source", self.colours), "latent dims"))
        return "".join(out) + self.label_quality()

    def label_quality(self) -> str:
        """Per source: what latent_collapse and latent_action_agreement judged, with the numbers beside."""
        collapse, agreement = (self.result.result(n) for n in ("latent_collapse", "latent_action_agreement"))
        per = {"collapse": collapse.outcome.stats.get("per_source", {}),
               "agreement": agreement.outcome.stats.get("per_source", {})}
        sources = sorted(set(per["collapse"]) | set(per["agreement"]))
        if not sources:
            return ""

        def num(x: Any, fmt: str = "{:.2f}") -> str:
            return fmt.format(x) if isinstance(x, (int, float)) else "—"

        def verdict(c: "CheckResult", source: str) -> str:
            if source in c.outcome.failures:
                return f'<span class="badge {c.check.severity}">{_esc(c.outcome.failures[source])}</span>'
            return '<span class="badge pass">pass</span>' if source in c.outcome.checked else "—"

        rows = []
        for s in sources:
            c, a = per["collapse"].get(s, {}), per["agreement"].get(s, {})
            rows.append([_esc(s), num(c.get("active_dims"), "{}"), num(c.get("s_pcfc")),
                         num(c.get("informative_dims"), "{}"), num(c.get("total_bits")), num(a.get("r2")),
                         num(a.get("r2_random_init")), num(a.get("r2_pca_k")), verdict(collapse, s),
                         verdict(agreement, s)])
        where = agreement.outcome.stats.get("eval") or collapse.outcome.stats.get("eval") or \
            collapse.outcome.stats.get("eval_not_used") or agreement.outcome.not_run or ""
        return ("<h3>Collapse and agreement with the actions</h3>"
                f'<p class="muted">From the stored labels and {_esc(where)}.</p>'
                + _table(["source", "active dims", "S-PCFC", "dims ≥ min bits", "bits", "probe R²",
                          "random-init R²", "PCA-of-flow R²", "latent_collapse", "latent_action_agreement"], rows,
                         set(range(1, 8))))

    def shards(self) -> str:
        c = self.result.result("shard_sizes")
        out = ['<h2 id="shards">Shards</h2>']
        if c.outcome.not_run:
            return out[0] + f'<p class="muted">Not run: {_esc(c.outcome.not_run)}.</p>'
        rows = [[_esc(s["shard_set"]), _esc(s["split"]), _esc(s["tier"] if s["tier"] is not None else "all"),
                 str(s["shards"]), str(s["samples"]), f'{s["bytes_min"] / 1e6:.1f}', f'{s["bytes_median"] / 1e6:.1f}',
                 f'{s["bytes_max"] / 1e6:.1f}'] for s in c.outcome.stats["per_split"]]
        return out[0] + _table(["shard set", "split", "tier", "shards", "samples", "min MB", "median MB", "max MB"],
                               rows, {3, 4, 5, 6, 7})

    def gallery(self) -> str:
        ctx, n = self.ctx, self.ctx.settings.items_per_source_in_report
        by_source: dict[str, list[str]] = defaultdict(list)
        for r in ctx.items:
            by_source[r["source"]].append(r["item_id"])
        flagged = sorted({i for name in ("static_clip", "frozen_frames", "black_frames", "jitter")
                          for i in self.result.result(name).outcome.failures if i in ctx.items_by_id})
        out = ['<h2 id="gallery">Items per source</h2><p class="muted">Sampled frames (first to last) and the flow '
               "colour image of the middle flow pair (hue = direction, saturation = speed, white = still).</p>"]
        if flagged:
            out.append("<h3>Flagged by content checks</h3>")
            out += [f'<div class="item">{self.item_line(i)}{self.pictures(i)}</div>' for i in flagged[:12]]
        for source, ids in sorted(by_source.items()):
            out.append(f"<h3>{_esc(source)} ({len(ids)} items)</h3>")
            out += [f'<div class="item">{self.item_line(i)}{self.pictures(i)}</div>' for i in sorted(ids)[:n]]
        return "".join(out)

    def settings(self) -> str:
        rows = [[f"<code>{_esc(k)}</code>", _esc(json.dumps(v))] for k, v in self.ctx.settings.to_dict().items()]
        return '<h2 id="settings">Audit settings</h2>' + _table(["setting", "value"], rows) + "</main>"


def render_html(result: "AuditResult", ctx: AuditContext) -> str:
    report = Report(result, ctx)
    body = "".join(section() for section in (report.header, report.funnel, report.checks, report.failing,
                                             report.duplicates, report.distributions, report.latents, report.shards,
                                             report.gallery, report.settings))
    on_disk = getattr(ctx, "label", None)  # "kind:path" of an audit on disk
    title = f"Dataset audit — {Path(on_disk.partition(':')[2] if on_disk else ctx.cfg.workdir).resolve().name}"
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{CSS}</style></head><body>{body}</body></html>\n")
