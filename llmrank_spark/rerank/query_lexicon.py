"""The query lexicon: which catalogue values a query's words name, learned from judged queries.

A judged query's best-graded items share the values it asks for (its category, "waterproof", "navy"),
so counting, over the judged queries, how often a phrase of the query comes with a value all of its best
items share gives P(value | phrase): "rainproof" names waterproofing = waterproof although no item text
contains the word. A new query is then read as the values its phrases name, and each candidate is
measured by how many of them it has, the structured match a search engine's query tagger gives.

Hand-written because it is a table of counts with a threshold, readable and shipped as JSON; a
multi-label classifier library would fit the same conditional frequencies less transparently.
Phrases are the lexical retriever's words (`lexical.WORDS`, lower-cased), alone and in adjacent pairs.
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from llmrank_spark.retrieval.lexical import WORDS

CATEGORY = "category"
# The features a lexicon gives a (query, item) pair, by the name a fusion model reads them.
LEXICON_FEATURES = ("lexicon_matched", "lexicon_share", "lexicon_category", "lexicon_contradicted")
Value = tuple[str, str]  # (attribute, value); the category is the attribute CATEGORY


def phrases(text: str) -> set[str]:
    """The words of `text` and its pairs of adjacent words, lower-cased."""
    words = WORDS.findall(text.lower())
    return set(words) | {f"{first} {second}" for first, second in itertools.pairwise(words)}


def as_dict(value) -> dict:
    """A map column's value as a dict: Arrow hands a map to pandas as a dict or as (key, value) pairs,
    depending on the path; null is an empty map."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return {}
    return dict(value.items() if isinstance(value, dict) else value)


def item_values(items: pd.DataFrame) -> dict[str, frozenset[Value]]:
    """item_id -> its (attribute, value) pairs and its category, from the items table's rows (the
    attributes map in any form `as_dict` reads, or no attributes column)."""
    attributes = items["attributes"] if "attributes" in items.columns else pd.Series(None, index=items.index)
    return {
        item_id: frozenset({(CATEGORY, category), *as_dict(named).items()})
        for item_id, category, named in zip(items["item_id"], items["category"], attributes, strict=True)
    }


@dataclass(frozen=True)
class QueryLexicon:
    """P(value | phrase) for the phrases seen in at least `min_queries` judged queries, kept where it is at
    least `min_share`: the values a phrase names."""

    names: dict[str, dict[Value, float]] = field(default_factory=dict)

    @classmethod
    def learn(
        cls,
        queries: pd.DataFrame,
        labels: pd.DataFrame,
        values: dict[str, frozenset[Value]],
        min_queries: int = 2,
        min_share: float = 0.6,
    ) -> QueryLexicon:
        """From `queries` (query_id, query_text) and their `labels` (query_id, item_id, relevance): a query
        names the values every one of its best-graded items has (none when its best grade is 0). A phrase
        that is the text of a catalogue value (one or two words) names that value with certainty, and
        no other value of its attribute: "cotton" is cotton, even if the judged queries that said it
        all asked for organic cotton."""
        text_of = queries.set_index("query_id")["query_text"]
        seen: Counter[str] = Counter()
        together: Counter[tuple[str, Value]] = Counter()
        judged = labels[labels["query_id"].isin(text_of.index) & labels["item_id"].isin(values.keys())]
        for query_id, graded in judged.groupby("query_id", sort=True):
            best = graded.loc[graded["relevance"] == graded["relevance"].max(), "item_id"]
            named = (
                frozenset.intersection(*(values[item] for item in best))
                if graded["relevance"].max() > 0
                else frozenset()
            )
            for phrase in phrases(text_of[query_id]):
                seen[phrase] += 1
                together.update((phrase, value) for value in named)
        names: dict[str, dict[Value, float]] = {}
        for (phrase, value), count in together.items():
            share = count / seen[phrase]
            if seen[phrase] >= min_queries and share >= min_share:
                names.setdefault(phrase, {})[value] = share
        catalogue: set[Value] = set().union(*values.values())
        for literal in sorted(value for value in catalogue if isinstance(value[1], str)):
            words = WORDS.findall(literal[1].lower())
            if 1 <= len(words) <= 2:
                phrase = " ".join(words)
                others = {
                    other: share for other, share in names.get(phrase, {}).items() if other[0] != literal[0]
                }
                names[phrase] = others | {literal: 1.0}
        return cls(names)

    def to_json(self) -> str:
        """The lexicon as the artifact keeps it: {phrase: [[attribute, value, share], ...]}."""
        rows = {
            phrase: [[name, value, share] for (name, value), share in sorted(named.items())]
            for phrase, named in sorted(self.names.items())
        }
        return json.dumps(rows, ensure_ascii=False, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: str) -> QueryLexicon:
        rows = json.loads(text)
        return cls(
            {phrase: {(name, value): share for name, value, share in named} for phrase, named in rows.items()}
        )

    def named(self, text: str) -> dict[Value, float]:
        """The values `text` names, each with its highest P(value | phrase) among the text's phrases; of
        an attribute, only what its longest phrase names, and of that the surest value, as a query tagger
        matches the longest phrase first: "dark blue" names navy, not the blue its second word names."""
        found: dict[Value, tuple[int, float]] = {}
        for phrase in phrases(text):
            words = phrase.count(" ") + 1
            for value, share in self.names.get(phrase, {}).items():
                found[value] = max(found.get(value, (0, 0.0)), (words, share))
        surest: dict[str, tuple[int, float]] = {}
        for (attribute, _), sureness in found.items():
            surest[attribute] = max(surest.get(attribute, (0, 0.0)), sureness)
        return {value: sureness[1] for value, sureness in found.items() if sureness == surest[value[0]]}

    def features(self, pairs: pd.DataFrame, values: dict[str, frozenset[Value]]) -> pd.DataFrame:
        """LEXICON_FEATURES of `pairs` (query_text, item_id): the summed confidence of the named values
        the item has, that sum over all named values' (0 when the query names none), whether it is in a
        category the query names, and the summed confidence of the named values it contradicts (it has
        another value of that attribute, or another category). An item unknown to `values` matches and
        contradicts nothing."""
        named = {text: self.named(text) for text in pairs["query_text"].unique()}
        matched, contradicted, category = [], [], []
        for text, item in zip(pairs["query_text"], pairs["item_id"], strict=True):
            has = values.get(item, frozenset())
            attributes = {attribute for attribute, _ in has}
            matched.append(sum(share for value, share in named[text].items() if value in has))
            contradicted.append(
                sum(
                    share
                    for value, share in named[text].items()
                    if value not in has and value[0] in attributes
                )
            )
            category.append(any(value in has for value in named[text] if value[0] == CATEGORY))
        found = np.asarray(matched, dtype=np.float64)
        total = pairs["query_text"].map(lambda text: sum(named[text].values())).to_numpy(dtype=np.float64)
        return pd.DataFrame(
            {
                "lexicon_matched": found,
                "lexicon_share": np.divide(found, total, out=np.zeros_like(found), where=total > 0),
                "lexicon_category": np.asarray(category, dtype=np.float64),
                "lexicon_contradicted": np.asarray(contradicted, dtype=np.float64),
            },
            index=pairs.index,
        )
