"""Shared fixtures: the real TOFU folder beside the checkout and a very small model built from it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eua.models.loading import ModelSpec, load_model, load_tokenizer
from eua.models.tiny import TinyLlamaSpec, build_tiny_model

REPO_ROOT = Path(__file__).resolve().parents[1]
TOFU_DIR = REPO_ROOT.parent / "shared" / "data" / "tofu"

# Small enough that a forward pass takes milliseconds, large enough to memorise a few answers.
TEST_MODEL_SPEC = TinyLlamaSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64, vocab_size=512)


@pytest.fixture(scope="session")
def tofu_dir() -> Path:
    if not (TOFU_DIR / "full.jsonl").is_file():
        pytest.fail(f"TOFU data not found at {TOFU_DIR}; the tests read the real files from ../shared/data/tofu")
    return TOFU_DIR


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory, tofu_dir: Path) -> Path:
    """A saved tiny-model folder (tokenizer trained on TOFU text, random weights)."""
    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny", tofu_dir, TEST_MODEL_SPEC)


@pytest.fixture(scope="session")
def tiny_spec(tiny_model_dir: Path, tofu_dir: Path) -> ModelSpec:
    return ModelSpec(name_or_path=str(tiny_model_dir), data_dir=str(tofu_dir))


@pytest.fixture()
def tokenizer(tiny_spec: ModelSpec):
    return load_tokenizer(tiny_spec)


@pytest.fixture()
def tiny_model(tiny_spec: ModelSpec):
    torch.manual_seed(0)
    return load_model(tiny_spec)
