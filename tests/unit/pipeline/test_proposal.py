"""`pipeline.proposal` transcribes docs/proposal.md: every claimed number is in the doc, in its own section, and the
claim table renders what it is given."""

from __future__ import annotations

import re

import pytest

from anima_probe.pipeline import proposal
from anima_probe.pipeline.provenance import REPO_ROOT

DOC = REPO_ROOT / "docs" / "proposal.md"


def numbers_in(section_start: str) -> set[float]:
    """Every number (decimal or 1.2e-3 form) of the numbered claim whose bold title starts with `section_start`."""
    text = DOC.read_text(encoding="utf-8")
    assert f"**{section_start}" in text, f"{DOC}: no claim starting {section_start!r}"
    body = text.split(f"**{section_start}", 1)[1].split("\n**", 1)[0]
    return {float(x) for x in re.findall(r"(?<![\w.])\d+\.\d+(?:e-?\d+)?", body)}


@pytest.mark.parametrize("claim, values", [
    ("1. Which pooling", proposal.POOLING_NMI.values()),
    ("2. Is there one quality direction", proposal.QUALITY_DIRECTION.values()),
    ("3. Where should the projected vector enter", [v for d in proposal.INJECTION_MSE.values() for v in d.values()]),
    ("4. Are quality and resolution separate", proposal.QUALITY_RESOLUTION.values()),
])
def test_every_transcribed_number_is_in_the_doc(claim, values):
    in_doc = numbers_in(claim)
    missing = [v for v in values if v not in in_doc]
    assert not missing, f"{DOC} ({claim}...) does not state {missing}"


def test_claim_table_keeps_three_significant_digits_of_small_numbers_and_dashes_missing_ones():
    table = proposal.claim_table([("nmi", 0.926, 0.5), ("mse", 4.77e-4, None)], model="toy")
    assert table.splitlines() == ["| quantity | proposal | toy |", "|---|---|---|",
                                  "| nmi | 0.926 | 0.500 |", "| mse | 0.000477 | - |"]
