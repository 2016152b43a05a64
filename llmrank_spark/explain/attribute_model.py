"""The attribute model: attribute importance for contexts with no behaviour, read from their text.

A context with no choices in a category (a new search query, a shopper new to it) has no importance of its
own there: the behaviour estimate (`behaviour.py`) gives it its segment's or category's order, the same for
"leather boots" as for "black boots". The attribute model reads the context's text instead. It is a MiniLM
cross-encoder over (context text, attribute text), where the attribute text names the category, the
attribute and the category's most common values of it ("boots material: leather, suede, mesh"), so a
query that names a value, or a synonym of one, can be related to its attribute. It is fine-tuned each run
with sentence-transformers' CrossEncoderTrainer and ListNet loss on the lists of contexts that did choose
enough in a category: their attributes, with their behaviour importance as the target distribution.

It serves only after a verdict on held-out contexts (`AttributeModelVerdict`): per held-out list, Kendall
tau of the model's order and of the fallback's (the segment's or category's estimate) against the
context's own importance; the model serves where its mean is higher. Scores are in the model's units, not
the behaviour estimate's log-odds: they order a context's attributes, and `source` says "model".
"""

from __future__ import annotations

import datetime as dt
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F
from scipy.stats import kendalltau  # scipy comes with sentence-transformers

from llmrank_spark.config import AttributesConfig, RerankConfig
from llmrank_spark.explain.behaviour import CONTEXT_KEYS, BehaviourImportance
from llmrank_spark.explain.orders import REQUEST_KEYS
from llmrank_spark.lakehouse import checkpointed

# The category's most common values of an attribute that its text names: enough to show what kind of
# attribute it is, few enough to leave the context its share of the token budget.
VALUES_SHOWN = 6
# Share of the eligible lists held out from fine-tuning for the verdict, chosen by a hash of the context.
HELDOUT_SHARE = 0.2
LIST_KEYS = ["request_type", "request_id", "category"]
# Lists per optimiser step, learning rate and seed of the fine-tuning: a few hundred short lists train in
# a couple of minutes on a 2-core CPU at these (docs/results.md).
LISTS_PER_STEP, LEARNING_RATE, SEED = 8, 5e-5, 7


def attribute_texts(values: DataFrame) -> DataFrame:
    """(category, attribute, attribute_text): "category attribute: v1, v2, ..." from (item_id, category,
    attribute, value), naming the category's VALUES_SHOWN most common values (ties by value)."""
    per_attribute = Window.partitionBy("category", "attribute").orderBy(F.desc("items"), "value")
    common = (
        values.groupBy("category", "attribute", "value")
        .agg(F.count(F.lit(1)).alias("items"))
        .withColumn("order", F.row_number().over(per_attribute))
        .where(F.col("order") <= VALUES_SHOWN)
    )
    listed = common.groupBy("category", "attribute").agg(
        F.array_join(
            F.transform(F.array_sort(F.collect_list(F.struct("order", "value"))), lambda s: s["value"]), ", "
        ).alias("values")
    )
    return listed.select(
        "category",
        "attribute",
        F.concat_ws(
            " ", "category", F.concat(F.regexp_replace("attribute", "_", " "), F.lit(": "), "values")
        ).alias("attribute_text"),
    )


def listnet_rows(lists: pd.DataFrame) -> list[dict]:
    """sentence-transformers' list-loss rows, one per (context, category) of `lists` (LIST_KEYS,
    context_text, attribute, attribute_text, importance): its context, its attributes' texts and their
    importances, attributes in name order so that a list's rows never depend on Spark's."""
    rows = []
    ordered = lists.sort_values([*LIST_KEYS, "attribute"], kind="mergesort")
    for _, frame in ordered.groupby(LIST_KEYS, sort=True):
        rows.append(
            {
                "query": frame["context_text"].iloc[0],
                "docs": frame["attribute_text"].tolist(),
                "labels": frame["importance"].astype(float).tolist(),
            }
        )
    return rows


def list_agreement(lists: pd.DataFrame, scored: str) -> pd.Series:
    """Per list (LIST_KEYS) of at least two attributes: Kendall tau of `scored` against `importance`
    (0 where either is constant: no order to agree with)."""

    def tau(frame: pd.DataFrame) -> float:
        statistic = kendalltau(frame[scored], frame["importance"]).statistic
        return 0.0 if np.isnan(statistic) else float(statistic)

    sized = lists.groupby(LIST_KEYS)["attribute"].transform("size") >= 2
    return lists[sized].groupby(LIST_KEYS).apply(tau, include_groups=False)


@dataclass(frozen=True)
class AttributeModelVerdict:
    """The model against the fallback on held-out lists: mean Kendall tau with their own importance."""

    lists: int
    model_tau: float
    fallback_tau: float

    @property
    def serves(self) -> bool:
        return self.lists > 0 and self.model_tau > self.fallback_tau

    def describe(self) -> str:
        outcome = "serves contexts without behaviour" if self.serves else "not served"
        return (
            f"{self.lists} held-out lists, Kendall tau with their own importance: model "
            f"{self.model_tau:.3f}, segment or category {self.fallback_tau:.3f}: {outcome}"
        )


