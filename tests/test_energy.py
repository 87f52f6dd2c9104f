"""Energy, margins and boundary loss: hand-computed values, and the chunked variants against the pure ones."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from eua.energy import (
    EnergyHead,
    chunked_reference_margins,
    chunked_token_energy,
    energy_boundary_loss,
    reference_margins,
    token_energy,
    token_energy_and_nll,
)


def test_token_energy_hand_values() -> None:
    logits = torch.tensor([[0.0, math.log(3.0)], [1.0, 1.0]])

    assert torch.allclose(token_energy(logits), torch.tensor([-math.log(4.0), -(1.0 + math.log(2.0))]))
    # T = 2: -2 * log(exp(0) + exp(log(3) / 2)) = -2 * log(1 + sqrt(3)).
    assert torch.allclose(token_energy(logits[0], temperature=2.0), torch.tensor(-2.0 * math.log(1.0 + math.sqrt(3.0))))


def test_token_energy_is_float32_for_bfloat16_logits() -> None:
    assert token_energy(torch.zeros(2, 8, dtype=torch.bfloat16)).dtype == torch.float32


def test_reference_margins_hand_values_both_fills() -> None:
    logits = torch.tensor([3.0, 2.0, 1.0, 0.0])  # fraction 0.5 keeps k = 2 of V = 4

    retain, forget = reference_margins(logits, fraction=0.5, fill="zeros")
    # The two unselected positions count as zeros: exp(0) = 1 each.
    assert retain.item() == pytest.approx(-math.log(math.exp(3) + math.exp(2) + 2.0), abs=1e-6)
    assert forget.item() == pytest.approx(-math.log(math.exp(0) + math.exp(1) + 2.0), abs=1e-6)

    retain, forget = reference_margins(logits, fraction=0.5, fill="exclude")
    assert retain.item() == pytest.approx(-math.log(math.exp(3) + math.exp(2)), abs=1e-6)
    assert forget.item() == pytest.approx(-math.log(math.exp(0) + math.exp(1)), abs=1e-6)


def test_reference_margins_at_temperature_two() -> None:
    logits = torch.tensor([4.0, 2.0, 0.0, -2.0])

    retain, forget = reference_margins(logits, fraction=0.25, temperature=2.0, fill="zeros")
    assert retain.item() == pytest.approx(-2.0 * math.log(math.exp(2.0) + 3.0), abs=1e-6)
    assert forget.item() == pytest.approx(-2.0 * math.log(math.exp(-1.0) + 3.0), abs=1e-6)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 1.5])
def test_reference_margins_reject_a_fraction_that_keeps_no_logit(fraction: float) -> None:
    with pytest.raises(ValueError, match="margin fraction"):
        reference_margins(torch.zeros(2, 4), fraction=fraction)


def test_reference_margins_reject_an_unknown_fill() -> None:
    with pytest.raises(ValueError, match="fill must be"):
        reference_margins(torch.zeros(2, 4), fraction=0.5, fill="ones")


def test_energy_boundary_loss_hand_values() -> None:
    forget_energy = torch.tensor([[-1.0, -3.0, 9.0]])
    forget_margin = torch.tensor([[-2.0, -2.0, 0.0]])
    forget_mask = torch.tensor([[True, True, False]])
    retain_energy = torch.tensor([[-1.0, -4.0]])
    retain_margin = torch.tensor([[-3.0, -3.0]])
    retain_mask = torch.tensor([[True, True]])

    loss = energy_boundary_loss(forget_energy, retain_energy, forget_margin, retain_margin, forget_mask, retain_mask)

    # retain: relu(-1 + 3)^2 = 4 and relu(-4 + 3)^2 = 0, mean 2.
    # forget: relu(-2 + 1)^2 = 0 and relu(-2 + 3)^2 = 1, mean 0.5 (the unmasked 9 is ignored).
    assert loss.item() == pytest.approx(2.5)


def test_energy_boundary_loss_side_without_masked_token_adds_zero() -> None:
    retain_energy = torch.tensor([[-1.0, -4.0]])
    retain_margin = torch.tensor([[-3.0, -3.0]])
    no_forget = torch.zeros(1, 2, dtype=torch.bool)

    loss = energy_boundary_loss(
        torch.full((1, 2), 100.0), retain_energy, torch.full((1, 2), 500.0), retain_margin, no_forget, torch.ones(1, 2, dtype=torch.bool)
    )
    assert loss.item() == pytest.approx(2.0)

    nothing = energy_boundary_loss(*(torch.zeros(1, 2) for _ in range(4)), no_forget, no_forget)
    assert nothing.item() == 0.0


# ---------------------------------------------------------------------------------- chunked variants


@pytest.fixture()
def logits() -> torch.Tensor:
    torch.manual_seed(0)
    return (3.0 * torch.randn(3, 7, 50)).requires_grad_(True)


@pytest.fixture()
def mask() -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(3, 7) > 0.4


@pytest.mark.parametrize("temperature", [1.0, 0.7])
@pytest.mark.parametrize("chunk_size", [1, 4, None])
def test_chunked_token_energy_equals_token_energy(logits, mask, temperature, chunk_size) -> None:
    chunked = chunked_token_energy(logits, mask, temperature, chunk_size)
    plain = token_energy(logits, temperature)[mask]
    assert torch.allclose(chunked, plain, atol=1e-6)

    weights = torch.randn_like(plain)
    (chunked_grad,) = torch.autograd.grad((chunked * weights).sum(), logits)
    (plain_grad,) = torch.autograd.grad((plain * weights).sum(), logits)
    assert torch.allclose(chunked_grad, plain_grad, atol=1e-6)


def test_chunked_token_energy_without_mask_keeps_the_shape(logits) -> None:
    assert torch.allclose(chunked_token_energy(logits, chunk_size=5), token_energy(logits), atol=1e-6)
    head = EnergyHead(temperature=2.0, chunk_size=3)
    assert torch.allclose(head(logits[:, :-1]), token_energy(logits[:, :-1], 2.0), atol=1e-6)


def test_chunked_token_energy_of_bfloat16_logits_is_float32(logits, mask) -> None:
    low = logits.detach().bfloat16()
    energy = chunked_token_energy(low, mask, chunk_size=2)
    assert energy.dtype == torch.float32
    assert torch.allclose(energy, token_energy(low)[mask])


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_token_energy_and_nll_equal_energy_and_cross_entropy(logits, mask, temperature) -> None:
    targets = torch.randint(0, 50, (int(mask.sum()),))
    energy, nll = token_energy_and_nll(logits, mask, targets, temperature, chunk_size=3)

    plain_energy = token_energy(logits, temperature)[mask]
    plain_nll = F.cross_entropy(logits[mask], targets, reduction="none")
    assert torch.allclose(energy, plain_energy, atol=1e-6)
    assert torch.allclose(nll, plain_nll, atol=1e-5)

    energy_weights, nll_weights = torch.randn_like(energy), torch.randn_like(nll)
    (fused,) = torch.autograd.grad((energy * energy_weights).sum() + (nll * nll_weights).sum(), logits)
    (plain,) = torch.autograd.grad((plain_energy * energy_weights).sum() + (plain_nll * nll_weights).sum(), logits)
    assert torch.allclose(fused, plain, atol=1e-6)


def test_token_energy_and_nll_reject_mismatched_targets(logits, mask) -> None:
    with pytest.raises(ValueError, match="targets has shape"):
        token_energy_and_nll(logits, mask, torch.zeros(int(mask.sum()) + 1, dtype=torch.long))


def test_chunked_functions_reject_a_mask_of_another_shape(logits) -> None:
    with pytest.raises(ValueError, match="does not match logits"):
        chunked_token_energy(logits, torch.ones(3, 6, dtype=torch.bool))


def test_chunk_size_must_be_positive(logits) -> None:
    with pytest.raises(ValueError, match="chunk_size"):
        chunked_token_energy(logits, chunk_size=0)
    with pytest.raises(ValueError, match="chunk_size"):
        EnergyHead(chunk_size=-1)


@pytest.mark.parametrize("fill", ["zeros", "exclude"])
@pytest.mark.parametrize("chunk_size", [1, 4, None])
def test_chunked_reference_margins_equal_reference_margins(logits, mask, fill, chunk_size) -> None:
    ref = logits.detach()
    chunked = chunked_reference_margins(ref, mask, fraction=0.1, temperature=1.5, fill=fill, chunk_size=chunk_size)
    plain = reference_margins(ref, fraction=0.1, temperature=1.5, fill=fill)
    for got, expected in zip(chunked, plain):
        assert torch.allclose(got, expected[mask], atol=1e-6)

    whole = chunked_reference_margins(ref, None, fraction=0.1, fill=fill, chunk_size=chunk_size)
    assert whole[0].shape == (3, 7)


def test_chunked_reference_margins_with_empty_mask(logits) -> None:
    retain, forget = chunked_reference_margins(logits.detach(), torch.zeros(3, 7, dtype=torch.bool))
    assert retain.shape == forget.shape == (0,)
