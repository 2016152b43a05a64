"""Query retrieval quality: BM25, semantic, their blend and the zero-shot bi-encoder, on the sample's queries.

The sample's 300 queries are judged by `query_labels` (grade 3: the category and every value the query
names; 2: some of them; 1: the category only; 0: another category). Each retriever returns its
`--depth` best items per query; the blend is the candidates step's own (`candidates.quotas`,
`source_weights`, `fusion_k`) cut at the same depth. The zero-shot bi-encoder re-orders the blend's
list by the cosine of the packaged MiniLM's query and item vectors (what `rerank.mode
zero_shot_bi_encoder` serves); the ideal re-ordering sorts it by the labels themselves, the ceiling
of any reranker over these lists; with `--model`, a fine-tuned reranker re-orders it as the rerank step
serves queries; with `--query-encoder`, the semantic retriever (and so the blend) uses the query
encoder an artifact holds (training/query_encoder.py) instead of the packaged MiniLM. Figures are
given over all queries and over the held-out queries (`train.heldout_query_share`, hashed by id), the
ones a version trained on queries never saw.

With `--query-fusion`, the train step's query fusion (training/query_fusion.py: LambdaMART over the
retrievers' scores, the blended rank, the item's events and the values the query names by the `QueryLexicon`
learned from the training queries) re-orders the held-out queries' blend lists, out of fold: each fifth
of them by a fusion fitted on the other four (no query it scores trained the encoder, the lexicon or
the fusion), compared with the blend on the same queries.

- NDCG@10 against the graded labels (unjudged items count 0);
- recall@100 of the items matching at least one value the query names (grade >= 2), the ones a
  reranker can only promote if retrieval found them; and of every relevant item (grade >= 1), most of
  which are the category's other items.

  python bench/query_retrieval.py
  python bench/query_retrieval.py --set candidates.source_weights='{lexical: 1.0, query_semantic: 0.5}'
  python bench/query_retrieval.py --model <artifact directory of a version trained with queries>
  python bench/query_retrieval.py --query-encoder <artifact directory of a version with a query encoder>
  python bench/query_retrieval.py --query-encoder <artifact> --query-fusion
"""

from __future__ import annotations

import argparse
import datetime as dt
import time

import numpy as np
import pandas as pd
import torch
from pyspark.sql import DataFrame

from llmrank_spark.config import Config, load_config, text_settings
from llmrank_spark.data import generate_sample
from llmrank_spark.events import item_event_counts
from llmrank_spark.lakehouse import checkpointed, frame_from_pandas, get_spark
from llmrank_spark.metrics import ndcg_at_k, recall_at_k
from llmrank_spark.rerank import load_artifact, query_encoder_dir
from llmrank_spark.retrieval import blend, prepare_inputs
from llmrank_spark.retrieval.lexical import lexical_candidates
from llmrank_spark.retrieval.queries import checked_queries
from llmrank_spark.retrieval.semantic import (
    Encoder,
    QueryEncoder,
    encoded_queries,
    query_semantic_candidates,
)
from llmrank_spark.text import item_text_frame
from llmrank_spark.training.lists import LIST
from llmrank_spark.training.network import FusionRanker
from llmrank_spark.training.query_fusion import QueryFusionResult, judged_query_fusion
from llmrank_spark.training.query_lists import heldout_queries
from llmrank_spark.training.trainer import score_lists, training_scorer

RUN_DATE = dt.date(2026, 10, 30)


def collect(frame: DataFrame) -> tuple[pd.DataFrame, float]:
    started = time.perf_counter()
    lists: pd.DataFrame = frame.toPandas()
    return lists, time.perf_counter() - started


def measure(lists: pd.DataFrame, labels: pd.DataFrame, depth: int) -> dict[str, float]:
    matching = labels[labels.relevance >= 2]
    return {
        "ndcg@10": ndcg_at_k(lists, labels, 10).mean(),
        f"recall@{depth} (grade>=2)": recall_at_k(lists, matching, depth).mean(),
        f"recall@{depth} (grade>=1)": recall_at_k(lists, labels, depth).mean(),
    }


def bi_encoder_order(blended: pd.DataFrame, queries: pd.DataFrame, item_ids, matrix) -> pd.DataFrame:
    """The blend's lists re-ordered by the cosine of query and item MiniLM vectors."""
    vectors = encoded_queries(queries.rename(columns={"query_id": "request_id"}), item_ids, matrix)
    row_of = pd.Series(np.arange(len(item_ids)), index=item_ids)
    query_row = pd.Series(np.arange(len(queries)), index=queries["query_id"].to_numpy())
    cosine = np.einsum(
        "ij,ij->i",
        vectors[query_row[blended.request_id].to_numpy()],
        matrix[row_of[blended.item_id].to_numpy()],
    )
    return ranked_by(blended, cosine)


def ideal_order(blended: pd.DataFrame, labels: pd.DataFrame) -> pd.DataFrame:
    """The blend's lists sorted by their judged grade (ties in blend order): the NDCG@10 no re-ordering
    of these lists can pass, since a reranker only moves what retrieval found."""
    graded = blended.merge(labels, on=["request_id", "item_id"], how="left").fillna({"relevance": 0})
    return ranked_by(graded, graded["relevance"].to_numpy())


