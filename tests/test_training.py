import copy
import datetime as dt
import json
import math
import re
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from test_ranking import CANDIDATES, EVENTS, ITEMS, RUN_DATE, TOP_K, expected_scores
from tiny_reranker import build_tiny_artifact, register_tiny_version

from llmrank_spark.config import Config, RerankConfig, TrainConfig
from llmrank_spark.lakehouse import frame_from_pandas, write_table
from llmrank_spark.rerank import (
    MANIFEST_FILE,
    FusionHead,
    PairScorer,
    ScoringSettings,
    cross_encoder_spec,
    fused_scores,
    load_artifact,
    read_manifest,
    retrieval_features,
    save_artifact,
)
from llmrank_spark.text import NEW_SHOPPER_CONTEXT
from llmrank_spark.training import (
    REGISTERED,
    FusionRanker,
    artifact_dir,
    distributor_mode,
    event_grades,
    fit,
    fit_with_distributor,
    freeze_lower_layers,
    history_before,
    initial_model,
    list_ndcg,
    newest_version,
    optimizer_for,
    ranking_loss,
    sample_lists,
    score_lists,
    target_contexts,
    training_scorer,
)

TS = pd.Timestamp("2026-11-01 12:00")


CATEGORIES = ITEMS.set_index("item_id")["category"]


def timeline() -> tuple[pd.DataFrame, pd.DataFrame]:
    """u1 acts on i0..i4 a minute apart, with i5 in the same second as the target i3 and a view of i3
    half a minute in (its funnel's first step); u2 once, later."""
    events = pd.DataFrame(
        {
            "user_id": ["u1"] * 6 + ["u2", "u1"],
            "item_id": ["i0", "i1", "i2", "i3", "i5", "i4", "i6", "i3"],
            "event_type": ["view", "click", "add_to_cart", "purchase", "view", "view", "view", "view"],
            "event_ts": [TS + pd.Timedelta(minutes=m) for m in (0, 1, 2, 3, 3, 4)]
            + [TS, TS + pd.Timedelta(seconds=30)],
            "value": np.nan,
        }
    )
    targets = pd.DataFrame(
        {
            "list_id": ["a", "b", "c"],
            "user_id": ["u1", "u1", "u2"],
            "item_id": ["i3", "i1", "i6"],
            "event_ts": [TS + pd.Timedelta(minutes=3), TS + pd.Timedelta(minutes=1), TS],
        }
    )
    return events, targets


def test_list_contexts_hold_only_events_strictly_before_the_target_on_other_items():
    events, targets = timeline()
    history = history_before(events, targets)
    when = targets.set_index("list_id")["event_ts"]
    assert (history["event_ts"] < history["list_id"].map(when)).all()
    assert sorted(history.loc[history["list_id"] == "a", "item_id"]) == ["i0", "i1", "i2"]
    assert sorted(history.loc[history["list_id"] == "b", "item_id"]) == ["i0", "i3"]
    assert "c" not in set(history["list_id"])  # u2 has no earlier event

    cfg = RerankConfig(context_template="{title}", context_items=10)
    contexts = target_contexts(events, ITEMS, targets, cfg)
    titles = ITEMS.set_index("item_id")["title"]
    # The target itself (its earlier view included), the event in its same second (i5) and the later
    # one (i4) never leak in.
    for leaked in ("i3", "i4", "i5"):
        assert titles[leaked] not in contexts.iloc[0]
    assert contexts.iloc[0].endswith(titles["i0"]) and titles["i2"] in contexts.iloc[0]
    assert contexts.iloc[1].endswith(titles["i0"]) and titles["i1"] not in contexts.iloc[1]
    assert contexts.iloc[2] == NEW_SHOPPER_CONTEXT

    # With a user template, each list's context starts with its user's text, as served.
    users = pd.DataFrame({"user_id": ["u1", "u2"], "segment": ["eco", "tech"]})
    stated = target_contexts(
        events, ITEMS, targets, cfg.model_copy(update={"user_template": "{segment}"}), users
    )
    assert stated.tolist() == [
        "eco. " + contexts.iloc[0],
        "eco. " + contexts.iloc[1],
        "tech. " + NEW_SHOPPER_CONTEXT,
    ]


