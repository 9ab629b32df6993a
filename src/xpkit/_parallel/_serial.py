"""The ``serial`` backend: every item in this process, one after the other."""

from __future__ import annotations

from collections.abc import Sequence

from ._backends import OnDone, Submitted, Work

__all__ = ["SerialBackend"]


class SerialBackend:
    """Items run here, in order; their locals and exceptions are kept (stop on error)."""

    name = "serial"
    in_process = True
    detached = False

    def run(self, work: Work, indices: Sequence[int], on_done: OnDone) -> Submitted | None:
        for i in indices:
            for done in work.run([i], in_process=True):
                if on_done(done):
                    return None
        return None
