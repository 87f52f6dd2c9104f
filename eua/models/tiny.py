"""The offline default model: a small Llama with a byte-level BPE tokenizer trained on TOFU text.

Nothing is downloaded. The tokenizer is trained by ``tokenizers`` on every question, answer and
refusal string of the TOFU folder, the model is initialised from a seeded ``LlamaConfig``, and both
are saved with ``save_pretrained`` so that every later stage loads the same starting point.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from eua.data.formatting import PLAIN_PROMPT
from eua.data.tofu import load_split

log = logging.getLogger(__name__)

SPECIAL_TOKENS = {"pad_token": "<pad>", "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
TEXT_SPLITS = ("full", "real_authors_perturbed", "world_facts_perturbed", "forget10_perturbed", "retain_perturbed")


@dataclass
class TinyLlamaSpec:
    """Size of the offline default model (about 1.05M parameters with these defaults)."""

    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 512
    vocab_size: int = 4096
    max_position_embeddings: int = 512
    seed: int = 0


def tofu_text(data_dir: str | Path | None) -> list[str]:
    """Collect every prompt, answer and refusal string of the TOFU splits, for tokenizer training."""
    texts = [row["text"] for row in load_split("idontknow", data_dir)]
    for split in TEXT_SPLITS:
        for row in load_split(split, data_dir):
            texts.append(PLAIN_PROMPT.format(question=row["question"]))
            texts.append(row["answer"])
            texts.extend(row.get("perturbed_answer", []))
            if "paraphrased_answer" in row:
                texts.append(row["paraphrased_answer"])
    return texts


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer that adds ``<s>`` in front of every sequence."""
    tokenizer = Tokenizer(models.BPE(unk_token=SPECIAL_TOKENS["unk_token"]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)

    bos = SPECIAL_TOKENS["bos_token"]
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A $B", special_tokens=[(bos, tokenizer.token_to_id(bos))]
    )
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, **SPECIAL_TOKENS)


def build_tiny_model(output_dir: str | Path, data_dir: str | Path | None, spec: TinyLlamaSpec | None = None) -> Path:
    """Create the tiny model folder at ``output_dir`` unless it already holds one; return its path."""
    output = Path(output_dir)
    if (output / "config.json").is_file() and (output / "tokenizer.json").is_file():
        return output
    spec = spec or TinyLlamaSpec()

    log.info("Training a %d-token BPE tokenizer on TOFU text for the tiny model", spec.vocab_size)
    tokenizer = train_tokenizer(tofu_text(data_dir), spec.vocab_size)

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_layers,
        num_attention_heads=spec.num_heads,
        num_key_value_heads=spec.num_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)

    # Write into a temporary folder and rename, so a crash never leaves half a model behind.
    partial = output.with_name(output.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(partial)
    tokenizer.save_pretrained(partial)
    (partial / "tiny_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    partial.rename(output)
    log.info("Saved the tiny model (%d parameters) to %s", model.num_parameters(), output)
    return output
