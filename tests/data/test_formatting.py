"""Prompt formatting and answer-only labels on known examples."""

from __future__ import annotations

import pytest

from eua.data.formatting import IGNORE_INDEX, PLAIN_PROMPT, encode_pair, end_of_turn_id

CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_plain_template_masks_prompt(tokenizer):
    pair = encode_pair(tokenizer, "Who wrote it?", "Jaime Vasquez wrote it.", max_length=128)

    prompt_ids = tokenizer(PLAIN_PROMPT.format(question="Who wrote it?"))["input_ids"]
    assert pair.input_ids[: len(prompt_ids)] == prompt_ids
    assert pair.prompt_length == len(prompt_ids)
    assert pair.labels[: pair.prompt_length] == [IGNORE_INDEX] * pair.prompt_length
    assert pair.labels[pair.prompt_length :] == pair.input_ids[pair.prompt_length :]
    assert tokenizer.decode(pair.labels[pair.prompt_length : -1]).strip() == "Jaime Vasquez wrote it."


def test_plain_template_ends_with_eos_label(tokenizer):
    pair = encode_pair(tokenizer, "Who wrote it?", "Nobody.", max_length=128)

    assert pair.input_ids[-1] == tokenizer.eos_token_id
    assert pair.labels[-1] == tokenizer.eos_token_id
    assert pair.input_ids[0] == tokenizer.bos_token_id


def test_eos_label_kept_when_pad_is_eos(tokenizer):
    tokenizer.pad_token = tokenizer.eos_token
    assert tokenizer.pad_token_id == tokenizer.eos_token_id

    pair = encode_pair(tokenizer, "Who wrote it?", "Nobody.", max_length=128)

    assert pair.labels[-1] == tokenizer.eos_token_id


def test_chat_template_labels_end_of_turn(tokenizer):
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tokenizer.chat_template = CHAT_TEMPLATE
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")

    pair = encode_pair(tokenizer, "Who wrote it?", "Nobody.", max_length=128)

    prompt = tokenizer.decode(pair.input_ids[: pair.prompt_length])
    assert prompt == "<|im_start|>user\nWho wrote it?<|im_end|>\n<|im_start|>assistant\n"
    assert end_of_turn_id(tokenizer) == im_end
    assert pair.input_ids[-1] == im_end
    assert pair.labels[-1] == im_end
    assert tokenizer.decode(pair.labels[pair.prompt_length : -1]) == "Nobody."


def test_long_answer_is_cut_not_prompt(tokenizer):
    pair = encode_pair(tokenizer, "Who?", "word " * 200, max_length=32)

    assert len(pair.input_ids) == 32
    assert pair.truncated
    assert pair.prompt_length < 32


def test_prompt_longer_than_max_length_rejected(tokenizer):
    with pytest.raises(ValueError, match="max_length=4"):
        encode_pair(tokenizer, "A question that is much too long for four tokens", "x", max_length=4)
