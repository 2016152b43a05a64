"""The item_embeddings table: each item text is encoded once, and again only when it changes."""

import datetime as dt

import numpy as np
import pandas as pd
from test_ranking import ITEMS

from llmrank_spark.lakehouse import frame_from_pandas, latest_version, read_table
from llmrank_spark.retrieval import item_embeddings, item_vectors, refresh_item_vectors

DAY = dt.date(2026, 11, 20)


def stored(spark, config) -> pd.DataFrame:
    rows = read_table(spark, config, "item_embeddings").toPandas()
    assert not rows.duplicated(["item_id", "encoder"]).any(), "one row per item and encoder"
    return rows.set_index("item_id")


def test_only_new_and_changed_items_are_encoded_again(spark, config):
    items = frame_from_pandas(spark, ITEMS, "items")
    first = refresh_item_vectors(spark, config, items, DAY)
    assert (first.encoded, first.kept) == (len(ITEMS), 0)
    before = stored(spark, config)
    returned = first.vectors.toPandas().set_index("item_id").embedding
    assert sorted(returned.index) == sorted(ITEMS.item_id)
    assert all(np.array_equal(returned[i], before.embedding[i]) for i in ITEMS.item_id)
    assert set(before.index) == set(ITEMS.item_id) and (before.encoded_on == DAY).all()
    assert np.allclose([np.linalg.norm(v) for v in before.embedding], 1.0, atol=1e-5)

    version = latest_version(spark, config, "item_embeddings")
    again = refresh_item_vectors(spark, config, items, DAY + dt.timedelta(days=1))
    assert (again.encoded, again.kept) == (0, len(ITEMS))
    assert latest_version(spark, config, "item_embeddings") == version, "nothing to write: no commit"

    # One title changes and one item is new: those two, and only those, are encoded.
    changed = ITEMS.copy()
    changed.loc[changed.item_id == "i1", "title"] = "Merino Wool Beanie"
    added = pd.concat([changed, changed.iloc[[0]].assign(item_id="i8", title="Trail Runner GTX")])
    later = DAY + dt.timedelta(days=2)
    refresh = refresh_item_vectors(spark, config, frame_from_pandas(spark, added, "items"), later)
    assert (refresh.encoded, refresh.kept) == (2, len(ITEMS) - 1)
    after = stored(spark, config)
    assert set(after.index) == {*ITEMS.item_id, "i8"}
    assert set(after.index[after.encoded_on == later]) == {"i1", "i8"}
    for item in ITEMS.item_id.drop(1):
        assert np.array_equal(after.embedding[item], before.embedding[item]), item
    assert not np.allclose(after.embedding["i1"], before.embedding["i1"])


def test_steps_read_stored_vectors_and_encode_only_what_the_table_lacks(spark, config):
    items = frame_from_pandas(spark, ITEMS, "items")
    refresh_item_vectors(spark, config, items, DAY)
    version = latest_version(spark, config, "item_embeddings")
    # A step reading the table with a newer catalogue: the unknown item is encoded there, not written.
    newer = pd.concat([ITEMS, ITEMS.iloc[[3]].assign(item_id="i9", title="Garden Hose Reel")])
    newer_items = frame_from_pandas(spark, newer, "items")
    table = read_table(spark, config, "item_embeddings")
    vectors = item_vectors(table, newer_items, config.candidates).toPandas().set_index("item_id").embedding
    assert sorted(vectors.index) == sorted(newer.item_id)
    assert latest_version(spark, config, "item_embeddings") == version
    fresh = item_embeddings(newer_items, config.candidates).toPandas().set_index("item_id").embedding
    for item in newer.item_id:
        np.testing.assert_allclose(vectors[item], fresh[item], atol=1e-5)
