"""anima-probe: reproducible probes of modulation guidance on the Anima text-to-image model."""

from __future__ import annotations

__version__ = "0.1.0"
