"""``python -m xpkit`` is the ``xp`` command."""

from __future__ import annotations

import sys

from ._cli._main import main

sys.exit(main())
