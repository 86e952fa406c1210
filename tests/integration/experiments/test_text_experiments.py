"""The text-only experiments (pooling-nmi, quality-direction, quality-resolution): known answers on planted
vectors, the degenerate-direction policy, the artist-tag ablation, warm reruns, and that no DiT block runs."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch

from anima_probe.pipeline.experiment import discover, run
from anima_probe.pipeline.manifests import CaptionRow, load_prompt_sets, read_caption_set, write_caption_set
from anima_probe.probes.directions import (
    DegenerateDirection,
    PooledTable,
    check_poolings,
    content_directions,
    cosine,
    direction,
    null_summary,
    random_tag_sets,
)
from anima_probe.probes.hooks import capture
from anima_probe.toyworld import captions as toy_captions

REGISTRY = discover()
NMI_EXP = REGISTRY["pooling-nmi"]
QD_EXP = REGISTRY["quality-direction"]
QR_EXP = REGISTRY["quality-resolution"]
nmi_mod = __import__(NMI_EXP.fn.__module__, fromlist=["fn"])
qd_mod = __import__(QD_EXP.fn.__module__, fromlist=["fn"])
qr_mod = __import__(QR_EXP.fn.__module__, fromlist=["fn"])
ARTISTS = ("@aa", "@bb", "@cc")
SMALL_NMI = {"kmeans_seeds": 2, "n_init": 2, "n_boot": 20, "n_perm": 20}


def _caption_set(path, per_artist: int = 4):
    rows = [CaptionRow(f"{a[1:]}-{i}", f"score_{i + 1}, {a}, 1girl, solo" if i % 2 else f"score_{i + 1}, scenery, {a}",
                       a) for a in ARTISTS for i in range(per_artist)]  # fmt: skip
    return write_caption_set(rows, path)


def _run(tiny_anima, tmp_path, name, overrides):
    """Run through the real runner with a capture on block 0: text-only experiments must not fire it."""
    with capture(tiny_anima, "blocks.0") as caps:
        out = run(name, overrides, anima=tiny_anima, results=tmp_path / "results", cache_dir=tmp_path / "cache",
                  progress=False, registry=REGISTRY)
    assert caps["blocks.0"].records == [], f"{name} ran a DiT block"
    assert not REGISTRY[name].needs_dit
    return out, json.loads((out / "metrics.json").read_text())


# ---------------------------------------------------------------- the shipped toy caption set


def test_committed_toyworld_captions_regenerate_byte_for_byte(tmp_path):
    out = tmp_path / "captions.csv"
    assert toy_captions.main(["--out", str(out)]) == 0
    assert out.read_bytes() == toy_captions.TOYWORLD_CAPTIONS.read_bytes()
    rows = read_caption_set(toy_captions.TOYWORLD_CAPTIONS)
    assert len(rows) == toy_captions.CAPTION_COUNT and len({r.artist for r in rows}) == 12
    assert toy_captions.CAPTION_SEED != toy_captions.training_seed()
    with pytest.raises(ValueError, match="training seed"):
        toy_captions.toyworld_caption_set(10, seed=toy_captions.training_seed())


def test_artist_tag_removal_removes_whole_tags_only():
    regex = nmi_mod.PoolingNMIConfig().artist_tag_regex
    assert nmi_mod.strip_tags("score_3, @kiri_ama, 1girl, solo", regex) == "score_3, 1girl, solo"
    assert nmi_mod.strip_tags("1girl, @some artist,  smile", regex) == "1girl, smile"  # multi-word tags
    assert nmi_mod.strip_tags("mail@home, solo", regex) == "mail@home, solo"  # not a whole "@" tag
    for row in read_caption_set(toy_captions.TOYWORLD_CAPTIONS):
        stripped = nmi_mod.strip_tags(row.caption, regex)
        assert row.artist in row.caption and row.artist not in stripped and "@" not in stripped
        assert len(stripped.split(", ")) == len(row.caption.split(", ")) - 1


# ---------------------------------------------------------------- pooling-nmi: known answers


def _planted(n_per: int = 15, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = np.concatenate([np.eye(3, 8)[i] * 40 + rng.normal(0, 0.5, (n_per, 8)) for i in range(3)])  # (45, 8)
    return X, np.repeat(list(ARTISTS), n_per)


def test_score_pooling_planted_clusters_give_nmi_one_and_shuffled_labels_chance():
    config = nmi_mod.PoolingNMIConfig(**{**SMALL_NMI, "n_perm": 50})
    X, labels = _planted()
    perfect = nmi_mod.score_pooling(X, labels, config)
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["ari"] == pytest.approx(1.0)
    assert perfect["nmi_ci_low"] == pytest.approx(1.0) and perfect["null_q95"] < 0.3
    assert perfect["p_perm"] == pytest.approx(1 / 51)  # no shuffle reaches NMI 1
    shuffled = nmi_mod.score_pooling(X, np.random.default_rng(1).permutation(labels), config)
    assert shuffled["nmi"] < 0.3 and shuffled["p_perm"] > 0.05
    assert shuffled["nmi_ci_low"] <= shuffled["nmi"] <= shuffled["nmi_ci_high"]


class _PlantedCache:
    """Stands in for EmbeddingCache: a caption's vector is its artist's corner plus noise; no tag, no corner."""

    def __init__(self, root, anima):
        pass

    def pooled(self, prompts, progress=True):
        rng = np.random.default_rng(0)
        rows = [np.eye(len(ARTISTS), 8)[ARTISTS.index(a)] * 40 if (a := next((t for t in ARTISTS if t in p), None))
                else np.zeros(8) for p in prompts]
        X = torch.tensor(np.stack(rows) + rng.normal(0, 0.5, (len(prompts), 8)), dtype=torch.float32)
        return {k: X for k in check_poolings([f"{s}/{n}" for s in ("prompt_embeds", "crossattn_emb")
                                              for n in ("max_padded", "max_tokens", "mean_padded", "mean_tokens",
                                                        "eos")])}  # fmt: skip


def test_pooling_nmi_end_to_end_on_planted_vectors(tiny_anima, tmp_path, monkeypatch):
    monkeypatch.setattr("anima_probe.probes.directions.EmbeddingCache", _PlantedCache)
    manifest = _caption_set(tmp_path / "c.csv", per_artist=8)
    _, record = _run(tiny_anima, tmp_path, "pooling-nmi", {**SMALL_NMI, "manifest": str(manifest)})
    m = record["metrics"]
    assert m["nmi/crossattn_emb/max_padded"] == pytest.approx(1.0)
    assert m["no_tag/nmi/crossattn_emb/max_padded"] < 0.5 and m["no_tag/p_perm/crossattn_emb/max_padded"] > 0.05


def test_pooling_nmi_on_tiny_twin_writes_every_key_in_range(tiny_anima, tmp_path):
    manifest = _caption_set(tmp_path / "c.csv")
    out, record = _run(tiny_anima, tmp_path, "pooling-nmi", {**SMALL_NMI, "manifest": str(manifest)})
    m, better = record["metrics"], record["higher_is_better"]
    assert len(m) == 2 * 10 * len(nmi_mod.STATS) and set(m) == set(better)
    for key, value in m.items():
        assert math.isfinite(value), key
        if re.match(r"(no_tag/)?(nmi|null_q95|nmi_ci_low|nmi_ci_high)/", key):
            assert 0.0 <= value <= 1.0, key
        if "/p_perm/" in f"/{key}":
            assert 0.0 < value <= 1.0, key
    assert {"nmi_bars.png", "pooling_nmi.csv", "pooling_nmi.md"} <= {p.name for p in out.iterdir()}
    assert len((out / "pooling_nmi.csv").read_text().splitlines()) == 1 + 20


def test_pooling_nmi_warm_rerun_fits_no_kmeans_and_a_changed_statistic_refits(tiny_anima, tmp_path, monkeypatch):
    from sklearn.cluster import KMeans

    fits = []
    fit_predict = KMeans.fit_predict
    monkeypatch.setattr(KMeans, "fit_predict", lambda self, X, *a, **k: fits.append(1) or fit_predict(self, X, *a, **k))
    overrides = {**SMALL_NMI, "manifest": str(_caption_set(tmp_path / "c.csv"))}
    _, cold = _run(tiny_anima, tmp_path, "pooling-nmi", overrides)
    n_cold = len(fits)
    assert n_cold == 2 * 10 * SMALL_NMI["kmeans_seeds"]  # variants x poolings x seeds
    _, warm = _run(tiny_anima, tmp_path, "pooling-nmi", overrides)
    assert len(fits) == n_cold and warm["metrics"] == cold["metrics"]
    _, more_perm = _run(tiny_anima, tmp_path, "pooling-nmi", {**overrides, "n_perm": 30})
    assert len(fits) == 2 * n_cold  # a different config is a different key: every pooling is scored again
    assert more_perm["metrics"]["nmi/crossattn_emb/max_padded"] == cold["metrics"]["nmi/crossattn_emb/max_padded"]


def test_pooling_nmi_refuses_a_regex_that_matches_nothing(tiny_anima, tmp_path):
    manifest = _caption_set(tmp_path / "c.csv")
    with pytest.raises(ValueError, match="matches no tag"):
        run("pooling-nmi", {**SMALL_NMI, "manifest": str(manifest), "artist_tag_regex": "#.*"}, anima=tiny_anima,
            results=tmp_path / "r", cache_dir=tmp_path / "cache", progress=False, registry=REGISTRY)


# ---------------------------------------------------------------- directions: known answers


def _additive_table(tags: list[str], contents: list[str], template="{tags}, {content}", seed=0) -> PooledTable:
    """vector(template(t, c)) = tag_vec[t] + content_vec[c]: every content's t1 - t2 direction is identical."""
    rng = np.random.default_rng(seed)
    tv, cv = {t: rng.normal(size=6) for t in tags}, {c: rng.normal(size=6) for c in contents}
    prompts = {template.format(tags=t, content=c): tv[t] + cv[c] for t in tags for c in contents} | tv
    return PooledTable({p: i for i, p in enumerate(prompts)},
                       {"crossattn_emb/max_padded": torch.tensor(np.stack(list(prompts.values())))})


