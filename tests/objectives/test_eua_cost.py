"""The fast EUA step: same loss as the pure functions, cached margins, stale-cache rebuild, bf16 autocast."""

from __future__ import annotations

import logging

import pytest
import torch

from eua.data.datasets import PairedCollator, QADataset
from eua.data.tofu import load_split
from eua.energy import energy_boundary_loss, reference_margins
from eua.module import UnlearningModule
from eua.objectives import EUA
from eua.objectives.base import mean_nll, shift
from eua.objectives.margin_cache import MarginCache, answer_mask, compute_margins

CACHE_LOG = "eua.objectives.margin_cache"


def make_module(spec, objective: EUA) -> UnlearningModule:
    torch.manual_seed(0)
    module = UnlearningModule(lm=spec, objective=objective)
    module.build_reference()
    return module


def make_batch(tokenizer, tofu_dir, max_length: int = 96, offset: int = 0):
    rows = load_split("forget01", tofu_dir)[offset : offset + 6]
    dataset = QADataset(rows, tokenizer, max_length)
    items = [{"forget": dataset[i], "retain": dataset[i + 3], "refusal": dataset[i]} for i in range(3)]
    return PairedCollator(tokenizer.pad_token_id)(items)


def loss_from_pure_functions(module: UnlearningModule, objective: EUA, batch) -> torch.Tensor:
    """The EUA loss written with the unchunked functions of eua.energy, for comparison."""
    sides = {}
    for name in ("forget", "retain"):
        logits = module.logits(batch[name])
        shifted, _, mask = shift(logits, batch[name]["labels"])
        energy = module.energy_head(shifted)
        ref, _, _ = shift(module.reference_logits(batch[name]), batch[name]["labels"])
        margins = reference_margins(ref, objective.fraction, objective.temperature, objective.fill)
        sides[name] = (logits, energy, margins, mask)

    _, forget_energy, (_, forget_margin), forget_mask = sides["forget"]
    retain_logits, retain_energy, (retain_margin, _), retain_mask = sides["retain"]
    boundary = energy_boundary_loss(forget_energy, retain_energy, forget_margin, retain_margin, forget_mask, retain_mask)
    return objective.gamma * boundary + objective.alpha * mean_nll(retain_logits, batch["retain"]["labels"])


def gradients(module: UnlearningModule, loss: torch.Tensor) -> list[torch.Tensor]:
    parameters = [p for p in module.model.parameters() if p.requires_grad]
    return list(torch.autograd.grad(loss, parameters))


@pytest.fixture()
def batch(tokenizer, tofu_dir):
    return make_batch(tokenizer, tofu_dir)


@pytest.mark.parametrize("fill", ["zeros", "exclude"])
def test_chunked_eua_equals_the_pure_functions(tiny_spec, batch, fill) -> None:
    objective = EUA(gamma=1.0, fraction=0.1, temperature=1.3, fill=fill, cache_margins=False, chunk_size=7)
    module = make_module(tiny_spec, objective)

    fast = objective(module, batch).loss
    plain = loss_from_pure_functions(module, objective, batch)

    assert torch.allclose(fast, plain, rtol=1e-5, atol=1e-6)
    for got, expected in zip(gradients(module, fast), gradients(module, plain)):
        assert torch.allclose(got, expected, rtol=1e-4, atol=1e-6)


def test_reference_margins_from_hidden_states_equal_the_full_forward(tiny_spec, batch) -> None:
    objective = EUA(cache_margins=False)
    module = make_module(tiny_spec, objective)
    part = batch["retain"]
    mask = answer_mask(part["labels"])

    from_hidden = compute_margins(module.reference_model, part, mask, 0.1, 1.0, "zeros", chunk_size=5)
    retain, forget = reference_margins(module.reference_logits(part), 0.1)

    assert torch.allclose(from_hidden[:, 0], retain[mask], atol=1e-5)
    assert torch.allclose(from_hidden[:, 1], forget[mask], atol=1e-5)


def test_cached_margins_give_the_uncached_loss_without_a_reference_forward(tiny_spec, batch) -> None:
    cached = EUA(cache_margins=True)
    module = make_module(tiny_spec, cached)
    uncached = EUA(cache_margins=False)

    first = cached(module, batch).loss
    assert cached.margin_cache.misses == 6
    assert cached.margin_cache.hits == 0

    calls = []
    hook = module.reference_model.register_forward_pre_hook(lambda *args: calls.append(1))
    second = cached(module, batch).loss
    hook.remove()

    assert calls == [], "the reference model ran although every margin was cached"
    assert cached.margin_cache.hits == 6
    expected = uncached(module, batch).loss
    assert torch.allclose(first, expected, atol=1e-6)
    assert torch.allclose(second, expected, atol=1e-6)
    for got, want in zip(gradients(module, second), gradients(module, expected)):
        assert torch.allclose(got, want, atol=1e-6)


