"""Which blocks get how much guidance? Per-block weight schedules w(i) ("dynamic guidance") and the named profiles.

The ports disagree on whether an interval's ``end`` is inclusive (Anzhc: inclusive, sorryhyun: exclusive), so every
constructor here spells the convention out; the named profiles are written for the 28-block reference model and
depth-mapped onto smaller ones (the toy world has 5 blocks). Facts: docs/modulation-guidance.md
("How the official code applies it", "Side by side").
"""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass

import torch

from anima_probe.errors import UsageError
from anima_probe.guidance.sources import REFERENCE_BLOCKS

_INTERVAL = re.compile(r"^interval:(-?\d+):(-?\d+)([\])])$")


def block_weights(num_blocks: int, w: float, schedule: str = "uniform", start: int = 0, end: int | None = None,
                  *, end_inclusive: bool | None = None) -> torch.Tensor:
    """w(i) for i in 0..num_blocks-1 (float32): ``uniform`` every block; ``step`` blocks >= start (the paper's
    step function); ``interval`` blocks start..end. Negative indices count from the end, Python style.

    ``interval`` needs ``end_inclusive`` spelled out (Anzhc: inclusive, sorryhyun: exclusive); an ``end`` past the
    last block is clipped (the official code uses 1000 to mean "all").
    """
    if num_blocks < 1:
        raise UsageError(f"num_blocks must be >= 1, got {num_blocks}")
    first = start + num_blocks if start < 0 else start
    if not 0 <= first < num_blocks:
        raise UsageError(f"start={start} is outside blocks 0..{num_blocks - 1}")
    if schedule == "uniform":
        if start != 0 or end is not None:
            raise UsageError("schedule 'uniform' touches every block; use 'step' or 'interval' with start/end")
        stop = num_blocks
    elif schedule == "step":
        if end is not None:
            raise UsageError("schedule 'step' runs to the last block; use 'interval' to give an end")
        stop = num_blocks
    elif schedule == "interval":
        if end is None or end_inclusive is None:
            raise UsageError("schedule 'interval' needs end= and end_inclusive= (Anzhc's end is inclusive, "
                             "sorryhyun's exclusive); or use from_anzhc / from_sorryhyun")
        last = end + num_blocks if end < 0 else end
        stop = min(last + 1 if end_inclusive else last, num_blocks)
        if stop <= first:
            raise UsageError(f"interval start={start} end={end} (inclusive={end_inclusive}) touches no block")
    else:
        raise UsageError(f"unknown schedule {schedule!r}; choose from 'uniform', 'step', 'interval'")
    weights = torch.zeros(num_blocks)  # (N,)
    weights[first:stop] = w
    return weights


def from_anzhc(w: float = 3.0, start_layer: int = 0, end_layer: int = -1, *, num_blocks: int) -> torch.Tensor:
    """Anzhc's node: blocks ``start_layer..end_layer`` INCLUSIVE; ``end_layer=-1`` is the last block."""
    return block_weights(num_blocks, w, "interval", start_layer, end_layer, end_inclusive=True)


def from_sorryhyun(w: float = 3.0, start: int = 8, end: int | None = 27, *, num_blocks: int) -> torch.Tensor:
    """sorryhyun's ``build_block_schedule`` without taper: blocks ``[start, end)`` EXCLUSIVE; ``end=None`` = all."""
    if end is None:
        return block_weights(num_blocks, w, "step", start)
    return block_weights(num_blocks, w, "interval", start, end, end_inclusive=False)


@dataclass(frozen=True)
class BlockProfile:
    """A named w(i) on the 28-block reference model: w on blocks ``[start, end)`` (``end=None``: to the last)."""

    w: float
    start: int
    end: int | None
    note: str

    def weights(self, w: float | None = None) -> torch.Tensor:
        return from_sorryhyun(self.w if w is None else w, self.start, self.end, num_blocks=REFERENCE_BLOCKS)


