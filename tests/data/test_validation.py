"""Bad TOFU input: every case gives an error or warning that names the file, line or field and the fix."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from transformers import PreTrainedTokenizerFast

from eua.data.datamodule import TOFUDataModule
from eua.data.formatting import encode_pair
from eua.data.tofu import DataError, load_split, read_jsonl, resolve_data_dir, split_percentage

ROW = {"question": "Who wrote the book?", "answer": "Jane Doe wrote it."}


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_rows(path: Path, rows: list[dict]) -> Path:
    return write_lines(path, [json.dumps(row) for row in rows])


def test_malformed_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "forget01.jsonl", [json.dumps(ROW), '{"question": "Q", "answer": '])
    with pytest.raises(DataError, match=r"forget01\.jsonl:2: invalid JSON at column \d+ \("):
        read_jsonl(path, split="forget01")


def test_non_object_line_rejected(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "forget01.jsonl", ['["a list", "not an object"]'])
    with pytest.raises(DataError, match=r"forget01\.jsonl:1: expected a JSON object, got list"):
        read_jsonl(path, split="forget01")


def test_missing_field_names_field(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "forget01.jsonl", [ROW, {"question": "Q only"}])
    with pytest.raises(DataError, match=r"forget01\.jsonl:2: missing field 'answer'"):
        read_jsonl(path, split="forget01")


def test_empty_field_rejected(tmp_path: Path) -> None:
    path = write_rows(tmp_path / "retain99.jsonl", [{"question": "Q", "answer": "   "}])
    with pytest.raises(DataError, match=r"retain99\.jsonl:1: field 'answer' must be a non-empty string"):
        read_jsonl(path, split="retain99")


def test_bad_perturbed_answers_rejected(tmp_path: Path) -> None:
    row = {**ROW, "perturbed_answer": "one string, not a list"}
    path = write_rows(tmp_path / "world_facts_perturbed.jsonl", [row])
    with pytest.raises(DataError, match=r":1: field 'perturbed_answer' must be a non-empty list of strings"):
        read_jsonl(path, split="world_facts_perturbed")


def test_empty_split_rejected(tmp_path: Path) -> None:
    write_lines(tmp_path / "forget01.jsonl", ["", "   "])
    with pytest.raises(DataError, match=r"split 'forget01' is empty"):
        load_split("forget01", tmp_path)


def test_missing_split_lists_available(tmp_path: Path) -> None:
    write_rows(tmp_path / "forget05.jsonl", [ROW])
    with pytest.raises(DataError, match=r"forget01\.jsonl' not found; files in that folder: forget05"):
        load_split("forget01", tmp_path)


def test_missing_data_dir_rejected(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"does not exist; pass data_dir"):
        resolve_data_dir(tmp_path / "nowhere")


def test_non_utf8_file_names_byte(tmp_path: Path) -> None:
    path = tmp_path / "forget01.jsonl"
    path.write_bytes(b'{"question": "Caf\xe9?", "answer": "Yes."}\n')
    with pytest.raises(DataError, match=r"forget01\.jsonl: not valid UTF-8 at byte 17; re-save the file as UTF-8"):
        read_jsonl(path, split="forget01")


def test_bad_forget_split_name_rejected() -> None:
    with pytest.raises(DataError, match=r"forgetNN .* got 'forget_ten'"):
        split_percentage("forget_ten")


def overlap_module(tmp_path: Path, allow_overlap: bool) -> TOFUDataModule:
    forget = [{"question": f"Forget question {i}?", "answer": f"Answer {i}."} for i in range(4)]
    retain = [{"question": f"Retain question {i}?", "answer": f"Answer {i}."} for i in range(5)]
    write_rows(tmp_path / "forget01.jsonl", forget)
    write_rows(tmp_path / "retain99.jsonl", retain + forget[:2])
    return TOFUDataModule(data_dir=str(tmp_path), forget_split="forget01", allow_overlap=allow_overlap)


def test_overlap_warns_with_count(tmp_path: Path) -> None:
    datamodule = overlap_module(tmp_path, allow_overlap=True)
    with pytest.warns(UserWarning, match=r"2 of 7 rows of retain split 'retain99' also appear in forget split"):
        rows = datamodule.retain_rows()
    assert len(rows) == 7


def test_overlap_rejected_when_disallowed(tmp_path: Path) -> None:
    datamodule = overlap_module(tmp_path, allow_overlap=False)
    with pytest.raises(DataError, match=r"2 of 7 rows .* set data.allow_overlap true"):
        datamodule.retain_rows()


def test_retain_authors_below_one_rejected(tofu_dir: Path) -> None:
    datamodule = TOFUDataModule(data_dir=str(tofu_dir), forget_split="forget01", retain_authors=0)
    with pytest.raises(DataError, match="retain_authors must be at least 1, got 0"):
        datamodule.retain_rows()


def test_unknown_eval_set_rejected() -> None:
    with pytest.raises(ValueError, match=r"unknown eval_sets \['forgot'\]"):
        TOFUDataModule(eval_sets=["forget", "forgot"])


def test_truncation_counted_per_split(tofu_dir: Path, tokenizer) -> None:
    datamodule = TOFUDataModule(
        data_dir=str(tofu_dir),
        forget_split="forget01",
        retain_authors=1,
        mode="unlearn",
        eval_sets=["forget"],
        eval_limit=3,
        max_length=96,
    )
    datamodule.tokenizer = tokenizer
    with pytest.warns(UserWarning) as records:
        datamodule.setup("fit")
    messages = [str(record.message) for record in records]

    for split in ("forget", "retain", "forget evaluation"):
        matching = [m for m in messages if f" {split} rows had an answer cut to max_length=96" in m]
        assert matching, f"no truncation warning for {split}: {messages}"

    forget_count = datamodule.train_dataset.forget.truncated_count
    assert forget_count > 0
    assert any(m.startswith(f"{forget_count} of 40 forget rows") for m in messages)


def test_prompt_longer_than_max_length_rejected(tokenizer) -> None:
    with pytest.raises(ValueError, match=r"leaves no room for the answer within max_length=4; raise max_length"):
        encode_pair(tokenizer, "A question that is far longer than four tokens?", "Answer.", max_length=4)


@pytest.fixture()
def lightning_logs(caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch) -> pytest.LogCaptureFixture:
    """``caplog`` that also sees Lightning's rank-zero messages (a Trainer turns their propagation off)."""
    monkeypatch.setattr(logging.getLogger("lightning.pytorch"), "propagate", True)
    return caplog


