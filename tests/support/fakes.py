"""A one-file fake experiment for the registry, report and gate tests: its score depends on the seed only."""

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
