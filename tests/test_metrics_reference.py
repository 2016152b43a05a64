"""The ranking metrics against trec_eval (through pytrec_eval) on random lists and graded labels."""

import pandas as pd
import pytest
from test_metrics import LIST_LENGTH, evaluated_requests, random_case

from llmrank_spark.metrics import average_precision, mrr, ndcg_at_k, recall_at_k

pytrec_eval = pytest.importorskip("pytrec_eval", reason="pytrec-eval-terrier is in the dev extra")


def trec_eval(ranked: pd.DataFrame, labels: pd.DataFrame, k: int) -> pd.DataFrame:
    """trec_eval's measures per request; the run's scores are descending in rank, so no ties to break."""
    qrels: dict[str, dict[str, int]] = {}
    for request, item, relevance in labels.itertuples(index=False):
        qrels.setdefault(request, {})[item] = int(relevance)
    run: dict[str, dict[str, float]] = {}
    for request, item, rank in ranked.itertuples(index=False):
        run.setdefault(request, {})[item] = float(LIST_LENGTH + 1 - rank)
    measures = {f"ndcg_cut.{k}", f"recall.{k}", f"map_cut.{k}", "map", "recip_rank"}
    return pd.DataFrame(pytrec_eval.RelevanceEvaluator(qrels, measures).evaluate(run)).T


@pytest.mark.parametrize("seed", [3, 4, 5])
@pytest.mark.parametrize("k", [1, 5, 10])
def test_metrics_match_trec_eval_on_random_inputs(seed, k):
    ranked, labels, _ = random_case(seed)
    requests = evaluated_requests(labels)
    reference = trec_eval(ranked, labels, k).loc[requests]

    pd.testing.assert_series_equal(
        ndcg_at_k(ranked, labels, k).loc[requests], reference[f"ndcg_cut_{k}"], check_names=False
    )
    pd.testing.assert_series_equal(
        recall_at_k(ranked, labels, k).loc[requests], reference[f"recall_{k}"], check_names=False
    )
    # Over the whole list both divide by the number of relevant items.
    pd.testing.assert_series_equal(
        average_precision(ranked, labels).loc[requests], reference["map"], check_names=False
    )
    pd.testing.assert_series_equal(
        mrr(ranked, labels).loc[requests], reference["recip_rank"], check_names=False
    )
    # Cut at k, trec_eval still divides by every relevant item; ours by min(#relevant, k) (metrics docs).
    n_relevant = labels[labels.relevance > 0].groupby("request_id").size().loc[requests]
    rescaled = average_precision(ranked, labels, k).loc[requests] * n_relevant.clip(upper=k) / n_relevant
    pd.testing.assert_series_equal(rescaled, reference[f"map_cut_{k}"], check_names=False)
