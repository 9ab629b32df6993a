"""xpkit: one function as a script, a console cell and a library, with every run tracked."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
