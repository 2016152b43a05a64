"""The query lexicon: values a query's phrases name, learned from judged queries, as pair features."""

import numpy as np
import pandas as pd
import pytest

from llmrank_spark.rerank.query_lexicon import LEXICON_FEATURES, QueryLexicon, item_values, phrases

ITEMS = pd.DataFrame(
    {
        "item_id": ["b1", "b2", "b3", "m1"],
        "category": ["boots", "boots", "boots", "mats"],
        "attributes": [
            {"waterproofing": "waterproof", "colour": "black"},
            {"waterproofing": "waterproof", "colour": "brown"},
            {"waterproofing": "none", "colour": "black"},
            {"material": "PVC"},
        ],
    }
)
# Two judged queries say "rainproof" for waterproof, a word no item text holds; "black" appears once.
QUERIES = pd.DataFrame(
    {
        "query_id": ["q1", "q2", "q3", "q4"],
        "query_text": ["rainproof boots", "Rainproof walking boots", "black boots", "zzz"],
    }
)
LABELS = pd.DataFrame(
    {
        "query_id": ["q1", "q1", "q1", "q2", "q2", "q3", "q3", "q4"],
        "item_id": ["b1", "b2", "b3", "b1", "b2", "b1", "b3", "m1"],
        "relevance": [3, 3, 1, 3, 3, 3, 3, 0],
    }
)


@pytest.fixture(scope="module")
def lexicon() -> QueryLexicon:
    return QueryLexicon.learn(QUERIES, LABELS, item_values(ITEMS))


def test_a_phrase_of_several_judged_queries_names_the_values_their_best_items_share(lexicon):
    assert lexicon.named("rainproof") == {("category", "boots"): 1.0, ("waterproofing", "waterproof"): 1.0}
    # "boots" came with waterproof in two of its three queries (0.67 >= 0.6); "walking boots" and "black"
    # were seen in one query only, and a query whose best grade is 0 names nothing.
    assert lexicon.named("boots")[("waterproofing", "waterproof")] == pytest.approx(2 / 3)
    assert "walking boots" not in lexicon.names and "walking" not in lexicon.names
    assert lexicon.named("zzz") == {}


def test_a_phrase_that_is_a_catalogue_value_names_it_and_the_longest_phrase_wins(lexicon):
    # "black" was judged once only, but it is the text of a colour: it names that colour, for sure.
    assert lexicon.named("black") == {("colour", "black"): 1.0}
    assert lexicon.named("PVC mats") == {("material", "PVC"): 1.0, ("category", "mats"): 1.0}
    # A pair of words names what it names over what its words name alone: "dark blue" is navy.
    tagged = QueryLexicon({"blue": {("colour", "blue"): 1.0}, "dark blue": {("colour", "navy"): 0.7}})
    assert tagged.named("dark blue boots") == {("colour", "navy"): 0.7}


def test_pair_features_measure_the_named_values_each_item_has(lexicon):
    values = item_values(ITEMS)
    pairs = pd.DataFrame(
        {
            "query_text": ["rainproof boots"] * 4 + ["nothing known", "雨靴 rainproof"],
            "item_id": ["b1", "b3", "m1", "unknown", "b1", "b2"],
        }
    )
    features = lexicon.features(pairs, values)
    assert list(features.columns) == list(LEXICON_FEATURES)
    # "rainproof boots" names boots (1.0) and waterproof (max of 1.0 and 2/3): 2.0 in all.
    assert features["lexicon_matched"].tolist() == [2.0, 1.0, 0.0, 0.0, 0.0, 2.0]
    assert features["lexicon_share"].tolist() == [1.0, 0.5, 0.0, 0.0, 0.0, 1.0]
    assert features["lexicon_category"].tolist() == [1.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    # b3 is not waterproof, the mat is no boot: each contradicts one value named for sure.
    assert features["lexicon_contradicted"].tolist() == [0.0, 1.0, 1.0, 0.0, 0.0, 0.0]
    assert not np.isnan(features.to_numpy()).any()


def test_phrases_are_the_lexical_retrievers_words_and_their_adjacent_pairs():
    assert phrases("Dark-Blue  cotton") == {"dark", "blue", "cotton", "dark blue", "blue cotton"}
    assert phrases("") == set()
