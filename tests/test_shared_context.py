"""Shared-context scoring: one pass for a chunk of a request's items equals each item read alone."""

import numpy as np
import pandas as pd
import pytest
import torch
from tiny_reranker import tiny_artifact

from llmrank_spark.rerank import (
    PairScorer,
    ScoringSettings,
    cross_encoder_spec,
    load_artifact,
    scoring_udf,
    ship_model,
)
from llmrank_spark.text import budget_split, shared_context_split

CPU = torch.device("cpu")
CONTEXT = "Recently viewed: Red Shoe (Shoes, Acme); Blue Hat (Hats, Zed); Canvas Tote (Bags, Bolt)"
ITEMS = [
    "Trail Runner. Brand: Acme. Category: Shoes. color: red, size: 42",
    "Wool Beanie. Brand: Zed. Category: Hats.",
    "x",
    "Leather Belt. Brand: Bolt. Category: Accessories. handmade in small batches",
    "Garden Hose. Brand: Flow. Category: Garden.",
    "Canvas Tote. Brand: unknown. Category: Bags.",
]


def shared_scorer(**settings) -> PairScorer:
    spec = cross_encoder_spec(str(tiny_artifact("shared_context")))
    assert spec.architecture == "shared_context"  # read from the artifact's reranker.json
    return PairScorer.from_spec(spec, CPU, ScoringSettings(**settings))


def literal_mask_scores(context: str, items: list[str]) -> np.ndarray:
    """The reference: HF BERT on the literal sequence [CLS] context [SEP] item_1 [SEP] item_2 [SEP] ...,
    with the block attention mask and restarting position ids built here, no engine involved."""
    artifact = load_artifact(tiny_artifact("shared_context"))
    tokenizer, model = artifact.tokenizer, artifact.model
    ids = [tokenizer.cls_token_id, *tokenizer(context, add_special_tokens=False)["input_ids"]]
    ids.append(tokenizer.sep_token_id)
    after_context = len(ids)
    positions, types, spans = list(range(after_context)), [0] * after_context, []
    for item in items:
        item_ids = [*tokenizer(item, add_special_tokens=False)["input_ids"], tokenizer.sep_token_id]
        spans.append((len(ids), len(ids) + len(item_ids)))
        ids += item_ids
        positions += range(after_context, after_context + len(item_ids))
        types += [1] * len(item_ids)
    mask = torch.zeros(len(ids), len(ids), dtype=torch.bool)
    mask[:after_context, :after_context] = True
    for start, end in spans:
        mask[start:end, :after_context] = True
        mask[start:end, start:end] = True
    with torch.inference_mode():
        hidden = model.bert(
            input_ids=torch.tensor([ids]),
            token_type_ids=torch.tensor([types]),
            position_ids=torch.tensor([positions]),
            attention_mask=mask[None, None],
        ).last_hidden_state[0]
        pooled = torch.stack([hidden[start:end].mean(0) for start, end in spans])
        pooled = model.bert.pooler.activation(model.bert.pooler.dense(pooled))
        return model.classifier(pooled)[:, 0].numpy()


def test_one_pass_over_a_chunk_equals_the_literal_block_mask_and_each_item_alone():
    scorer = shared_scorer()
    together = scorer.score([CONTEXT] * len(ITEMS), ITEMS)
    assert np.ptp(together) > 0.5  # the tiny model separates items, so a misaligned score would show
    np.testing.assert_allclose(together, literal_mask_scores(CONTEXT, ITEMS), atol=1e-5)
    alone = [scorer.score([CONTEXT], [item])[0] for item in ITEMS]
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_permuting_a_chunk_permutes_its_scores():
    scorer = shared_scorer()
    permutation = np.random.default_rng(3).permutation(len(ITEMS))
    np.testing.assert_allclose(
        scorer.score([CONTEXT] * len(ITEMS), [ITEMS[i] for i in permutation]),
        scorer.score([CONTEXT] * len(ITEMS), ITEMS)[permutation],
        atol=1e-5,
    )


def test_an_item_never_changes_another_items_score():
    scorer = shared_scorer()
    before = scorer.score([CONTEXT] * len(ITEMS), ITEMS)
    perturbed = [*ITEMS[:2], ITEMS[2] + " now with a much longer text of its own " * 3, *ITEMS[3:]]
    after = scorer.score([CONTEXT] * len(ITEMS), perturbed)
    assert abs(after[2] - before[2]) > 1e-3
    np.testing.assert_allclose(np.delete(after, 2), np.delete(before, 2), atol=1e-5)


