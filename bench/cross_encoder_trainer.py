"""Our fine-tuning loop against sentence-transformers' CrossEncoderTrainer: same lists, start, loss and time.

The train step fine-tunes BERT with its own loop (llmrank_spark/training/trainer.py). This bench trains
the same cross-encoder the library's way and measures both, so the choice rests on a figure:

- the lists: the train step's (`training_lists` over the lakehouse of `--config`, the gate's days held
  out as the train step does), users only;
- the start: all-MiniLM-L6-v2 with one freshly initialised 1-logit head, the same weights for both;
- the model: the "pair" architecture ([CLS] context [SEP] item [SEP]), the only one a CrossEncoder can
  read, with no fusion head (the logit alone; the LambdaMART fusion is fitted afterwards either way);
  ours is also run in the default "shared_context" architecture, which the library cannot train;
- the training: `--loss` (sentence-transformers' RankNetLoss, ListNetLoss or LambdaLoss in both), the config's
  learning rate, lists per step, trainable layers, token budget, validation every eval_every_steps
  steps with early stopping after `patience` evaluations, the best weights kept, and a budget of
  `--seconds`: each stops at the first validation after it;
- the library's run: CrossEncoderTrainer with CrossEncoderTrainingArguments (AdamW at our weight decay,
  a constant rate, gradients clipped at 1 as ours), EarlyStoppingCallback and load_best_model_at_end;
  its validation metric is the same graded NDCG@10 of the validation lists as ours (`ListNDCG`).

Printed per loop: steps, seconds, the best step, NDCG@10 of the logit on the validation lists and on
the fusion lists (users BERT never trains on), the change of the latter against the library's with a
95% bootstrap interval over the lists, and scoring pairs/s.

  python bench/cross_encoder_trainer.py --config conf/demo.yaml --seconds 300 --loss listnet \\
      --set train.max_train_lists=600 --set train.epochs=2
"""

from __future__ import annotations

import argparse
import copy
import tempfile
import time
from collections.abc import Callable

import numpy as np
import pandas as pd
import torch
from pyspark.sql import functions as F

from llmrank_spark.config import load_config
from llmrank_spark.lakehouse.session import get_spark
from llmrank_spark.metrics import relative_change
from llmrank_spark.rerank import Architecture, base_model_dir, load_tokenizer, untrained_cross_encoder
from llmrank_spark.retrieval import item_vectors
from llmrank_spark.training import training_end
from llmrank_spark.training.extract import training_lists
from llmrank_spark.training.lists import LABEL, LIST
from llmrank_spark.training.losses import CROSS_ENCODER_LOSSES
from llmrank_spark.training.network import FusionRanker, freeze_lower_layers
from llmrank_spark.training.trainer import fit, list_ndcg, per_list_ndcg, training_scorer

# Ours in both architectures: the library's CrossEncoder reads pairs only, and the shared context is the
# default because it scores 2.4 to 2.7 times faster.
ARCHITECTURES: tuple[Architecture, ...] = ("pair", "shared_context")


def lakehouse_lists(config) -> dict[str, pd.DataFrame]:
    """The train step's lists of the lakehouse's users (train, validation, fusion)."""
    spark = get_spark(config)
    tables = {
        name: spark.read.format("delta").load(config.table_path(name))
        for name in ("items", "interactions", "users")
    }
    seen = tables["interactions"].where(F.col("event_ts") < F.lit(training_end(config)))
    vectors = item_vectors(None, tables["items"], config.candidates)
    snapshot = "bench"
    return training_lists(
        spark, tables["items"], seen, tables["users"], config, snapshot, item_vectors=vectors
    )


def first_lists(lists: pd.DataFrame, count: int) -> pd.DataFrame:
    return lists[lists[LIST].isin(lists[LIST].drop_duplicates().iloc[:count])].reset_index(drop=True)


def library_examples(lists: pd.DataFrame) -> dict[str, list]:
    """The lists in the (query, docs, labels) columns the library's list losses read."""
    grouped = lists.groupby(LIST, sort=False)
    return {
        "query": grouped["context_text"].first().tolist(),
        "docs": grouped["item_text"].agg(list).tolist(),
        "labels": grouped[LABEL].agg(lambda labels: [float(x) for x in labels]).tolist(),
    }


def library_scores(model, lists: pd.DataFrame) -> np.ndarray:
    pairs = list(zip(lists["context_text"], lists["item_text"], strict=True))
    return np.asarray(model.predict(pairs, batch_size=64, show_progress_bar=False), dtype=np.float64)


