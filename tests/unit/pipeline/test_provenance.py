"""Provenance: git hash inside and outside a repository, environment versions, file sha256."""

from __future__ import annotations

import os
import subprocess

from anima_probe.pipeline.provenance import environment_info, git_hash, sha256_file


def test_git_hash_inside_and_outside_git(tmp_path):
    assert git_hash(tmp_path) == "unknown"
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    (tmp_path / "f").write_text("1")
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}  # fmt: skip
    subprocess.run(["git", "add", "f"], cwd=tmp_path, check=True)
    subprocess.run(["git", "commit", "-qm", "x"], cwd=tmp_path, check=True, env=env)
    head = git_hash(tmp_path)
    assert len(head) == 40 and all(c in "0123456789abcdef" for c in head)
    (tmp_path / "f").write_text("2")
    assert git_hash(tmp_path) == head + "+dirty"


def test_environment_info_and_sha256(tmp_path):
    env = environment_info(device="cpu")
    assert set(env) == {"python", "torch", "diffusers", "transformers", "platform", "device"}
    assert env["device"] == "cpu" and env["torch"].startswith("2.")
    (tmp_path / "w").write_bytes(b"abc")
    assert sha256_file(tmp_path / "w") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