@dataclass(frozen=True)
class AttributeModel:
    """A fine-tuned attribute model saved as a cross-encoder artifact, and its verdict."""

    path: Path
    version: str
    verdict: AttributeModelVerdict
    train_lists: int
    seconds: float

    def describe(self) -> str:
        return (
            f"attribute model {self.version}: {self.train_lists} lists, {self.seconds:.0f} s; "
            f"{self.verdict.describe()}"
        )


def eligible_lists(importance: BehaviourImportance, cfg: AttributesConfig) -> DataFrame:
    """The contexts' (request, category) lists with choices enough to teach the model, with their own
    importance, the fallback's (segment, else category) and a `heldout` flag from a hash of the list."""
    contexts = importance.contexts.where(
        F.col("request_type").isin(list(cfg.model_request_types))
        & (F.col("choices") >= cfg.model_min_choices)
    )
    segments = importance.segments.select(
        "request_type",
        "segment_type",
        "segment",
        "category",
        "attribute",
        F.col("importance").alias("segment_importance"),
    )
    categories = importance.categories.select(
        "request_type", "category", "attribute", F.col("importance").alias("category_importance")
    )
    bucket = F.pmod(F.xxhash64(*LIST_KEYS), F.lit(1000)) < F.lit(int(HELDOUT_SHARE * 1000))
    return (
        contexts.join(segments, ["request_type", "segment_type", "segment", "category", "attribute"], "left")
        .join(categories, ["request_type", "category", "attribute"], "left")
        .select(
            *CONTEXT_KEYS,
            "importance",
            F.coalesce("segment_importance", "category_importance", F.lit(0.0)).alias("fallback"),
            bucket.alias("heldout"),
        )
    )


def _drawn(lists: DataFrame, heldout: bool, max_lists: int) -> DataFrame:
    """LIST_KEYS and `heldout` of at most `max_lists` of the training (or held-out) lists, drawn by a
    seeded hash so every run draws the same."""
    keys = lists.where(F.col("heldout") == F.lit(heldout)).select(*LIST_KEYS, "heldout").distinct()
    # A sort followed by a limit is Spark's top-k: each partition keeps its first `max_lists`.
    return keys.orderBy(F.xxhash64(*LIST_KEYS, F.lit(SEED)), *LIST_KEYS).limit(max_lists)


def fine_tune(rows: list[dict], cfg: AttributesConfig, base_path: str):
    """A CrossEncoder from `base_path` fine-tuned on ListNet `rows` (`listnet_rows`), on the CPU or the
    first GPU; sentence-transformers' trainer and loss, as the query encoder uses its own."""
    import datasets
    import torch
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import ListNetLoss

    torch.manual_seed(SEED)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = CrossEncoder(base_path, num_labels=1, max_length=cfg.model_max_length, device=device)
    with tempfile.TemporaryDirectory(prefix="llmrank-attribute-model-") as output:
        args = CrossEncoderTrainingArguments(
            output_dir=output,
            num_train_epochs=cfg.model_epochs,
            per_device_train_batch_size=LISTS_PER_STEP,
            learning_rate=LEARNING_RATE,
            save_strategy="no",
            report_to=[],
            logging_strategy="no",
            disable_tqdm=True,
            seed=SEED,
            use_cpu=device == "cpu",
        )
        trainer = CrossEncoderTrainer(
            model=model, args=args, train_dataset=datasets.Dataset.from_list(rows), loss=ListNetLoss(model)
        )
        trainer.train()
    return model


