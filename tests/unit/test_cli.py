"""The command line: one dtype table behind every --dtype, one parent parser for the model options, the project's
own errors as one line and exit 2, Ctrl-C as one line and exit 130, and any other exception (a bug) unhidden."""

from __future__ import annotations

import pytest
import torch

from anima_probe import cli, errors
from anima_probe.model.options import DTYPES, check_device, torch_dtype

MODEL_VERBS = ["demo", "sample", "run", "distill", "report", "regress"]


def test_every_dtype_name_maps_to_a_torch_dtype():
    assert {name: torch_dtype(name) for name in DTYPES} == {
        "fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


@pytest.mark.parametrize("command", [["run", "pooling-nmi"], ["sample", "--proj", "p.safetensors"],
                                     ["distill", "captions.csv", "--out", "o"]])
def test_an_unknown_dtype_is_refused_in_one_line_before_any_work(command, capsys):
    with pytest.raises(SystemExit) as err:
        cli.main([*command, "--dtype", "fp64"])
    out = capsys.readouterr().err.strip()
    assert err.value.code == 2 and "invalid choice: 'fp64'" in out and "\n" not in out


def test_every_model_verb_takes_the_same_model_options():
    sub = next(a for a in cli.build_parser()._actions if a.dest == "command").choices
    shared = {"--model", "--dit", "--text-encoder", "--vae", "--qwen-tokenizer", "--t5-tokenizer", "--device",
              "--dtype"}
    for verb in MODEL_VERBS:
        flags = {s for a in sub[verb]._actions for s in a.option_strings}
        assert shared <= flags, (verb, shared - flags)


def test_an_unknown_experiment_is_one_line_and_exit_code_2(capsys):
    assert cli.main(["run", "pooling-nmx"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("anima-probe run: error: unknown experiment 'pooling-nmx'; did you mean 'pooling-nmi'")
    assert "\n" not in err


def test_the_project_errors_share_one_base_and_keep_the_builtin_types_callers_catch():
    assert issubclass(errors.UsageError, errors.AnimaProbeError) and issubclass(errors.UsageError, ValueError)
    assert issubclass(errors.MissingFileError, errors.InputError)
    assert issubclass(errors.MissingFileError, FileNotFoundError)
    from anima_probe.adapters.names import LoraKeyError
    from anima_probe.model.files import ModelFileError

    assert issubclass(ModelFileError, errors.InputError) and issubclass(LoraKeyError, errors.InputError)
    assert str(errors.UnknownNameError("unknown key 'x'")) == "unknown key 'x'"  # not KeyError's quoted repr


def _verb_raising(monkeypatch, exc):
    def boom(args):
        raise exc

    monkeypatch.setattr(cli.commands, "list_experiments", boom)


def test_an_internal_bug_keeps_its_traceback(monkeypatch):
    _verb_raising(monkeypatch, ValueError("a bug, not the user's input"))
    with pytest.raises(ValueError, match="a bug"):
        cli.main(["list"])


def test_ctrl_c_is_one_line_and_exit_130(monkeypatch, capsys):
    _verb_raising(monkeypatch, KeyboardInterrupt())
    assert cli.main(["list"]) == 130
    err = capsys.readouterr().err.strip()
    assert err == "anima-probe list: interrupted; nothing half-written was kept"


def test_a_device_that_does_not_exist_or_work_is_a_usage_error():
    with pytest.raises(errors.UsageError, match="--device banana: not a device name"):
        check_device("banana")
    if not torch.cuda.is_available():
        with pytest.raises(errors.UsageError, match="--device cuda: not usable on this machine"):
            check_device("cuda")
    assert check_device("cpu") == torch.device("cpu")
