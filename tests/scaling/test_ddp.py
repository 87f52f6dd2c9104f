"""DDP on CPU (``ddp_spawn``, two processes, gloo) gives the same fit and test results as one process.

For fit, both processes read the same batches (``use_distributed_sampler=False``), so the averaged
gradient equals the single-process gradient and the trained weights must match. For test, the
distributed sampler splits five items per set over two processes and pads the split to six by
repeating one. Each item must still be counted once and score the same as on one process.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from lightning.pytorch.strategies import DDPStrategy

from eua.module import UnlearningModule
from eua.objectives import EUA
from tests.scaling.conftest import cpu_trainer


def _module(tiny_spec, results_path) -> UnlearningModule:
    torch.manual_seed(0)
    return UnlearningModule(
        lm=tiny_spec,
        objective=EUA(gamma=1.0),
        learning_rate=1e-2,
        max_new_tokens=4,
        results_path=str(results_path),
        overwrite_results=True,
    )


def _ddp(root, **overrides):
    strategy = DDPStrategy(start_method="spawn", process_group_backend="gloo")
    return cpu_trainer(root, devices=2, strategy=strategy, **overrides)


def test_ddp_fit_and_test_match_one_process(tiny_spec, make_data, tmp_path):
    single = _module(tiny_spec, tmp_path / "single.json")
    cpu_trainer(tmp_path / "a", max_steps=2).fit(single, datamodule=make_data())
    cpu_trainer(tmp_path / "a").test(single, datamodule=make_data())

    ddp = _module(tiny_spec, tmp_path / "ddp.json")
    _ddp(tmp_path / "b", max_steps=2, use_distributed_sampler=False).fit(ddp, datamodule=make_data())
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp.model.state_dict()[name], value, rtol=1e-5, atol=1e-6, msg=name)
    _ddp(tmp_path / "b").test(ddp, datamodule=make_data())

    one = json.loads((tmp_path / "single.json").read_text())
    two = json.loads((tmp_path / "ddp.json").read_text())
    for set_name, table in one["per_item"].items():
        assert two["per_item"][set_name]["index"] == list(range(5)), f"{set_name}: each item once"
        for field, values in table.items():
            np.testing.assert_allclose(
                np.asarray(two["per_item"][set_name][field], dtype=float),
                np.asarray(values, dtype=float),
                rtol=1e-4,
                atol=1e-5,
                err_msg=f"{set_name}/{field}",
            )
    for key, value in one["aggregate"].items():
        if value is None:
            assert two["aggregate"][key] is None
        else:
            assert two["aggregate"][key] == pytest.approx(value, rel=1e-4, abs=1e-5, nan_ok=True), key
