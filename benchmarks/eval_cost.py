"""Time a full TOFU evaluation on forget01: seconds per 100 items for probability metrics and for generation.

Runs every evaluation set (forget, retain, real authors, world facts, holdout) through the same
code as ``eua test``. ``score_batch`` without generation makes one forward pass per sequence
group, which gives probabilities, truth ratios, memorization, attack scores and energies. Batched
greedy generation with ROUGE is timed separately, on the sets that report ROUGE. Then
``aggregate`` builds every TOFU number from the per-item values.

    python benchmarks/eval_cost.py --models tiny smollm2 --smollm2-limit 8

``--limit N`` keeps the first N rows of each set (for every model); ``--smollm2-limit`` does
so for SmolLM2 only, whose CPU evaluation on all 697 items takes far longer than the tiny model's.
"""

from __future__ import annotations

import argparse
import logging
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # this checkout's eua, not an installed copy

import numpy as np  # noqa: E402
import torch  # noqa: E402

from eua.data.datamodule import GENERATION_SETS, TOFUDataModule  # noqa: E402
from eua.energy import EnergyHead  # noqa: E402
from eua.evaluation.scoring import generate_answers, score_batch  # noqa: E402
from eua.evaluation.tofu import aggregate  # noqa: E402
from eua.metrics.functional import rouge_scores  # noqa: E402
from eua.models.loading import ModelSpec, load_model, load_tokenizer  # noqa: E402

DATA_DIR = REPO.parent / "shared" / "data" / "tofu"
TRAINED_TINY = REPO / "artifacts" / "tofu_tiny" / "target"


def model_spec(name: str) -> ModelSpec:
    if name == "smollm2":
        return ModelSpec(name_or_path="smollm2-gguf")
    if (TRAINED_TINY / "config.json").is_file():
        return ModelSpec(name_or_path=str(TRAINED_TINY))
    # No finetuned tiny model: the untrained default one costs the same per item.
    return ModelSpec(name_or_path="tiny", tiny_dir=str(REPO / "artifacts" / "tiny-init"), data_dir=str(DATA_DIR))


def evaluate(name: str, limit: int | None, batch_size: int, max_new_tokens: int) -> dict[str, float]:
    spec = model_spec(name)
    started = time.perf_counter()
    tokenizer = load_tokenizer(spec)
    model = load_model(spec).eval()
    load_seconds = time.perf_counter() - started

    datamodule = TOFUDataModule(
        data_dir=str(DATA_DIR), forget_split="forget01", eval_limit=limit, max_length=256, eval_batch_size=batch_size
    )
    datamodule.tokenizer = tokenizer
    datamodule.setup("test")

    energy_head = EnergyHead()
    probability_seconds = generation_seconds = 0.0
    probability_items = generation_items = 0
    per_set: dict[str, dict[str, np.ndarray]] = {}
    for set_name, loader in zip(datamodule.eval_set_names, datamodule.test_dataloader()):
        columns: dict[str, list[np.ndarray]] = {}
        for batch in loader:
            tick = time.perf_counter()
            scores = score_batch(model, tokenizer, energy_head, batch, max_new_tokens, generate=False)
            probability_seconds += time.perf_counter() - tick
            probability_items += len(batch["index"])

            if set_name in GENERATION_SETS:
                tick = time.perf_counter()
                generations = generate_answers(model, tokenizer, batch["prompt"], max_new_tokens)
                rouge = rouge_scores(generations, batch["answer_text"])
                generation_seconds += time.perf_counter() - tick
                generation_items += len(generations)
                scores["rouge_l_recall"] = torch.as_tensor(rouge["rougeL_recall"])
                scores["rouge1_recall"] = torch.as_tensor(rouge["rouge1_recall"])
                scores["rouge_l_f1"] = torch.as_tensor(rouge["rougeL_f1"])
            for field, values in scores.items():
                columns.setdefault(field, []).append(values.float().cpu().numpy())
        per_set[set_name] = {field: np.concatenate(parts) for field, parts in columns.items()}

    tick = time.perf_counter()
    aggregates = aggregate(per_set, None)
    aggregate_seconds = time.perf_counter() - tick
    return {
        "load_s": load_seconds,
        "items": probability_items,
        "generated_items": generation_items,
        "probability_s": probability_seconds,
        "generation_s": generation_seconds,
        "aggregate_s": aggregate_seconds,
        "probability_s_per_100": 100 * probability_seconds / max(probability_items, 1),
        "generation_s_per_100": 100 * generation_seconds / max(generation_items, 1),
        "forget_probability": aggregates["forget/probability"],
        "model_utility": aggregates.get("model_utility", float("nan")),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", choices=["tiny", "smollm2"], default=["tiny", "smollm2"])
    parser.add_argument("--limit", type=int, default=None, help="rows per evaluation set, every model (default: all)")
    parser.add_argument("--smollm2-limit", type=int, default=8, help="rows per evaluation set for SmolLM2 (0: all)")
    parser.add_argument("--batch-size", type=int, default=16, help="evaluation batch size")
    parser.add_argument("--max-new-tokens", type=int, default=64, help="generation length for ROUGE")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    print(f"machine: {platform.processor() or platform.machine()}, torch threads {torch.get_num_threads()}, torch {torch.__version__}")
    print("| model | items | generated | load s | probability s / 100 items | generation s / 100 items | total s |")
    print("|---|---|---|---|---|---|---|")
    for name in args.models:
        limit = args.limit
        if name == "smollm2" and args.smollm2_limit:
            limit = args.smollm2_limit
        result = evaluate(name, limit, args.batch_size, args.max_new_tokens)
        total = result["probability_s"] + result["generation_s"] + result["aggregate_s"]
        print(
            f"| {name} | {result['items']} | {result['generated_items']} | {result['load_s']:.1f} | "
            f"{result['probability_s_per_100']:.2f} | {result['generation_s_per_100']:.2f} | {total:.1f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
