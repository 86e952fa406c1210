"""The gate catches real bugs: injected into the code, they move the shipped toy world's numbers beyond the
committed toy tolerances (while a clean rerun of the same small config stays within them)."""

from __future__ import annotations

import pytest

from anima_probe.pipeline.baselines import compare, load_baseline


def _gate_against_clean(name: str, clean: dict, observed: dict) -> dict[str, str]:
    """Statuses of `observed` vs a clean run of the same small config, with the committed toy tolerances."""
    from anima_probe.pipeline.baselines import baseline_path

    base = load_baseline(baseline_path("toy", name))
    stated = {"experiment": name, "version": base["version"],
              "metrics": {k: {**e, "value": clean[k]} for k, e in base["metrics"].items() if k in clean}}
    return {c.key: c.status for c in compare(observed, base["version"], stated, name)}


@pytest.fixture(scope="module")
def toy():
    from anima_probe.model.anima import load_anima
    from anima_probe.pipeline.experiment import discover

    return load_anima(with_vae=False), discover()


def _metrics(name, overrides, toy, tmp_path, tag):
    from anima_probe.pipeline.experiment import run
    from anima_probe.pipeline.runs import read_run

    anima, registry = toy
    # A cache per run: pooled vectors cached by the clean run would hide a pooling bug from the second.
    run_dir = run(name, overrides, anima=anima, results=tmp_path / "results", cache_dir=tmp_path / f"cache-{tag}",
                  progress=False, registry=registry)
    return read_run(run_dir).metrics


@pytest.mark.slow  # about 15 s of CPU: two small pooling-nmi runs, each encoding its captions afresh
def test_gate_catches_max_and_mean_pooling_swapped(toy, tmp_path, monkeypatch):
    import csv

    from anima_probe.pipeline.provenance import REPO_ROOT
    from anima_probe.probes import pooling

    rows = list(csv.DictReader(open(REPO_ROOT / "data/manifests/toyworld_captions.csv", encoding="utf-8")))
    artists = sorted({r["artist"] for r in rows})[:4]
    subset = [r for a in artists for r in [r for r in rows if r["artist"] == a][:12]]  # 48 captions, 4 artists
    with open(tmp_path / "captions.csv", "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(subset)
    small = {"manifest": str(tmp_path / "captions.csv"), "kmeans_seeds": 1, "n_init": 2, "n_half": 2,
             "n_perm": 10, "ablation": False}
    clean = _metrics("pooling-nmi", small, toy, tmp_path, "clean")
    for name, (op, over) in list(pooling.STRATEGIES.items()):
        if op in ("max", "mean"):
            monkeypatch.setitem(pooling.STRATEGIES, name, ("mean" if op == "max" else "max", over))
    status = _gate_against_clean("pooling-nmi", clean, _metrics("pooling-nmi", small, toy, tmp_path, "bug"))
    # On the toy model mean pooling of crossattn_emb clusters artists better than max: the swap drops the
    # mean_* keys (regressed) and lifts the max_* keys (improved: fails with --strict); EOS is untouched.
    assert status["nmi/crossattn_emb/mean_padded"] == status["nmi/crossattn_emb/mean_tokens"] == "regressed"
    assert status["nmi/crossattn_emb/max_padded"] == status["nmi/crossattn_emb/max_tokens"] == "improved"
    assert status["nmi/crossattn_emb/eos"] == status["nmi/prompt_embeds/eos"] == "ok"


def test_gate_catches_a_halved_injection_delta(toy, tmp_path, monkeypatch):
    from anima_probe.probes import hooks
    from anima_probe.probes import sensitivity as injection

    small = {"n_prompts": 2, "noise_seeds": 1, "sigmas": (0.5,), "alphas": (2.0, 4.0, 8.0), "latent_size": 16,
             "n_boot": 200}  # 2 prompts: the fewest a cluster bootstrap takes
    clean = _metrics("injection-mse", small, toy, tmp_path, "clean")
    monkeypatch.setattr(injection, "add_vector", lambda vec, alpha: hooks.add_vector(vec, 0.5 * alpha))
    status = _gate_against_clean("injection-mse", clean, _metrics("injection-mse", small, toy, tmp_path, "bug"))
    # Halving alpha shifts every curve one octave: after-norm MSE at alpha 4 falls ~8x (regressed) and the
    # 4 -> 8 growth jumps (flagged). The measured tolerances of the other MSE keys are wide (the seed also
    # draws the random projection, so MSE varies ~100 % across seeds) and let smaller moves pass: the gate
    # is only as sharp as the experiment's own seed spread.
    assert status["mse/after_norm/alpha_4"] == "regressed"
    assert status["growth_4_to_8/after_norm"] == "improved"
