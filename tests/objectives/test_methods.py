"""One optimisation step of each unlearning method moves its loss in the intended direction.

Every test starts from the same tiny model, first fitted to the forget, retain and refusal answers
of a small real TOFU batch, so that the forget answers are likely (as in a finetuned target).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from eua.data.datasets import PairedCollator, PairedDataset, QADataset, refusal_rows
from eua.data.tofu import load_split
from eua.models.loading import ModelSpec, load_tokenizer
from eua.module import UnlearningModule
from eua.objectives import DPO, NPO, RMU, UNDIAL, WGA, GradAscent, GradDiff, IdkDPO, IdkNLL, SatImp, SimNPO
from eua.objectives.base import mean_nll, sequence_nll
from eua.objectives.retain import retain_kl

BATCH_SIZE = 4
MAX_LENGTH = 96
FIT_STEPS = 20
LEARNING_RATE = 1e-3


@pytest.fixture(scope="module")
def paired_batch(tiny_spec: ModelSpec, tofu_dir: Path) -> dict:
    """A paired ``{"forget", "retain", "refusal"}`` batch built by the real datasets and collator."""
    tokenizer = load_tokenizer(tiny_spec)
    forget = load_split("forget01", tofu_dir)[:BATCH_SIZE]
    retain = load_split("retain99", tofu_dir)[:BATCH_SIZE]
    refusals = [row["text"] for row in load_split("idontknow", tofu_dir)]
    dataset = PairedDataset(
        QADataset(forget, tokenizer, MAX_LENGTH),
        QADataset(retain, tokenizer, MAX_LENGTH),
        QADataset(refusal_rows(forget, refusals), tokenizer, MAX_LENGTH),
    )
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return PairedCollator(pad)([dataset[index] for index in range(BATCH_SIZE)])


@pytest.fixture(scope="module")
def fitted_state(tiny_spec: ModelSpec, paired_batch: dict) -> dict[str, torch.Tensor]:
    """Weights of the test model after it has memorised every part of ``paired_batch``."""
    torch.manual_seed(0)
    module = UnlearningModule(lm=tiny_spec)
    optimizer = torch.optim.AdamW(module.model.parameters(), lr=1e-2)
    for _ in range(FIT_STEPS):
        loss = sum(mean_nll(module.logits(part), part["labels"]) for part in paired_batch.values())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return {name: value.detach().clone() for name, value in module.model.state_dict().items()}


def build_module(tiny_spec: ModelSpec, fitted_state: dict, objective) -> UnlearningModule:
    module = UnlearningModule(lm=tiny_spec, objective=objective, learning_rate=LEARNING_RATE)
    module.model.load_state_dict(fitted_state)
    module.build_reference()
    return module


def take_step(module: UnlearningModule, batch: dict) -> None:
    optimizer = module.configure_optimizers()
    loss = module.objective(module, batch).loss
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()


@torch.no_grad()
def answer_nll(module: UnlearningModule, part: dict) -> float:
    return float(mean_nll(module.logits(part), part["labels"]))


DELETION_METHODS = {
    "gradascent": GradAscent(),
    "graddiff": GradDiff(),
    "graddiff_kl": GradDiff(retain_loss="kl"),
    "npo": NPO(),
    "simnpo": SimNPO(),
    "undial": UNDIAL(),
    # The weights p^5 (1 - p) are small on the briefly fitted test model, so the retain term
    # would decide the step; alpha 0 tests the reweighted forget term itself.
    "satimp": SatImp(alpha=0.0),
    "wga": WGA(),
    "npo_kl": NPO(retain_loss="kl"),
}


@pytest.mark.parametrize("name", list(DELETION_METHODS))
def test_step_lowers_forget_likelihood(name, tiny_spec, fitted_state, paired_batch):
    module = build_module(tiny_spec, fitted_state, DELETION_METHODS[name])
    before = answer_nll(module, paired_batch["forget"])
    take_step(module, paired_batch)
    after = answer_nll(module, paired_batch["forget"])
    assert after > before, f"{name}: forget NLL went from {before:.4f} to {after:.4f}, expected a rise"


@pytest.mark.parametrize("objective", [IdkNLL(), IdkDPO(), DPO()], ids=["idknll", "idkdpo", "dpo"])
def test_step_raises_refusal_likelihood(objective, tiny_spec, fitted_state, paired_batch):
    # The refusal answers were fitted too, so move the model off them first: IdkNLL on a model
    # that already outputs the refusal has almost no refusal gradient left to follow.
    module = build_module(tiny_spec, fitted_state, objective)
    with torch.no_grad():
        for parameter in module.model.parameters():
            parameter.add_(0.02 * torch.randn_like(parameter))
    before = answer_nll(module, paired_batch["refusal"])
    take_step(module, paired_batch)
    after = answer_nll(module, paired_batch["refusal"])
    assert after < before, f"{objective.name}: refusal NLL went from {before:.4f} to {after:.4f}, expected a fall"


@pytest.mark.parametrize("objective", [IdkDPO(), DPO()], ids=["idkdpo", "dpo"])
def test_dpo_step_widens_preference_margin(objective, tiny_spec, fitted_state, paired_batch):
    module = build_module(tiny_spec, fitted_state, objective)

    def margin() -> float:
        with torch.no_grad():
            chosen = objective.log_ratio(module, paired_batch["refusal"])
            rejected = objective.log_ratio(module, paired_batch["forget"])
        return float((chosen - rejected).mean())

    before = margin()
    take_step(module, paired_batch)
    after = margin()
    assert before == pytest.approx(0.0, abs=1e-4)
    assert after > before


def test_rmu_step_moves_forget_activations_to_target(tiny_spec, fitted_state, paired_batch):
    objective = RMU(layer=0, steering_coeff=20.0, alpha=100.0)
    module = build_module(tiny_spec, fitted_state, objective)
    part = paired_batch["forget"]
    mask = part["labels"] != -100

    def distance() -> float:
        with torch.no_grad():
            hidden = module.hidden_states(part, objective.layer)
            target = objective.target(hidden.shape[-1], hidden)
        return float((hidden - target).norm(dim=-1)[mask].mean())

    before = distance()
    take_step(module, paired_batch)
    after = distance()
    assert after < before, f"rmu: distance to the target went from {before:.4f} to {after:.4f}"


def test_rmu_trains_only_chosen_parameters(tiny_spec, fitted_state, paired_batch):
    objective = RMU(layer=0, steering_coeff=20.0)
    module = build_module(tiny_spec, fitted_state, objective)
    take_step(module, paired_batch)

    trained = {name for name, _ in module.model.named_parameters() if name.endswith("layers.0.mlp.down_proj.weight")}
    assert len(trained) == 1
    for name, parameter in module.model.named_parameters():
        changed = not torch.equal(parameter.detach(), fitted_state[name])
        assert changed == (name in trained), f"{name}: changed={changed}"


def test_rmu_rejects_bad_layer_and_parameter(tiny_spec, fitted_state):
    module = build_module(tiny_spec, fitted_state, RMU(layer=0))
    with pytest.raises(IndexError, match="has 1 decoder layers"):
        RMU(layer=3).trainable_parameters(module.model)
    with pytest.raises(ValueError, match="no parameter 'mlp.up.weight'"):
        RMU(layer=0, parameter_names=["mlp.up.weight"]).trainable_parameters(module.model)


def test_hidden_states_match_transformers(tiny_spec, fitted_state, paired_batch):
    module = build_module(tiny_spec, fitted_state, RMU(layer=0))
    part = paired_batch["forget"]
    with torch.no_grad():
        expected = module.model(
            input_ids=part["input_ids"], attention_mask=part["attention_mask"], output_hidden_states=True
        ).hidden_states
        ours = module.hidden_states(part, 0)
        reference = module.reference_hidden_states(part, 0)

    # The test model has one decoder layer, and transformers reports the last layer's output
    # after the final norm, so the norm of our layer-0 output must equal hidden_states[-1].
    assert len(expected) == 2
    assert torch.allclose(module.model.get_decoder().norm(ours), expected[-1], atol=1e-5)
    assert torch.equal(ours, reference)


def test_graddiff_default_loss_unchanged(tiny_spec, fitted_state, paired_batch):
    module = build_module(tiny_spec, fitted_state, GradDiff())
    with torch.no_grad():
        output = GradDiff()(module, paired_batch)
        forget = mean_nll(module.logits(paired_batch["forget"]), paired_batch["forget"]["labels"])
        retain = mean_nll(module.logits(paired_batch["retain"]), paired_batch["retain"]["labels"])
    assert float(output.loss) == pytest.approx(float(-forget + retain), rel=1e-5)
    assert set(output.terms) == {"forget_nll", "retain_nll"}


def test_kl_retain_starts_at_zero(tiny_spec, fitted_state, paired_batch):
    objective = GradDiff(retain_loss="kl")
    assert objective.needs_reference
    assert not GradDiff().needs_reference
    module = build_module(tiny_spec, fitted_state, objective)
    with torch.no_grad():
        output = objective(module, paired_batch)
    assert float(output.terms["retain_kl"]) == pytest.approx(0.0, abs=1e-5)


def test_retain_kl_positive_for_different_logits():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    labels = torch.tensor([[-100, -100, 1, 2, 3], [-100, 4, 5, -100, -100]])
    assert float(retain_kl(logits, logits, labels)) == pytest.approx(0.0, abs=1e-6)
    assert float(retain_kl(logits, torch.randn(2, 5, 7), labels)) > 0.0


def test_npo_starts_like_scaled_gradient_ascent(tiny_spec, fitted_state, paired_batch):
    # With the policy equal to the reference, log ratio 0 gives an NPO loss of (2 / beta) * log 2.
    objective = NPO(alpha=0.0)
    module = build_module(tiny_spec, fitted_state, objective)
    with torch.no_grad():
        output = objective(module, paired_batch)
    assert float(output.terms["npo_loss"]) == pytest.approx(2 / objective.beta * float(torch.log(torch.tensor(2.0))), rel=1e-4)


def test_simnpo_uses_mean_token_nll(tiny_spec, fitted_state, paired_batch):
    objective = SimNPO(alpha=0.0)
    module = build_module(tiny_spec, fitted_state, objective)
    part = paired_batch["forget"]
    with torch.no_grad():
        output = objective(module, paired_batch)
        total, length = sequence_nll(module.logits(part), part["labels"])
    assert float(output.terms["forget_nll"]) == pytest.approx(float((total / length).mean()), rel=1e-5)


def test_dpo_missing_preferred_part_raises(tiny_spec, fitted_state, paired_batch):
    module = build_module(tiny_spec, fitted_state, DPO(preferred="alternate"))
    with pytest.raises(KeyError, match="preferred='alternate' is not a part of the batch"):
        module.objective(module, paired_batch)


def test_invalid_retain_loss_raises():
    with pytest.raises(ValueError, match="invalid retain_loss 'mse'"):
        NPO(retain_loss="mse")