PROFILES: dict[str, BlockProfile] = {
    "uniform": BlockProfile(3.0, 0, None, "every block; sorryhyun's legacy uniform_w3, 'prone to pink collapse'"),
    "official-cosmos": BlockProfile(3.0, 0, None, "CosmosWithPooledCLIP defaults: w=3, start_layer=0, all blocks"),
    "anzhc": BlockProfile(3.0, 0, 28, "AnimaModGuidance defaults: start 0, end_layer -1 inclusive (= block 27)"),
    "sorryhyun": BlockProfile(3.0, 8, 27, "step_i8_skip27: blocks 8..26; protects blocks 0-7 and block 27"),
    "sorryhyun-safe": BlockProfile(3.0, 14, None, "step_i14, for LoRAs that show anatomy drift"),
}


def profile(name: str, num_blocks: int, w: float | None = None) -> torch.Tensor:
    """A named profile's w(i) for a model of depth ``num_blocks`` (``w`` overrides the profile's weight).

    Depth mapping: block i of an N-block model takes the weight of reference block round(i * 27 / (N - 1)), so
    first and last blocks map onto each other (sorryhyun's protected block 27 stays protected at any depth) and
    N = 28 is the identity. E.g. N = 6 samples reference blocks 0, 5, 11, 16, 22, 27: 'sorryhyun' -> 0,0,w,w,w,0.
    A 1-block model takes reference block 0's weight.
    """
    if name not in PROFILES:
        close = difflib.get_close_matches(name, PROFILES, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise UsageError(f"unknown profile {name!r}{hint} Known: {sorted(PROFILES)}")
    if num_blocks < 1:
        raise UsageError(f"num_blocks must be >= 1, got {num_blocks}")
    ref = PROFILES[name].weights(w)  # (28,)
    if num_blocks == 1:
        return ref[:1].clone()
    idx = [math.floor(i * (REFERENCE_BLOCKS - 1) / (num_blocks - 1) + 0.5) for i in range(num_blocks)]
    return ref[idx]  # (N,)


@dataclass(frozen=True)
class Schedule:
    """w(i) over blocks, with the end convention spelled out: ``uniform`` (every block), ``step`` (blocks >=
    start), ``interval`` (start..end, ``end_inclusive`` required: Anzhc inclusive, sorryhyun exclusive), or a named
    ``profile`` from ``PROFILES`` (depth-mapped onto the model). Text form (``parse``): ``uniform``,
    ``step:8``, ``interval:8:26]`` (inclusive), ``interval:8:27)`` (exclusive), or a profile name."""

    kind: str = "uniform"
    start: int = 0
    end: int | None = None
    end_inclusive: bool | None = None
    profile: str | None = None

    def weights(self, num_blocks: int, w: float) -> torch.Tensor:
        """(N,) float32 w(i)."""
        if self.kind == "profile":
            return profile(self.profile, num_blocks, w)
        return block_weights(num_blocks, w, self.kind, self.start, self.end, end_inclusive=self.end_inclusive)

    def active(self, num_blocks: int) -> torch.Tensor:
        """(N,) bool: the blocks the schedule names (a family that modulates only those, cosmos, leaves
        the others at the plain model)."""
        return self.weights(num_blocks, 1.0) != 0

    def text(self) -> str:
        if self.kind == "profile":
            return self.profile
        if self.kind == "interval":
            return f"interval:{self.start}:{self.end}{']' if self.end_inclusive else ')'}"
        return "uniform" if self.kind == "uniform" else f"step:{self.start}"

    @staticmethod
    def parse(text: str) -> Schedule:
        if text == "uniform":
            return Schedule()
        if m := re.fullmatch(r"step:(-?\d+)", text):
            return Schedule("step", int(m.group(1)))
        if m := _INTERVAL.match(text):
            return Schedule("interval", int(m.group(1)), int(m.group(2)), m.group(3) == "]")
        if text in PROFILES:
            return Schedule("profile", profile=text)
        raise UsageError(f"unknown schedule {text!r}: use uniform, step:START, interval:START:END] (end inclusive), "
                         f"interval:START:END) (end exclusive), or a profile {sorted(PROFILES)}")