def test_grades_follow_event_type_or_rating():
    events = pd.DataFrame(
        {
            "user_id": "u",
            "event_type": ["view", "click", "add_to_cart", "purchase", "rating", "rating"],
            "value": [np.nan, np.nan, np.nan, np.nan, 5.0, 2.0],
        }
    )
    grades = event_grades(events, TrainConfig()).tolist()
    assert grades[:4] == sorted(grades[:4]) and len(set(grades[:4])) == 4 and grades[3] == 1.0
    assert grades[4:] == [1.0, 0.4]
    with pytest.raises(ValueError, match="event_type 'wishlist' of user 'u' has no grade"):
        event_grades(pd.DataFrame({"user_id": ["u"], "event_type": ["wishlist"]}), TrainConfig())


def test_lists_mix_hard_and_random_negatives_the_user_never_touched():
    events, targets = timeline()
    targets = targets.assign(label=[1.0, 0.5, 0.25])
    candidates = pd.DataFrame({"request_id": ["u1", "u1", "u1"], "item_id": ["i2", "i6", "i7"]})
    cfg = TrainConfig(list_size=3, hard_negatives=1)
    lists = sample_lists(targets, candidates, events, CATEGORIES, cfg, np.random.default_rng(0))

    assert lists.groupby("list_id").size().tolist() == [3, 3, 3]
    first = lists.groupby("list_id").head(1)
    assert first["item_id"].tolist() == ["i3", "i1", "i6"] and first["label"].tolist() == [1.0, 0.5, 0.25]
    negatives = lists.drop(first.index)
    assert (negatives["label"] == 0).all()
    touched = events.groupby("user_id")["item_id"].agg(set)
    user_of = targets.set_index("list_id")["user_id"]
    for row in negatives.itertuples():
        assert row.item_id not in touched[user_of[row.list_id]]
    # u1 has touched all but i6 and i7, so its lists hold both (one hard, one random); i2 is never a negative.
    assert {"i6", "i7"} <= set(negatives.loc[negatives["list_id"] == "a", "item_id"])


def test_category_negatives_come_from_the_target_category_then_the_catalogue():
    events, targets = timeline()
    targets = targets.assign(label=1.0)
    # u2's target i6 shares "Home" with i2, i4 and i7; u1's targets have no untouched item in their category.
    categories = CATEGORIES.mask(CATEGORIES.index.isin(["i2", "i4", "i7"]), "Home")
    cfg = TrainConfig(list_size=3, hard_negatives=0, category_negatives=2)
    no_candidates = pd.DataFrame(columns=["request_id", "item_id"])
    lists = sample_lists(targets, no_candidates, events, categories, cfg, np.random.default_rng(0))

    negatives = lists[lists["label"] == 0].groupby("list_id")["item_id"].agg(set)
    assert len(negatives["c"]) == 2 and negatives["c"] <= {"i2", "i4", "i7"}
    assert negatives["a"] == {"i6", "i7"} and negatives["b"] == {"i6", "i7"}


@pytest.mark.parametrize("power", [0.0, 1.0, 2.0])
def test_negatives_are_drawn_in_proportion_to_their_events_to_the_popularity_power(power):
    # One category: the target t, and n0 (no events row: 0 events), n1 (1 event), n3 (3 events).
    categories = pd.Series("Home", index=["t", "n0", "n1", "n3"])
    item_events = pd.Series({"t": 50.0, "n1": 1.0, "n3": 3.0})
    n_lists = 4000
    targets = pd.DataFrame(
        {"user_id": "u", "item_id": "t", "list_id": [f"l{k}" for k in range(n_lists)], "label": 1.0}
    )
    cfg = TrainConfig(list_size=2, hard_negatives=0, category_negatives=1, negative_popularity_power=power)
    no_candidates = pd.DataFrame(columns=["request_id", "item_id"])
    touched = pd.DataFrame({"user_id": ["u"], "item_id": ["t"]})
    lists = sample_lists(
        targets, no_candidates, touched, categories, cfg, np.random.default_rng(0), item_events
    )

    shares = lists.loc[lists["label"] == 0, "item_id"].value_counts(normalize=True)
    weights = np.array([1.0, 2.0, 4.0]) ** power  # (1 + events)^power
    expected = pd.Series(weights / weights.sum(), index=["n0", "n1", "n3"])
    # Binomial standard error at 4,000 draws is below 0.008; 0.03 is about four of them.
    assert np.allclose(shares.reindex(expected.index), expected, atol=0.03)


# ---- losses against straightforward references ---------------------------------------------------------

