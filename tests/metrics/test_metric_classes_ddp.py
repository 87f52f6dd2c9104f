"""Every Metric class gives the same value on two processes (gloo, CPU) as on one process.

The items are split as ``DistributedSampler`` splits them: unevenly sized sets are padded by
repeating the first items, so the metrics must count each dataset index once.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from eua.metrics import functional as M
from eua.metrics.energy import EnergyAUPR, EnergyAUROC, EnergyFPRAtTPR
from eua.metrics.mia import MembershipInferenceAUC, PrivLeak
from eua.metrics.per_item import PerItemScores
from eua.metrics.tofu import (
    AnswerProbability,
    ExactMemorization,
    ExtractionStrength,
    ForgetQuality,
    ItemMean,
    NormalizedProbability,
    RougeLRecall,
    TruthRatio,
)

WORLD_SIZE = 2
SIZES = {"forget": 7, "other": 5}  # odd sizes: the sampler pads rank 1 with a repeated item
VOCAB, LENGTH = 11, 6
WORDS = ["the", "author", "wrote", "novels", "in", "paris", "about", "war"]


def make_data() -> dict[str, dict[str, object]]:
    """Deterministic per-item inputs of two sets, the same in every process."""
    generator = torch.Generator().manual_seed(0)
    data = {}
    for name, size in SIZES.items():
        labels = torch.randint(0, VOCAB, (size, LENGTH), generator=generator)
        labels[:, :2] = -100
        labels[0, 2:5] = -100  # a short answer
        logits = torch.randn(size, LENGTH, VOCAB, generator=generator)
        logits[:, 1:4].scatter_add_(-1, labels[:, 2:5].clamp_min(0)[..., None], torch.full((size, 3, 1), 3.0))
        data[name] = {
            "index": torch.arange(size),
            "nll": torch.rand(size, generator=generator, dtype=torch.float64) * 3,
            "wrong": torch.rand(size, generator=generator, dtype=torch.float64) * 3,
            "prob_sum": torch.rand(size, generator=generator, dtype=torch.float64),
            "energy": torch.randn(size, generator=generator, dtype=torch.float64),
            "logits": logits,
            "labels": labels,
            "generations": [" ".join(WORDS[(i + j) % len(WORDS)] for j in range(3)) for i in range(size)],
            "references": [" ".join(WORDS[(2 * i + j) % len(WORDS)] for j in range(4)) for i in range(size)],
        }
    data["forget"]["nll"][3] = math.nan  # one missing item
    return data


def shard(size: int, rank: int) -> list[int]:
    """Indices that ``DistributedSampler(shuffle=False)`` gives ``rank``: padded, then strided."""
    total = math.ceil(size / WORLD_SIZE) * WORLD_SIZE
    padded = list(range(size)) + list(range(total - size))
    return padded[rank:total:WORLD_SIZE]


def build_metrics() -> dict[str, torch.nn.Module]:
    return {
        "probability": AnswerProbability(),
        "truth_ratio_closer": TruthRatio("closer_to_1_better"),
        "truth_ratio_true": TruthRatio("true_better"),
        "truth_ratio_prob_mean": TruthRatio("prob_mean"),
        "forget_quality": ForgetQuality(retain_truth_ratios=[0.4, 0.9, 1.3, 2.0, 0.7]),
        "normalized_probability": NormalizedProbability(),
        "item_mean": ItemMean(),
        "rouge_l_recall": RougeLRecall(),
        "exact_memorization": ExactMemorization(),
        "extraction_strength": ExtractionStrength(),
        "mia_auc": MembershipInferenceAUC("loss"),
        "privleak": PrivLeak("loss", retain_auc=0.6),
        "energy_auroc": EnergyAUROC(),
        "energy_aupr": EnergyAUPR(),
        "energy_fpr95": EnergyFPRAtTPR(0.95),
    }


def update_all(metrics: dict[str, torch.nn.Module], data: dict, rows: dict[str, list[int]]) -> None:
    """Feed the chosen rows of each set, in batches of two, to every metric."""
    for name, chosen in rows.items():
        items = data[name]
        for start in range(0, len(chosen), 2):
            rows_ = torch.tensor(chosen[start : start + 2])
            index = items["index"][rows_]
            texts = lambda key: [items[key][i] for i in rows_.tolist()]  # noqa: E731
            if name == "forget":
                metrics["probability"].update(index, items["nll"][rows_])
                for key in ("truth_ratio_closer", "truth_ratio_true", "truth_ratio_prob_mean", "forget_quality"):
                    metrics[key].update(index, items["nll"][rows_], items["wrong"][rows_])
                metrics["normalized_probability"].update(index, items["nll"][rows_], items["prob_sum"][rows_])
                metrics["item_mean"].update(index, items["wrong"][rows_])
                metrics["rouge_l_recall"].update(index, texts("generations"), texts("references"))
                metrics["exact_memorization"].update(index, items["logits"][rows_], items["labels"][rows_])
                metrics["extraction_strength"].update(index, items["logits"][rows_], items["labels"][rows_])
            split = "forget" if name == "forget" else "holdout"
            metrics["mia_auc"].update(index, items["wrong"][rows_], split)
            metrics["privleak"].update(index, items["wrong"][rows_], split)
            side = "forget" if name == "forget" else "other"
            for key in ("energy_auroc", "energy_aupr", "energy_fpr95"):
                metrics[key].update(index, items["energy"][rows_], side)


def compute_all(metrics: dict[str, torch.nn.Module]) -> dict[str, float]:
    return {name: float(metric.compute()) for name, metric in metrics.items()}


def per_item_scores(data: dict, chosen: list[int]) -> dict[str, torch.Tensor]:
    metric = PerItemScores(["nll", "energy"])
    items = data["forget"]
    rows = torch.tensor(chosen)
    metric.update(items["index"][rows], {"nll": items["nll"][rows], "energy": items["energy"][rows]})
    return metric.compute()


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    try:
        data = make_data()
        metrics = build_metrics()
        update_all(metrics, data, {name: shard(size, rank) for name, size in SIZES.items()})
        values = compute_all(metrics)
        gathered = per_item_scores(data, shard(SIZES["forget"], rank))
        torch.save({"values": values, "per_item": gathered}, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.fixture(scope="module")
def distributed_results() -> list[dict]:
    with tempfile.TemporaryDirectory() as out_dir:
        init_file = os.path.join(out_dir, "init")
        mp.start_processes(_worker, args=(init_file, out_dir), nprocs=WORLD_SIZE, start_method="spawn", join=True)
        return [torch.load(Path(out_dir) / f"rank{rank}.pt") for rank in range(WORLD_SIZE)]


def test_shards_are_uneven_and_padded() -> None:
    assert shard(7, 0) == [0, 2, 4, 6]
    assert shard(7, 1) == [1, 3, 5, 0]


@pytest.mark.parametrize("name", list(build_metrics()))
def test_metric_two_processes_match_one(name: str, distributed_results: list[dict]) -> None:
    data = make_data()
    single = build_metrics()
    update_all(single, data, {set_name: list(range(size)) for set_name, size in SIZES.items()})
    expected = float(single[name].compute())

    assert math.isfinite(expected)
    for rank, result in enumerate(distributed_results):
        assert result["values"][name] == pytest.approx(expected, rel=1e-12), f"rank {rank}"


def test_padding_would_change_the_mean(distributed_results: list[dict]) -> None:
    # Counting the repeated item 0 twice gives another probability, so the deduplication matters.
    data = make_data()
    nll = data["forget"]["nll"]
    with_duplicate = torch.cat([nll, nll[:1]])
    assert M.nanmean(M.answer_probability(with_duplicate)) != pytest.approx(distributed_results[0]["values"]["probability"])


def test_per_item_scores_two_processes(distributed_results: list[dict]) -> None:
    expected = per_item_scores(make_data(), list(range(SIZES["forget"])))
    for result in distributed_results:
        assert torch.equal(result["per_item"]["index"], expected["index"])
        assert torch.allclose(result["per_item"]["energy"], expected["energy"])
