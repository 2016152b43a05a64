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
from llmrank_spark.rerank.scorer import encoder_logits
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


SHARED = ["shared_context", "late_context"]


def shared_scorer(architecture: str = "shared_context", **settings) -> PairScorer:
    spec = cross_encoder_spec(str(tiny_artifact(architecture)))
    assert spec.architecture == architecture  # read from the artifact's reranker.json
    return PairScorer.from_spec(spec, CPU, ScoringSettings(**settings))


def literal_mask_scores(
    context: str, items: list[str], architecture: str, layer_by_layer: bool = True
) -> np.ndarray:
    """The reference: HF BERT's own layers on the literal sequence [CLS] context [SEP] item_1 [SEP] ...,
    with block attention masks and position ids built here, no engine involved. Each item attends to the
    context and itself; under late_context, to itself only in the first half of the layers, with
    positions from 1 as if read alone. Without `layer_by_layer`, BertModel itself runs the one mask."""
    artifact = load_artifact(tiny_artifact(architecture))
    tokenizer, model = artifact.tokenizer, artifact.model
    ids = [tokenizer.cls_token_id, *tokenizer(context, add_special_tokens=False)["input_ids"]]
    ids.append(tokenizer.sep_token_id)
    after_context = len(ids)
    item_first = 1 if architecture == "late_context" else after_context
    positions, types, spans = list(range(after_context)), [0] * after_context, []
    for item in items:
        item_ids = [*tokenizer(item, add_special_tokens=False)["input_ids"], tokenizer.sep_token_id]
        spans.append((len(ids), len(ids) + len(item_ids)))
        ids += item_ids
        positions += range(item_first, item_first + len(item_ids))
        types += [1] * len(item_ids)
    alone = torch.zeros(len(ids), len(ids), dtype=torch.bool)
    alone[:after_context, :after_context] = True
    for start, end in spans:
        alone[start:end, start:end] = True
    joined = alone.clone()
    for start, end in spans:
        joined[start:end, :after_context] = True
    layers = model.bert.encoder.layer
    alone_layers = len(layers) // 2 if architecture == "late_context" else 0
    inputs = {
        "input_ids": torch.tensor([ids]),
        "token_type_ids": torch.tensor([types]),
        "position_ids": torch.tensor([positions]),
    }
    with torch.inference_mode():
        if layer_by_layer:
            hidden = model.bert.embeddings(**inputs)
            for index, layer in enumerate(layers):
                hidden = layer(hidden, attention_mask=(alone if index < alone_layers else joined)[None, None])
        else:
            assert alone_layers == 0, "BertModel runs one mask in every layer"
            hidden = model.bert(**inputs, attention_mask=joined[None, None]).last_hidden_state
        pooled = torch.stack([hidden[0, start:end].mean(0) for start, end in spans])
        pooled = model.bert.pooler.activation(model.bert.pooler.dense(pooled))
        return model.classifier(pooled)[:, 0].numpy()


@pytest.mark.parametrize("architecture", SHARED)
def test_one_pass_over_a_chunk_equals_the_literal_block_mask_and_each_item_alone(architecture):
    scorer = shared_scorer(architecture)
    together = scorer.score([CONTEXT] * len(ITEMS), ITEMS)
    assert np.ptp(together) > 0.5  # the tiny model separates items, so a misaligned score would show
    np.testing.assert_allclose(together, literal_mask_scores(CONTEXT, ITEMS, architecture), atol=1e-5)
    alone = [scorer.score([CONTEXT], [item])[0] for item in ITEMS]
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_the_layer_by_layer_reference_is_bert_models_own_reading():
    """The reference's loop over HF's layers equals BertModel run on the same mask, so with a mask per
    layer (late_context) it is still HF BERT's reading."""
    np.testing.assert_allclose(
        literal_mask_scores(CONTEXT, ITEMS, "shared_context"),
        literal_mask_scores(CONTEXT, ITEMS, "shared_context", layer_by_layer=False),
        atol=1e-5,
    )


@pytest.mark.parametrize("architecture", SHARED)
def test_permuting_a_chunk_permutes_its_scores(architecture):
    scorer = shared_scorer(architecture)
    permutation = np.random.default_rng(3).permutation(len(ITEMS))
    np.testing.assert_allclose(
        scorer.score([CONTEXT] * len(ITEMS), [ITEMS[i] for i in permutation]),
        scorer.score([CONTEXT] * len(ITEMS), ITEMS)[permutation],
        atol=1e-5,
    )


@pytest.mark.parametrize("architecture", SHARED)
def test_an_item_never_changes_another_items_score(architecture):
    scorer = shared_scorer(architecture)
    before = scorer.score([CONTEXT] * len(ITEMS), ITEMS)
    perturbed = [*ITEMS[:2], ITEMS[2] + " now with a much longer text of its own " * 3, *ITEMS[3:]]
    after = scorer.score([CONTEXT] * len(ITEMS), perturbed)
    assert abs(after[2] - before[2]) > 1e-3
    np.testing.assert_allclose(np.delete(after, 2), np.delete(before, 2), atol=1e-5)


@pytest.mark.parametrize("architecture", SHARED)
def test_chunking_a_long_list_gives_the_scores_of_one_long_chunk(architecture):
    rng = np.random.default_rng(0)
    items = [
        " ".join(rng.choice(["red", "shoe", "hat", "acme", "wool", "42", "tote"], rng.integers(1, 9)))
        for _ in range(100)
    ]
    contexts = [CONTEXT] * 60 + ["new shopper with no history yet"] * 40
    # fp32 sums run in another order when a micro-batch pads to another width: within 1e-4 relative.
    one_chunk = shared_scorer(architecture, micro_batch_size=128).score(contexts, items)
    for size in (1, 7, 32):
        np.testing.assert_allclose(
            shared_scorer(architecture, micro_batch_size=size).score(contexts, items),
            one_chunk,
            rtol=1e-4,
            atol=1e-5,
        )


def test_late_context_reads_each_distinct_item_alone_once_per_batch():
    scorer = shared_scorer("late_context", micro_batch_size=2)
    contexts = [CONTEXT] * 4 + ["another shopper"] * 4
    items = ITEMS[:4] + ITEMS[:4]  # each item in two lists
    encoded = scorer.encode_pairs(contexts, items)
    first_row, code, _ = encoded.distinct_items
    assert len(first_row) == 4 and code[:4].tolist() == code[4:].tolist()
    # The scorer's states read once per item equal the training path's, which reads them per row.
    with torch.inference_mode():
        per_row = encoder_logits(scorer.model, scorer.model_inputs(encoded, np.arange(8)), "late_context")
    np.testing.assert_allclose(scorer.score(contexts, items), per_row.numpy(), atol=1e-5)


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


@pytest.mark.parametrize("architecture", ["pair", *SHARED])
def test_int8_path_applies_to_every_architecture(architecture):
    spec = cross_encoder_spec(str(tiny_artifact(architecture)))
    exact = PairScorer.from_spec(spec, CPU, ScoringSettings()).score([CONTEXT] * len(ITEMS), ITEMS)
    quantised = PairScorer.from_spec(spec, CPU, ScoringSettings(quantize_int8=True))
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in quantised.model.modules())
    assert np.corrcoef(quantised.score([CONTEXT] * len(ITEMS), ITEMS), exact)[0, 1] > 0.95
