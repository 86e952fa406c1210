"""Fakes shared by the pipeline tests: a one-file experiment (its score depends on the seed only), a registry of it
with a stand-in for a loaded model, and a result record."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from anima_probe.pipeline.runs import ResultRecord

FAKE_EXPERIMENT = '''
from __future__ import annotations

from dataclasses import dataclass

from anima_probe.pipeline.experiment import Experiment, Result


@dataclass(frozen=True)
class FakeConfig:
    seed: int = 0
    n: int = 3


def fn(ctx, config):
    return Result({"score": 0.5 + 0.01 * config.seed, "err": 1.0 + config.n}, {"score": True, "err": False})


EXPERIMENT = Experiment(name="fake", version="{version}", question="Does the fake work?", config=FakeConfig,
                        fn=fn, needs_dit=False)
'''


def fake_experiment(version: str = "1") -> str:
    """The fake experiment's source at `version`."""
    return FAKE_EXPERIMENT.replace("{version}", version)


def fake_registry(tmp_path: Path, version: str = "1"):
    """A one-file experiment registry, a model file and a stand-in for a loaded model (no weights needed)."""
    (tmp_path / "experiments").mkdir(exist_ok=True)
    (tmp_path / "experiments" / "fake.py").write_text(fake_experiment(version))
    (tmp_path / "anima_probe").mkdir(exist_ok=True)
    (tmp_path / "anima_probe" / "mod.py").write_text("X = 1\n")
    model_file = tmp_path / "dit.safetensors"
    if not model_file.exists():
        model_file.write_bytes(b"weights v1")
    anima = SimpleNamespace(name="fake-model", files={"dit": model_file}, device="cpu")
    from anima_probe.pipeline.experiment import discover

    return discover(tmp_path / "experiments"), anima


def fake_record(metrics: dict[str, float], name: str = "fake", dit: str = "a" * 64) -> ResultRecord:
    return ResultRecord(name, "1", {"seed": 0}, metrics, {k: True for k in metrics}, git_hash="0123abcd",
                        model={"name": "fake-model", "files": {"dit": dit}}, env={"device": "cpu", "torch": "x"})
