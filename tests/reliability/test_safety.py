"""Safe loading and writing: no remote code, weights-only checkpoints, atomic results, offline W&B, strict configs."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest

import eua
from eua.cli import build_cli, configure_environment
from eua.evaluation.results import write_json_atomic, write_text_atomic
from eua.models import loading
from eua.models.loading import ModelSpec

PACKAGE_DIR = Path(eua.__file__).parent
REPO_ROOT = PACKAGE_DIR.parent


def test_trust_remote_code_off_by_default(tiny_spec: ModelSpec, monkeypatch: pytest.MonkeyPatch) -> None:
    assert ModelSpec().trust_remote_code is False
    calls = []

    def record(source, **kwargs):
        calls.append(kwargs)
        raise RuntimeError("stop after recording the arguments")

    monkeypatch.setattr(loading.AutoModelForCausalLM, "from_pretrained", record)
    monkeypatch.setattr(loading.AutoTokenizer, "from_pretrained", record)
    for load in (loading.load_model, loading.load_tokenizer):
        with pytest.raises(RuntimeError, match="stop after recording"):
            load(tiny_spec)
    assert [call["trust_remote_code"] for call in calls] == [False, False]


def test_source_loads_no_pickled_weights() -> None:
    """Every ``torch.load`` in the package passes ``weights_only=True``; no pickle loads at all."""
    offenders = []
    for path in PACKAGE_DIR.rglob("*.py"):
        text = path.read_text(encoding="utf-8")
        for match in re.finditer(r"torch\.load\(([^)]*)\)", text):
            if "weights_only=True" not in match.group(1):
                offenders.append(f"{path}: {match.group(0)}")
        if re.search(r"\bpickle\.loads?\(", text):
            offenders.append(f"{path}: pickle.load")
    assert not offenders, offenders


def test_cli_loads_checkpoints_weights_only(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as caught:
        build_cli(["fit", "--config", str(REPO_ROOT / "configs/methods/eua.yaml"), "--print_config"])
    assert caught.value.code in (0, None)
    assert "\nweights_only: true\n" in capsys.readouterr().out


def test_export_writes_safetensors(make_module, tmp_path: Path) -> None:
    module = make_module()
    module.export(str(tmp_path / "model"))
    files = sorted(path.name for path in (tmp_path / "model").iterdir())
    assert "model.safetensors" in files
    assert not [name for name in files if name.endswith((".bin", ".pt", ".pth", ".ckpt"))]
    assert not (tmp_path / "model.partial").exists()


def test_wandb_offline_unless_set(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WANDB_MODE", raising=False)
    configure_environment()
    assert os.environ["WANDB_MODE"] == "offline"

    monkeypatch.setenv("WANDB_MODE", "online")
    configure_environment()
    assert os.environ["WANDB_MODE"] == "online"


def test_results_file_not_overwritten(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json_atomic(path, {"run": 1})
    with pytest.raises(FileExistsError, match=r"results\.json already exists; .*--model\.overwrite_results true"):
        write_json_atomic(path, {"run": 2})
    assert json.loads(path.read_text()) == {"run": 1}

    write_json_atomic(path, {"run": 2}, overwrite=True)
    assert json.loads(path.read_text()) == {"run": 2}


def test_failed_write_keeps_old_file(tmp_path: Path) -> None:
    path = tmp_path / "results.json"
    write_json_atomic(path, {"run": 1})
    with pytest.raises(TypeError):
        write_json_atomic(path, {"run": 2, "bad": object()}, overwrite=True)
    assert json.loads(path.read_text()) == {"run": 1}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"], "a temporary file was left behind"


def test_interrupted_text_write_keeps_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "summary.md"
    write_text_atomic(path, "old table\n")

    def interrupted(source, destination):
        raise KeyboardInterrupt

    monkeypatch.setattr("eua.evaluation.results.os.replace", interrupted)
    with pytest.raises(KeyboardInterrupt):
        write_text_atomic(path, "new table\n", overwrite=True)
    assert path.read_text() == "old table\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.md"], "a temporary file was left behind"


@pytest.mark.parametrize(
    "arguments, expected",
    [
        (["--model.learning_rat", "1e-3"], "learning_rat"),
        (["--data.forget_splt", "forget05"], "forget_splt"),
        (["--trainer.max_epoch", "3"], "max_epoch"),
    ],
)
def test_unknown_config_key_rejected(arguments: list[str], expected: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as caught:
        build_cli(["fit", "--config", str(REPO_ROOT / "configs/methods/eua.yaml"), *arguments])
    assert caught.value.code != 0
    assert expected in capsys.readouterr().err


def test_unknown_key_in_yaml_rejected(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    config = tmp_path / "typo.yaml"
    config.write_text("model:\n  lerning_rate: 0.1\n")
    with pytest.raises(SystemExit):
        build_cli(["fit", "--config", str(REPO_ROOT / "configs/methods/eua.yaml"), "--config", str(config)])
    assert "lerning_rate" in capsys.readouterr().err
