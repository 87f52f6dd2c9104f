"""In-process resume checks: loader position, retain partners, the frozen reference, determinism."""

from __future__ import annotations

import math
from pathlib import Path

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from eua.data.datasets import PairedDataset, QACollator
from eua.data.resumable import ResumableDataLoader
from eua.models.loading import load_model
from eua.objectives import EUA
from tests.reliability.helpers import LossRecorder, make_datamodule, make_trainer


class RangeDataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> int:
        return index


def batches_of(loader: ResumableDataLoader, count: int | None = None) -> list[list[int]]:
    batches = []
    for batch in loader:
        batches.append(batch.tolist())
        if count is not None and len(batches) == count:
            break
    return batches


def test_loader_resumes_at_saved_batch() -> None:
    loader = ResumableDataLoader(RangeDataset(), batch_size=3, collate_fn=torch.tensor, seed=5)
    loader.sampler.set_epoch(2)
    full_epoch = batches_of(loader)
    assert len(full_epoch) == 4

    interrupted = ResumableDataLoader(RangeDataset(), batch_size=3, collate_fn=torch.tensor, seed=5)
    interrupted.sampler.set_epoch(2)
    assert batches_of(interrupted, count=2) == full_epoch[:2]
    state = interrupted.state_dict()
    assert state == {"epoch": 2, "batches_yielded": 2, "seed": 5}

    resumed = ResumableDataLoader(RangeDataset(), batch_size=3, collate_fn=torch.tensor, seed=5)
    resumed.load_state_dict(state)
    assert batches_of(resumed) == full_epoch[2:]
    assert batches_of(resumed) == full_epoch, "the epoch after the resumed one must start from its first batch"


def test_loader_orders_differ_by_epoch() -> None:
    loader = ResumableDataLoader(RangeDataset(), batch_size=10, collate_fn=torch.tensor, seed=0)
    orders = []
    for epoch in range(3):
        loader.sampler.set_epoch(epoch)
        orders.append(batches_of(loader)[0])
    assert all(sorted(order) == list(range(10)) for order in orders)
    assert orders[0] != orders[1]
    assert orders[1] != orders[2]


def test_loader_rejects_other_seed() -> None:
    loader = ResumableDataLoader(RangeDataset(), batch_size=3, collate_fn=torch.tensor, seed=1)
    with pytest.raises(ValueError, match="trained with data.seed=0, this run has 1; resume with the same data.seed"):
        loader.load_state_dict({"epoch": 0, "batches_yielded": 1, "seed": 0})


def test_retain_partners_follow_loader_epoch(tofu_dir: Path, tokenizer) -> None:
    datamodule = make_datamodule(tofu_dir, "unlearn")
    datamodule.tokenizer = tokenizer
    datamodule.setup("fit")
    dataset = datamodule.train_dataset
    assert isinstance(dataset, PairedDataset)

    def partners(epoch: int) -> list[list[int]]:
        dataset.set_epoch(epoch)
        return [dataset[i]["retain"]["input_ids"] for i in range(len(dataset))]

    expected = partners(3)
    dataset.set_epoch(0)

    # A restored loader sets the epoch on its sampler, which passes it on to the paired dataset.
    loader = ResumableDataLoader(dataset, batch_size=4, collate_fn=QACollator(0), seed=0)
    loader.load_state_dict({"epoch": 3, "batches_yielded": 1, "seed": 0})
    assert dataset.epoch == 3
    assert [dataset[i]["retain"]["input_ids"] for i in range(len(dataset))] == expected
    assert partners(0) != expected


def test_reference_is_starting_weights_on_resume(make_module, tiny_spec, tofu_dir: Path, tmp_path: Path) -> None:
    checkpoints = ModelCheckpoint(dirpath=tmp_path / "checkpoints", every_n_train_steps=2, save_last=True)
    first = make_module(EUA(), learning_rate=1e-2)
    make_trainer(tmp_path, max_steps=4, callbacks=[checkpoints], enable_checkpointing=True).fit(
        first, datamodule=make_datamodule(tofu_dir, "unlearn")
    )
    trained = first.model.state_dict()

    resumed = make_module(EUA(), learning_rate=1e-2)
    trainer = make_trainer(tmp_path, max_steps=6, enable_checkpointing=False)
    trainer.fit(resumed, datamodule=make_datamodule(tofu_dir, "unlearn"), ckpt_path=str(tmp_path / "checkpoints" / "last.ckpt"), weights_only=True)
    assert trainer.global_step == 6

    starting = load_model(tiny_spec).state_dict()
    reference = resumed.reference_model.state_dict()
    name = "model.embed_tokens.weight"
    assert not torch.equal(trained[name], starting[name]), "the first run did not change the weights"
    for key, value in starting.items():
        assert torch.equal(reference[key], value), f"reference {key} is not the starting weight"


def seeded_run(make_module, tofu_dir: Path, root: Path) -> tuple[list[float], dict]:
    L.seed_everything(0)
    module = make_module()
    recorder = LossRecorder()
    trainer = make_trainer(root, max_steps=6, callbacks=[recorder], limit_val_batches=1.0)
    datamodule = make_datamodule(tofu_dir, "finetune")
    trainer.fit(module, datamodule=datamodule)
    trainer.validate(module, datamodule=datamodule)
    # NaN (a metric the run could not compute, such as ROUGE-L without generation) != NaN, so use None.
    aggregate = {key: None if isinstance(value, float) and math.isnan(value) else value for key, value in module.last_results["aggregate"].items()}
    return recorder.losses, aggregate


def test_seeded_runs_repeat(make_module, tofu_dir: Path, tmp_path: Path) -> None:
    first_losses, first_metrics = seeded_run(make_module, tofu_dir, tmp_path / "first")
    second_losses, second_metrics = seeded_run(make_module, tofu_dir, tmp_path / "second")

    assert len(first_losses) == 6
    assert first_losses == second_losses
    assert first_metrics["forget/probability"] is not None
    assert first_metrics == second_metrics
