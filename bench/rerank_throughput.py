"""Rerank throughput: the same pairs scored by the same model and threads, five ways.

  a       a plain in-process PyTorch loop over micro-batches (tokenise, pad, forward): the ceiling
          on CPU, where the forward pass is the whole cost
  engine  this job's PairScorer in process (what the UDF runs per Arrow batch), without Spark
  b       this job's pandas UDF through Spark (scoring_udf, local[2] by default)
  c       a naive row-at-a-time Python UDF (one pair per forward)
  d       pyspark.ml.functions.predict_batch_udf with a tokenise+forward predict function

Pairs are synthetic e-commerce texts built with the job's own text functions (a history context
of 2-5 items and an item text, about 80 tokens a pair). Without --model the cross-encoder is the packaged
MiniLM with a freshly initialised 1-logit head: the numbers are throughput only, since a head's
weights do not change the cost of scoring.

  python bench/rerank_throughput.py --pairs 1024 --rounds 3 --naive-pairs 256     # 2-core CPU machine
  python bench/rerank_throughput.py --device cuda --pairs 200000 --paths a,engine,b --micro-batch 2048 \
      --threads 4 --master 'local[4]' --partitions 4                                # one GPU
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from llmrank_spark.config import RerankConfig
from llmrank_spark.rerank import (
    ArtifactManifest,
    PairScorer,
    ScoringSettings,
    autocast_dtype,
    base_model_dir,
    cross_encoder_spec,
    load_artifact,
    load_tokenizer,
    save_artifact,
    untrained_cross_encoder,
)
from llmrank_spark.text import history_context, render_item_texts

ADJECTIVES = [
    "red",
    "blue",
    "black",
    "waterproof",
    "lightweight",
    "organic",
    "vintage",
    "compact",
    "wireless",
    "ergonomic",
    "premium",
]
NOUNS = [
    "running shoe",
    "hiking boot",
    "rain jacket",
    "wool beanie",
    "desk lamp",
    "coffee grinder",
    "yoga mat",
    "backpack",
]
CATEGORIES = ["Shoes", "Outerwear", "Accessories", "Home", "Kitchen", "Sports", "Bags", "Electronics"]
BRANDS = ["Acme", "Zed", "Bolt", "Flow", "Lumo", "Brew", "Northwind", "Contoso", "Fabrikam", "Tailspin"]
ATTRIBUTES = {
    "color": ["red", "navy", "black", "olive", "sand"],
    "size": ["S", "M", "L", "42", "44", "one size"],
    "material": ["leather", "cotton", "recycled polyester", "steel", "bamboo"],
    "fit": ["regular", "slim", "relaxed"],
    "warranty": ["1 year", "2 years"],
}


def synthetic_pairs(n_pairs: int, cfg: RerankConfig, seed: int = 7) -> tuple[list[str], list[str]]:
    """(contexts, items): 100 candidates per request, as in the nightly job, with seeded product texts.

    Lengths vary as in a real catalogue: titles of 1-4 adjectives, 0-5 attributes, 2-5 history items.
    """
    rng = np.random.default_rng(seed)
    n_items = max(200, n_pairs // 20)

    def title(n: int) -> str:
        return " ".join([*rng.choice(ADJECTIVES, rng.integers(1, 5)), str(rng.choice(NOUNS)), str(n)])

    def attributes() -> dict[str, str]:
        names = rng.choice(list(ATTRIBUTES), rng.integers(0, len(ATTRIBUTES) + 1), replace=False)
        return {name: str(rng.choice(ATTRIBUTES[name])) for name in names}

    items = pd.DataFrame(
        {
            "item_id": [f"i{n}" for n in range(n_items)],
            "title": [title(n) for n in range(n_items)],
            "category": rng.choice(CATEGORIES, n_items),
            "brand": rng.choice(BRANDS, n_items),
            "attributes": [attributes() for _ in range(n_items)],
        }
    )
    item_texts = render_item_texts(items, cfg.item_template, cfg.item_attributes).tolist()
    snippets = render_item_texts(items, cfg.context_template, cfg.item_attributes).tolist()
    contexts, pairs_items = [], []
    for start in range(0, n_pairs, 100):
        history = rng.choice(n_items, rng.integers(2, cfg.context_items + 1), replace=False)
        context = history_context([snippets[i] for i in history])
        for item in rng.choice(n_items, min(100, n_pairs - start), replace=False):
            contexts.append(context)
            pairs_items.append(item_texts[item])
    return contexts, pairs_items


def prepare_artifact(model_path: str | None, cfg: RerankConfig, scratch: Path) -> Path:
    if model_path:
        return Path(model_path)
    print(
        "NOTE: no --model given: scoring with the packaged MiniLM base + an UNTRAINED 1-logit head.\n"
        "      The scores are meaningless; the figures are throughput only (head weights do not change cost)."
    )
    manifest = ArtifactManifest(
        version="untrained-head-throughput-only",
        max_length=cfg.max_length,
        context_template=cfg.context_template,
        item_template=cfg.item_template,
        item_attributes=cfg.item_attributes,
        loss="none: untrained head, throughput benchmark only",
        data_snapshot="none",
        created_at=dt.datetime(2026, 11, 20, tzinfo=dt.UTC),
    )
    # Seeded head and fixed date: the same bytes every run, so executors reuse their unpacked copy.
    torch.manual_seed(0)
    model = untrained_cross_encoder()
    return save_artifact(model, load_tokenizer(base_model_dir()), scratch / "bench", manifest)


def plain_loop(artifact: Path, settings: ScoringSettings, device: torch.device) -> Callable:
    """Path a: the textbook loop, batches in input order, the tokenizer padding each batch."""
    loaded = load_artifact(artifact)
    model, tokenizer = loaded.model.to(device), loaded.tokenizer
    dtype = autocast_dtype(settings.precision, device)

    def run(contexts: list[str], items: list[str]) -> np.ndarray:
        outputs = []
        autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
        with torch.inference_mode(), autocast:
            for start in range(0, len(contexts), settings.micro_batch_size):
                end = start + settings.micro_batch_size
                batch = tokenizer(
                    contexts[start:end],
                    items[start:end],
                    padding=True,
                    truncation=True,
                    max_length=settings.max_length,
                    return_tensors="pt",
                ).to(device)
                outputs.append(model(**batch).logits[:, 0].float())
        return torch.cat(outputs).cpu().numpy()

    return run


def spark_paths(args, artifact: Path, settings: ScoringSettings) -> dict[str, Callable]:
    """Paths b, c and d: each scores a cached DataFrame of the pairs and forces every score."""
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import functions as F
    from pyspark.sql.types import DoubleType

    from llmrank_spark.config import load_config
    from llmrank_spark.lakehouse import get_spark
    from llmrank_spark.rerank import cached_scorer, scoring_udf, ship_model, task_device

    spark = get_spark(
        load_config(
            overrides=[
                f"spark.master={args.master}",
                "spark.delta_jars=provided",
                f"spark.conf={{spark.sql.execution.arrow.maxRecordsPerBatch: '{args.arrow_batch}'}}",
            ]
        )
    )
    spec = cross_encoder_spec(str(artifact))

    def worker_model():
        """The model and tokenizer the job's worker cache holds: loaded once per Python worker."""
        from pyspark import TaskContext

        context = TaskContext.get()
        if context is not None and context.cpus():
            torch.set_num_threads(context.cpus())
        scorer = cached_scorer(spec, task_device(settings.device), settings)
        return scorer.model, scorer.tokenizer, scorer.device

    def naive_udf():
        @F.udf(DoubleType())
        def score(context: str, item: str) -> float:
            model, tokenizer, device = worker_model()
            with torch.inference_mode():
                batch = tokenizer(
                    context, item, truncation=True, max_length=settings.max_length, return_tensors="pt"
                )
                return float(model(**batch.to(device)).logits[0, 0])

        return score

    def make_predict_fn():
        model, tokenizer, device = worker_model()
        dtype = autocast_dtype(settings.precision, device)

        def predict(contexts: np.ndarray, items: np.ndarray) -> np.ndarray:
            batch = tokenizer(
                contexts.tolist(),
                items.tolist(),
                padding=True,
                truncation=True,
                max_length=settings.max_length,
                return_tensors="pt",
            ).to(device)
            autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
            with torch.inference_mode(), autocast:
                return model(**batch).logits[:, 0].float().cpu().numpy().astype(np.float64)

        return predict

    udfs = {
        "b": lambda: scoring_udf(ship_model(spark, spec), settings),
        "c": naive_udf,
        "d": lambda: predict_batch_udf(
            make_predict_fn, return_type=DoubleType(), batch_size=settings.micro_batch_size
        ),
    }
    frames: dict[int, object] = {}

    def runner(path: str) -> Callable:
        score = udfs[path]()

        def run(contexts: list[str], items: list[str]) -> np.ndarray:
            if len(contexts) not in frames:
                pdf = pd.DataFrame(
                    {"pair": np.arange(len(contexts)), "context_text": contexts, "item_text": items}
                )
                frames[len(contexts)] = (
                    spark.createDataFrame(pdf).repartition(args.partitions, "pair").cache()
                )
                frames[len(contexts)].count()
            scored = frames[len(contexts)].select("pair", score("context_text", "item_text").alias("score"))
            return scored.toPandas().sort_values("pair")["score"].to_numpy()

        return run

    return {path: runner(path) for path in ("b", "c", "d")}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--pairs", type=int, default=4096)
    parser.add_argument("--model", help="reranker artifact directory; default: base + untrained head")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--precision", choices=["auto", "fp32", "fp16", "bf16"], default="auto")
    parser.add_argument("--micro-batch", type=int, default=64)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2, help="torch threads of the in-process paths")
    parser.add_argument("--master", default="local[2]", help="Spark master of paths b, c, d")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument(
        "--arrow-batch", type=int, default=4096, help="spark.sql.execution.arrow.maxRecordsPerBatch"
    )
    parser.add_argument("--paths", default="a,engine,b,c,d", help="comma-separated subset of a,engine,b,c,d")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds; each path reports its best")
    parser.add_argument(
        "--naive-pairs", type=int, default=1024, help="pairs for the slow path c (rate scales)"
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    torch.set_num_threads(args.threads)
    cfg = RerankConfig(max_length=args.max_length)
    settings = ScoringSettings(args.device, args.precision, args.micro_batch, args.max_length)
    contexts, items = synthetic_pairs(args.pairs, cfg)
    device = torch.device(args.device)

    with tempfile.TemporaryDirectory(prefix="llmrank-bench-") as scratch:
        artifact = prepare_artifact(args.model, cfg, Path(scratch))
        tokenizer = load_tokenizer(artifact)
        lengths = [len(ids) for ids in tokenizer(contexts[:2000], items[:2000], truncation=True)["input_ids"]]
        print(
            f"{args.pairs} pairs, mean {np.mean(lengths):.0f} tokens (max_length {args.max_length}), "
            f"device {args.device}, precision {args.precision}, micro-batch {args.micro_batch}, "
            f"torch threads {args.threads}, Spark {args.master} with {args.partitions} partitions"
        )
        wanted = args.paths.split(",")
        runners: dict[str, Callable] = {}
        if "a" in wanted:
            runners["a"] = plain_loop(artifact, settings, device)
        if "engine" in wanted:
            runners["engine"] = PairScorer.from_spec(
                cross_encoder_spec(str(artifact)), device, settings
            ).score
        if {"b", "c", "d"} & set(wanted):
            runners.update({k: v for k, v in spark_paths(args, artifact, settings).items() if k in wanted})

        order = [p for p in ("a", "engine", "b", "c", "d") if p in runners]
        for path in order:
            runners[path](contexts[:64], items[:64])  # warm-up: model load, worker start, kernels
        # Paths take turns, round after round, and each keeps its best round: on a shared machine a
        # burst of someone else's load then slows one round of every path, not one path's only run.
        results: dict[str, float] = {}
        reference = None
        for round_number in range(1, args.rounds + 1):
            for path in order:
                n = min(args.pairs, args.naive_pairs) if path == "c" else args.pairs
                start = time.perf_counter()
                scores = runners[path](contexts[:n], items[:n])
                seconds = time.perf_counter() - start
                results[path] = max(results.get(path, 0.0), n / seconds)
                reference = scores if reference is None else reference
                print(
                    f"  round {round_number} {path:>6}: {n:>7} pairs in {seconds:7.2f}s = {n / seconds:9.1f} "
                    f"pairs/s (max |score - first path| {np.abs(scores - reference[:n]).max():.1e})"
                )
        print("best round: " + ", ".join(f"{p} {r:.1f} pairs/s" for p, r in results.items()))
        if "a" in results:
            print("ratios to a: " + ", ".join(f"{p}/a = {r / results['a']:.2f}" for p, r in results.items()))
        if "b" in results:
            print(
                "b versus:    "
                + ", ".join(f"b/{p} = {results['b'] / r:.2f}" for p, r in results.items() if p != "b")
            )


if __name__ == "__main__":
    main()
