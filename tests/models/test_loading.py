"""Model loading: the tiny default, folders, the SmolLM2 GGUF and its one-time conversion."""

from __future__ import annotations

import pytest

from eua.data.formatting import encode_pair
from eua.models.loading import ModelSpec, find_smollm2_gguf, load_model, load_tokenizer
from eua.models.tiny import build_tiny_model


def test_tiny_model_built_once(tmp_path, tofu_dir):
    from tests.conftest import TEST_MODEL_SPEC

    folder = build_tiny_model(tmp_path / "tiny", tofu_dir, TEST_MODEL_SPEC)
    stamp = (folder / "model.safetensors").stat().st_mtime_ns

    again = build_tiny_model(tmp_path / "tiny", tofu_dir, TEST_MODEL_SPEC)

    assert again == folder
    assert (folder / "model.safetensors").stat().st_mtime_ns == stamp
    assert not (tmp_path / "tiny.partial").exists()


def test_tiny_tokenizer_has_distinct_pad(tiny_spec):
    tokenizer = load_tokenizer(tiny_spec)

    assert tokenizer.pad_token_id is not None
    assert tokenizer.pad_token_id != tokenizer.eos_token_id


def test_missing_gguf_file_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="absent.gguf"):
        load_model(ModelSpec(name_or_path=str(tmp_path / "absent.gguf")))


def test_invalid_dtype_rejected(tiny_spec):
    spec = ModelSpec(name_or_path=tiny_spec.name_or_path, dtype="float33")

    with pytest.raises(ValueError, match="float33"):
        load_model(spec)


def test_smollm2_gguf_converts_once(tmp_path):
    pytest.importorskip("gguf")
    try:
        find_smollm2_gguf()
    except FileNotFoundError as error:
        pytest.skip(str(error))
    spec = ModelSpec(name_or_path="smollm2-gguf", gguf_cache_dir=str(tmp_path))

    tokenizer = load_tokenizer(spec)
    model = load_model(spec)

    converted = tmp_path / "SmolLM2-135M-Instruct.Q4_1"
    assert (converted / "model.safetensors").is_file()
    assert model.num_parameters() > 100_000_000
    # SmolLM2 pads with its end-of-turn token; the answer must still end with it as a label.
    assert tokenizer.pad_token_id == tokenizer.eos_token_id
    pair = encode_pair(tokenizer, "Who wrote it?", "Nobody.", max_length=128)
    assert pair.labels[-1] == tokenizer.convert_tokens_to_ids("<|im_end|>")
