"""Building a stage's config: dataclass defaults, files, experiments and dotted overrides.

Every error is a one-line :class:`~xpkit.errors.ConfigError` naming the full dotted key
(with the closest valid keys), the file and line of bad YAML, or the known experiments.
"""

from __future__ import annotations

import ast
import contextlib
import dataclasses
import datetime as dt
import enum
import inspect
import io
import os
import pathlib
import tokenize
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextvars import ContextVar
from typing import Any

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf, open_dict
from omegaconf import errors as oc_errors

from ..errors import ConfigError
from ._flat import flatten
from ._yaml import load_yaml, yaml_error_where

__all__ = [
    "FieldInfo",
    "apply_dotlist",
    "changed_defaults",
    "describe_fields",
    "dotted_keys",
    "load_config_file",
    "merge_layer",
    "now_at",
    "resolve",
    "select_experiment",
    "to_plain",
    "update",
]

_now: ContextVar[dt.datetime | None] = ContextVar("xpkit_now", default=None)


def _now_resolver(fmt: str = "%y%m%d-%H%M%S") -> str:
    return (_now.get() or dt.datetime.now()).strftime(fmt)


# OmegaConf 2.4 made register_resolver the API (register_new_resolver warns there); in
# 2.3 register_resolver is the legacy one-argument form and register_new_resolver is right.
# Looked up by name: mypy checks against the one version installed, and either call is wrong
# for the other.
_REGISTER = (
    "register_resolver"
    if "replace" in inspect.signature(OmegaConf.register_resolver).parameters
    else "register_new_resolver"
)
getattr(OmegaConf, _REGISTER)("now", _now_resolver, replace=True)


@contextlib.contextmanager
def now_at(when: dt.datetime) -> Iterator[None]:
    """Make ``${now:FMT}`` give ``when`` (a run's start) inside the block."""
    token = _now.set(when)
    try:
        yield
    finally:
        _now.reset(token)


def update(cfg: DictConfig, key: str, value: Any, *, force: bool = False) -> None:
    """Set the dotted ``key`` of ``cfg`` to ``value`` (a new key too when ``force``)."""
    if force:
        with open_dict(cfg):
            OmegaConf.update(cfg, key, value, merge=False)
    else:
        OmegaConf.update(cfg, key, value, merge=False)


def merge_layer(cfg: DictConfig, layer: Any, *, source: str) -> DictConfig:
    """Merge ``layer`` (a mapping, DictConfig or dataclass instance) over ``cfg``.

    Raises:
        ConfigError: a key of the layer is not in the config, or a value has the wrong type.
    """
    try:
        return typing.cast(DictConfig, OmegaConf.merge(cfg, layer))
    except oc_errors.OmegaConfBaseException as e:
        raise _translate(e, cfg, source) from None


def apply_dotlist(cfg: DictConfig, items: Sequence[str], *, source: str) -> DictConfig:
    """Apply ``key=value`` overrides (values parsed as YAML) over ``cfg``, one at a time."""
    for item in items:
        if "=" not in item:
            msg = f"override {item!r} ({source}) must look like key=value, e.g. lr=0.1"
            raise ConfigError(msg)
        key = item.split("=", 1)[0].strip()
        if not key:
            msg = f"override {item!r} ({source}) has an empty key"
            raise ConfigError(msg)
        try:
            layer = OmegaConf.from_dotlist([item])
        except (oc_errors.OmegaConfBaseException, yaml.YAMLError) as e:
            msg = f"override {item!r} ({source}) cannot be parsed: {e}"
            raise ConfigError(msg) from None
        cfg = merge_layer(cfg, layer, source=f"{source} {item}")
    return cfg


