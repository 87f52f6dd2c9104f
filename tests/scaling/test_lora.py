"""LoRA: only adapter weights train, the loss moves, and the reference model is the adapter-free base."""

from __future__ import annotations

import pytest
import torch

from eua.models.loading import load_model
from eua.models.lora import LoraSpec, is_lora
from eua.module import UnlearningModule
from eua.objectives import EUA
from tests.scaling.conftest import cpu_trainer

SPEC = LoraSpec(r=4, alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])


def _state(module: UnlearningModule) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.model.state_dict().items()}


@pytest.mark.parametrize("checkpointing", [False, True])
def test_lora_trains_only_adapters_and_moves_the_loss(tiny_spec, make_data, tmp_path, checkpointing):
    torch.manual_seed(0)
    module = UnlearningModule(
        lm=tiny_spec, objective=EUA(gamma=1.0), learning_rate=5e-2, lora=SPEC, gradient_checkpointing=checkpointing
    )
    assert is_lora(module.model)
    trainable = {name for name, p in module.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in name for name in trainable)

    data = make_data()
    data.tokenizer = module.tokenizer
    data.setup("fit")
    batch = next(iter(data.train_dataloader()))
    before = _state(module)
    with torch.no_grad():
        loss_before = float(module.objective(module, batch).loss)

    cpu_trainer(tmp_path, max_steps=6).fit(module, datamodule=data)

    after = _state(module)
    changed = {name for name in before if not torch.equal(before[name], after[name])}
    assert changed, "no weight changed"
    assert all("lora_" in name for name in changed), sorted(changed - {n for n in changed if "lora_" in n})
    assert any("lora_A" in name for name in changed) and any("lora_B" in name for name in changed)
    assert not module._reference, "LoRA must not build a second copy of the weights"

    module.train()
    with torch.no_grad():
        loss_after = float(module.objective(module, batch).loss)
    assert loss_after < loss_before - 1e-3, (loss_before, loss_after)


def test_reference_logits_are_the_base_model(tiny_spec, make_data, tmp_path):
    torch.manual_seed(0)
    module = UnlearningModule(lm=tiny_spec, objective=EUA(), learning_rate=5e-2, lora=SPEC)
    data = make_data()
    cpu_trainer(tmp_path, max_steps=3).fit(module, datamodule=data)

    part = next(iter(data.train_dataloader()))["forget"]
    base = load_model(tiny_spec).eval()
    module.eval()
    with torch.no_grad():
        expected = base(input_ids=part["input_ids"], attention_mask=part["attention_mask"]).logits
        trained = module.logits(part)
    torch.testing.assert_close(module.reference_logits(part), expected, rtol=1e-5, atol=1e-5)
    assert not torch.allclose(trained, expected, atol=1e-4), "the adapters did not change the model"


def test_export_merges_the_adapters(tiny_spec, tmp_path):
    torch.manual_seed(0)
    module = UnlearningModule(lm=tiny_spec, lora=SPEC)
    with torch.no_grad():
        for name, p in module.model.named_parameters():
            if "lora_B" in name:
                p.normal_()
    module.export(str(tmp_path / "merged"))

    reloaded = load_model(type(tiny_spec)(name_or_path=str(tmp_path / "merged"))).eval()
    ids = torch.tensor([[5, 6, 7, 8]])
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, module.model(input_ids=ids).logits, rtol=1e-4, atol=1e-4)
    assert is_lora(module.model), "export must not unwrap the trained model"


def test_bad_lora_settings_name_the_field(tiny_spec):
    with pytest.raises(ValueError, match="model.lora.target_modules"):
        UnlearningModule(lm=tiny_spec, lora=LoraSpec(target_modules=["no_such_layer"]))
    with pytest.raises(ValueError, match="model.lora.r"):
        UnlearningModule(lm=tiny_spec, lora=LoraSpec(r=0))
