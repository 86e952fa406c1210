"""The command line: one dtype table behind every --dtype, bad input ends with one line and exit code 2."""

from __future__ import annotations

import pytest
import torch

from anima_probe import cli


def test_every_dtype_name_maps_to_a_torch_dtype():
    assert {name: cli._torch_dtype(name) for name in cli.DTYPES} == {
        "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("command", [["run", "pooling-nmi"], ["sample", "--proj", "p.safetensors"],
                                     ["distill", "captions.csv", "--out", "o"]])
def test_an_unknown_dtype_is_refused_before_any_work(command, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main([*command, "--dtype", "fp64"])
    assert err.value.code == 2 and "invalid choice: 'fp64'" in capsys.readouterr().err


def test_an_unknown_experiment_is_one_line_and_exit_code_2(capsys):
    assert cli.main(["run", "pooling-nmx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anima-probe run: error: unknown experiment 'pooling-nmx'; did you mean 'pooling-nmi'")
    assert "\n" not in err