def test_cache_computes_only_the_missing_rows(tiny_spec, tokenizer, tofu_dir) -> None:
    objective = EUA()
    module = make_module(tiny_spec, objective)
    objective(module, make_batch(tokenizer, tofu_dir))

    # The first batch had forget rows 0..2 and retain rows 3..5. This one has forget rows 1, 2, 4
    # and retain rows 4, 5, 7, so one row of each part is new.
    dataset = QADataset(load_split("forget01", tofu_dir)[:8], tokenizer, 96)
    items = [{"forget": dataset[i], "retain": dataset[i + 3], "refusal": dataset[i]} for i in (1, 2, 4)]
    shifted = PairedCollator(tokenizer.pad_token_id)(items)
    loss = objective(module, shifted).loss

    assert objective.margin_cache.misses == 6 + 2
    assert torch.allclose(loss, EUA(cache_margins=False)(module, shifted).loss, atol=1e-6)


def test_stale_cache_is_rebuilt_when_max_length_or_tokenizer_changes(caplog) -> None:
    cache = MarginCache()
    fingerprint = {"tokenizer": "bpe:a", "max_length": "128", "reference": "r", "margins": "m"}
    cache.bind(fingerprint)
    cache.entries[("forget", 0)] = (b"hash", torch.zeros(3, 2))

    with caplog.at_level(logging.INFO, logger=CACHE_LOG):
        cache.bind({**fingerprint, "max_length": "64"})
    assert "Margin cache is stale (max_length changed)" in caplog.text
    assert len(cache) == 0

    cache.entries[("forget", 0)] = (b"hash", torch.zeros(3, 2))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger=CACHE_LOG):
        cache.bind({**fingerprint, "max_length": "64", "tokenizer": "bpe:b"})
    assert "Margin cache is stale (tokenizer changed)" in caplog.text
    assert len(cache) == 0


def test_entry_for_other_token_ids_is_recomputed(tiny_spec, tokenizer, tofu_dir, caplog) -> None:
    objective = EUA()
    module = make_module(tiny_spec, objective)
    objective(module, make_batch(tokenizer, tofu_dir, max_length=96))

    # The same dataset indices with other token ids (other rows), as after a tokenisation change.
    other = make_batch(tokenizer, tofu_dir, max_length=96, offset=10)
    with caplog.at_level(logging.INFO, logger=CACHE_LOG):
        loss = objective(module, other).loss

    assert "3 forget entries were computed for other token ids" in caplog.text
    assert torch.allclose(loss, EUA(cache_margins=False)(module, other).loss, atol=1e-6)


def test_new_reference_weights_rebuild_the_cache(tiny_spec, batch, caplog) -> None:
    objective = EUA()
    module = make_module(tiny_spec, objective)
    objective(module, batch)

    other = make_module(tiny_spec, objective)
    with torch.no_grad():
        other.reference_model.get_output_embeddings().weight.mul_(2.0)
    with caplog.at_level(logging.INFO, logger=CACHE_LOG):
        loss = objective(other, batch).loss

    assert "Margin cache is stale (reference changed)" in caplog.text
    assert torch.allclose(loss, EUA(cache_margins=False)(other, batch).loss, atol=1e-6)


def test_part_without_index_is_rejected(tiny_spec, batch) -> None:
    objective = EUA()
    module = make_module(tiny_spec, objective)
    del batch["forget"]["index"]
    with pytest.raises(KeyError, match="no 'index' tensor"):
        objective(module, batch)


def test_bfloat16_autocast_loss_is_close_to_float32(tiny_spec, batch) -> None:
    objective = EUA(gamma=1.0, cache_margins=False)
    module = make_module(tiny_spec, objective)

    full = objective(module, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low = objective(module, batch)

    # bfloat16 keeps 8 mantissa bits (relative step 2**-8 = 0.4%); the energies, margins and the
    # hinge are float32, so only the bf16 matmuls of the model move the loss.
    assert low.loss.dtype == torch.float32
    assert low.loss.item() == pytest.approx(full.loss.item(), rel=1e-2)
    assert low.terms["energy_loss"].item() == pytest.approx(full.terms["energy_loss"].item(), rel=5e-2, abs=1e-3)


def test_eua_rejects_bad_settings() -> None:
    with pytest.raises(ValueError, match="margin fraction"):
        EUA(fraction=0.0)
    with pytest.raises(ValueError, match="chunk_size"):
        EUA(chunk_size=0)
    with pytest.raises(ValueError, match="temperature"):
        EUA(temperature=0.0)
