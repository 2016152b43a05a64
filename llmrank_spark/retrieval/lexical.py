"""The lexical query retriever: BM25 over each item's title, brand, category and attribute values.

BM25 comes from `bm25s` (a sparse, numpy/scipy implementation of Lucene's scoring): the catalogue's
index is built once on the driver from `candidates.lexical_item_template`, saved with the library's
own format and shipped to the executors as one file (`ship_directory`), where each partition of
queries is scored against it. Chosen over Spark ML's text features because those stop at TF-IDF (no
BM25 saturation or length normalisation) and over a search server because nothing but Spark runs here.
The index holds one posting per (item, distinct word): a few tens of bytes per item.

Words are lower-cased runs of two or more letters or digits, English stop words dropped, no stemming
("boot" does not find "boots": the semantic retriever covers variants). Chinese, Japanese and Korean
characters count one word each, the usual BM25 baseline for scripts written without spaces, so a
query in them finds items whose text shares its characters. The English MiniLM model reads such text
poorly (docs/queries.md).
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Iterator
from functools import lru_cache
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession

from llmrank_spark.config import CandidatesConfig
from llmrank_spark.lakehouse.shipping import directory_digest, ship_directory, unpack_shipped_directory
from llmrank_spark.retrieval.retrieved import RETRIEVED_SCHEMA, tag_source
from llmrank_spark.retrieval.vector_search import retrieved_frame, top_k
from llmrank_spark.text import ITEM_FIELDS, render_item_texts

# CJK ideographs, kana and hangul: one word per character. Anything else: runs of 2+ letters or digits.
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff"
WORDS = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]{{2,}}")
STOPWORDS = "en"


# ---- pure functions over pandas batches ---------------------------------------------------------------


class LexicalIndex:
    """A BM25 index of item texts (row i is `item_ids[i]`, sorted) and the vocabulary it was built with."""

    def __init__(self, item_ids: np.ndarray, bm25, tokenizer) -> None:
        self.item_ids, self.bm25, self.tokenizer = item_ids, bm25, tokenizer

    @classmethod
    def build(cls, item_ids: np.ndarray, texts: list[str]) -> LexicalIndex:
        import bm25s
        from bm25s.tokenization import Tokenizer

        order = np.argsort(item_ids, kind="stable")
        tokenizer = Tokenizer(splitter=WORDS.findall, stopwords=STOPWORDS)
        words = tokenizer.tokenize([texts[i] for i in order], return_as="ids", show_progress=False)
        bm25 = bm25s.BM25()
        bm25.index(words, show_progress=False)
        return cls(np.asarray(item_ids, dtype=object)[order], bm25, tokenizer)

    def save(self, directory: Path) -> None:
        self.bm25.save(str(directory))
        self.tokenizer.save_vocab(str(directory))
        self.tokenizer.save_stopwords(str(directory))
        np.save(directory / "item_ids.npy", self.item_ids.astype(str))

    @classmethod
    def load(cls, directory: Path) -> LexicalIndex:
        import bm25s
        from bm25s.tokenization import Tokenizer

        tokenizer = Tokenizer(splitter=WORDS.findall, stopwords=[])
        tokenizer.load_vocab(str(directory))
        tokenizer.load_stopwords(str(directory))
        item_ids = np.load(directory / "item_ids.npy", allow_pickle=False).astype(object)
        return cls(item_ids, bm25s.BM25.load(str(directory)), tokenizer)

    def top_items(self, request_ids: list[str], texts: list[str], depth: int) -> pd.DataFrame:
        """Each query's `depth` best items by BM25, best first, equal scores by item_id; items sharing no
        word with the query are never returned, so a query of unknown words gets none."""
        words = self.tokenizer.tokenize(texts, update_vocab=False, return_as="ids", show_progress=False)
        lists = []
        for request_id, ids in zip(request_ids, words, strict=True):
            known = [i for i in ids if i != 0]  # 0: the tokenizer's id of a word not in the index
            if not known or not len(self.item_ids):
                continue
            scores = self.bm25.get_scores(known)
            best = top_k(np.where(scores > 0, scores, -np.inf)[None, :], depth)[0]
            lists.append((request_id, self.item_ids[best], scores[best]))
        return retrieved_frame(lists)


def item_lexical_texts(items: pd.DataFrame, cfg: CandidatesConfig) -> list[str]:
    return render_item_texts(items, cfg.lexical_item_template, cfg.lexical_item_attributes).tolist()


# ---- Spark layer --------------------------------------------------------------------------------------


@lru_cache(maxsize=2)
def _shipped_index(name: str) -> LexicalIndex:
    """On an executor: the shipped index, loaded once per Python worker."""
    return LexicalIndex.load(unpack_shipped_directory(name))


def ship_index(spark: SparkSession, items: DataFrame, cfg: CandidatesConfig) -> str:
    """Build the catalogue's BM25 index on the driver (one text per item: catalogue-sized, bounded by
    `broadcast_max_items` like the item vectors) and ship it; returns the name tasks open it by."""
    count = items.count()
    if count > cfg.broadcast_max_items:
        raise ValueError(
            f"lexical retriever: {count:,} items exceed candidates.broadcast_max_items "
            f"({cfg.broadcast_max_items:,}), the most whose index this job builds and ships; raise it only "
            f"if every executor has room for it, else set candidates.rank_queries false"
        )
    columns = [c for c in (*ITEM_FIELDS, "attributes") if c in items.columns]
    catalogue: pd.DataFrame = items.select(*columns).toPandas()
    index = LexicalIndex.build(
        catalogue["item_id"].to_numpy(dtype=object), item_lexical_texts(catalogue, cfg)
    )
    with tempfile.TemporaryDirectory(prefix="llmrank-bm25-") as directory:
        index.save(Path(directory))
        return ship_directory(spark, Path(directory), "bm25", directory_digest(Path(directory)))


def lexical_candidates(
    spark: SparkSession, items: DataFrame, queries: DataFrame, cfg: CandidatesConfig, depth: int
) -> DataFrame:
    """(request_id, item_id, source 'lexical', source_score, source_rank): each query's `depth` best
    items by BM25. `queries` holds (request_id, query_text)."""
    shipped = ship_index(spark, items, cfg)

    def score(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        index = _shipped_index(shipped)
        for batch in batches:
            yield index.top_items(batch["request_id"].tolist(), batch["query_text"].tolist(), depth)

    return tag_source(
        queries.select("request_id", "query_text").mapInPandas(score, RETRIEVED_SCHEMA), "lexical"
    )