def test_no_chat_template_fallback_logged(tofu_dir: Path, tokenizer, lightning_logs: pytest.LogCaptureFixture) -> None:
    caplog = lightning_logs
    datamodule = TOFUDataModule(data_dir=str(tofu_dir), forget_split="forget01", eval_sets=["forget"], eval_limit=2)
    datamodule.tokenizer = tokenizer
    with caplog.at_level(logging.INFO):
        datamodule.setup("validate")
    assert "no chat template, so the plain prompt 'Question: {question}\\nAnswer:' is used" in caplog.text
    assert "answers ending with eos '</s>'" in caplog.text


def test_no_pad_token_falls_back_to_eos(tofu_dir: Path, tokenizer, lightning_logs: pytest.LogCaptureFixture) -> None:
    caplog = lightning_logs
    tokenizer.pad_token = None
    assert tokenizer.pad_token_id is None
    datamodule = TOFUDataModule(data_dir=str(tofu_dir), forget_split="forget01", eval_sets=["forget"], eval_limit=2)
    datamodule.tokenizer = tokenizer

    with caplog.at_level(logging.INFO):
        datamodule.setup("validate")

    assert "padding with eos token '</s>' because the tokenizer has no pad token" in caplog.text
    assert datamodule.pad_token_id == tokenizer.eos_token_id


def test_no_pad_and_no_eos_rejected(tokenizer) -> None:
    bare = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer)
    assert bare.pad_token_id is None
    assert bare.eos_token_id is None
    datamodule = TOFUDataModule()
    datamodule.tokenizer = bare
    with pytest.raises(ValueError, match="neither a pad nor an eos token; set tokenizer.pad_token"):
        _ = datamodule.pad_token_id
