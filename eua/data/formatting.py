"""Prompt formatting and label masking for question-answer pairs.

A pair becomes ``prompt_ids + answer_ids``. Labels are ``-100`` on the prompt and equal to the
token ids on the answer, so the loss falls only on answer tokens. The answer span ends with the
end-of-turn token (the chat template's, else ``eos``), which is a label even when the tokenizer
uses the same id for padding: labels are built from positions, never by masking pad ids.

With a chat template the prompt is the user turn plus the generation prompt, otherwise the plain
template ``Question: {question}\\nAnswer:`` followed by `` {answer}<eos>``.
"""

from __future__ import annotations

from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
PLAIN_PROMPT = "Question: {question}\nAnswer:"


@dataclass
class EncodedPair:
    """Token ids of one question-answer pair and its labels (``-100`` outside the answer)."""

    input_ids: list[int]
    labels: list[int]
    prompt_length: int
    truncated: bool


def has_chat_template(tokenizer: PreTrainedTokenizerBase) -> bool:
    return bool(getattr(tokenizer, "chat_template", None))


def describe_format(tokenizer: PreTrainedTokenizerBase) -> str:
    """Describe the prompt format and answer end token that ``encode_pair`` uses with ``tokenizer``."""
    end = tokenizer.convert_ids_to_tokens(end_of_turn_id(tokenizer))
    if has_chat_template(tokenizer):
        return f"the tokenizer's chat template, answers ending with {end!r}"
    return (
        f"no chat template, so the plain prompt {PLAIN_PROMPT!r} is used, answers ending with eos {end!r}; "
        "set tokenizer.chat_template to use a chat format"
    )


def prompt_text(tokenizer: PreTrainedTokenizerBase, question: str) -> str:
    """Return the text the model sees before its answer."""
    if has_chat_template(tokenizer):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
        )
    return PLAIN_PROMPT.format(question=question)


def encode_prompt(tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
    """Encode the prompt of ``question``, special tokens included, as generation input."""
    text = prompt_text(tokenizer, question)
    # A chat template writes its own special tokens, so the tokenizer must not add a BOS again.
    return tokenizer(text, add_special_tokens=not has_chat_template(tokenizer))["input_ids"]


def encode_answer(tokenizer: PreTrainedTokenizerBase, question: str, answer: str) -> list[int]:
    """Encode the answer span, ending with the end-of-turn token."""
    if has_chat_template(tokenizer):
        prompt = prompt_text(tokenizer, question)
        full = tokenizer.apply_chat_template(
            [{"role": "user", "content": question}, {"role": "assistant", "content": answer}],
            tokenize=False,
        )
        if not full.startswith(prompt):
            raise ValueError(
                "the tokenizer's chat template does not extend the generation prompt with the answer; "
                "set a chat template whose assistant turn follows add_generation_prompt=True"
            )
        ids = tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]
        # Templates may end with a newline after the end-of-turn token: drop what follows it.
        end = end_of_turn_id(tokenizer)
        if end in ids:
            ids = ids[: len(ids) - ids[::-1].index(end)]
        else:
            ids = ids + [end]
        return ids

    ids = tokenizer(" " + answer, add_special_tokens=False)["input_ids"]
    return ids + [end_of_turn_id(tokenizer)]


def end_of_turn_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Return the token that ends an answer: the chat template's end of turn, else ``eos``."""
    if has_chat_template(tokenizer):
        ids = tokenizer(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}], tokenize=False
            ),
            add_special_tokens=False,
        )["input_ids"]
        special = set(tokenizer.all_special_ids)
        for token_id in reversed(ids):
            if token_id in special:
                return token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither a chat template nor an eos token; set tokenizer.eos_token")
    return tokenizer.eos_token_id


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, question: str, answer: str, max_length: int
) -> EncodedPair:
    """Encode one pair, cutting the answer (never the prompt) to fit ``max_length`` tokens."""
    prompt_ids = encode_prompt(tokenizer, question)
    answer_ids = encode_answer(tokenizer, question, answer)

    if len(prompt_ids) >= max_length:
        raise ValueError(
            f"the prompt of question {question[:60]!r} has {len(prompt_ids)} tokens, "
            f"which leaves no room for the answer within max_length={max_length}; raise max_length"
        )
    room = max_length - len(prompt_ids)
    truncated = len(answer_ids) > room
    answer_ids = answer_ids[:room]

    return EncodedPair(
        input_ids=prompt_ids + answer_ids,
        labels=[IGNORE_INDEX] * len(prompt_ids) + answer_ids,
        prompt_length=len(prompt_ids),
        truncated=truncated,
    )
