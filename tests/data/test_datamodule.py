"""The TOFU DataModule on the real data: splits, subsets, paired batches, evaluation sets, bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from eua.data.datamodule import TOFUDataModule
from eua.data.formatting import IGNORE_INDEX
from eua.data.tofu import DataError, load_split, retain_split_for


def make_datamodule(tofu_dir: Path, tokenizer, **kwargs) -> TOFUDataModule:
    options = {"data_dir": str(tofu_dir), "forget_split": "forget01", "retain_authors": 2, "max_length": 128}
    options.update(kwargs)
    datamodule = TOFUDataModule(**options)
    datamodule.tokenizer = tokenizer
    return datamodule


def test_retain_split_complements_forget():
    assert retain_split_for("forget01") == "retain99"
    assert retain_split_for("forget10") == "retain90"


def test_retain_authors_keeps_whole_authors(tofu_dir, tokenizer):
    datamodule = make_datamodule(tofu_dir, tokenizer, retain_authors=3)

    assert len(datamodule.retain_rows()) == 60
    assert len(datamodule.forget_rows()) == 40


def test_paired_batch_has_three_parts(tofu_dir, tokenizer):
    datamodule = make_datamodule(tofu_dir, tokenizer, batch_size=4)
    datamodule.setup("fit")

    batch = next(iter(datamodule.train_dataloader()))

    assert set(batch) == {"forget", "retain", "refusal"}
    for part in batch.values():
        assert part["input_ids"].shape == part["labels"].shape == part["attention_mask"].shape
        assert part["input_ids"].shape[0] == 4
        assert (part["labels"] != IGNORE_INDEX).any(dim=1).all()


def test_refusal_part_answers_forget_question(tofu_dir, tokenizer):
    datamodule = make_datamodule(tofu_dir, tokenizer)
    datamodule.setup("fit")
    refusals = {row["text"] for row in load_split("idontknow", tofu_dir)}
    dataset = datamodule.train_dataset

    for index in range(3):
        forget = dataset.forget.pairs[index]
        refusal = dataset.refusal.pairs[index]
        assert refusal.input_ids[: refusal.prompt_length] == forget.input_ids[: forget.prompt_length]
        answer = tokenizer.decode(refusal.input_ids[refusal.prompt_length : -1]).strip()
        assert answer in refusals


def test_finetune_mode_plain_batches(tofu_dir, tokenizer):
    datamodule = make_datamodule(tofu_dir, tokenizer, mode="finetune", finetune_on="retain", batch_size=5)
    datamodule.setup("fit")

    batch = next(iter(datamodule.train_dataloader()))

    assert len(datamodule.train_dataset) == 40
    assert set(batch) == {"input_ids", "attention_mask", "labels", "index"}


def test_retain_eval_set_limited_to_subset(tofu_dir, tokenizer):
    datamodule = make_datamodule(tofu_dir, tokenizer, retain_authors=2)
    datamodule.setup("test")

    assert len(datamodule.eval_datasets["retain"]) == 40
    assert len(datamodule.eval_datasets["forget"]) == 40
    assert len(datamodule.eval_datasets["real_authors"]) == 100
    assert len(datamodule.eval_datasets["world_facts"]) == 117


def test_missing_split_names_file(tmp_path, tokenizer):
    datamodule = make_datamodule(tmp_path, tokenizer)

    with pytest.raises(DataError, match=r"forget01\.jsonl.*not found"):
        datamodule.setup("fit")


def test_malformed_line_names_file_and_line(tmp_path, tofu_dir):
    lines = (tofu_dir / "forget01.jsonl").read_text().splitlines()
    lines[2] = lines[2][:-5]
    (tmp_path / "forget01.jsonl").write_text("\n".join(lines) + "\n")

    with pytest.raises(DataError, match=r"forget01\.jsonl:3: invalid JSON"):
        load_split("forget01", tmp_path)


def test_row_without_answer_names_field(tmp_path, tofu_dir):
    shutil.copy(tofu_dir / "forget01.jsonl", tmp_path / "forget01.jsonl")
    with (tmp_path / "forget01.jsonl").open("a") as stream:
        stream.write(json.dumps({"question": "Where is the answer?"}) + "\n")

    with pytest.raises(DataError, match=r"forget01\.jsonl:41: missing field 'answer'"):
        load_split("forget01", tmp_path)


def test_missing_data_dir_explains_options(tmp_path):
    with pytest.raises(DataError, match="EUA_TOFU_DIR"):
        load_split("forget01", tmp_path / "absent")
