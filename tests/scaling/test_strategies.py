"""Strategy configs load and validate on CPU; FSDP2 (ModelParallelStrategy) runs a fit step on CPU.

Lightning's FSDP1 strategy (``configs/trainer/fsdp.yaml``) needs CUDA, so here it is only loaded
and checked; the GPU run is recorded in docs/benchmarks.md when one is made.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import yaml
from lightning.pytorch import Trainer
from lightning.pytorch.cli import LightningArgumentParser
from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy
from torch.distributed.fsdp import ShardingStrategy
from transformers.models.llama.modeling_llama import LlamaDecoderLayer

from eua.models.sharding import decoder_layers
from eua.module import UnlearningModule
from eua.objectives import EUA
from tests.scaling.conftest import cpu_trainer

CONFIGS = Path(__file__).resolve().parents[2] / "configs" / "trainer"


def _trainer_args(name: str, **overrides):
    parser = LightningArgumentParser()
    parser.add_lightning_class_args(Trainer, "trainer")
    config = yaml.safe_load((CONFIGS / f"{name}.yaml").read_text())
    config["trainer"].update(overrides)
    return parser.instantiate_classes(parser.parse_object(config)).trainer


@pytest.mark.parametrize(
    ("name", "strategy_type"),
    [("single", str), ("ddp", DDPStrategy), ("fsdp", FSDPStrategy), ("fsdp2", ModelParallelStrategy)],
)
def test_trainer_configs_load(name, strategy_type):
    args = _trainer_args(name)
    assert isinstance(args["strategy"], strategy_type)
    assert args["precision"] == "bf16-mixed"


def test_fsdp_config_is_full_shard_by_decoder_layer():
    strategy = _trainer_args("fsdp")["strategy"]
    assert strategy.sharding_strategy == ShardingStrategy.FULL_SHARD
    assert LlamaDecoderLayer in strategy.kwargs["auto_wrap_policy"]._module_classes
    assert strategy.kwargs["use_orig_params"], "LoRA mixes trainable and frozen weights in one shard"
    assert strategy._state_dict_type == "full"


def test_fsdp_on_cpu_raises():
    strategy = _trainer_args("fsdp")["strategy"]
    with pytest.raises(ValueError, match="requires a GPU accelerator"):
        Trainer(accelerator="cpu", devices=1, strategy=strategy, precision="bf16-mixed", logger=False)


def test_deepspeed_config_loads_when_installed():
    pytest.importorskip("deepspeed")
    assert type(_trainer_args("deepspeed")["strategy"]).__name__ == "DeepSpeedStrategy"


def test_fsdp2_fit_step_on_cpu(tiny_spec, make_data, tmp_path):
    torch.manual_seed(0)
    module = UnlearningModule(lm=tiny_spec, objective=EUA(gamma=1.0), learning_rate=1e-2)
    assert len(decoder_layers(module.model)) == 1
    before = {n: p.detach().clone() for n, p in module.model.named_parameters()}

    strategy = ModelParallelStrategy(data_parallel_size=1, tensor_parallel_size=1)
    trainer = cpu_trainer(tmp_path, max_steps=1, strategy=strategy)
    trainer.fit(module, datamodule=make_data())

    from torch.distributed.tensor import DTensor

    parameters = dict(module.model.named_parameters())
    assert all(isinstance(p, DTensor) for p in parameters.values()), "fully_shard was not applied"
    assert torch.isfinite(trainer.callback_metrics["train/loss"])
    changed = [n for n, p in parameters.items() if not torch.equal(p.full_tensor(), before[n])]
    assert changed, "the fit step changed no weight"
    assert module._reference and not any(p.requires_grad for p in module.reference_model.parameters())

    trainer.test(module, datamodule=make_data(eval_sets=["forget"]))
    assert module.last_results["per_item"]["forget"]["index"] == list(range(5))
