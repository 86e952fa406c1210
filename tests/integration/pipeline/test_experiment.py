"""The experiment contract: discovery, key=value overrides, and the run folder a run leaves behind."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from anima_probe.pipeline import experiment as ex
from anima_probe.pipeline.freshness import experiment_file
from anima_probe.pipeline.provenance import sha256_file
from anima_probe.pipeline.rundirs import resolve_latest


@dataclass(frozen=True)
class Cfg:
    seed: int = 0
    alphas: tuple[float, ...] = (1.0, 2.0)
    projection: str | None = None
    flag: bool = False
    name: str = "x"


def test_overrides_parse_by_declared_type():
    cfg = ex.apply_overrides(Cfg(), ["seed=3", "alphas=0, 2,4.5", "projection=none", "flag=yes", "name=a=b"])
    assert cfg == Cfg(seed=3, alphas=(0.0, 2.0, 4.5), projection=None, flag=True, name="a=b")
    assert ex.apply_overrides(Cfg(), {"seed": 7}).seed == 7
    assert ex.apply_overrides(Cfg(), ["projection=p.safetensors"]).projection == "p.safetensors"


@pytest.mark.parametrize("bad, message", [
    (["sed=3"], "did you mean seed"),
    (["seed=three"], "expected int"),
    (["flag=maybe"], "expected true or false"),
    (["seed"], "is not key=value"),
])
def test_bad_overrides_name_the_key(bad, message):
    with pytest.raises((KeyError, ValueError), match=message):
        ex.apply_overrides(Cfg(), bad)


_EXP_FILE = '''
from dataclasses import dataclass
from anima_probe.pipeline.experiment import Experiment, Result

@dataclass(frozen=True)
class Config:
    seed: int = 0
    scale: float = 2.0

def fn(ctx, config):
    return Result({{"value": config.scale * ctx.anima.num_blocks}}, {{"value": True}})

EXPERIMENT = Experiment(name="{name}", version="3", question="q", config=Config, fn=fn, needs_dit=False)
'''


def test_discover_finds_experiments_and_refuses_duplicate_names(tmp_path):
    (tmp_path / "a.py").write_text(_EXP_FILE.format(name="alpha"))
    (tmp_path / "helpers.py").write_text("X = 1\n")  # a file without EXPERIMENT is not an experiment
    assert list(ex.discover(tmp_path)) == ["alpha"]
    with pytest.raises(KeyError, match="did you mean 'alpha'"):
        ex.get("alpah", ex.discover(tmp_path))
    (tmp_path / "b.py").write_text(_EXP_FILE.format(name="alpha"))
    with pytest.raises(ValueError, match="already defined"):
        ex.discover(tmp_path)


def test_the_shipped_experiments_all_have_defaults_and_versions():
    registry = ex.discover()
    for name, exp in registry.items():
        # discover() keys by exp.name, so compare with what is independent of it: the defining file's name
        assert experiment_file(exp).stem.replace("_", "-") == name, f"{name} is defined in {experiment_file(exp)}"
        assert str(exp.version)
        config = exp.config()  # every field has a default
        assert hasattr(config, "seed"), f"{name}: configs carry a seed so runs are reproducible"


def test_run_writes_a_numbered_folder_with_model_hashes(tmp_path, tiny_anima):
    (tmp_path / "exps").mkdir()
    (tmp_path / "exps" / "a.py").write_text(_EXP_FILE.format(name="alpha"))
    registry = ex.discover(tmp_path / "exps")
    first = ex.run("alpha", ["scale=0.5"], anima=tiny_anima, results=tmp_path / "results", registry=registry)
    second = ex.run("alpha", [], anima=tiny_anima, results=tmp_path / "results", registry=registry)
    assert first.name.startswith("000") and second.name.startswith("001")
    assert resolve_latest(tmp_path / "results", "alpha") == second
    record = json.loads((first / "metrics.json").read_text())
    assert record["metrics"] == {"value": 0.5 * tiny_anima.num_blocks}
    assert record["config"] == {"seed": 0, "scale": 0.5} and record["version"] == "3"
    assert record["model"]["files"]["dit"] == sha256_file(tiny_anima.files["dit"])
    assert json.loads((first / "config.json").read_text())["config"]["scale"] == 0.5
    from anima_probe.pipeline.freshness import read_stamp, source_fingerprint

    assert read_stamp(first) == source_fingerprint(registry["alpha"])  # API runs are stamped like CLI runs
