"""Faults in caption sets, run folders and logs: bytes that are not UTF-8, a missing image, a caption longer than
the encoder reads, a hostile data.pt, a config rejected after the folder was made, a kill while the loss log is
rewritten, and where `demo` writes (never into the tracked reports; with the user's umask)."""

from __future__ import annotations

import os
import stat

import pytest
import torch

from anima_probe.pipeline.manifests import CaptionRow, write_caption_set
from anima_probe.pipeline.provenance import REPO_ROOT
from anima_probe.training import loop
from tests.support.faults import tree

FAST = ["data=teacher", "resolution=8", "batch_size=2", "val_count=1", "teacher_steps=1", "steps=2"]


@pytest.fixture
def rows():
    return [CaptionRow(f"r{i}", f"score_{i}, 1girl, solo", "@a") for i in range(4)]


def _distill(twin, captions, out, *extra):
    return ["distill", captions, *FAST, *extra, "--out", out, "--model", twin, "--quiet"]


def test_bytes_that_are_not_utf8_name_file_line_and_offset(fails, twin, rows, tmp_path):
    captions = write_caption_set(rows, tmp_path / "c.csv")
    data = captions.read_bytes().replace(b"score_2", b"score\xff2")
    captions.write_bytes(data)
    offset = data.index(bytes([0xFF]))
    err = fails(_distill(twin, captions, tmp_path / "out"))
    assert err.endswith(f"{captions}:4: not UTF-8 text (byte offset {offset}: b'\\xff2, '); "
                        "save the file as UTF-8")
    assert not (tmp_path / "out").exists()


def test_a_missing_image_names_the_manifest_line(fails, twin, rows, tmp_path):
    rows = [CaptionRow(r.id, r.caption, r.artist, image=f"img/{r.id}.png") for r in rows]
    captions = write_caption_set(rows, tmp_path / "c.jsonl")
    (tmp_path / "img").mkdir()
    err = fails(_distill(twin, captions, tmp_path / "out", "data=images"))
    assert err.endswith(f"{captions}:1: image {tmp_path / 'img' / 'r0.png'} of row 'r0' not found (4 rows with no "
                        "image file)")
    assert not (tmp_path / "out").exists()


def test_a_caption_over_the_encoders_limit_is_refused_naming_the_row_or_truncated_by_flag(fails, twin, rows,
                                                                                          tmp_path, capsys):
    from anima_probe.cli import main

    rows[2] = CaptionRow("long", ", ".join(["1girl"] * 10_000), "@a")
    captions = write_caption_set(rows, tmp_path / "c.csv")
    err = fails(_distill(twin, captions, tmp_path / "out"))
    assert f"{captions}:4: the caption of row 'long' is" in err and "--long-captions truncate" in err
    assert not (tmp_path / "out").exists()
    assert main([str(a) for a in _distill(twin, captions, tmp_path / "out", "--long-captions", "truncate")]) == 0
    assert f"{captions}: 1 caption(s) over 512 tokens truncated to their first 512 (lines 4)" in capsys.readouterr().err


def test_a_rejected_config_creates_no_folder_and_no_data(fails, twin, rows, tmp_path):
    captions = write_caption_set(rows, tmp_path / "c.csv")
    err = fails(_distill(twin, captions, tmp_path / "out", "val_count=9"))
    assert err.endswith(f"{captions}: val_count=9 must leave training rows (4 in all)")
    assert not (tmp_path / "out").exists()


def test_a_hostile_data_pt_is_refused_naming_the_file(fails, twin, rows, tmp_path):
    class Payload:  # what a malicious pickle does: run code when it is loaded
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    captions = write_caption_set(rows, tmp_path / "c.csv")
    (tmp_path / "out").mkdir()
    torch.save({"key": Payload()}, tmp_path / "out" / "data.pt")
    before = tree(tmp_path / "out")
    err = fails(_distill(twin, captions, tmp_path / "out"))
    assert f"{tmp_path / 'out' / 'data.pt'}: not a checkpoint this suite wrote" in err
    assert tree(tmp_path / "out") == before and not (tmp_path / "pwned").exists()


def test_a_kill_while_the_loss_log_is_rewritten_keeps_the_old_log(tmp_path, monkeypatch):
    path = tmp_path / "loss.csv"
    log = loop.CSVLog(path, ["step", "loss"])
    for step in range(5):
        log.write(step=step, loss=1.0 / (step + 1))
    old = path.read_text()

    def killed(src, dst):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        loop.CSVLog(path, ["step", "loss"], resume_step=3)  # resume drops rows 3, 4 by rewriting the file
    assert path.read_text() == old and tree(tmp_path) == {"loss.csv"}


def test_demo_writes_a_run_folder_never_the_tracked_reports_with_the_users_umask(twin, workdir, umask_022, capsys):
    from anima_probe.cli import main

    tracked = REPO_ROOT / "reports" / "figures" / "toyworld_demo.png"
    before = tracked.read_bytes() if tracked.exists() else None
    assert main(["demo", "--model", str(twin), "--steps", "2", "--size", "16", "--prompts", "1girl|scenery"]) == 0
    assert "2/2" in capsys.readouterr().err  # the progress bar
    run = workdir / "results" / "000-demo"
    assert tree(workdir) == {"results", "results/000-demo", "results/000-demo/grid.png",
                             "results/000-demo/settings.json"}
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in run.iterdir())
    assert (tracked.read_bytes() if tracked.exists() else None) == before


def test_demo_help_documents_every_option(capsys):
    from anima_probe.cli import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices["demo"]
    undocumented = [a.dest for a in sub._actions if not a.help]
    assert undocumented == []


def test_train_toy_resumed_under_another_config_is_refused_before_the_work(fails, tmp_path):
    """A checkpoint of another config: one line naming the checkpoint and the differing keys, before the image set
    is drawn, and the run folder is left exactly as it was."""
    from dataclasses import asdict, replace

    from anima_probe.toyworld.train import PROFILES

    run = tmp_path / "out/run"
    run.mkdir(parents=True)
    other = replace(PROFILES["cpu"], steps=7, lr=0.5)
    torch.save({"config": asdict(other), "step": 3}, run / "checkpoint.pt")
    before = tree(tmp_path)
    err = fails(["train-toy", tmp_path / "out"])
    assert "checkpoint.pt: written for another config (differs in lr, steps)" in err
    assert tree(tmp_path) == before
