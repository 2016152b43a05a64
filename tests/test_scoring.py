import numpy as np
import pandas as pd
import pytest
import torch
from tiny_reranker import tiny_artifact

from llmrank_spark.rerank import (
    ModelSpec,
    PairScorer,
    ScoringSettings,
    cached_scorer,
    cross_encoder_spec,
    load_artifact,
    load_sentence_encoder,
    scoring_udf,
    ship_model,
    task_device,
    zero_shot_spec,
)

CONTEXTS = ["Recently viewed: Red Shoe (Shoes, Acme); Blue Hat (Hats, Zed)"] * 5 + [
    "new shopper with no history yet"
] * 4
ITEMS = [
    "Trail Runner. Brand: Acme. Category: Shoes. color: red, size: 42",
    "Wool Beanie. Brand: Zed. Category: Hats.",
    "x",
    "Leather Belt. Brand: Bolt. Category: Accessories. " + "handmade in small batches " * 10,
    "Wool Beanie. Brand: Zed. Category: Hats.",
    "Trail Runner. Brand: Acme. Category: Shoes. color: red, size: 42",
    "Garden Hose. Brand: Flow. Category: Garden.",
    "y z",
    "Canvas Tote. Brand: unknown. Category: Bags.",
]
CPU = torch.device("cpu")


def direct_scores(contexts: list[str], items: list[str], max_length: int = 128) -> np.ndarray:
    """The reference: the tiny model run pair by pair on the tokenizer's own encoding, no engine involved."""
    artifact = load_artifact(tiny_artifact())
    with torch.inference_mode():
        return np.array(
            [
                artifact.model(
                    **artifact.tokenizer(c, i, truncation=True, max_length=max_length, return_tensors="pt")
                )
                .logits[0, 0]
                .item()
                for c, i in zip(contexts, items, strict=True)
            ]
        )


def tiny_scorer(**settings) -> PairScorer:
    return PairScorer.from_spec(cross_encoder_spec(str(tiny_artifact())), CPU, ScoringSettings(**settings))


def test_engine_scores_equal_direct_model_scores_whatever_the_micro_batch():
    expected = direct_scores(CONTEXTS, ITEMS)
    assert np.ptp(expected) > 0.5  # the tiny model separates pairs, so a misaligned score would show
    for size in (1, 3, 64):
        np.testing.assert_allclose(
            tiny_scorer(micro_batch_size=size).score(CONTEXTS, ITEMS), expected, atol=1e-5
        )


def test_hand_built_inputs_equal_the_tokenizer_encoding_of_each_pair():
    scorer = tiny_scorer()
    inputs = scorer.model_inputs(scorer.encode_pairs(CONTEXTS, ITEMS), np.arange(len(ITEMS)))
    for row, (context, item) in enumerate(zip(CONTEXTS, ITEMS, strict=True)):
        expected = scorer.tokenizer(context, item)
        width = len(expected["input_ids"])
        assert inputs["input_ids"][row, :width].tolist() == expected["input_ids"]
        assert inputs["token_type_ids"][row, :width].tolist() == expected["token_type_ids"]
        assert inputs["attention_mask"][row].sum().item() == width
    # Dynamic padding: the batch is as wide as its longest pair, not max_length.
    assert inputs["input_ids"].shape[1] == max(
        len(scorer.tokenizer(c, i)["input_ids"]) for c, i in zip(CONTEXTS, ITEMS, strict=True)
    )
    assert inputs["input_ids"].shape[1] < 128


def test_token_budget_cuts_the_context_first_and_keeps_the_item():
    scorer = tiny_scorer(max_length=32)
    context = "Recently viewed: " + "; ".join(f"item number {n} (category {n})" for n in range(30))
    item = "Trail Runner. Brand: Acme."
    inputs = scorer.model_inputs(scorer.encode_pairs([context], [item]), np.arange(1))
    ids = inputs["input_ids"][0].tolist()
    assert len(ids) == 32
    item_ids = scorer.tokenizer(item, add_special_tokens=False)["input_ids"]
    assert ids[-len(item_ids) - 1 : -1] == item_ids  # the item is whole
    assert (
        ids[1:5] == scorer.tokenizer(context, add_special_tokens=False)["input_ids"][:4]
    )  # context kept from its start


def test_int8_quantisation_quantises_linears_and_keeps_the_ranking_signal():
    scorer = tiny_scorer(quantize_int8=True)
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in scorer.model.modules())
    quantised = scorer.score(CONTEXTS, ITEMS)
    assert np.corrcoef(quantised, direct_scores(CONTEXTS, ITEMS))[0, 1] > 0.95


def test_device_is_the_cpu_unless_spark_assigned_a_gpu_or_config_forces_one():
    assert task_device("cpu") == CPU
    assert task_device("auto") == CPU  # no Spark task here, so no GPU was assigned


def test_worker_cache_reuses_a_model_and_picks_up_a_new_version():
    spec = cross_encoder_spec(str(tiny_artifact()))
    settings = ScoringSettings()
    assert cached_scorer(spec, CPU, settings) is cached_scorer(spec, CPU, settings)
    newer = ModelSpec(spec.kind, "tiny-test-v2", spec.path)
    assert cached_scorer(newer, CPU, settings) is not cached_scorer(spec, CPU, settings)


@pytest.mark.slow
def test_zero_shot_bi_encoder_equals_sentence_transformers_cosine():
    scorer = PairScorer.from_spec(zero_shot_spec(), CPU, ScoringSettings(micro_batch_size=4))
    encoder = load_sentence_encoder("cpu")
    left, right = (encoder.encode(texts, normalize_embeddings=True) for texts in (CONTEXTS, ITEMS))
    np.testing.assert_allclose(scorer.score(CONTEXTS, ITEMS), (left * right).sum(axis=1), atol=1e-4)


def test_udf_scores_equal_direct_model_scores(spark):
    spec = cross_encoder_spec(str(tiny_artifact()))
    score = scoring_udf(ship_model(spark, spec), ScoringSettings(micro_batch_size=4, device="cpu"))
    pairs = spark.createDataFrame(
        pd.DataFrame({"pair": range(len(ITEMS)), "context_text": CONTEXTS, "item_text": ITEMS})
    )
    scored = pairs.repartition(2).withColumn("score", score("context_text", "item_text")).toPandas()
    scored = scored.sort_values("pair")
    np.testing.assert_allclose(scored["score"].to_numpy(), direct_scores(CONTEXTS, ITEMS), atol=1e-4)


cuda_only = pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU (torch.cuda.is_available() is False)"
)


@cuda_only
def test_gpu_fp32_scores_equal_cpu_scores():
    spec = cross_encoder_spec(str(tiny_artifact()))
    gpu = PairScorer.from_spec(
        spec, torch.device("cuda"), ScoringSettings(precision="fp32", micro_batch_size=3)
    )
    np.testing.assert_allclose(gpu.score(CONTEXTS, ITEMS), direct_scores(CONTEXTS, ITEMS), atol=1e-4)


@cuda_only
def test_gpu_autocast_keeps_scores_close_and_forced_cuda_device_is_used():
    spec = cross_encoder_spec(str(tiny_artifact()))
    device = task_device("cuda")
    assert device.type == "cuda"
    scorer = PairScorer.from_spec(spec, device, ScoringSettings(precision="auto", micro_batch_size=4))
    assert scorer.dtype in (torch.bfloat16, torch.float16)
    np.testing.assert_allclose(scorer.score(CONTEXTS, ITEMS), direct_scores(CONTEXTS, ITEMS), atol=0.1)
