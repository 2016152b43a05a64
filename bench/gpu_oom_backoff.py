"""Real CUDA out-of-memory back-off (GPU only): a micro-batch far too large is halved until it fits.

Scores 30,000 pairs of ~400-word texts (512 tokens each) with the zero-shot MiniLM on the GPU with
rerank.micro_batch_size=60000, so the first forward passes run out of GPU memory; prints the back-off
steps the scorer warned about, the peak memory, and the largest difference from scoring the same pairs
with small batches from the start (the back-off must not change a score).

    HF_HUB_OFFLINE=1 python bench/gpu_oom_backoff.py
"""

import time
import warnings

import numpy as np
import torch

from llmrank_spark.rerank import PairScorer, ScoringSettings, zero_shot_spec

PAIRS = 30_000
WORDS = [
    "waterproof",
    "hiking",
    "boots",
    "leather",
    "trail",
    "comfort",
    "grip",
    "ankle",
    "support",
    "lightweight",
]


def main() -> None:
    if not torch.cuda.is_available():
        raise SystemExit("bench/gpu_oom_backoff.py needs a CUDA GPU")
    rng = np.random.default_rng(0)
    texts = [" ".join(rng.choice(WORDS, 400)) + f" {i}" for i in range(2 * PAIRS)]
    contexts, items = texts[:PAIRS], texts[PAIRS:]
    cuda = torch.device("cuda")
    oversized = ScoringSettings(
        max_length=512, micro_batch_size=2 * PAIRS, min_micro_batch_size=256, precision="fp32"
    )
    scorer = PairScorer.from_spec(zero_shot_spec(), cuda, oversized)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        scores = scorer.score(contexts, items)
        seconds = time.perf_counter() - start
    for warning in caught:
        if "out of GPU memory" in str(warning.message):
            print(warning.message)
    print(f"scored {len(scores)} pairs in {seconds:.1f}s, all finite: {bool(np.isfinite(scores).all())}")
    print(f"peak GPU memory {torch.cuda.max_memory_allocated() / 2**30:.1f} GiB")
    small = ScoringSettings(max_length=512, micro_batch_size=256, precision="fp32")
    reference = PairScorer.from_spec(zero_shot_spec(), cuda, small).score(contexts[:2000], items[:2000])
    print(f"max |score difference| against small batches: {np.abs(reference - scores[:2000]).max():.3g}")


if __name__ == "__main__":
    main()