def train_with_library(start_state: dict, built: dict[str, pd.DataFrame], cfg, seconds: float, loss: str):
    """The cross-encoder fine-tuned by CrossEncoderTrainer; returns (model, steps, best step)."""
    from datasets import Dataset
    from sentence_transformers.base.evaluation.evaluator import BaseEvaluator
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
        losses,
    )
    from transformers import EarlyStoppingCallback, TrainerCallback

    class ListNDCG(BaseEvaluator):
        """Graded NDCG@10 of the validation lists, the measure our loop selects its weights by."""

        def __init__(self, lists: pd.DataFrame) -> None:
            super().__init__()
            self.lists = lists
            self.primary_metric = "ndcg@10"

        def __call__(self, model, output_path=None, epoch=-1, steps=-1) -> dict[str, float]:
            ndcg = list_ndcg(self.lists, library_scores(model, self.lists))
            print(f"[library] step {steps}: validation ndcg@10 {ndcg:.4f}", flush=True)
            return {"ndcg@10": ndcg}

    class TimeBudget(TrainerCallback):
        """Stops at the first validation after `seconds`, as our loop's max_seconds does."""

        def on_train_begin(self, args, state, control, **kwargs):
            self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            spent = time.perf_counter() - self.started >= seconds
            if spent and state.global_step % args.eval_steps == 0:
                control.should_training_stop = True

    model = CrossEncoder(
        str(base_model_dir()), num_labels=1, max_length=cfg.max_length, activation_fn=torch.nn.Identity()
    )
    model[0].model.load_state_dict(start_state)
    freeze_lower_layers(model[0].model, cfg.trainable_layers)
    with tempfile.TemporaryDirectory() as checkpoints:
        args = CrossEncoderTrainingArguments(
            output_dir=checkpoints,
            per_device_train_batch_size=cfg.batch_lists,
            num_train_epochs=cfg.epochs,
            learning_rate=cfg.learning_rate,
            weight_decay=0.01,  # torch's AdamW default, which our loop uses
            lr_scheduler_type="constant",
            max_grad_norm=1.0,
            eval_strategy="steps",
            eval_steps=cfg.eval_every_steps,
            save_strategy="steps",
            save_steps=cfg.eval_every_steps,
            save_total_limit=2,
            load_best_model_at_end=True,
            metric_for_best_model="eval_ndcg@10",
            seed=cfg.seed,
            use_cpu=True,
            report_to="none",
            logging_steps=cfg.eval_every_steps,
            disable_tqdm=True,
        )
        trainer = CrossEncoderTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_dict(library_examples(built["train"])),
            loss=getattr(losses, CROSS_ENCODER_LOSSES[loss])(model),
            evaluator=ListNDCG(built["validation"]),
            callbacks=[EarlyStoppingCallback(early_stopping_patience=cfg.patience), TimeBudget()],
        )
        trainer.train()
        best = trainer.state.best_global_step
    return model, trainer.state.global_step, best


def train_ours(
    start_state: dict, built: dict[str, pd.DataFrame], heldout: pd.DataFrame, cfg, architecture: Architecture
) -> dict:
    """Our loop's fine-tuning in `architecture` and its figures (a row of the printed table)."""
    encoder = untrained_cross_encoder()
    encoder.load_state_dict(start_state)
    model = FusionRanker(encoder, [], architecture=architecture)
    scorer = training_scorer(model, load_tokenizer(base_model_dir()), cfg, torch.device("cpu"))
    result = fit(model, scorer, built["train"], built["validation"], cfg)

    def logits(lists: pd.DataFrame) -> np.ndarray:
        """The fine-tuned logit (no fusion head), as the LambdaMART fusion reads it."""
        return scorer.score(lists["context_text"].tolist(), lists["item_text"].tolist())

    loop = f"ours (training/trainer.py), {architecture}"
    steps = result.evaluations[-1][0]
    return figures(loop, steps, result.seconds, result.steps, logits, built["validation"], heldout)


def figures(
    loop: str,
    steps: int,
    seconds: float,
    best_step: int | None,
    score: Callable[[pd.DataFrame], np.ndarray],
    validation: pd.DataFrame,
    heldout: pd.DataFrame,
) -> dict:
    """A loop's row of the printed table; its fusion-list NDCG per list, for the interval."""
    started = time.perf_counter()
    heldout_scores = score(heldout)
    rate = len(heldout) / (time.perf_counter() - started)
    return {
        "loop": loop,
        "steps": steps,
        "seconds": seconds,
        "best step": best_step,
        "validation NDCG@10": list_ndcg(validation, score(validation)),
        "fusion-list NDCG@10": per_list_ndcg(heldout, heldout_scores),
        "scoring pairs/s": rate,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="the config the lakehouse was written with")
    parser.add_argument("--seconds", type=float, default=300.0, help="each loop's training time budget")
    parser.add_argument("--loss", choices=sorted(CROSS_ENCODER_LOSSES), default="listnet")
    parser.add_argument("--fusion-lists", type=int, default=150, help="fusion lists scored at most")
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], help="a config override, e.g. train.epochs=2"
    )
    args = parser.parse_args()
    config = load_config(
        args.config,
        overrides=[
            f"train.loss={args.loss}",
            "train.fusion_features=[]",
            f"train.max_seconds={args.seconds}",
            *args.overrides,
        ],
    )
    cfg = config.train
    torch.set_num_threads(cfg.threads)
    built = lakehouse_lists(config)
    heldout = first_lists(built["fusion"], args.fusion_lists)
    print(
        f"lists: {built['train'][LIST].nunique()} train, {built['validation'][LIST].nunique()} validation, "
        f"{heldout[LIST].nunique()} fusion ({len(heldout)} pairs)",
        flush=True,
    )
    torch.manual_seed(cfg.seed)
    start_state = copy.deepcopy(untrained_cross_encoder().state_dict())

    rows = [train_ours(start_state, built, heldout, cfg, architecture) for architecture in ARCHITECTURES]
    started = time.perf_counter()
    library, steps, best = train_with_library(start_state, built, cfg, args.seconds, args.loss)
    seconds = time.perf_counter() - started
    loop = "sentence-transformers CrossEncoderTrainer, pair"
    rows.append(
        figures(
            loop,
            steps,
            seconds,
            best,
            lambda lists: library_scores(library, lists),
            built["validation"],
            heldout,
        )
    )
    library_lists = rows[-1]["fusion-list NDCG@10"]
    for row in rows:
        change, low, high = relative_change(library_lists, row["fusion-list NDCG@10"])
        row["fusion-list NDCG@10"] = row["fusion-list NDCG@10"].mean()
        row["against the library"] = f"{change:+.1%} [{low:+.1%}, {high:+.1%}]"
    print(f"\nloss {args.loss}, budget {args.seconds:g} s, {cfg.threads} threads")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda x: f"{x:.4f}"))


if __name__ == "__main__":
    main()