SCORES = torch.tensor([[2.0, 0.5, -1.0, 0.3], [0.1, 1.5, 0.2, -0.4]], requires_grad=True)
LABELS = torch.tensor([[1.0, 0.0, 0.0, 0.5], [0.0, 1.0, 0.0, 0.0]])


def _ordered_pairs():
    for b in range(SCORES.shape[0]):
        for i in range(SCORES.shape[1]):
            for j in range(SCORES.shape[1]):
                if LABELS[b, i] > LABELS[b, j]:
                    yield b, i, j


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


def _lambdaloss_reference(mu: float = 10.0) -> float:
    """NDCGLoss2++ (Wang et al. 2018) written out per list and pair, log base 2, mean over pairs."""
    total, count = 0.0, 0
    for b in range(SCORES.shape[0]):
        s, y = SCORES[b].tolist(), LABELS[b].tolist()
        order = sorted(range(len(s)), key=lambda i: -s[i])
        position = {item: p + 1 for p, item in enumerate(order)}
        ideal = sorted(y, reverse=True)
        max_dcg = sum((2**g - 1) / math.log2(1 + p) for p, g in enumerate(ideal, start=1))
        gain = {i: (2 ** y[i] - 1) / max_dcg for i in range(len(s))}

        def d(p: int) -> float:
            return math.log2(1 + p)

        for i in range(len(s)):
            for j in range(len(s)):
                if y[i] <= y[j]:
                    continue
                pi, pj = position[i], position[j]
                distance = abs(pi - pj)
                delta = abs(1 / d(distance) - 1 / d(distance + 1))
                weight = (mu * delta + abs(1 / d(pi) - 1 / d(pj))) * abs(gain[i] - gain[j])
                total += weight * math.log2(_sigmoid(s[i] - s[j]))
                count += 1
    return -total / count


REFERENCES = {
    # Positives weighted by negatives per positive: 5 negatives and 3 positives in LABELS.
    "bce": lambda: np.mean(
        [
            -(5 / 3 * y * math.log(_sigmoid(s)) + (1 - y) * math.log(1 - _sigmoid(s)))
            for s, y in zip(SCORES.flatten().tolist(), LABELS.flatten().tolist(), strict=True)
        ]
    ),
    "ranknet": lambda: np.mean(
        [-math.log2(_sigmoid((SCORES[b, i] - SCORES[b, j]).item())) for b, i, j in _ordered_pairs()]
    ),
    "hinge": lambda: np.mean(
        [max(0.0, 1 - (SCORES[b, i] - SCORES[b, j]).item()) for b, i, j in _ordered_pairs()]
    ),
    "listnet": lambda: np.mean(
        [
            -(torch.softmax(LABELS[b], 0) * torch.log_softmax(SCORES[b].detach(), 0)).sum().item()
            for b in range(SCORES.shape[0])
        ]
    ),
    "lambdaloss": _lambdaloss_reference,
}


@pytest.mark.parametrize("name", list(REFERENCES))
def test_loss_agrees_with_a_reference_and_has_gradients(name):
    loss = ranking_loss(name)(SCORES, LABELS)
    assert loss.item() == pytest.approx(REFERENCES[name](), rel=1e-5)
    (gradient,) = torch.autograd.grad(loss, SCORES)
    assert torch.isfinite(gradient).all() and gradient.abs().sum() > 0


def test_a_misordered_list_costs_more_under_every_loss():
    good = torch.tensor([[3.0, 0.0, -1.0, 1.0]])
    bad = torch.tensor([[-1.0, 3.0, 2.0, 0.0]])
    labels = LABELS[:1]
    for name in REFERENCES:
        assert ranking_loss(name)(bad, labels) > ranking_loss(name)(good, labels), name


# ---- fusion head ----------------------------------------------------------------------------------------


def test_retrieval_features_and_fused_score():
    rows = pd.DataFrame(
        {
            "source_ranks": [{"als": 1, "covisit": 3}, [("popularity", 7)], None],
            "item_events": [math.e - 1, 0.0, np.nan],
        }
    )
    features = retrieval_features(rows, ["covisit", "als", "popularity", "item_events"])
    np.testing.assert_allclose(features, [[0.5, 1.0, 0.0, 1.0], [0.0, 0.0, 1 / 3, 0.0], [0.0, 0.0, 0.0, 0.0]])
    head = FusionHead(
        features=["covisit", "als", "popularity", "item_events"],
        logit_weight=2.0,
        feature_weights=[1, 2, 3, 0.5],
        bias=-1,
    )
    np.testing.assert_allclose(fused_scores(np.array([0.5, 1.0, -1.0]), features, head), [3.0, 2.0, -3.0])
    np.testing.assert_allclose(fused_scores(np.array([0.5]), features[:1], None), [0.5])


