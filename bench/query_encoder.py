"""The query encoder against the packaged MiniLM: whole-catalogue retrieval for the held-out queries.

The sample's judged queries are split as the train step splits them (`heldout_queries`, by a hash of the
id). The train step's own `train_query_encoder` fine-tunes MiniLM on the training queries' triples
(`encoder_triples`: best-graded items, each with a grade-1 hard negative, and the batch's other items as
in-batch negatives) and judges it on the held-out queries. Printed per encoder over the held-out queries:
NDCG@10 against the graded labels and recall@100 of the items matching a value the query names (grade
>= 2), then the fine-tuning time.

  python bench/query_encoder.py
  python bench/query_encoder.py --set train.query_encoder_pairs=4 --set train.query_encoder_epochs=2
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd

from llmrank_spark.config import load_config
from llmrank_spark.data import generate_sample
from llmrank_spark.metrics import ndcg_at_k, recall_at_k
from llmrank_spark.rerank import load_sentence_encoder
from llmrank_spark.text import render_item_texts
from llmrank_spark.training.query_encoder import encoder_triples, retrieved_lists, train_query_encoder
from llmrank_spark.training.query_lists import heldout_queries


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--depth", type=int, default=100, help="items retrieved per query")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    config = load_config(overrides=args.overrides)
    tables = generate_sample(config.sample)
    queries, labels, items = tables["queries"], tables["query_labels"], tables["items"]
    candidates = config.candidates
    texts = render_item_texts(items, candidates.semantic_item_template, candidates.semantic_item_attributes)
    item_text = pd.Series(texts.to_numpy(), index=items["item_id"].to_numpy())
    held = heldout_queries(queries["query_id"], config.train.heldout_query_share)
    rng = np.random.default_rng(config.train.seed)
    triples = encoder_triples(queries[~held], labels, item_text, config.train.query_encoder_pairs, rng)
    heldout = labels.merge(queries[held], on="query_id")
    print(f"{(~held).sum()} training queries, {held.sum()} held out, {len(triples)} training pairs")
    result = train_query_encoder(triples, heldout, item_text, config.train)
    graded = heldout.rename(columns={"query_id": "request_id"})
    encoders = {"packaged MiniLM": load_sentence_encoder("cpu"), "query encoder": result.encoder}
    for name, encoder in encoders.items():
        lists = retrieved_lists(encoder, queries[held], item_text, args.depth)
        ndcg = ndcg_at_k(lists, graded, 10).mean()
        recall = recall_at_k(lists, graded[graded["relevance"] >= 2], args.depth).mean()
        print(f"{name:16s} held out: NDCG@10 {ndcg:.4f}, recall@{args.depth} (grade>=2) {recall:.4f}")
    print(result.describe())


if __name__ == "__main__":
    main()