def test_prompts_pooling_to_the_same_vector_have_no_direction():
    table = _additive_table(["good", "bad"], ["a scene"])
    same = PooledTable({"good": 0, "also good": 1}, {"crossattn_emb/max_padded": torch.ones(2, 6)})
    with pytest.raises(DegenerateDirection, match="crossattn_emb/max_padded: 'good' and 'also good' pool to the same"):
        direction(same, "crossattn_emb/max_padded", "good", "also good")
    with pytest.raises(KeyError, match="was not pooled"):
        direction(table, "crossattn_emb/max_padded", "good", "unseen")


def test_direction_against_itself_is_one_and_additive_contents_agree_exactly():
    contents = ["a scene", "b scene", "c scene"]
    table = _additive_table(["good", "bad", "x", "y"], contents)
    d = direction(table, "crossattn_emb/max_padded", "good", "bad")
    assert cosine(d, d) == pytest.approx(1.0) and cosine(d, -d) == pytest.approx(-1.0)
    dirs = content_directions(table, "crossattn_emb/max_padded", "good", "bad", contents, "{tags}, {content}")
    assert qd_mod.mean_pairwise(dirs) == pytest.approx((1.0, 1.0))
    alone, per = qr_mod.scope_cosines(table, "crossattn_emb/max_padded", ("good", "bad"), ("bad", "good"),
                                      contents, "{tags}, {content}")
    assert alone == pytest.approx(-1.0) and per == pytest.approx([-1.0] * 3)


