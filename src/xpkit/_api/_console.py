"""The interactive console (IPython, Jupyter, VSCode) once ``xp.run`` has run in it.

``enable_console`` makes the loop of the user's request work in a kernel: body cells run as
sent (:mod:`._cells`; ``import xpkit`` in a kernel already does that much), project modules
edited since the last cell are reloaded (:mod:`._reload`), and editing ``cfg`` at the prompt
(``cfg.lr = 1`` on a float field) does not print OmegaConf's implicit-conversion warnings.
``no_locals_note`` says, in the line that hands a run back, why a run's locals are missing.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Iterator
from typing import Any

from .._catalog._run import Run
from .._execute._locals import missing_locals_reason
from ..errors import XpkitError
from ._cells import RETURN_NAME, CellReturn, transform_body_cell
from ._reload import enable_project_reload
from ._stage import Stage, _source_files

__all__ = ["enable_console", "no_locals_note"]

# OmegaConf 2.4 warns (FutureWarning) when an assignment converts a value to the field's
# type; at the prompt ``cfg.lr = 1`` meaning 1.0 is what the user wants, said once per edit.
_CONVERSION_WARNING = r"Implicit conversion from \w+ to \w+ at .* during assignment"


def enable_console(shell: Any) -> None:
    """Set the console up for the stage loop (idempotent)."""
    enable_project_reload(shell)
    enable_body_cells(shell)
    warnings.filterwarnings(
        "ignore", message=_CONVERSION_WARNING, category=FutureWarning, module="__main__"
    )


def enable_body_cells(shell: Any) -> None:
    """Run indented cells of a stage body as they are sent (an IPython input transformer)."""
    transforms = shell.input_transformers_cleanup
    if not any(isinstance(t, BodyCells) for t in transforms):
        # before IPython's own leading_indent, which would dedent the first level only
        transforms.insert(0, BodyCells(shell))
    shell.push({RETURN_NAME: CellReturn}, interactive=False)


class BodyCells:
    """The input transformer: :func:`transform_body_cell` with this shell's candidate files."""

    # IPython's completeness check (typing at a terminal prompt) skips transformers with side
    # effects: this one may put the name of CellReturn back into the namespace
    has_side_effects = True

    def __init__(self, shell: Any) -> None:
        self.shell = shell

    def __call__(self, lines: list[str]) -> list[str]:
        try:
            out = transform_body_cell(lines, files=self.files)
        except Exception:  # a fault here must never stop a cell: IPython runs it as it is
            return lines
        if out is not lines and RETURN_NAME not in self.shell.user_ns:  # after %reset
            self.shell.push({RETURN_NAME: CellReturn}, interactive=False)
        return out

    def files(self) -> Iterator[str]:
        """The files a dedented cell may come from: ``__file__`` (VSCode sets it), then the
        scripts of the stages in the namespace."""
        namespace = self.shell.user_ns
        found = [namespace.get("__file__")]
        for value in list(namespace.values()):
            if isinstance(value, Stage):
                found += _source_files(value.fn)
        for file in found:
            if isinstance(file, str) and file.endswith(".py") and os.path.isfile(file):
                yield file


def no_locals_note(run: Run) -> str:
    """Why ``run`` handed back no locals, in a few words."""
    with contextlib.suppress(XpkitError):  # an unreadable run.lock: not a map, as far as known
        if run.lock.tasks is not None:
            return (
                "a map keeps none (--stop-on-error with the serial backend keeps a failing task's)"
            )
    return missing_locals_reason() or "none were captured"
