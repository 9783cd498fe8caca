"""The typed item record adapters return: what it fills in, and that it cannot drift from the items schema."""

from __future__ import annotations

import dataclasses
import json

import pytest

from manifests import ITEMS, validate_rows
from manifests.items import Item


def test_a_record_with_only_what_a_video_source_knows_is_a_valid_catalog_row():
    row = Item(item_id="ssv2/7", source="ssv2", native_id="7", tier=1, input_uri="clips/7.webm",
               media_uris=["clips/7.webm"], cameras=["video"], fps=12.0,
               frame_count=30, width=320, height=240, embodiment="human", extras={"b": 1, "a": None}).row()
    assert row["group_id"] == "ssv2/7" and row["split"] is None
    assert row["duration_s"] == pytest.approx(2.5) and row["start_s"] == 0.0
    assert (row["action_dim"], row["state_dim"], row["has_actions"]) == (0, 0, False)
    assert row["extras"] == '{"a": null, "b": 1}'  # sorted JSON, as the catalog stores it
    table = validate_rows(ITEMS, [{**row, "split": "train"}])
    assert table.num_rows == 1 and table.column("tier").to_pylist() == [1]


def test_dims_and_has_actions_follow_the_names_unless_set():
    names = ["j0", "j1", "gripper"]
    row = Item(item_id="x/1", source="x", native_id="1", tier=6, input_uri="x/1.h5",
               action_names=names, state_names=names[:2], fps=10.0, frame_count=5,
               duration_s=0.7, start_s=3.0).row()
    assert (row["action_dim"], row["state_dim"], row["has_actions"]) == (3, 2, True)
    assert (row["duration_s"], row["start_s"]) == (0.7, 3.0)  # a clip window: what the adapter says wins
    declared = Item(item_id="x/2", source="x", native_id="2", tier=6, input_uri="x/2.h5",
                    action_names=names, action_dim=3, state_dim=7, has_actions=False,
                    extras=json.dumps({"kept": "as is"})).row()
    assert (declared["state_dim"], declared["has_actions"], declared["extras"]) == (7, False, '{"kept": "as is"}')


def test_a_row_has_every_items_column_in_the_schema_order_and_no_other():
    row = Item(item_id="x/3", source="x", native_id="3", tier=2, input_uri="x/3.mp4").row()
    assert list(row) == ITEMS.names == [f.name for f in dataclasses.fields(Item)]