def load_config_file(path: str | os.PathLike[str]) -> DictConfig:
    """Load a YAML config file.

    Raises:
        ConfigError: the file is missing, is not valid YAML (line and column named) or is not
            a mapping.
    """
    p = pathlib.Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        msg = f"config file {p}: {e.strerror}"
        raise ConfigError(msg) from None
    try:
        data = load_yaml(text)
    except yaml.YAMLError as e:
        msg = f"malformed YAML in {p}{yaml_error_where(e)}"
        raise ConfigError(msg) from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        msg = f"config file {p} must hold a mapping of keys, got {type(data).__name__}"
        raise ConfigError(msg)
    return OmegaConf.create(data)


def select_experiment(file_cfg: DictConfig, name: str, *, source: str) -> DictConfig:
    """Return the node ``name`` (dotted) of a config file: one named experiment.

    Raises:
        ConfigError: there is no such node; the message lists the experiments available.
    """
    node = OmegaConf.select(file_cfg, name, default=None)
    if isinstance(node, DictConfig):
        return node
    available = [k for k, v in file_cfg.items_ex(resolve=False) if isinstance(v, DictConfig)]
    listing = ", ".join(str(k) for k in available) or "none"
    if node is None:
        import difflib

        close = difflib.get_close_matches(name, [str(k) for k in available], n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        msg = f"no experiment {name!r} in {source}{hint} (available: {listing})"
    else:
        msg = f"experiment {name!r} in {source} is not a mapping (available: {listing})"
    raise ConfigError(msg)


def resolve(cfg: DictConfig) -> DictConfig:
    """Resolve every interpolation of ``cfg`` in place and check nothing is missing.

    Raises:
        ConfigError: an interpolation cannot be resolved or a mandatory value is missing.
    """
    try:
        OmegaConf.resolve(cfg)
        missing = OmegaConf.missing_keys(cfg)
    except oc_errors.OmegaConfBaseException as e:
        raise _translate(e, cfg, "resolving the config") from None
    if missing:
        keys = ", ".join(sorted(missing))
        msg = (
            f"config key(s) {keys} have no value (???); set them, e.g. -o {sorted(missing)[0]}=..."
        )
        raise ConfigError(msg)
    return cfg


def to_plain(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain, YAML-safe Python data (enums by name, paths as strings)."""
    data = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    return typing.cast(dict[str, Any], _plain(data))


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, ListConfig)):
        return [_plain(v) for v in value]
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return value.name
    return value


def changed_defaults(
    make_defaults: Callable[[], DictConfig], config: Mapping[str, Any], *, when: dt.datetime
) -> dict[str, Any] | None:
    """The default of each key whose value in ``config`` differs from it: dotted key → default.

    What run.lock records as ``defaults``, so that a run says what it changed without the
    stage's code. ``save_dir`` (a new directory per run) is left out; ``${now:...}``
    resolves at ``when``; a default that does not resolve is compared as written. None when
    the defaults cannot be built or do not have every key of ``config`` (they are then not
    the defaults this config was built from).
    """
    try:
        defaults = make_defaults()
    except (oc_errors.OmegaConfBaseException, ConfigError, TypeError, ValueError):
        return None
    try:
        with now_at(when):
            plain = to_plain(defaults)
    except oc_errors.OmegaConfBaseException:
        plain = _plain(OmegaConf.to_container(defaults, resolve=False, enum_to_str=True))
    default_of = flatten(plain)
    values = flatten(dict(config))
    values.pop("save_dir", None)
    if any(key not in default_of for key in values):
        return None
    return {key: default_of[key] for key, value in values.items() if default_of[key] != value}


def dotted_keys(cfg: DictConfig) -> list[str]:
    """Every dotted key of ``cfg``, inner nodes included."""
    keys: list[str] = []

    def walk(node: DictConfig, prefix: str) -> None:
        for key in node:
            name = f"{prefix}{key!s}"
            keys.append(name)
            child = node._get_node(key)
            if isinstance(child, DictConfig) and not child._is_missing() and not child._is_none():
                walk(child, f"{name}.")

    walk(cfg, "")
    return keys


def _translate(e: oc_errors.OmegaConfBaseException, cfg: DictConfig, source: str) -> ConfigError:
    key = getattr(e, "full_key", None) or ""
    first = str(getattr(e, "msg", None) or e).splitlines()[0]
    if isinstance(e, oc_errors.ConfigKeyError) and key:
        import difflib

        keys = dotted_keys(cfg)
        leaf = key.rsplit(".", 1)[-1]
        same_leaf = [k for k in keys if k.rsplit(".", 1)[-1] == leaf and k != key]
        close = same_leaf[:3] or difflib.get_close_matches(key, keys, n=3, cutoff=0.5)
        if close:
            hint = f"; closest: {', '.join(close)}"
        else:
            top = [str(k) for k in cfg][:12]
            hint = f"; valid keys: {', '.join(top)}"
        msg = f"unknown config key {key!r} ({source}){hint}"
        return ConfigError(msg)
    if isinstance(e, oc_errors.ValidationError) and key:
        msg = f"config key {key!r}: {first} ({source})"
        return ConfigError(msg)
    group = _group_replaced(cfg, first)
    if group is not None:  # ``optim=3`` where optim is a nested dataclass
        fields = ", ".join(f"{group}.{k}" for k in cfg[group])
        msg = f"config key {group!r} is a group of keys, not a value ({source}); set {fields}"
        return ConfigError(msg)
    where = f"config key {key!r}: " if key else ""
    return ConfigError(f"{where}{first} ({source})")


def _group_replaced(cfg: DictConfig, message: str) -> str | None:
    """The top-level group a merge tried to replace by a plain value (OmegaConf's merge error)."""
    if not message.startswith("Merge error:"):
        return None
    for key in cfg:
        node = cfg._get_node(key)
        kind = getattr(node, "_metadata", None)
        name = getattr(getattr(kind, "object_type", None), "__name__", None)
        if isinstance(node, DictConfig) and name and f"subclass of {name}" in message:
            return str(key)
    return None


@dataclasses.dataclass(frozen=True)
class FieldInfo:
    """One config field, for ``--help``."""

    key: str
    type: str
    default: str
    doc: str


def describe_fields(schema: type | None, prefix: str = "") -> list[FieldInfo]:
    """List every leaf field of a config dataclass with its type, default and comment."""
    if schema is None or not dataclasses.is_dataclass(schema):
        return []
    try:
        hints = typing.get_type_hints(schema)
    except Exception:  # unresolvable forward references: fall back to raw annotations
        hints = {}
    docs = _field_comments(schema)
    out: list[FieldInfo] = []
    for f in dataclasses.fields(schema):
        kind = hints.get(f.name, f.type)
        key = f"{prefix}{f.name}"
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            out.extend(describe_fields(kind, f"{key}."))
            continue
        out.append(FieldInfo(key, _type_name(kind), _default_repr(f), docs.get(f.name, "")))
    return out


def _type_name(kind: Any) -> str:
    if isinstance(kind, type):
        return kind.__name__
    return str(kind).replace("typing.", "").replace("NoneType", "None")


def _default_repr(f: dataclasses.Field[Any]) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "(required)"
    if value == "???":
        return "(required)"
    if isinstance(value, enum.Enum):
        return value.name
    return repr(value)


def _field_comments(schema: type) -> dict[str, str]:
    """Map field names to the ``# comment`` at the end of their line in the class source."""
    try:
        source = inspect.getsource(schema)
    except (OSError, TypeError):
        return {}
    import textwrap

    source = textwrap.dedent(source)
    comments: dict[int, str] = {}
    try:
        for tok in tokenize.generate_tokens(io.StringIO(source).readline):
            if tok.type == tokenize.COMMENT:
                comments[tok.start[0]] = tok.string.lstrip("#").strip()
        tree = ast.parse(source)
    except (SyntaxError, tokenize.TokenError):
        return {}
    cls = tree.body[0] if tree.body else None
    if not isinstance(cls, ast.ClassDef):
        return {}
    out: dict[str, str] = {}
    for node in cls.body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            line = node.end_lineno or node.lineno
            if line in comments:
                out[node.target.id] = comments[line]
    return out