def train_attribute_model(
    importance: BehaviourImportance,
    contexts_of: Callable[[DataFrame], DataFrame],
    texts: DataFrame,
    cfg: AttributesConfig,
    rerank: RerankConfig,
    run_date: dt.date,
    directory: Path,
) -> AttributeModel | None:
    """Fine-tune the attribute model on the eligible lists (`eligible_lists`), judge it on the held-out
    ones and save it under `directory` as a cross-encoder artifact; None when there is nothing to learn.

    `contexts_of(requests)`: (request_type, request_id, context_text) of `requests`, as
    `rerank.with_contexts` builds them; `texts`: `attribute_texts`. Only the drawn lists reach the driver."""
    from llmrank_spark.config import text_settings
    from llmrank_spark.rerank import ArtifactManifest, base_model_dir, save_artifact

    eligible = eligible_lists(importance, cfg)
    drawn = _drawn(eligible, False, cfg.model_max_lists).unionByName(
        _drawn(eligible, True, max(1, int(cfg.model_max_lists * HELDOUT_SHARE)))
    )
    lists: pd.DataFrame = (
        eligible.join(drawn, [*LIST_KEYS, "heldout"])
        .join(texts, ["category", "attribute"])
        .join(contexts_of(drawn), REQUEST_KEYS)
        .toPandas()
    )
    train, heldout = lists[~lists["heldout"]], lists[lists["heldout"]]
    rows = listnet_rows(train)
    if not rows:
        return None
    started = time.perf_counter()
    model = fine_tune(rows, cfg, cfg.model_base_path or str(base_model_dir()))
    seconds = time.perf_counter() - started
    heldout = heldout.assign(
        model=model.predict(
            list(zip(heldout["context_text"], heldout["attribute_text"], strict=True)),
            batch_size=64,
            show_progress_bar=False,
        )
        if len(heldout)
        else np.zeros(0)
    )
    model_tau, fallback_tau = list_agreement(heldout, "model"), list_agreement(heldout, "fallback")
    verdict = AttributeModelVerdict(
        len(model_tau),
        float(model_tau.mean()) if len(model_tau) else 0.0,
        float(fallback_tau.mean()) if len(fallback_tau) else 0.0,
    )
    # Unique, as the train step's versions are: executors cache a scorer per version.
    version = f"attributes-{run_date:%Y%m%d}-{uuid.uuid4().hex[:8]}"
    settings = text_settings(rerank) | {
        "max_length": cfg.model_max_length,
        "item_template": "{attribute_text}",
    }
    manifest = ArtifactManifest(
        version=version,
        **settings,
        loss="listnet over a context's attributes (sentence-transformers ListNetLoss)",
        data_snapshot=f"behaviour up to {run_date}",
        metrics={
            "train_lists": float(len(rows)),
            "heldout_lists": float(verdict.lists),
            "heldout_model_tau": verdict.model_tau,
            "heldout_fallback_tau": verdict.fallback_tau,
            "seconds": seconds,
        },
    )
    path = save_artifact(model.model, model.tokenizer, directory / version, manifest)
    return AttributeModel(path, version, verdict, len(rows), seconds)


def model_importance(
    requests: DataFrame,
    texts: DataFrame,
    contexts: DataFrame,
    model: AttributeModel,
    cfg: AttributesConfig,
    rerank: RerankConfig,
) -> DataFrame:
    """(CONTEXT_KEYS, importance) of the model for `requests` (LIST_KEYS): every attribute of each
    request's category, scored on the executors by the rerank step's scoring UDF, the model shipped."""
    from llmrank_spark.rerank import (
        ScoringSettings,
        cross_encoder_spec,
        score_by_request,
        scoring_udf,
        ship_model,
    )

    spec = cross_encoder_spec(str(model.path))
    settings = ScoringSettings.from_config(rerank.model_copy(update={"max_length": cfg.model_max_length}))
    pairs = (
        requests.select(*LIST_KEYS)
        .distinct()
        .join(texts, "category")
        .join(contexts, REQUEST_KEYS)
        .select(*CONTEXT_KEYS, "context_text", F.col("attribute_text").alias("item_text"))
    )
    score = scoring_udf(ship_model(requests.sparkSession, spec), settings)
    scored = score_by_request(pairs, score, "category", "attribute")
    return scored.select(*CONTEXT_KEYS, F.col("score").alias("importance"))


def needing_model(
    ranked: DataFrame, values: DataFrame, importance: BehaviourImportance, cfg: AttributesConfig
) -> DataFrame:
    """(LIST_KEYS) of the ranked requests whose top items' categories they made no choice in, of the
    request types the model serves: the lists whose attributes it orders."""
    top = ranked.where(F.col("rank") <= cfg.top_k_items).where(
        F.col("request_type").isin(list(cfg.model_request_types))
    )
    categories = values.select("item_id", "category").distinct()
    lists = top.join(categories, "item_id").select(*LIST_KEYS).distinct()
    return lists.join(importance.contexts.select(*LIST_KEYS).distinct(), LIST_KEYS, "left_anti")


def attribute_model_importance(
    ranked: DataFrame,
    items: DataFrame,
    interactions: DataFrame,
    importance: BehaviourImportance,
    cfg: AttributesConfig,
    rerank: RerankConfig,
    run_date: dt.date,
    directory: Path,
    users: DataFrame | None = None,
    queries: DataFrame | None = None,
) -> tuple[AttributeModel | None, DataFrame | None]:
    """The attribute model fine-tuned on this run's behaviour, and its importance (CONTEXT_KEYS,
    importance) for the ranked requests without choices in their items' categories; the importance is
    None when the model was not trained or lost its verdict."""
    from llmrank_spark.explain.behaviour import attribute_values
    from llmrank_spark.rerank import with_contexts

    values = attribute_values(items, cfg.item_fields)
    texts = checkpointed(attribute_texts(values))

    def contexts_of(requests: DataFrame) -> DataFrame:
        distinct = requests.select(*REQUEST_KEYS).distinct()
        return with_contexts(distinct, interactions, items, rerank, run_date, queries, users).select(
            *REQUEST_KEYS, "context_text"
        )

    model = train_attribute_model(importance, contexts_of, texts, cfg, rerank, run_date, directory)
    if model is None or not model.verdict.serves:
        return model, None
    requests = needing_model(ranked, values, importance, cfg)
    return model, model_importance(requests, texts, contexts_of(requests), model, cfg, rerank)