def tiny_with_head(path, head: FusionHead | None, version: str = "tiny-fused-v1"):
    build_tiny_artifact(path, version=version)
    manifest = read_manifest(path).model_copy(update={"fusion_head": head})
    (path / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    return path


HEAD = FusionHead(
    features=["als", "popularity", "item_events"],
    logit_weight=0.5,
    feature_weights=[4.0, -1.0, 0.3],
    bias=0.25,
)


def _lists(n_lists: int, seed: int) -> pd.DataFrame:
    """Lists whose positive is always the candidate ALS ranks first, so the head can learn to rank them."""
    rng = np.random.default_rng(seed)
    rows = []
    for n in range(n_lists):
        items = rng.choice(ITEMS["item_id"].to_numpy(), 4, replace=False)
        for position, item in enumerate(items):
            rows.append(
                {
                    "list_id": f"l{seed}-{n}",
                    "item_id": item,
                    "label": 1.0 if position == 0 else 0.0,
                    "context_text": f"context {n}",
                    "item_text": ITEMS.set_index("item_id").loc[item, "title"],
                    "source_ranks": {"als": 1 if position == 0 else 5 + position},
                }
            )
    return pd.DataFrame(rows)


def cpu_scorer(model: FusionRanker, tokenizer) -> PairScorer:
    """The engine the tests train and score with: the model's encoder on CPU, default settings."""
    return PairScorer(model.encoder, tokenizer, "cross_encoder", torch.device("cpu"), ScoringSettings())


def test_optimizer_moves_layers_classifier_and_head_each_at_its_rate_and_frozen_layers_not(tmp_path):
    """Adam's first step moves every weight that has a gradient by its group's rate (the bias-corrected
    m / sqrt(v) is the gradient's sign), plus AdamW's decay of lr x 0.01 x the weight."""
    artifact = load_artifact(tiny_with_head(tmp_path / "start", None))
    model = FusionRanker(artifact.model, ["als"])
    freeze_lower_layers(model.encoder, 1)
    cfg = TrainConfig(learning_rate=1e-4, classifier_learning_rate=1e-2, head_learning_rate=1e-1)
    optimizer = optimizer_for(model, cfg)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    tokens = artifact.tokenizer(
        ["a shopper"] * 2, ["blue boots", "red mug"], return_tensors="pt", padding=True
    )
    model(dict(tokens), torch.tensor([[1.0], [3.0]])).sum().backward()
    optimizer.step()

    moved = {name: (p.detach() - before[name]).abs().max().item() for name, p in model.named_parameters()}
    assert moved["encoder.classifier.weight"] == pytest.approx(1e-2, rel=0.05)
    assert moved["encoder.bert.encoder.layer.1.output.dense.weight"] == pytest.approx(1e-4, rel=0.05)
    assert moved["head.weight"] == pytest.approx(1e-1, rel=0.05)
    assert moved["encoder.bert.encoder.layer.0.output.dense.weight"] == 0.0
    assert moved["encoder.bert.embeddings.word_embeddings.weight"] == 0.0
    # Unset, the classifier learns at the encoder's rate, as it did before it had its own.
    assert optimizer_for(model, TrainConfig(learning_rate=3e-5)).param_groups[1]["lr"] == 3e-5


def test_fit_learns_and_keeps_the_best_validated_weights(tmp_path):
    artifact = load_artifact(tiny_with_head(tmp_path / "start", None))
    model = FusionRanker(artifact.model, ["als", "popularity"])
    scorer = cpu_scorer(model, artifact.tokenizer)
    train, validation = _lists(24, seed=1), _lists(8, seed=2)
    cfg = TrainConfig(
        loss="listnet", batch_lists=4, epochs=3, eval_every_steps=3, patience=3, head_learning_rate=0.2
    )

    before = list_ndcg(validation, score_lists(model, scorer, validation))
    result = fit(model, scorer, train, validation, cfg)
    after = list_ndcg(validation, score_lists(model, scorer, validation))
    assert after == pytest.approx(result.best_ndcg) and result.best_ndcg == max(
        v for _, v in result.evaluations
    )
    assert after > before + 0.2
    assert model.head_spec().feature_weights[0] > 0  # the ALS feature earned a positive weight


def test_fit_validates_the_steps_after_its_last_scheduled_evaluation(tmp_path):
    """24 lists of 4 per step make 6 steps; evaluated every 4, the last 2 steps are validated at the end
    rather than discarded with the weights they trained."""
    artifact = load_artifact(tiny_with_head(tmp_path / "start", None))
    model = FusionRanker(artifact.model, ["als", "popularity"])
    scorer = cpu_scorer(model, artifact.tokenizer)
    cfg = TrainConfig(loss="ranknet", batch_lists=4, eval_every_steps=4, patience=5, head_learning_rate=0.2)

    result = fit(model, scorer, _lists(24, seed=1), _lists(8, seed=2), cfg)

    assert [s for s, _ in result.evaluations] == [0, 4, 6]
    assert result.best_ndcg == max(v for _, v in result.evaluations)


def test_torch_distributor_on_two_cpu_processes_trains_as_one_process_on_their_joint_batches(spark, tmp_path):
    """train.distributor_processes=2 runs `fit` in two gloo processes under Spark's TorchDistributor (local
    mode, CPU), each on half of every step's lists. DistributedDataParallel averages their gradients, so
    it must learn what one process learns from batches of both halves: the same validation NDCGs, the same
    early-stopping step, the same weights. Dropout is off so that nothing else tells the runs apart."""
    start = tiny_with_head(tmp_path / "start", None)
    encoder_config = json.loads((start / "config.json").read_text())
    encoder_config.update(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    (start / "config.json").write_text(json.dumps(encoder_config))
    artifact = load_artifact(start)
    train, validation = _lists(24, seed=1), _lists(8, seed=2)
    cfg = TrainConfig(
        loss="listnet",
        batch_lists=2,
        epochs=2,
        eval_every_steps=2,
        patience=3,
        head_learning_rate=0.2,
        threads=1,
        distributor_processes=2,
    )

    distributed = FusionRanker(copy.deepcopy(artifact.model), ["als", "popularity"])
    result = fit_with_distributor(spark, distributed, artifact.tokenizer, train, validation, cfg)

    single = FusionRanker(copy.deepcopy(artifact.model), ["als", "popularity"])
    scorer = cpu_scorer(single, artifact.tokenizer)
    before = list_ndcg(validation, score_lists(single, scorer, validation))
    joint = cfg.model_copy(update={"batch_lists": 4, "distributor_processes": 0})
    expected = fit(single, scorer, train, validation, joint)

    assert result.steps == expected.steps > 0 and result.best_ndcg > before + 0.2
    assert [s for s, _ in result.evaluations] == [s for s, _ in expected.evaluations]
    assert [v for _, v in result.evaluations] == pytest.approx([v for _, v in expected.evaluations], abs=1e-6)
    # ListNet cannot see a shift of all a list's scores, nor softmax attention a shift of all its keys: the
    # biases below have no gradient in exact arithmetic, and Adam, which divides by a gradient's size,
    # turns each run's rounding noise in them into full steps. Every other tensor must agree.
    shift_only = re.compile(r"key\.bias$|^encoder\.classifier\.bias$|^head\.bias$")
    trained, reference = distributed.state_dict(), single.state_dict()
    assert sum(bool(shift_only.search(name)) for name in reference) == 4  # 2 layers' keys, 2 output biases
    for name, tensor in reference.items():
        if not shift_only.search(name):
            torch.testing.assert_close(trained[name], tensor, rtol=1e-4, atol=1e-6, msg=name)
    # The driver's model holds rank 0's best weights, as after `fit`, ready for save_artifact.
    served = cpu_scorer(distributed, artifact.tokenizer)
    assert list_ndcg(validation, score_lists(distributed, served, validation)) == pytest.approx(
        result.best_ndcg
    )


@pytest.mark.parametrize(
    ("conf", "expected"),
    [
        ({"spark.master": "local[2]"}, (True, False)),
        ({"spark.master": "local[*]", "spark.driver.resource.gpu.amount": "4"}, (True, True)),
        ({"spark.master": "yarn"}, (False, False)),
        ({"spark.master": "k8s://https://api:6443", "spark.task.resource.gpu.amount": "1"}, (False, True)),
    ],
)
def test_distributor_mode_follows_the_spark_master_and_its_gpus(conf, expected):
    session = SimpleNamespace(conf=SimpleNamespace(get=lambda key, default=None: conf.get(key, default)))
    assert distributor_mode(session) == expected


def test_distributor_mode_refuses_a_shared_gpu_on_a_cluster():
    conf = {"spark.master": "yarn", "spark.task.resource.gpu.amount": "0.25"}
    session = SimpleNamespace(conf=SimpleNamespace(get=lambda key, default=None: conf.get(key, default)))
    with pytest.raises(ValueError, match=r"spark.task.resource.gpu.amount is 0.25: .* needs a whole GPU"):
        distributor_mode(session)


def _popular_negative_lists(n_lists: int, seed: int) -> pd.DataFrame:
    """Lists of the MovieLens benchmark's shape: the positive is ALS's first pick, 3 hard negatives come
    lower in the ALS list but are far more popular, 4 random ones are neither. ALS alone ranks every list
    right; popularity (item_events, a log count on a wider range than a rank feature) ranks it wrong."""
    rng = np.random.default_rng(seed)
    titles = ITEMS.set_index("item_id")["title"]
    rows = []
    for n in range(n_lists):
        for position, item in enumerate(rng.choice(ITEMS["item_id"].to_numpy(), 8, replace=False)):
            hard = 1 <= position <= 3
            rows.append(
                {
                    "list_id": f"p{seed}-{n}",
                    "item_id": item,
                    "label": 1.0 if position == 0 else 0.0,
                    "context_text": f"context {n}",
                    "item_text": titles[item],
                    "source_ranks": {"als": 4 + position} if hard else ({"als": 1} if position == 0 else {}),
                    "item_events": 50.0 if position == 0 else 400.0 if hard else 2.0,
                }
            )
    return pd.DataFrame(rows)


@pytest.mark.parametrize("name", list(REFERENCES))
def test_every_loss_learns_the_predictive_feature_over_a_wider_misleading_one(name, tmp_path):
    """AdamW steps each head weight by about the learning rate: on raw features the ranknet, hinge and
    lambdaloss heads gave item_events the same weight as ALS, so popular hard negatives outranked the
    positive; unbalanced BCE pushed both weights below 0. The benchmark's four flat losses, in miniature."""
    artifact = load_artifact(tiny_with_head(tmp_path / "start", None))
    model = FusionRanker(artifact.model, ["als", "item_events"])
    scorer = cpu_scorer(model, artifact.tokenizer)
    train, validation = _popular_negative_lists(24, seed=1), _popular_negative_lists(8, seed=2)
    cfg = TrainConfig(
        loss=name, batch_lists=4, epochs=2, eval_every_steps=3, patience=4, head_learning_rate=0.05
    )

    before = list_ndcg(validation, score_lists(model, scorer, validation))
    torch.manual_seed(0)  # dropout: the same steps, hence the same kept weights, on every run
    result = fit(model, scorer, train, validation, cfg)
    assert result.steps > 0 and result.best_ndcg > before
    # The kept head alone (the tiny model's logit is noise) puts every validation positive first.
    head = model.head_spec()
    by_features = fused_scores(np.zeros(len(validation)), retrieval_features(validation, head.features), head)
    assert list_ndcg(validation, by_features) == pytest.approx(1.0)


def test_feature_scaling_leaves_the_served_score_unchanged(tmp_path):
    """`fit` rescales what the head reads; the trained forward and the served `fused_scores` of the
    exported head must still both give the warm-start head's score."""
    artifact = load_artifact(tiny_with_head(tmp_path / "start", None))
    model = FusionRanker(artifact.model, HEAD.features, HEAD).eval()
    scorer = cpu_scorer(model, artifact.tokenizer)
    lists = _popular_negative_lists(2, seed=3)
    texts = lists["context_text"].tolist(), lists["item_text"].tolist()
    features = retrieval_features(lists, HEAD.features)
    served = fused_scores(scorer.score(*texts), features, HEAD)

    model.scale_features(features)
    assert model.feature_scale.tolist() == pytest.approx([1.0, 1.0, math.log1p(400.0)])  # popularity: none
    inputs = scorer.model_inputs(scorer.encode_pairs(*texts), np.arange(len(lists)))
    with torch.no_grad():
        trained = model(inputs, torch.from_numpy(features)).numpy()
    exported = fused_scores(scorer.score(*texts), features, model.head_spec())
    np.testing.assert_allclose(trained, served, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(exported, served, rtol=1e-5, atol=1e-5)


def test_warm_start_loads_the_newest_registered_version(tmp_path):
    config = Config.model_validate({"lakehouse": {"root": str(tmp_path / "lakehouse")}})
    assert newest_version(config) is None
    old = tiny_with_head(tmp_path / "v1", None, version="v1")
    new = tiny_with_head(tmp_path / "v2", HEAD, version="v2")
    for path in (old, new):
        register_tiny_version(config, path, REGISTERED)

    newest = newest_version(config)
    assert newest is not None and str(newest.version) == "2"
    warm_from = artifact_dir(config, newest)  # the registry's copy, logged with the MLflow run
    assert warm_from != str(new) and read_manifest(warm_from).version == "v2"
    model, started_from = initial_model(warm_from, HEAD.features)
    head = model.head_spec()  # round-tripped through float32 tensors
    assert started_from == "v2" and head.features == HEAD.features
    assert [head.logit_weight, *head.feature_weights, head.bias] == pytest.approx(
        [HEAD.logit_weight, *HEAD.feature_weights, HEAD.bias]
    )
    saved = load_artifact(new).model.state_dict()
    for name, tensor in model.encoder.state_dict().items():
        assert torch.equal(tensor, saved[name]), name
    # A head over other features cannot be reused: it starts as the identity on the logit.
    fresh, _ = initial_model(warm_from, ["covisit"])
    assert fresh.head_spec().logit_weight == 1.0 and fresh.head_spec().feature_weights == [0.0]


def test_rerank_serves_the_newest_registered_version_with_its_fusion_head(spark, config, tmp_path):
    """rerank.mode=cross_encoder without model_path picks the registry's newest version, and its head
    fuses the logit with the candidate row's features exactly as `fused_scores` does."""
    from llmrank_spark.pipeline import steps

    path = tiny_with_head(tmp_path / "registered", HEAD, version="registered-v1")
    register_tiny_version(config, path, REGISTERED)
    for table, frame in (("candidates", CANDIDATES), ("items", ITEMS), ("interactions", EVENTS)):
        write_table(frame_from_pandas(spark, frame, table), config, table, RUN_DATE)
    assert config.run.run_date == RUN_DATE
    rerank_cfg = config.rerank.model_copy(
        update={"mode": "cross_encoder", "top_k": TOP_K, "micro_batch_size": 4}
    )
    steps.rerank(spark, config.model_copy(update={"rerank": rerank_cfg}))
    ranked = spark.read.format("delta").load(config.table_path("ranked")).toPandas()
    assert set(ranked["model_version"]) == {"registered-v1"}

    expected = expected_scores(rerank_cfg.model_copy(update={"model_path": str(path)}))
    # Item popularity as of the run date: u1's event after it does not count.
    counts = EVENTS[EVENTS["event_ts"] < pd.Timestamp(RUN_DATE + dt.timedelta(days=1))][
        "item_id"
    ].value_counts()
    expected["item_events"] = expected["item_id"].map(counts).fillna(0.0)
    expected["score"] = fused_scores(
        expected["score"].to_numpy(), retrieval_features(expected, HEAD.features), HEAD
    )
    merged = ranked.merge(expected, on=["request_id", "item_id"], suffixes=("", "_direct"))
    assert len(merged) == TOP_K * 3
    np.testing.assert_allclose(merged["score"], merged["score_direct"], atol=1e-4)
    # The model order (the fairness pass may re-order `rank` after it).
    for request, rows in ranked.sort_values("model_rank").groupby("request_id"):
        best = expected[expected["request_id"] == request].nlargest(TOP_K, "score")
        assert rows["item_id"].tolist() == best["item_id"].tolist()


def test_every_configurable_loss_is_registered_and_nothing_else():
    from llmrank_spark.config import TRAIN_LOSSES
    from llmrank_spark.training.losses import LOSSES

    assert set(LOSSES) == set(TRAIN_LOSSES)
    with pytest.raises(ValueError, match=r"unknown train\.loss 'nope'"):
        ranking_loss("nope")


def _text_lists(n_lists: int, seed: int) -> pd.DataFrame:
    """Lists whose positive is the one item sold as a bestseller: only the text tells it apart."""
    rng = np.random.default_rng(seed)
    colours = ["red", "blue", "green", "black", "white", "orange"]
    rows = []
    for n in range(n_lists):
        shown = rng.choice(colours, 4, replace=False)
        for position, colour in enumerate(shown):
            rows.append(
                {
                    "list_id": f"t{seed}-{n}",
                    "item_id": f"{colour}-{n}",
                    "label": 1.0 if position == 0 else 0.0,
                    "context_text": f"Recently viewed: {shown[0]} shoes, {shown[0]} hat",
                    "item_text": f"{colour} boot" + (", a bestseller" if position == 0 else ""),
                    "source_ranks": None,
                }
            )
    return pd.DataFrame(rows)


# late_context's tiny model has one joined layer of its two, where the context meets the item: it learns
# the text at a gentler rate.
@pytest.mark.parametrize(
    ("architecture", "learning_rate"), [("shared_context", 3e-3), ("late_context", 1e-3)]
)
def test_shared_context_trains_on_text_and_is_served_as_trained(tmp_path, architecture, learning_rate):
    """The shared-context architectures learn from the text alone with a listwise loss over each list (one
    chunk), and the saved artifact records theirs, so it is served exactly as it was validated (under
    late_context, training reads each row's item alone where serving reuses one reading per item)."""
    artifact = load_artifact(tiny_with_head(tmp_path / "start", None))
    model = FusionRanker(artifact.model, [], architecture=architecture)
    cfg = TrainConfig(
        loss="listnet",
        batch_lists=4,
        epochs=3,
        eval_every_steps=8,
        patience=4,
        max_length=32,
        learning_rate=learning_rate,
    )
    scorer = training_scorer(model, artifact.tokenizer, cfg, torch.device("cpu"))
    train, validation = _text_lists(64, seed=1), _text_lists(16, seed=2)
    before = list_ndcg(validation, score_lists(model, scorer, validation))

    result = fit(model, scorer, train, validation, cfg)

    assert result.best_ndcg > max(before + 0.2, 0.9)
    manifest = read_manifest(tmp_path / "start").model_copy(
        update={"version": f"tiny-{architecture}-v1", "architecture": architecture, "max_length": 32}
    )
    saved = save_artifact(model.encoder, artifact.tokenizer, tmp_path / "trained", manifest)
    spec = cross_encoder_spec(str(saved))
    served = PairScorer.from_spec(spec, torch.device("cpu"), ScoringSettings(max_length=32))
    texts = validation["context_text"].tolist(), validation["item_text"].tolist()
    np.testing.assert_allclose(served.score(*texts), scorer.score(*texts), atol=1e-5)


def test_fit_stops_at_the_first_validation_after_its_time_budget(tmp_path):
    artifact = load_artifact(tiny_with_head(tmp_path / "start", None))
    model = FusionRanker(artifact.model, ["als", "popularity"])
    scorer = cpu_scorer(model, artifact.tokenizer)
    cfg = TrainConfig(
        loss="ranknet", batch_lists=4, epochs=3, eval_every_steps=2, patience=10, max_seconds=1e-6
    )

    result = fit(model, scorer, _lists(24, seed=1), _lists(8, seed=2), cfg)

    # Without a budget, 3 epochs of 6 steps; with one already spent, it stops at the first validation.
    assert [s for s, _ in result.evaluations] == [0, 2]


def test_only_a_hashed_sample_of_target_users_the_caps_can_use_is_collected(spark):
    from llmrank_spark.training.extract import sampled_targets, users_to_collect

    targets = spark.createDataFrame(
        pd.DataFrame({"user_id": [f"u{n}" for n in range(5000) for _ in range(3)], "item_id": "i"})
    )
    caps = {"max_train_lists": 30, "max_validation_lists": 10, "max_fusion_lists": 10}
    cfg = TrainConfig(**caps, lists_per_user=4, fusion_user_share=0.5)
    # BERT's 10 users (30 lists / 3 per user, 10 validation lists) over half the users, the fusion's 10
    # over the other half, twice over.
    assert users_to_collect(cfg) == 40
    kept = sampled_targets(targets, cfg).toPandas()
    per_user = kept.groupby("user_id").size()
    assert 20 <= len(per_user) <= 80 and (per_user == 3).all(), "about 40 users, each with every target"
    again = sampled_targets(targets, cfg).toPandas()
    assert sorted(again.user_id.unique()) == sorted(per_user.index), "the same users on every run"
    # Fewer users than the caps can use: every target stays.
    assert sampled_targets(targets, TrainConfig(max_fusion_lists=5000)).count() == 15000
