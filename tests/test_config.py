"""Config layering: files, experiments, dot-lists, errors, ${now:}, field descriptions."""

from __future__ import annotations

import dataclasses
import datetime as dt
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from xpkit._core import _config
from xpkit._core._flat import flatten
from xpkit.errors import ConfigError


@dataclasses.dataclass
class Optim:
    lr: float = 0.1  # the step size
    momentum: float = 0.9


@dataclasses.dataclass
class Config:
    epochs: int = 3  # passes over the data
    tag: str = "x"
    optim: Optim = dataclasses.field(default_factory=Optim)
    required: str = "???"


def base():
    cfg = OmegaConf.structured(Config)
    OmegaConf.set_struct(cfg, True)
    return cfg


def test_dotlist_parses_values_as_yaml_and_sets_nested_keys() -> None:
    """key=value items are YAML-typed and dotted keys reach nested nodes."""
    cfg = _config.apply_dotlist(base(), ["epochs=5", "optim.lr=1e-3"], source="cli")
    assert cfg.epochs == 5
    assert cfg.optim.lr == 0.001


def test_unknown_key_names_full_dotted_key_and_closest_keys() -> None:
    """An unknown key: the full dotted key and the closest valid keys are named."""
    with pytest.raises(ConfigError) as info:
        _config.apply_dotlist(base(), ["optim.momentun=0.5"], source="cli")
    msg = str(info.value)
    assert "'optim.momentun'" in msg
    assert "optim.momentum" in msg
    assert "\n" not in msg


def test_unknown_key_without_close_match_lists_valid_keys() -> None:
    """An unknown key far from every key lists the valid top-level keys."""
    with pytest.raises(ConfigError, match="valid keys: epochs, tag, optim, required"):
        _config.apply_dotlist(base(), ["zzzzzz=1"], source="cli")


def test_wrong_type_names_key_and_value() -> None:
    """A value of the wrong type names the dotted key and the value."""
    with pytest.raises(ConfigError, match=r"'optim\.lr'.*'fast'.*\(cli optim\.lr=fast\)"):
        _config.apply_dotlist(base(), ["optim.lr=fast"], source="cli")


def test_merge_of_a_mapping_layer_checks_keys_and_types() -> None:
    """merge_layer rejects unknown keys and wrong types, naming the source."""
    with pytest.raises(ConfigError, match=r"'optim\.beta'.*\(file\.yaml\)"):
        _config.merge_layer(base(), {"optim": {"beta": 1}}, source="file.yaml")
    with pytest.raises(ConfigError, match="'epochs'"):
        _config.merge_layer(base(), {"epochs": [1, 2]}, source="file.yaml")


def test_malformed_yaml_names_file_and_line(tmp_path: Path) -> None:
    """Bad YAML is a one-line error with the file, line and column."""
    path = tmp_path / "bad.yaml"
    path.write_text("epochs: 3\ntag: [a\n  b: c\n")
    with pytest.raises(ConfigError) as info:
        _config.load_config_file(path)
    msg = str(info.value)
    assert str(path) in msg
    assert "line 2" in msg or "line 3" in msg
    assert "\n" not in msg
    path.write_text("epochs: 3\n  tag: x\n")
    with pytest.raises(ConfigError, match=r"line 2 column 6"):
        _config.load_config_file(path)


def test_config_file_must_be_a_mapping(tmp_path: Path) -> None:
    """A YAML list or scalar file is refused; an empty file is an empty layer."""
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        _config.load_config_file(path)
    path.write_text("")
    assert _config.load_config_file(path) == {}


def test_unknown_experiment_lists_available() -> None:
    """An unknown experiment names the available ones and the closest."""
    file_cfg = OmegaConf.create({"small": {"epochs": 1}, "large": {"epochs": 9}, "note": "x"})
    assert _config.select_experiment(file_cfg, "large", source="f.yaml").epochs == 9
    with pytest.raises(ConfigError) as info:
        _config.select_experiment(file_cfg, "larg", source="f.yaml")
    msg = str(info.value)
    assert "'larg'" in msg
    assert "did you mean 'large'" in msg
    assert "available: small, large" in msg
    with pytest.raises(ConfigError, match="not a mapping"):
        _config.select_experiment(file_cfg, "note", source="f.yaml")


def test_now_resolver_uses_the_run_start() -> None:
    """${now:FMT} gives the time set by now_at, or the current time."""
    cfg = OmegaConf.create({"dir": "out/${now:%Y-%m-%d_%H}"})
    with _config.now_at(dt.datetime(2020, 1, 2, 3, 4, 5)):
        _config.resolve(cfg)
    assert cfg.dir == "out/2020-01-02_03"
    fresh = OmegaConf.create({"dir": "${now:%Y}"})
    _config.resolve(fresh)
    assert fresh.dir == str(dt.datetime.now().year)


def test_resolve_reports_missing_mandatory_values() -> None:
    """A ??? value left unset is a ConfigError naming the key and how to set it."""
    with pytest.raises(ConfigError, match=r"required.*-o required=\.\.\."):
        _config.resolve(base())


def test_to_plain_and_flatten() -> None:
    """to_plain gives plain YAML-safe data; flatten gives dotted keys."""
    cfg = _config.apply_dotlist(base(), ["required=yes"], source="cli")
    plain = _config.to_plain(cfg)
    assert plain["optim"] == {"lr": 0.1, "momentum": 0.9}
    assert type(plain["optim"]) is dict
    flat = flatten(plain)
    assert flat["optim.lr"] == 0.1
    assert "optim" not in flat


def test_describe_fields_lists_types_defaults_and_comments() -> None:
    """describe_fields walks nested dataclasses and picks up trailing comments."""
    fields = {f.key: f for f in _config.describe_fields(Config)}
    assert list(fields) == ["epochs", "tag", "optim.lr", "optim.momentum", "required"]
    assert (fields["epochs"].type, fields["epochs"].default) == ("int", "3")
    assert fields["epochs"].doc == "passes over the data"
    assert fields["optim.lr"].doc == "the step size"
    assert fields["required"].default == "(required)"
    assert fields["tag"].doc == ""


def test_unknown_leaf_suggests_the_nested_key() -> None:
    """lr=0.3 when lr lives in a group: the error names optim.lr."""
    with pytest.raises(ConfigError, match=r"unknown config key 'lr' .*closest: optim\.lr"):
        _config.apply_dotlist(base(), ["lr=0.3"], source="command line")


def test_a_group_set_to_a_value_names_its_keys() -> None:
    """optim=3 when optim is a nested dataclass: the error lists the keys to set instead."""
    with pytest.raises(ConfigError, match=r"'optim' is a group of keys.*set optim\.lr"):
        _config.apply_dotlist(base(), ["optim=3"], source="command line")
