"""The query fusion: LambdaMART over a query list's retrieval signals and the query lexicon.

A query's grade is about the values it names (its category, "waterproof", "navy"). Measured on the
sample's held-out queries over the lists the query encoder leads, cross-encoders fine-tuned on the
judged queries ranked them below their retrieval order, while LambdaMART over what the retrievers
said and over which named values each item has (`QueryLexicon`) ranked them above it
(docs/results.md, "Reading the query"). A version that ships such a fusion ranks its query lists with
it, with no BERT pass: the rerank step applies `QueryFusion.scores` per query list, the train step
fits and judges it (training/query_fusion.py) on the same inputs from `query_fusion_inputs`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from llmrank_spark.config import QUERY_RETRIEVERS
from llmrank_spark.events import ITEM_EVENTS
from llmrank_spark.rerank.artifact import QUERY_LEXICON_FILE, FusionSpec
from llmrank_spark.rerank.fusion import FusionModel
from llmrank_spark.rerank.query_lexicon import LEXICON_FEATURES, QueryLexicon, as_dict, item_values

# What each query retriever's score says of the item (null where it did not propose it), the blend's
# place, the item's popularity, and the lexicon's match of the values the query names.
QUERY_FUSION_INPUTS = (
    *(f"score_{source}" for source in QUERY_RETRIEVERS),
    "retrieval_rank",
    ITEM_EVENTS,
    *LEXICON_FEATURES,
)
# The direction each input may move the score, all else equal (LightGBM's monotone constraints): a
# higher retriever score, a better place, more events, more named values matched never rank an item
# lower; a contradicted value never ranks it higher. Fitted on a few hundred lists, free trees learned
# noise that these rule out (docs/experiments/2026-12-query-fusion.md).
QUERY_FUSION_DIRECTIONS = {
    **{f"score_{source}": 1 for source in QUERY_RETRIEVERS},
    "retrieval_rank": -1,
    ITEM_EVENTS: 1,
    "lexicon_matched": 1,
    "lexicon_share": 1,
    "lexicon_category": 1,
    "lexicon_contradicted": -1,
}
# What `query_fusion_inputs` reads of each candidate row.
QUERY_ROW_COLUMNS = (
    "query_text",
    "item_id",
    "category",
    "attributes",
    "source_scores",
    "retrieval_rank",
    ITEM_EVENTS,
)


def query_fusion_inputs(rows: pd.DataFrame, lexicon: QueryLexicon) -> pd.DataFrame:
    """QUERY_FUSION_INPUTS of candidate `rows` (QUERY_ROW_COLUMNS), by row, index kept: a retriever that
    did not propose an item leaves its score null (LightGBM's missing); an item without events has 0."""
    scores = rows["source_scores"].map(as_dict)
    columns: dict[str, object] = {
        f"score_{source}": scores.map(lambda found, s=source: found.get(s, np.nan)).astype(float)
        for source in QUERY_RETRIEVERS
    }
    columns["retrieval_rank"] = rows["retrieval_rank"].astype(float)
    columns[ITEM_EVENTS] = rows[ITEM_EVENTS].fillna(0).astype(float)
    values = item_values(rows[["item_id", "category", "attributes"]].drop_duplicates("item_id"))
    matched = lexicon.features(rows[["query_text", "item_id"]], values)
    return pd.DataFrame(columns, index=rows.index).join(matched)[list(QUERY_FUSION_INPUTS)]


@dataclass(frozen=True)
class QueryFusion:
    """A version's query reranker: the lexicon it reads queries with and the LambdaMART over
    QUERY_FUSION_INPUTS. Both are text files in the artifact (JSON and LightGBM's format, no pickle)."""

    lexicon: QueryLexicon
    model: FusionModel

    def scores(self, rows: pd.DataFrame) -> np.ndarray:
        """The served score of each candidate row (QUERY_ROW_COLUMNS)."""
        return self.model.score(query_fusion_inputs(rows, self.lexicon))

    def save(self, directory: Path) -> None:
        self.model.save(directory)
        (directory / QUERY_LEXICON_FILE).write_text(self.lexicon.to_json())

    @classmethod
    def from_texts(cls, lexicon: str, model: str, spec: FusionSpec) -> QueryFusion:
        """From the two files' texts, as the rerank step ships them to its executors."""
        return cls(QueryLexicon.from_json(lexicon), FusionModel.from_text(model, spec))