def fine_tuned_scores(
    path: str,
    blended: pd.DataFrame,
    tables: dict[str, pd.DataFrame],
    events: pd.DataFrame,
    config: Config,
) -> np.ndarray:
    """Scores of the blend's rows by the reranker artifact at `path`, on text built with its own settings:
    as the rerank step serves queries through its linear head."""
    artifact = load_artifact(path)
    spec = artifact.manifest.fusion_head
    model = FusionRanker(artifact.model, spec.features if spec else [], spec, artifact.manifest.architecture)
    text = config.rerank.model_copy(update=text_settings(artifact.manifest))
    query_text = tables["queries"].set_index("query_id")["query_text"]
    lists = (
        blended.merge(item_text_frame(tables["items"], text), on="item_id", how="left")
        .merge(events, on="item_id", how="left")
        .assign(context_text=lambda frame: frame["request_id"].map(query_text))
        .rename(columns={"request_id": LIST})
    )
    scorer = training_scorer(model, artifact.tokenizer, config.train, torch.device("cpu"))
    return score_lists(model, scorer, lists)


def ranked_by(lists: pd.DataFrame, scores: np.ndarray) -> pd.DataFrame:
    """`lists` (request_id, item_id, retrieval_rank) ordered by `scores` per request, ties in blend order."""
    ordered = lists.assign(score=scores).sort_values(
        ["request_id", "score", "retrieval_rank"], ascending=[1, 0, 1]
    )
    return ordered.assign(rank=ordered.groupby("request_id").cumcount() + 1)


def query_fusion(
    blended: pd.DataFrame,
    tables: dict[str, pd.DataFrame],
    held_out: set[str],
    events: pd.DataFrame,
    config: Config,
) -> QueryFusionResult | None:
    """The train step's query fusion (training/query_fusion.py) on the held-out queries' blend lists: the
    lexicon learned from the training queries, LambdaMART judged out of fold over the held-out ones."""
    queries = tables["queries"]
    held = queries.query_id.isin(held_out)
    candidates = blended[blended.request_id.isin(held_out)]
    return judged_query_fusion(
        candidates, queries, tables["query_labels"], tables["items"], events, held, config.train
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depth", type=int, default=100, help="items per query and retriever")
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument(
        "--model", help="a reranker artifact directory (trained on queries) to re-order the blend with"
    )
    parser.add_argument(
        "--query-fusion",
        action="store_true",
        help="also the train step's query fusion, out of fold over the held-out queries",
    )
    parser.add_argument(
        "--query-encoder",
        metavar="ARTIFACT",
        help="a reranker artifact directory holding a query encoder: the semantic retriever uses it",
    )
    args = parser.parse_args()
    config = load_config(
        overrides=[f"spark.master={args.master}", f"candidates.n_per_request={args.depth}", *args.overrides]
    )
    spark = get_spark(config)
    tables = generate_sample(config.sample)
    items = frame_from_pandas(spark, tables["items"], "items")
    interactions = frame_from_pandas(spark, tables["interactions"], "interactions")
    queries = frame_from_pandas(spark, tables["queries"], "queries")
    labels = tables["query_labels"].rename(columns={"query_id": "request_id"})
    inputs = prepare_inputs(spark, items, interactions, None, config.candidates, RUN_DATE)
    rankable = checked_queries(queries, config.candidates.max_query_chars).where("reason is null")
    rankable = checkpointed(rankable.select("request_id", "query_text"))

    lexical, lexical_s = collect(lexical_candidates(spark, items, rankable, config.candidates, args.depth))
    encoder = None
    if args.query_encoder:
        directory = query_encoder_dir(args.query_encoder)
        if directory is None:
            parser.error(f"--query-encoder {args.query_encoder}: that artifact holds no query encoder")
        encoder = QueryEncoder(Encoder("query encoder", directory))
    semantic, semantic_s = collect(query_semantic_candidates(inputs, rankable, args.depth, encoder))
    blended, _ = collect(
        blend(
            [spark.createDataFrame(lexical), spark.createDataFrame(semantic)],
            None,
            config.candidates if encoder is None else config.candidates.with_query_encoder(),
            RUN_DATE,
            request_type="query",
        )
    )
    item_ids, matrix = inputs.item_text_matrix
    orders = {
        "lexical (BM25)": lexical.assign(rank=lexical.source_rank),
        "semantic (query encoder)" if encoder else "semantic (MiniLM)": semantic.assign(
            rank=semantic.source_rank
        ),
        "blend": blended.assign(rank=blended.retrieval_rank),
        "zero-shot bi-encoder over the blend": bi_encoder_order(blended, tables["queries"], item_ids, matrix),
        "ideal re-ordering of the blend (labels)": ideal_order(blended, labels),
    }
    events = item_event_counts(interactions, RUN_DATE).toPandas()
    if args.model:
        orders["fine-tuned reranker over the blend"] = ranked_by(
            blended, fine_tuned_scores(args.model, blended, tables, events, config)
        )
    query_ids = tables["queries"]["query_id"]
    held_out = set(query_ids[heldout_queries(query_ids, config.train.heldout_query_share)])
    fused = query_fusion(blended, tables, held_out, events, config) if args.query_fusion else None
    print(
        f"{len(tables['queries'])} queries ({len(held_out)} held out), {len(tables['items']):,} items, "
        f"depth {args.depth}; lexical {lexical_s:.1f} s, semantic {semantic_s:.1f} s (Spark {args.master})"
    )
    for name, lists in orders.items():
        lists = lists[["request_id", "item_id", "rank"]]
        every = measure(lists, labels, args.depth)
        heldout = measure(
            lists[lists.request_id.isin(held_out)], labels[labels.request_id.isin(held_out)], args.depth
        )
        cells = "; ".join(f"{m} {every[m]:.4f} (held out {heldout[m]:.4f})" for m in every)
        print(f"{name:38s} {cells}")
    if fused is not None:
        print(fused.describe())


if __name__ == "__main__":
    main()
