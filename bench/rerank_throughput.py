"""Rerank throughput: the same pairs scored by the same model and threads, five ways, and two architectures.

  a       a plain in-process PyTorch loop over micro-batches (tokenise, pad, forward): the ceiling
          on CPU, where the forward pass is the whole cost
  engine  this job's PairScorer in process (what the UDF runs per Arrow batch), without Spark
  b       this job's pandas UDF through Spark (scoring_udf, local[2] by default)
  c       a naive row-at-a-time Python UDF (one pair per forward)
  d       pyspark.ml.functions.predict_batch_udf with a tokenise+forward predict function

With --architectures pair,shared_context,late_context the paths engine and b also run the same weights
as a shared-context cross-encoder (llmrank_spark/rerank/shared_context.py: a request's context encoded
once for all its candidates; under late_context each distinct item of a batch also read alone through
the lower layers once), at each --candidates count per request. The run prints "ARCH/pair through the
UDF: R.RRx at N candidates" per architecture and count, and ends with one line per count for the
default architecture (train.architecture): "shared-context/pair through the UDF: R.RRx at N candidates".

Pairs are synthetic e-commerce texts built with the job's own text functions (a history context
of --history items, about 64 tokens with --history 3,6, and an item text), --candidates per request
as in the nightly job. Without --model the cross-encoder is the packaged MiniLM with a freshly
initialised 1-logit head: the numbers are throughput only, since a head's weights do not change the
cost of scoring.

  python bench/rerank_throughput.py --pairs 1024 --rounds 3 --naive-pairs 256     # 2-core CPU machine
  python bench/rerank_throughput.py --paths engine,b --architectures pair,shared_context,late_context \
      --candidates 20,100 --history 3,6 --pairs 2000 --rounds 3                    # shared context, CPU
  python bench/rerank_throughput.py --device cuda --pairs 200000 --paths a,engine,b --micro-batch 2048 \
      --threads 4 --master 'local[4]' --partitions 4                                # one GPU
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from llmrank_spark.config import RerankConfig, TrainConfig
from llmrank_spark.rerank import (
    MANIFEST_FILE,
    ArtifactManifest,
    PairScorer,
    ScoringSettings,
    autocast_dtype,
    base_model_dir,
    cross_encoder_spec,
    load_artifact,
    load_tokenizer,
    read_manifest,
    save_artifact,
    untrained_cross_encoder,
)
from llmrank_spark.rerank.shared_context import SharedContextEncoded, alone_layers
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


def synthetic_pairs(
    n_pairs: int,
    cfg: RerankConfig,
    seed: int = 7,
    candidates: int = 100,
    history: tuple[int, int] = (2, 5),
    n_items: int | None = None,
) -> tuple[list[str], list[str]]:
    """(contexts, items): `candidates` per request, with seeded product texts, drawn from a catalogue of
    `n_items` (default: one item per 20 pairs, at least 200, so an item recurs across lists as popular
    items do in candidate lists).

    Lengths vary as in a real catalogue: titles of 1-4 adjectives, 0-5 attributes, `history` items (a
    range) in the context.
    """
    rng = np.random.default_rng(seed)
    n_items = n_items or max(200, n_pairs // 20, candidates)

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
    for start in range(0, n_pairs, candidates):
        viewed = rng.choice(n_items, rng.integers(history[0], history[1] + 1), replace=False)
        context = history_context([snippets[i] for i in viewed])
        for item in rng.choice(n_items, min(candidates, n_pairs - start), replace=False):
            contexts.append(context)
            pairs_items.append(item_texts[item])
    return contexts, pairs_items


def with_architecture(artifact: Path, architecture: str, scratch: Path) -> Path:
    """A copy of `artifact` whose reranker.json says `architecture`: the same weights read another way."""
    if read_manifest(artifact).architecture == architecture:
        return artifact
    copy = scratch / f"{artifact.name}-{architecture}"
    if not copy.exists():
        shutil.copytree(artifact, copy)
        original = read_manifest(copy)
        manifest = original.model_copy(
            update={"architecture": architecture, "version": f"{original.version}-{architecture}"}
        )
        (copy / MANIFEST_FILE).write_text(manifest.model_dump_json(indent=2) + "\n")
    return copy


def tokens_per_pair(scorer: PairScorer, contexts: list[str], items: list[str]) -> float:
    """Tokens the scorer runs through the model per pair, counted from the inputs it builds: under
    late_context an item's tokens count for the share of layers they run in, once per distinct item
    for the layers read alone."""
    counted = []
    build, build_alone = scorer.model_inputs, SharedContextEncoded.alone_item_inputs
    layers = len(scorer.model.base_model.encoder.layer)
    alone = alone_layers(scorer.model, scorer.architecture) / layers

    def counting(encoded, rows):
        inputs = build(encoded, rows)
        context = sum(
            int(inputs[name].sum()) for name in ("attention_mask", "context_mask") if name in inputs
        )
        counted.append(
            context + (1 - alone) * int(inputs["item_mask"].sum()) if "item_mask" in inputs else context
        )
        return inputs

    def counting_alone(encoded, codes, *args):
        inputs = build_alone(encoded, codes, *args)
        counted.append(alone * int(inputs["item_mask"].sum()))
        return inputs

    scorer.model_inputs = counting  # type: ignore[method-assign]
    SharedContextEncoded.alone_item_inputs = counting_alone  # type: ignore[method-assign]
    try:
        scorer.score(contexts, items)
    finally:
        del scorer.model_inputs
        SharedContextEncoded.alone_item_inputs = build_alone  # type: ignore[method-assign]
    return sum(counted) / len(contexts)


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
    frames: dict[tuple, object] = {}

    def runner(path: str) -> Callable:
        score = udfs[path]()

        def run(contexts: list[str], items: list[str]) -> np.ndarray:
            # As the rerank step lays pairs out (rerank.score_by_request): whole requests per partition,
            # in a fixed order, so an Arrow batch holds whole candidate lists.
            key = (len(contexts), contexts[0], items[0], items[-1])
            if key not in frames:
                pdf = pd.DataFrame(
                    {
                        "pair": np.arange(len(contexts)),
                        "request": pd.factorize(pd.Series(contexts))[0],
                        "context_text": contexts,
                        "item_text": items,
                    }
                )
                frames[key] = (
                    spark.createDataFrame(pdf)
                    .repartition(args.partitions, "request")
                    .sortWithinPartitions("request", "pair")
                    .cache()
                )
                frames[key].count()
            scored = frames[key].select("pair", score("context_text", "item_text").alias("score"))
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
    parser.add_argument(
        "--architectures",
        default="pair",
        help="comma-separated subset of pair,shared_context,late_context: how engine and b read the pairs",
    )
    parser.add_argument(
        "--items", type=int, help="catalogue size the candidates are drawn from; default: pairs / 20, >= 200"
    )
    parser.add_argument("--candidates", default="100", help="comma-separated candidates per request")
    parser.add_argument("--history", default="2,5", help="history items per context: min,max")
    parser.add_argument("--rounds", type=int, default=1, help="timed rounds; each path reports its best")
    parser.add_argument(
        "--naive-pairs", type=int, default=1024, help="pairs for the slow path c (rate scales)"
    )
    args = parser.parse_args(argv)

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    torch.set_num_threads(args.threads)
    cfg = RerankConfig(max_length=args.max_length)
    settings = ScoringSettings(args.device, args.precision, args.micro_batch, args.max_length)
    device = torch.device(args.device)
    wanted = args.paths.split(",")
    architectures = args.architectures.split(",")
    low, high = (int(n) for n in args.history.split(","))

    with tempfile.TemporaryDirectory(prefix="llmrank-bench-") as scratch:
        artifact = prepare_artifact(args.model, cfg, Path(scratch))
        artifacts = {arch: with_architecture(artifact, arch, Path(scratch)) for arch in architectures}
        tokenizer = load_tokenizer(artifact)
        engines = {
            arch: PairScorer.from_spec(cross_encoder_spec(str(path)), device, settings)
            for arch, path in artifacts.items()
        }
        runners: dict[str, Callable] = {}
        if "a" in wanted:
            runners["a"] = plain_loop(artifact, settings, device)
        for arch, engine in engines.items():
            suffix = "" if arch == "pair" else f"-{arch}"
            if "engine" in wanted:
                runners[f"engine{suffix}"] = engine.score
            if {"b", "c", "d"} & set(wanted):
                # c and d are pair-only ways of calling the model; b is this job's UDF, either architecture.
                spark_runners = spark_paths(args, artifacts[arch], settings)
                runners.update(
                    {
                        f"{path}{suffix}": run
                        for path, run in spark_runners.items()
                        if path in wanted and (path == "b" or arch == "pair")
                    }
                )

        udf_ratios = []
        for candidates in (int(n) for n in args.candidates.split(",")):
            contexts, items = synthetic_pairs(
                args.pairs, cfg, candidates=candidates, history=(low, high), n_items=args.items
            )
            pair_tokens = [
                len(ids) for ids in tokenizer(contexts[:2000], items[:2000], truncation=True)["input_ids"]
            ]
            context_tokens = [len(ids) for ids in tokenizer(sorted(set(contexts)))["input_ids"]]
            print(
                f"{args.pairs} pairs, {candidates} candidates per request, contexts of mean "
                f"{np.mean(context_tokens):.0f} tokens, pairs of mean {np.mean(pair_tokens):.0f} tokens "
                f"(max_length {args.max_length}), device {args.device}, precision {args.precision}, "
                f"micro-batch {args.micro_batch}, torch threads {args.threads}, Spark {args.master} with "
                f"{args.partitions} partitions; {len(set(items))} distinct items"
            )
            for arch, engine in engines.items():
                tokens = tokens_per_pair(engine, contexts, items)
                print(f"  {arch}: {tokens:.1f} tokens through the model per pair")
            results = timed(runners, contexts, items, args)
            print("best round: " + ", ".join(f"{p} {r:.1f} pairs/s" for p, r in results.items()))
            if "a" in results:
                print(
                    "ratios to a: " + ", ".join(f"{p}/a = {r / results['a']:.2f}" for p, r in results.items())
                )
            if "b" in results:
                print(
                    "b versus:    "
                    + ", ".join(f"b/{p} = {results['b'] / r:.2f}" for p, r in results.items() if p != "b")
                )
            for arch in architectures:
                if arch != "pair" and "b" in results and f"b-{arch}" in results:
                    udf_ratios.append((arch, results[f"b-{arch}"] / results["b"], candidates))
        for arch, ratio, candidates in udf_ratios:
            print(f"{arch}/pair through the UDF: {ratio:.2f}x at {candidates} candidates")
        served = TrainConfig().architecture  # the default architecture: the last lines are its ratios
        for arch, ratio, candidates in udf_ratios:
            if arch == served:
                print(f"shared-context/pair through the UDF: {ratio:.2f}x at {candidates} candidates")


def timed(runners: dict[str, Callable], contexts: list[str], items: list[str], args) -> dict[str, float]:
    """Each path's best pairs/s over the rounds, printing every round."""
    for run in runners.values():
        run(contexts[:64], items[:64])  # warm-up: model load, worker start, kernels
    # Paths take turns, round after round, and each keeps its best round: on a shared machine a
    # burst of someone else's load then slows one round of every path, not one path's only run.
    results: dict[str, float] = {}
    reference: dict[str, np.ndarray] = {}
    for round_number in range(1, args.rounds + 1):
        for path, run in runners.items():
            n = min(args.pairs, args.naive_pairs) if path.startswith("c") else args.pairs
            start = time.perf_counter()
            scores = run(contexts[:n], items[:n])
            seconds = time.perf_counter() - start
            results[path] = max(results.get(path, 0.0), n / seconds)
            # Scores are compared within an architecture: the two read the same weights differently.
            first = reference.setdefault(path.partition("-")[2] or "pair", scores)
            print(
                f"  round {round_number} {path:>17}: {n:>7} pairs in {seconds:7.2f}s = {n / seconds:9.1f} "
                f"pairs/s (max |score - first of its architecture| {np.abs(scores - first[:n]).max():.1e})"
            )
    return results


if __name__ == "__main__":
    main()