def test_chunking_a_long_list_gives_the_scores_of_one_long_chunk():
    rng = np.random.default_rng(0)
    items = [
        " ".join(rng.choice(["red", "shoe", "hat", "acme", "wool", "42", "tote"], rng.integers(1, 9)))
        for _ in range(100)
    ]
    contexts = [CONTEXT] * 60 + ["new shopper with no history yet"] * 40
    # fp32 sums run in another order when a micro-batch pads to another width: within 1e-4 relative.
    one_chunk = shared_scorer(micro_batch_size=128).score(contexts, items)
    for size in (1, 7, 32):
        np.testing.assert_allclose(
            shared_scorer(micro_batch_size=size).score(contexts, items), one_chunk, rtol=1e-4, atol=1e-5
        )


def test_a_context_is_laid_out_once_per_micro_batch():
    scorer = shared_scorer()
    contexts = [CONTEXT] * 4 + ["another shopper"] * 2
    inputs = scorer.model_inputs(scorer.encode_pairs(contexts, ITEMS), np.arange(len(ITEMS)))
    assert inputs["context_ids"].shape[0] == 2
    assert inputs["item_context"].tolist() == [0, 0, 0, 0, 1, 1] or inputs["item_context"].tolist() == [
        1,
        1,
        1,
        1,
        0,
        0,
    ]
    # Each item row is its text and one [SEP], no [CLS] and no context.
    first = scorer.tokenizer(ITEMS[0], add_special_tokens=False)["input_ids"]
    assert inputs["item_ids"][0, : len(first) + 1].tolist() == [*first, scorer.tokenizer.sep_token_id]


def test_over_long_contexts_and_items_are_cut_context_first_within_the_pair_budget():
    budget = 29  # max_length 32
    context, item = np.array([200, 200, 10]), np.array([5, 200, 5])
    context_kept, item_kept = shared_context_split(context, item, budget)
    assert (context_kept + item_kept <= budget).all()
    # A long context is cut to leave the item its reserved share; the item keeps all it can.
    assert context_kept.tolist() == [budget - int(budget * 0.4)] * 2 + [10]
    assert item_kept.tolist() == [5, int(budget * 0.4), 5]
    # A short context is never cut, as with the pair budget.
    assert budget_split(10, 5, budget) == (10, 5)
    scorer = shared_scorer(max_length=32)
    long_context = "Recently viewed: " + "; ".join(f"item number {n} (category {n})" for n in range(30))
    inputs = scorer.model_inputs(
        scorer.encode_pairs([long_context], ["Trail Runner. Brand: Acme."]), np.arange(1)
    )
    kept = int(inputs["context_mask"].sum()) - 2
    assert (
        inputs["context_ids"][0, 1 : 1 + kept].tolist()
        == scorer.tokenizer(long_context, add_special_tokens=False)["input_ids"][:kept]
    )
    assert kept + int(inputs["item_mask"].sum()) - 1 <= budget


def test_udf_scores_equal_in_process_scores(spark):
    contexts = [CONTEXT] * 4 + ["new shopper with no history yet"] * 2
    spec = cross_encoder_spec(str(tiny_artifact("shared_context")))
    score = scoring_udf(ship_model(spark, spec), ScoringSettings(micro_batch_size=4, device="cpu"))
    pairs = spark.createDataFrame(
        pd.DataFrame({"pair": range(len(ITEMS)), "context_text": contexts, "item_text": ITEMS})
    )
    scored = pairs.repartition(2).withColumn("score", score("context_text", "item_text")).toPandas()
    expected = shared_scorer().score(contexts, ITEMS)
    np.testing.assert_allclose(scored.sort_values("pair")["score"].to_numpy(), expected, atol=1e-5)


@pytest.mark.parametrize("architecture", ["pair", "shared_context"])
def test_int8_path_applies_to_both_architectures(architecture):
    spec = cross_encoder_spec(str(tiny_artifact(architecture)))
    exact = PairScorer.from_spec(spec, CPU, ScoringSettings()).score([CONTEXT] * len(ITEMS), ITEMS)
    quantised = PairScorer.from_spec(spec, CPU, ScoringSettings(quantize_int8=True))
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in quantised.model.modules())
    assert np.corrcoef(quantised.score([CONTEXT] * len(ITEMS), ITEMS), exact)[0, 1] > 0.95
