"""The compatibility experiment refuses bad settings by key, before it loads or samples anything."""

from __future__ import annotations

from dataclasses import replace

import pytest

from anima_probe.errors import UsageError
from anima_probe.pipeline.experiment import Context, discover

EXP = discover()["compatibility"]


@pytest.mark.parametrize("change, named", [
    ({"prompts": 9}, r"prompts=9: need 2\.\.8"),
    ({"prompts": 1}, r"prompts=1"),
    ({"draws": 0}, r"draws, steps and calibration_prompts"),
    ({"cfgs": (0.5, 3.0)}, r"cfgs=\(0\.5, 3\.0\)"),
    ({"neutral_cfgs": (7.0,)}, r"neutral_cfgs=\(7\.0,\): each must be one of cfgs"),
])
def test_bad_settings_are_named_before_any_work(change, named, tmp_path):
    ctx = Context(anima=None, cache_dir=tmp_path, progress=False)  # no model: the check must come first
    with pytest.raises(UsageError, match=named):
        EXP.fn(ctx, replace(EXP.config(), **change))
