"""Language: is each item's instruction there, and is it a sentence rather than a template or a placeholder?

Items are judged by the catalog's `language` (what ingest read: LeRobot task texts, RoboTwin instructions, OXE
language_instruction, SSv2 labels, Ego4D narrations); the one-instruction-for-all check reads LeRobot task tables
(audit/lerobot_tables.py), where a dataset says how many tasks it has."""

from __future__ import annotations

import re
from collections import defaultdict

import numpy as np

from audit.config import AuditConfig
from audit.context import AuditContext
from audit.lerobot_tables import Tables, dataset_tables
from audit.registry import Outcome, check

# [something], <top center>, {A}, {{object}}, and words a form leaves when nobody fills it in
TEMPLATE = re.compile(r"\[[^\[\]]*\]|<[^<>]*>|\{[^{}]*\}|\b(TODO|TBD|FIXME|PLACEHOLDER)\b|^\s*(none|null|nan|n/a)\s*$",
                      re.I)


def dataset_of(item_id: str) -> str:
    """The item's dataset: its id without the last part (`lerobot/aloha_demo_v21`, `robotwin/<task>/<config>`)."""
    return item_id.rsplit("/", 1)[0]


def empty(items: list[dict]) -> dict[str, str]:
    """Items with a blank instruction line, and robot episodes without any where most items of their dataset have
    one (a video clip without a label, such as SSv2's test set, is not judged)."""
    with_language: dict[str, list[bool]] = defaultdict(list)
    for row in items:
        with_language[dataset_of(row["item_id"])].append(bool(row["language"]))
    out = {}
    for row in items:
        lines = list(row["language"] or [])
        blank = [i for i, line in enumerate(lines) if not str(line).strip()]
        if blank:
            out[row["item_id"]] = f"{len(blank)} of its {len(lines)} instruction line(s) are blank"
        elif not lines and row.get("has_actions") and np.mean(with_language[dataset_of(row["item_id"])]) > 0.5:
            out[row["item_id"]] = "no instruction, while most items of its dataset have one"
    return out


def template(items: list[dict]) -> dict[str, str]:
    out = {}
    for row in items:
        hits = [(line, m.group(0)) for line in row["language"] or [] if (m := TEMPLATE.search(str(line)))]
        if hits:
            line, found = hits[0]
            out[row["item_id"]] = f"template leftover {found!r} in {line!r}" + (
                f" (+{len(hits) - 1} more lines)" if len(hits) > 1 else "")
    return out


def single_instruction(t: Tables, s: AuditConfig) -> dict[str, str]:
    """A dataset whose task table lists several tasks while every episode points at one of them."""
    ti = t.columns.get("task_index")
    if len(t.tasks) < 2 or ti is None or len(t.episodes) < s.min_episodes_for_language:
        return {}
    used = {int(v) for v in np.unique(ti[t.segments()[0]].astype(np.float64)) if np.isfinite(v)}
    if len(used) == 1:
        task = t.tasks.get(next(iter(used)), "?")
        return {t.name: f"all {len(t.episodes)} episodes carry the instruction {task!r}, while the task table "
                        f"lists {len(t.tasks)} tasks"}
    return {}


def _catalog(ctx: AuditContext, rule) -> Outcome:
    out = Outcome(checked=[r["item_id"] for r in ctx.items])
    for item_id, reason in rule(ctx.items).items():
        out.fail(item_id, reason)
    return out


@check("language_empty", "content", "warning",
       "An instruction line that is blank, or a robot episode without any instruction while most items of its "
       "dataset have one: a language-conditioned model learns that the empty string means a task.")
def language_empty(ctx: AuditContext) -> Outcome:
    return _catalog(ctx, empty)


@check("language_template", "content", "warning",
       "An instruction with template leftovers: a placeholder in brackets ([something], <top center>, {A}), a "
       "TODO, or a bare none/null/n/a: the template was never filled in.")
def language_template(ctx: AuditContext) -> Outcome:
    return _catalog(ctx, template)


@check("language_single_instruction", "content", "warning",
       "Every episode of a LeRobot dataset (min_episodes_for_language or more) carries the same instruction while its "
       "task table lists several tasks: the instructions were not recorded per episode.")
def language_single_instruction(ctx: AuditContext) -> Outcome:
    tables = dataset_tables(ctx)
    if not tables:
        return Outcome.skipped("no LeRobot dataset among the sources")
    out = Outcome(checked=[t.name for t in tables])
    for t in tables:
        for subject, reason in single_instruction(t, ctx.settings).items():
            out.fail(subject, reason)
    return out