def test_identical_p_plus_and_p_minus_is_a_clear_error_and_writes_nothing(tiny_anima, tmp_path):
    with pytest.raises(DegenerateDirection, match="the same prompt"):
        run("quality-direction", {"positive": "masterpiece", "negative": "masterpiece", "n_null": 3},
            anima=tiny_anima, results=tmp_path / "results", cache_dir=tmp_path / "cache", progress=False,
            registry=REGISTRY)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_random_tag_sets_are_disjoint_seeded_and_checked():
    pool = load_prompt_sets()["tag_sets"]["neutral"]
    draws = random_tag_sets(pool, 50, size=2, sides=4, seed=3)
    assert draws == random_tag_sets(pool, 50, size=2, sides=4, seed=3) != random_tag_sets(pool, 50, 2, 4, seed=4)
    for draw in draws:
        tags = [t for side in draw for t in side.split(", ")]
        assert len(draw) == 4 and len(tags) == 8 == len(set(tags)) and set(tags) <= set(pool)
    with pytest.raises(ValueError, match="need 12 tags"):
        random_tag_sets(pool[:5], 1, size=3, sides=4)
    assert null_summary(200.0, np.arange(99.0))["p"] == pytest.approx(1 / 100)  # above every draw
    assert null_summary(-1.0, np.arange(99.0))["p"] == 1.0
    with pytest.raises(ValueError, match="unknown pooling"):
        check_poolings(["crossattn_emb/max"])


# ---------------------------------------------------------------- quality experiments on the tiny twin


def test_quality_direction_on_tiny_twin(tiny_anima, tmp_path):
    pools = "crossattn_emb/max_padded,prompt_embeds/eos"
    out, record = _run(tiny_anima, tmp_path, "quality-direction", {"n_null": 2, "poolings": pools})
    m = record["metrics"]
    assert set(m) == {f"{s}/{k}" for s in qd_mod.BETTER for k in pools.split(",")}
    for key, value in m.items():
        assert -1.0 <= value <= 1.0 and math.isfinite(value), key
    assert m["cos_min/crossattn_emb/max_padded"] <= m["cos_mean/crossattn_emb/max_padded"]
    assert m["p/crossattn_emb/max_padded"] >= 1 / 3
    assert len((out / "pairwise_cosines.csv").read_text().splitlines()) == 1 + 2 * 28


def test_quality_resolution_on_tiny_twin_and_warm_rerun_is_identical(tiny_anima, tmp_path, monkeypatch):
    _, first = _run(tiny_anima, tmp_path, "quality-resolution", {"n_null": 2})
    assert set(first["metrics"]) == {f"{scope}/{s}/crossattn_emb/max_padded" for scope in qr_mod.SCOPES
                                     for s in qr_mod.BETTER}
    assert all(-1.0 <= v <= 1.0 for v in first["metrics"].values())

    def no_encoding(*args, **kwargs):
        raise AssertionError("a warm rerun re-encoded prompts")

    monkeypatch.setattr("anima_probe.model.text.encode_prompts", no_encoding)
    _, second = _run(tiny_anima, tmp_path, "quality-resolution", {"n_null": 2})
    assert second["metrics"] == first["metrics"]
