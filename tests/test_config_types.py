"""``--config`` files of the wrong types: one ConfigError naming the file and the setting, never a
traceback, whichever setting it is (each setting's type comes from TrainConfig's annotations)."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from leukoscope.cli.verbs import app
from leukoscope.errors import ConfigError
from leukoscope.train import TrainConfig

BASE = "model: logistic_regression\nmin_cells: 0\n"


@pytest.mark.parametrize("line, setting", [
    ('subset: "abc"', "subset"),
    ("epochs: 1.5", "epochs"),
    ("epochs: true", "epochs"),  # a bool is not an integer
    ("seed: 1.0", "seed"),
    ("tta: 1", "tta"),
    ("model: [1, 2]", "model"),
    ("features: [x]", "features"),
    ("class_map: [a]", "class_map"),
    ("lr: .nan", "lr"),
    ("lr: [0.1]", "lr"),
])
def test_a_setting_of_the_wrong_type_is_named_with_its_file(tmp_path: Path, line: str, setting: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(BASE + line + "\n")
    with pytest.raises(ConfigError, match=rf"c\.yaml: {setting} must be "):
        TrainConfig.build(f)


def test_a_non_string_key_is_an_unknown_setting(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(BASE + "1: 2\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown setting\(s\) 1"):
        TrainConfig.build(f)


def test_non_utf8_bytes_and_python_tags_are_refused_in_one_line(tmp_path: Path) -> None:
    f = tmp_path / "c.yaml"
    f.write_bytes(BASE.encode() + b"\xff\xfe: 1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: cannot parse .*utf-8"):
        TrainConfig.build(f)
    f.write_text("!!python/object:os.system {}\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: cannot parse") as e:
        TrainConfig.build(f)
    assert "\n" not in str(e.value)


def test_a_numeric_string_is_read_as_a_number(tmp_path: Path) -> None:
    """PyYAML reads ``1e-3`` (no dot) as a string; a config saying so means the number."""
    f = tmp_path / "c.yaml"
    f.write_text("model: leukonet\nlr: 1e-3\nsubset: '0.5'\nepochs: 2\n")
    cfg = TrainConfig.build(f).resolved()
    assert cfg.lr == 1e-3 and cfg.subset == 0.5 and cfg.epochs == 2


def test_options_are_type_checked_too() -> None:
    with pytest.raises(ConfigError, match="--epochs must be an integer or null, got 1.5"):
        TrainConfig.build(model="leukonet", epochs=1.5)


@pytest.mark.parametrize("line", ["lr: abc", "epochs: 1.5", "1: 2", "model: [1, 2]"])
def test_cli_train_bad_config_is_a_one_line_error(tmp_path: Path, synthetic2: Path, line: str) -> None:
    f = tmp_path / "c.yaml"
    f.write_text(BASE + line + "\n")
    res = CliRunner().invoke(app, ["train", str(synthetic2), "--out", str(tmp_path / "x"), "--config",
                                   str(f)])
    assert res.exit_code == 1 and "c.yaml:" in res.output and "Traceback" not in res.output, res.output
    assert not (tmp_path / "x").exists()
