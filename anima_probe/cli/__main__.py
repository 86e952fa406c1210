"""`python -m anima_probe.cli` (what `torchrun` and `accelerate launch` start)."""

from __future__ import annotations

import sys

from anima_probe.cli import main

sys.exit(main())
