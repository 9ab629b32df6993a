"""YAML at the edge: one safe loader and one dumper for every file xpkit reads or writes."""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import yaml
    from yaml import YAMLError

__all__ = ["YAMLError", "dump_yaml", "load_yaml", "yaml_error_where"]


def __getattr__(name: str) -> Any:
    """``YAMLError``, PyYAML's, loaded on first use: a listing from the run index, which
    reads no YAML, does not pay PyYAML's import (~9 ms)."""
    if name == "YAMLError":
        import yaml

        return yaml.YAMLError
    raise AttributeError(name)


@functools.cache
def _yaml() -> tuple[Any, Any, Any]:
    """PyYAML, its safe loader (the C one when PyYAML has it) and xpkit's dumper."""
    import yaml

    class Dumper(getattr(yaml, "CSafeDumper", yaml.SafeDumper)):  # type: ignore[misc]  # base chosen at runtime
        """Safe dumper writing multi-line strings (tracebacks) as literal blocks, no aliases.

        A value met twice is written twice: a lock reads (and greps) the same by hand, and
        :func:`load_yaml` has no aliases to expand.
        """

        def ignore_aliases(self, data: Any) -> bool:
            return True

    def represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
        style = "|" if "\n" in value else None
        return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)

    Dumper.add_representer(str, represent_str)
    return yaml, getattr(yaml, "CSafeLoader", yaml.SafeLoader), Dumper


def dump_yaml(data: Any) -> str:
    """Dump ``data`` as block-style YAML keeping key order."""
    yaml, _, dumper = _yaml()
    text: str = yaml.dump(
        data, Dumper=dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )
    return text


def load_yaml(text: str | bytes) -> Any:
    """Parse YAML text safely (the C loader when PyYAML has it).

    Aliases are expanded by reference: a node may appear many times in the tree, or inside
    itself. Every reader walks the tree, so an alias that makes it recursive, or makes it
    expand to more than :data:`_MAX_VALUES` values ("billion laughs"), is refused here.

    Raises:
        yaml.YAMLError: the text is not valid YAML, holds a value Python refuses (an
            integer of more than 4300 digits), or aliases as above.
    """
    yaml, loader, _ = _yaml()
    try:
        data = yaml.load(text, Loader=loader)
    except (ValueError, RecursionError) as e:  # raised by the constructors, not YAML errors
        raise yaml.YAMLError(str(e).splitlines()[0]) from None
    anchored = b"&" in text if isinstance(text, bytes) else "&" in text
    if anchored:  # aliases are possible
        try:
            _count_values(data, {}, set())
        except RecursionError:
            msg = "nested too deep"
            raise yaml.YAMLError(msg) from None
    return data


# a real document holds a few thousand values (a run.lock's env.packages and upstream locks);
# aliases expanding beyond this are an attack that would hang every reader walking the tree
_MAX_VALUES = 1_000_000


def _count_values(node: Any, sizes: dict[int, int], open_nodes: set[int]) -> int:
    """How many values ``node`` holds once aliases are expanded; each node walked once.

    Raises:
        yaml.YAMLError: a node contains itself, or the expansion is beyond any real document.
    """
    if not isinstance(node, (dict, list)):
        return 1
    known = sizes.get(id(node))
    if known is not None:
        return known
    if id(node) in open_nodes:
        msg = "an alias makes a node contain itself"
        raise _yaml()[0].YAMLError(msg)
    open_nodes.add(id(node))
    children = node.values() if isinstance(node, dict) else node
    total = 1 + sum(_count_values(child, sizes, open_nodes) for child in children)
    open_nodes.discard(id(node))
    if total > _MAX_VALUES:
        msg = f"aliases expand it to more than {_MAX_VALUES:,} values"
        raise _yaml()[0].YAMLError(msg)
    sizes[id(node)] = total
    return total


def yaml_error_where(e: yaml.YAMLError) -> str:
    """`` line L column C: problem (while parsing X started at line L)`` of a YAML error."""
    mark = getattr(e, "problem_mark", None)
    where = f" line {mark.line + 1} column {mark.column + 1}" if mark else ""
    problem = getattr(e, "problem", None) or str(e).splitlines()[0]
    context, start = getattr(e, "context", None), getattr(e, "context_mark", None)
    if context and start is not None and (mark is None or start.line != mark.line):
        problem += f" ({context} started at line {start.line + 1})"
    return f"{where}: {problem}"
