"""Training on a cluster: TorchDistributor when the session has GPUs or several executors."""

from __future__ import annotations

import io
import os
import time
from dataclasses import asdict
from typing import cast

import pandas as pd
import torch
import torch.distributed as dist
from pyspark.sql import SparkSession

from llmrank_spark.config import TrainConfig
from llmrank_spark.training.network import FusionRanker
from llmrank_spark.training.trainer import FitResult, fit, training_scorer


def distributor_mode(spark: SparkSession) -> tuple[bool, bool]:
    """(local_mode, use_gpu) for TorchDistributor, read from the session's config.

    A local master trains in processes on the driver; any other master in barrier tasks on executors.
    GPUs are used when Spark gives each training process a whole one: spark.driver.resource.gpu.amount
    locally, spark.task.resource.gpu.amount (at least 1) on a cluster.
    """
    local_mode = (spark.conf.get("spark.master", "") or "").startswith("local")
    key = "spark.driver.resource.gpu.amount" if local_mode else "spark.task.resource.gpu.amount"
    gpus = float(str(spark.conf.get(key, "0")))  # a str: it has a default
    if not local_mode and 0 < gpus < 1:
        raise ValueError(
            f"{key} is {gpus}: a TorchDistributor process needs a whole GPU. Start the train job with "
            f"{key} 1 (conf/gpu-cluster.yaml shares a GPU between rerank tasks; it is not for training), "
            f"or set train.distributor_processes=0"
        )
    return local_mode, gpus > 0


def fit_with_distributor(
    spark: SparkSession,
    model: FusionRanker,
    tokenizer,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    cfg: TrainConfig,
) -> FitResult:
    """`fit` in `cfg.distributor_processes` processes under Spark's TorchDistributor; the model ends
    holding rank 0's best weights, as after `fit`. The lists and the starting model travel as the
    function's arguments: they are already in driver memory, and arguments reach the processes in local
    and cluster mode alike, with no shared filesystem. `seconds` includes launching the processes."""
    from pyspark.ml.torch.distributor import TorchDistributor

    started = time.perf_counter()
    local_mode, use_gpu = distributor_mode(spark)
    distributor = TorchDistributor(
        num_processes=cfg.distributor_processes, local_mode=local_mode, use_gpu=use_gpu
    )
    # `_fit_process` returns bytes; TorchDistributor.run is typed Optional[Any].
    payload = cast(bytes, distributor.run(_fit_process, model, tokenizer, train, validation, cfg, use_gpu))
    saved = torch.load(io.BytesIO(payload), weights_only=True)
    model.load_state_dict(saved["state"])
    model.eval()
    return FitResult(**{**saved["result"], "seconds": time.perf_counter() - started})


def _fit_process(
    model: FusionRanker,
    tokenizer,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    cfg: TrainConfig,
    use_gpu: bool,
) -> bytes:
    """One TorchDistributor process: join the group torchrun describes in the environment, `fit`, and
    return rank 0's best weights and FitResult, torch-saved.

    Every process returns those same bytes: TorchDistributor's launcher has each local process write its
    return value to one output file, and identical bytes leave it whole whatever order they write in.
    """
    device = torch.device("cuda", int(os.environ["LOCAL_RANK"])) if use_gpu else torch.device("cpu")
    if use_gpu:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if use_gpu else "gloo")
    try:
        torch.manual_seed(cfg.seed + dist.get_rank())  # dropout differs by rank; weights start as rank 0's
        torch.set_num_threads(cfg.threads)
        model.to(device)
        scorer = training_scorer(model, tokenizer, cfg, device)
        result = fit(model, scorer, train, validation, cfg, distributed=True)
        payload: list[bytes | None] = [None]
        if dist.get_rank() == 0:
            buffer = io.BytesIO()
            state = {name: tensor.cpu() for name, tensor in model.state_dict().items()}
            torch.save({"state": state, "result": asdict(result)}, buffer)
            payload = [buffer.getvalue()]
        dist.broadcast_object_list(payload, src=0)
        return cast(bytes, payload[0])  # every rank holds rank 0's bytes after the broadcast
    finally:
        dist.destroy_process_group()
