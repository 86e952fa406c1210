"""Faults in what the user typed: a device that is not there, an output folder that cannot be written, a number
that is not finite or out of range, a regex that does not compile, Ctrl-C. Each is found before the work starts:
exit 2 (130 for Ctrl-C), one line naming the flag, nothing created."""

from __future__ import annotations

import pytest
import torch

from anima_probe.cli import main
from anima_probe.guidance.sources import PooledTextProjection, save_pooled_text_proj
from anima_probe.pipeline.manifests import CaptionRow, write_caption_set
from tests.support.faults import tree

no_cuda = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")


@pytest.fixture
def captions(tmp_path):
    rows = [CaptionRow(f"r{i}", f"score_{i}, 1girl, {a}", a) for i in range(6) for a in [("@a", "@b")[i % 2]]]
    return write_caption_set(rows, tmp_path / "captions.csv")


@pytest.fixture
def proj(tiny_anima, tmp_path):
    c = tiny_anima.dit_config
    return save_pooled_text_proj(PooledTextProjection(c.hidden, c.text_dim), tmp_path / "p.safetensors")


def test_distill_on_a_device_that_does_not_exist(fails, twin, captions, tmp_path):
    out = tmp_path / "out"
    err = fails(["distill", captions, "--out", out, "--model", twin, "--device", "banana"])
    assert "--device banana: not a device name" in err and not out.exists()


@no_cuda
@pytest.mark.parametrize("verb", ["run", "sample", "distill"])
def test_cuda_on_a_machine_without_cuda(verb, fails, twin, captions, proj, workdir):
    argv = {"run": ["run", "pooling-nmi"], "sample": ["sample", "--proj", proj],
            "distill": ["distill", captions, "--out", workdir / "out"]}[verb]
    err = fails([*argv, "--model", twin, "--device", "cuda"])
    assert "--device cuda: not usable on this machine" in err and tree(workdir) == set()


@pytest.mark.parametrize("verb,flag", [("run", "--results"), ("sample", "--out"), ("distill", "--out"),
                                       ("demo", "--results")])
def test_an_output_folder_that_cannot_be_written_is_found_before_the_work(verb, flag, fails, twin, captions, proj,
                                                                          tmp_path, workdir):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    argv = {"run": ["run", "pooling-nmi"], "sample": ["sample", "--proj", proj], "demo": ["demo"],
            "distill": ["distill", captions]}[verb]
    err = fails([*argv, "--model", twin, flag, blocker / "runs"])
    assert err.endswith(f"{flag} {blocker / 'runs'}: {blocker} is a file, not a folder")
    assert blocker.read_text() == "not a folder" and tree(workdir) == set()


def test_an_unwritable_cache_is_skipped_with_one_warning(tmp_path, monkeypatch, capsys, twin, captions):
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    monkeypatch.setenv("ANIMA_PROBE_CACHE", str(blocker / "cache"))
    argv = ["run", "pooling-nmi", f"manifest={captions}", "kmeans_seeds=1", "n_init=1", "n_half=2", "n_perm=2",
            "--model", twin, "--results", tmp_path / "runs", "--quiet"]
    assert main([str(a) for a in argv]) == 0
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "cache folder" in warnings[0] and "running without the cache" in warnings[0]
    assert (tmp_path / "runs" / "000-pooling-nmi" / "metrics.json").is_file()


@pytest.mark.parametrize("flag,value,message", [("--w", "nan", "--w nan: must be a finite number"),
                                                ("--cfg", "1,inf", "--cfg inf: must be a finite number"),
                                                ("--size", "0", "--size 0: must be >= 8"),
                                                ("--steps", "0", "--steps 0: must be >= 1"),
                                                ("--shift", "0", "--shift 0: simple_sigmas: shift must be > 0, got 0.0"),
                                                ("--sigmas", "bong_tangent", "--steps 1 --shift 3: bong_tangent_sigmas: "
                                                 "needs steps >= 2 (two stages), got 1")])
def test_sample_refuses_a_number_out_of_range_before_sampling(flag, value, message, fails, twin, proj, tmp_path):
    runs = tmp_path / "runs"
    steps = ["--steps", "1"] if flag == "--sigmas" else []
    err = fails(["sample", "--proj", proj, "--model", twin, "--out", runs, flag, value, *steps])
    assert err.endswith(message) and not runs.exists()


def test_demo_refuses_size_zero(fails, twin, workdir):
    assert fails(["demo", "--model", twin, "--size", "0"]).endswith("--size 0: must be >= 8")
    assert tree(workdir) == set()


def test_a_regex_that_does_not_compile_is_a_usage_error(fails, twin, workdir):
    err = fails(["run", "pooling-nmi", "artist_tag_regex=[", "--model", twin])
    assert "override artist_tag_regex='[': not a regular expression" in err and tree(workdir) == set()


def test_ctrl_c_during_a_run_is_one_line_exit_130_and_no_run_folder(fails, twin, captions, workdir, monkeypatch):
    from anima_probe.pipeline import runs

    def ctrl_c(*args, **kwargs):  # Ctrl-C while the run folder is being written: the worst moment
        raise KeyboardInterrupt

    monkeypatch.setattr(runs, "atomic_write_text", ctrl_c)
    err = fails(["run", "pooling-nmi", f"manifest={captions}", "kmeans_seeds=1", "n_init=1", "n_half=2", "n_perm=2",
                 "--model", twin, "--quiet"], code=130)
    assert err == "anima-probe run: interrupted; nothing half-written was kept"
    assert tree(workdir / "results") == set()


def test_a_sample_that_fails_while_writing_leaves_no_run_folder(tmp_path):
    from anima_probe.pipeline.samples import write_sample_run

    with pytest.raises(ValueError, match="Out of range float values"):  # strict JSON refuses the NaN
        write_sample_run(tmp_path, torch.zeros(1, 1, 1, 3, 8, 8), {"w": float("nan")}, None)
    assert tree(tmp_path) == set()


def test_an_experiment_config_out_of_range_is_refused_before_the_model_loads(fails, twin, tmp_path):
    runs = tmp_path / "runs"
    err = fails(["run", "toyworld-evidence", "artists=1", "--model", twin, "--results", runs])
    assert err.endswith("artists=1: must be in 2..12") and not runs.exists()
