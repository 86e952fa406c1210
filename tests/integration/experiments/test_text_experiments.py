"""The text-only experiments (pooling-nmi, quality-direction, quality-resolution): known answers on planted
vectors (positive controls) and on vectors with nothing planted (negative controls), nulls with the statistic's tag
counts, the degenerate-direction policy, the untrained-token refusal, the artist-tag ablation, warm reruns, and that
no DiT block runs."""

from __future__ import annotations

import csv
import functools
import json
import math
import re
import shutil
import zlib

import numpy as np
import pytest
import torch

from anima_probe.pipeline.experiment import discover, run
from anima_probe.pipeline.manifests import (
    MANIFEST_DIR,
    CaptionRow,
    load_prompt_sets,
    read_caption_set,
    split_tags,
    write_caption_set,
)
from anima_probe.pipeline.vocabulary import UntrainedTokens, write_training_vocabulary
from anima_probe.probes.clustering import STATS, score_clustering, strip_tags
from anima_probe.probes.directions import (
    DegenerateDirection,
    PooledTable,
    check_poolings,
    consistency_null,
    content_directions,
    cosine,
    direction,
    mean_pairwise,
    random_tag_sets,
    scope_cosines,
    sweep_draws,
    tag_count,
)
from anima_probe.probes.hooks import capture
from anima_probe.probes.stats import null_summary
from anima_probe.toyworld import captions as toy_captions

REGISTRY = discover()
NMI_EXP = REGISTRY["pooling-nmi"]
QD_EXP = REGISTRY["quality-direction"]
QR_EXP = REGISTRY["quality-resolution"]
qr_mod = __import__(QR_EXP.fn.__module__, fromlist=["fn"])
ARTISTS = ("@aa", "@bb", "@cc")
SMALL_NMI = {"kmeans_seeds": 2, "n_init": 2, "n_half": 2, "n_perm": 20}
SMALL_QD = {"n_null": 30, "n_sweep": 4, "n_boot": 200}
POOLINGS = check_poolings([f"{s}/{n}" for s in ("prompt_embeds", "crossattn_emb")
                           for n in ("max_padded", "max_tokens", "mean_padded", "mean_tokens", "eos")])


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
    regex = NMI_EXP.config().artist_tag_regex
    assert strip_tags("score_3, @kiri_ama, 1girl, solo", regex) == "score_3, 1girl, solo"
    assert strip_tags("1girl, @some artist,  smile", regex) == "1girl, smile"  # multi-word tags
    assert strip_tags("mail@home, solo", regex) == "mail@home, solo"  # not a whole "@" tag
    for row in read_caption_set(toy_captions.TOYWORLD_CAPTIONS):
        stripped = strip_tags(row.caption, regex)
        assert row.artist in row.caption and row.artist not in stripped and "@" not in stripped
        assert len(stripped.split(", ")) == len(row.caption.split(", ")) - 1


# ---------------------------------------------------------------- pooling-nmi: known answers


def _planted(n_per: int = 15, seed: int = 0):
    rng = np.random.default_rng(seed)
    X = np.concatenate([np.eye(3, 8)[i] * 40 + rng.normal(0, 0.5, (n_per, 8)) for i in range(3)])  # (45, 8)
    return X, np.repeat(list(ARTISTS), n_per)


def test_score_clustering_planted_clusters_are_found_and_shuffled_labels_are_not():
    X, labels = _planted()
    small = {"seeds": (0, 1), "n_init": 2, "n_perm": 50, "n_half": 6}
    perfect = score_clustering(X, labels, **small)  # positive control: NMI 1, CI (refitted halves) above the null
    assert perfect["nmi"] == pytest.approx(1.0) and perfect["ari"] == pytest.approx(1.0)
    assert perfect["nmi_ci_low"] == pytest.approx(1.0) and perfect["nmi_se"] == pytest.approx(0.0, abs=1e-12)
    assert perfect["null_q95"] < 0.3 < perfect["nmi_ci_low"]
    assert perfect["p_perm"] == pytest.approx(1 / 51)  # no shuffle reaches NMI 1
    assert 0 < perfect["mde"] < 0.3
    shuffled = score_clustering(X, np.random.default_rng(1).permutation(labels), **small)  # negative control
    assert shuffled["nmi"] < 0.3 and shuffled["p_perm"] > 0.05
    assert shuffled["nmi_ci_low"] <= shuffled["nmi"] <= shuffled["nmi_ci_high"] and shuffled["nmi_se"] > 0


class _PlantedCache:
    """Stands in for EmbeddingCache: a caption's vector is its artist's corner plus noise; no tag, no corner."""

    def __init__(self, root, anima):
        pass

    def pooled(self, prompts, progress=True):
        rng = np.random.default_rng(0)
        rows = [np.eye(len(ARTISTS), 8)[ARTISTS.index(a)] * 40 if (a := next((t for t in ARTISTS if t in p), None))
                else np.zeros(8) for p in prompts]
        X = torch.tensor(np.stack(rows) + rng.normal(0, 0.5, (len(prompts), 8)), dtype=torch.float32)
        return {k: X for k in POOLINGS}


def test_pooling_nmi_end_to_end_on_planted_vectors(tiny_anima, tmp_path, monkeypatch):
    monkeypatch.setattr("anima_probe.probes.directions.EmbeddingCache", _PlantedCache)
    manifest = _caption_set(tmp_path / "c.csv", per_artist=8)
    _, record = _run(tiny_anima, tmp_path, "pooling-nmi", {**SMALL_NMI, "manifest": str(manifest)})
    m = record["metrics"]
    assert m["nmi/crossattn_emb/max_padded"] == pytest.approx(1.0)
    assert m["p_holm/crossattn_emb/max_padded"] == pytest.approx(min(1.0, 20 / 21))  # floor 1/21, 20 tests
    assert m["no_tag/nmi/crossattn_emb/max_padded"] < 0.5 and m["no_tag/p_perm/crossattn_emb/max_padded"] > 0.05


def test_pooling_nmi_on_tiny_twin_writes_every_key_in_range(tiny_anima, tmp_path):
    manifest = _caption_set(tmp_path / "c.csv")
    out, record = _run(tiny_anima, tmp_path, "pooling-nmi", {**SMALL_NMI, "manifest": str(manifest)})
    m, better = record["metrics"], record["higher_is_better"]
    assert len(m) == 2 * 10 * len(STATS) and set(m) == set(better)
    for key, value in m.items():
        assert math.isfinite(value), key
        if re.match(r"(no_tag/)?(nmi|null_q95|nmi_ci_low|nmi_ci_high)/", key):
            assert 0.0 <= value <= 1.0, key
        if "/p_perm/" in f"/{key}":
            assert 0.0 < value <= m[key.replace("p_perm", "p_holm")] <= 1.0, key  # Holm never lowers a p
    assert {"pooling_nmi.csv", "pooling_nmi.md"} <= {p.name for p in out.iterdir()}
    assert len((out / "pooling_nmi.csv").read_text().splitlines()) == 1 + 20


def test_pooling_nmi_warm_rerun_fits_no_kmeans_and_a_changed_statistic_refits(tiny_anima, tmp_path, monkeypatch):
    from sklearn.cluster import KMeans

    fits = []
    fit_predict = KMeans.fit_predict
    monkeypatch.setattr(KMeans, "fit_predict", lambda self, X, *a, **k: fits.append(1) or fit_predict(self, X, *a, **k))
    overrides = {**SMALL_NMI, "manifest": str(_caption_set(tmp_path / "c.csv"))}
    _, cold = _run(tiny_anima, tmp_path, "pooling-nmi", overrides)
    n_cold = len(fits)
    # variants x poolings x seeds x (the statistic + every half-sample of the CI); the null reuses the statistic's fits
    assert n_cold == 2 * 10 * SMALL_NMI["kmeans_seeds"] * (1 + SMALL_NMI["n_half"])
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
    assert mean_pairwise(dirs) == pytest.approx((1.0, 1.0))
    alone, per = scope_cosines(table, "crossattn_emb/max_padded", ("good", "bad"), ("bad", "good"),
                               contents, "{tags}, {content}")
    assert alone == pytest.approx(-1.0) and per == pytest.approx([-1.0] * 3)


def test_identical_p_plus_and_p_minus_is_a_clear_error_and_writes_nothing(tiny_anima, tmp_path):
    with pytest.raises(DegenerateDirection, match="the same prompt"):
        run("quality-direction", {"positive": "masterpiece", "negative": "masterpiece", "n_null": 3},
            anima=tiny_anima, results=tmp_path / "results", cache_dir=tmp_path / "cache", progress=False,
            registry=REGISTRY)
    assert not (tmp_path / "results").exists() or not any((tmp_path / "results").iterdir())


def test_random_tag_sets_carry_the_asked_counts_per_side_disjoint_and_seeded():
    pool = load_prompt_sets()["tag_sets"]["neutral"]
    plus, minus = load_prompt_sets()["guidance"]["positive"], load_prompt_sets()["guidance"]["negative"]
    sizes = (tag_count(plus), tag_count(minus))
    assert sizes == (7, 5)  # the proposal's p+ / p-
    draws = random_tag_sets(pool, 50, sizes, seed=3)
    assert draws == random_tag_sets(pool, 50, sizes, seed=3) != random_tag_sets(pool, 50, sizes, seed=4)
    for draw in draws:
        tags = [t for side in draw for t in split_tags(side)]
        assert tuple(tag_count(side) for side in draw) == sizes  # the null's tag counts are the statistic's
        assert len(tags) == 12 == len(set(tags)) and set(tags) <= set(pool)
    with pytest.raises(ValueError, match="need 12 tags"):
        random_tag_sets(pool[:5], 1, (3, 3, 3, 3))
    assert list(sweep_draws(pool[:12], 5, (1, 2, 6, 7))) == [1, 2, 6]  # 7 per side needs 14 distinct tags
    assert sweep_draws(pool, 5, (3,))[3] == random_tag_sets(pool, 5, (3, 3), seed=3)  # seeded per k, shared
    with pytest.raises(ValueError, match="unknown pooling"):
        check_poolings(["crossattn_emb/max"])


# ---------------------------------------------------------------- quality experiments: planted controls


@functools.cache
def _tag_vector(*names: str) -> np.ndarray:
    return np.random.default_rng(zlib.crc32("|".join(names).encode())).normal(size=16)


def _planted_vectors(prompts, contents, noise=None, shared=None, salt: str = "") -> np.ndarray:
    """A prompt's vector is the sum over its tags of a fixed vector per tag plus a per-(tag, content) interaction
    scaled by noise[tag] (1 by default); tags in `shared` also add shared[tag] x a vector u_content common to them
    within each content. `salt` draws another world. (N, 16)"""

    def vec(*names: str) -> np.ndarray:
        return _tag_vector(salt, *names)

    noise, shared, rows = noise or {}, shared or {}, []
    for p in prompts:
        content = next((c for c in contents if p.endswith(c)), "")
        v = vec("content", content) if content else np.zeros(16)
        for tag in split_tags(p[: len(p) - len(content)]):
            v = v + vec(tag) + noise.get(tag, 1.0) * vec(tag, content)
            v = v + (shared.get(tag, 0.0) * vec("shared", content) if content else 0.0)
        rows.append(v)
    return np.stack(rows)  # (N, 16)


class _PlantedTags:
    """Stands in for EmbeddingCache with `_planted_vectors` of the shipped Anima-style content prompts."""

    noise: dict[str, float] = {}
    shared: dict[str, float] = {}

    def __init__(self, root, anima):
        pass

    def pooled(self, prompts, progress=True):
        contents = [c["prompt"] for c in load_prompt_sets()["content_types"]]
        X = torch.tensor(_planted_vectors(prompts, contents, self.noise, self.shared), dtype=torch.float32)
        return {k: X for k in POOLINGS}


def _planted_run(tiny_anima, tmp_path, monkeypatch, name, noise=None, shared=None, **overrides):
    monkeypatch.setattr("anima_probe.probes.directions.EmbeddingCache", _PlantedTags)
    monkeypatch.setattr(_PlantedTags, "noise", noise or {})
    monkeypatch.setattr(_PlantedTags, "shared", shared or {})
    return _run(tiny_anima, tmp_path, name, {**SMALL_QD, **overrides})


def test_quality_direction_finds_a_planted_shared_direction(tiny_anima, tmp_path, monkeypatch):
    guidance = load_prompt_sets()["guidance"]
    quality = split_tags(guidance["positive"]) + split_tags(guidance["negative"])
    # positive control: the quality tags barely interact with content, so their direction is the same everywhere
    out, rec = _planted_run(tiny_anima, tmp_path, monkeypatch, "quality-direction", noise=dict.fromkeys(quality, 0.05))
    m = rec["metrics"]
    assert m["cos_mean/crossattn_emb/max_padded"] > 0.95 > m["null_q95/crossattn_emb/max_padded"]
    assert m["cos_ci_low/crossattn_emb/max_padded"] > m["null_q95/crossattn_emb/max_padded"]
    assert m["p/crossattn_emb/max_padded"] == pytest.approx(1 / 31)  # above every null draw: the p floor
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    assert (rows[0]["tags_plus"], rows[0]["tags_minus"]) == ("7", "5")  # the matched null: p+ / p-'s counts
    assert [int(r["tags_plus"]) for r in rows[1:]] == [1, 2, 3, 4, 5, 6, 7]  # 50 neutral tags fill the sweep


def test_quality_resolution_finds_planted_within_content_alignment(tiny_anima, tmp_path, monkeypatch):
    tags = load_prompt_sets()["tag_sets"]
    sign = {t: 3.0 for axis in ("quality", "resolution") for t in tags[axis]["positive"]}
    sign |= {t: -3.0 for axis in ("quality", "resolution") for t in tags[axis]["negative"]}
    out, rec = _planted_run(tiny_anima, tmp_path, monkeypatch, "quality-resolution", shared=sign)
    m = rec["metrics"]  # positive control: aligned within content (shared u_c), unrelated alone (no content, no u)
    assert m["per_content/cos_ci_low/crossattn_emb/max_padded"] > m["per_content/null_q95/crossattn_emb/max_padded"]
    assert m["per_content/p/crossattn_emb/max_padded"] == pytest.approx(1 / 31)
    rows = list(csv.DictReader((out / "sweep.csv").open()))
    counts = tuple(tag_count(side) for side in qr_mod.axis_prompts(tags)["resolution"])
    assert (int(rows[0]["tags_plus"]), int(rows[0]["tags_minus"])) == counts == (2, 1)  # the matched null first
    nulls = list(csv.DictReader((out / "null.csv").open()))
    assert sum(r["scope"] == "per_content" for r in nulls) == SMALL_QD["n_null"]


def test_quality_direction_finds_nothing_where_nothing_is_planted(tiny_anima, tmp_path, monkeypatch):
    # negative control: the quality tags interact with content like every neutral tag (noise 1 for all), so the
    # observed consistency is one more draw from the matched null: inside its band, CI reaching below its q95
    _, rec = _planted_run(tiny_anima, tmp_path, monkeypatch, "quality-direction")
    m = rec["metrics"]
    assert m["null_q05/crossattn_emb/max_padded"] < m["cos_mean/crossattn_emb/max_padded"] < m[
        "null_q95/crossattn_emb/max_padded"]
    assert m["p/crossattn_emb/max_padded"] > 0.05 and m["cos_ci_low/crossattn_emb/max_padded"] < m[
        "null_q95/crossattn_emb/max_padded"]
    assert m["mde/crossattn_emb/max_padded"] > 0


def test_nulls_built_like_the_statistic_give_uniform_p_when_nothing_is_planted():
    """Negative control, as a calibration: in 40 worlds where the quality and resolution tags behave like any neutral
    tag, the p of both statistics against their matched nulls must be about uniform (a null easier to beat than the
    statistic, like the old 1-tag null, would pile p near 0)."""
    sets = load_prompt_sets()
    contents, pool, template = [c["prompt"] for c in sets["content_types"]], sets["tag_sets"]["neutral"], "{tags}, {content}"
    plus, minus = sets["guidance"]["positive"], sets["guidance"]["negative"]
    quality = qr_mod.axis_prompts(sets["tag_sets"])
    qd_p, qr_p = [], []
    for world in range(40):
        qd_draws = random_tag_sets(pool, 39, (7, 5), seed=world)
        qr_draws = random_tag_sets(pool, 39, (2, 1), seed=world)
        sides = [plus, minus, *quality["quality"], *quality["resolution"]] + [t for d in qd_draws + qr_draws for t in d]
        prompts = list(dict.fromkeys(sides + [template.format(tags=t, content=c) for t in sides for c in contents]))
        table = PooledTable({p: i for i, p in enumerate(prompts)},
                            {"k": torch.tensor(_planted_vectors(prompts, contents, salt=str(world)))})
        observed = mean_pairwise(content_directions(table, "k", plus, minus, contents, template))[0]
        qd_p.append(null_summary(observed, consistency_null(table, "k", qd_draws, contents, template))["p"])
        per = scope_cosines(table, "k", quality["quality"], quality["resolution"], contents, template)[1].mean()
        null = [scope_cosines(table, "k", quality["quality"], d, contents, template)[1].mean() for d in qr_draws]
        qr_p.append(null_summary(per, np.array(null))["p"])
    for p in (qd_p, qr_p):
        assert 0.35 < np.mean(p) < 0.65 and np.mean(np.array(p) < 0.05) <= 0.15, np.round(p, 3)


# ---------------------------------------------------------------- quality experiments on the tiny twin


def test_quality_direction_on_tiny_twin(tiny_anima, tmp_path):
    pools = "crossattn_emb/max_padded,prompt_embeds/eos"
    out, record = _run(tiny_anima, tmp_path, "quality-direction", {"n_null": 3, "n_sweep": 2, "n_boot": 100,
                                                                    "sweep": "1,2", "poolings": pools})
    m = record["metrics"]
    assert set(m) == {f"{s}/{k}" for s in QD_EXP.fn.__globals__["BETTER"] for k in pools.split(",")}
    for key, value in m.items():
        assert math.isfinite(value), key
        if not key.startswith(("null_sd", "mde")):
            assert -1.0 <= value <= 1.0, key
    assert m["cos_min/crossattn_emb/max_padded"] <= m["cos_mean/crossattn_emb/max_padded"]
    assert m["cos_ci_low/crossattn_emb/max_padded"] <= m["cos_ci_high/crossattn_emb/max_padded"]
    assert m["p/crossattn_emb/max_padded"] >= 1 / 4
    assert m["p_holm/crossattn_emb/max_padded"] >= m["p/crossattn_emb/max_padded"]
    assert len((out / "pairwise_cosines.csv").read_text().splitlines()) == 1 + 2 * 28
    assert len((out / "null.csv").read_text().splitlines()) == 1 + 2 * 3
    assert "the model records no training vocabulary" in (out / "summary.md").read_text()


def test_quality_resolution_on_tiny_twin_and_warm_rerun_is_identical(tiny_anima, tmp_path, monkeypatch):
    small = {"n_null": 3, "n_sweep": 2, "n_boot": 100, "sweep": "1"}
    _, first = _run(tiny_anima, tmp_path, "quality-resolution", small)
    better = QR_EXP.fn.__globals__["BETTER"]
    expected = {f"{scope}/{s}/crossattn_emb/max_padded" for scope in qr_mod.SCOPES for s in better}
    assert set(first["metrics"]) == expected - {f"standalone/{s}/crossattn_emb/max_padded"
                                                for s in ("cos_ci_low", "cos_ci_high")}  # one pair: no clusters

    def no_encoding(*args, **kwargs):
        raise AssertionError("a warm rerun re-encoded prompts")

    monkeypatch.setattr("anima_probe.model.text.encode_prompts", no_encoding)
    _, second = _run(tiny_anima, tmp_path, "quality-resolution", small)
    assert second["metrics"] == first["metrics"]


def test_a_toy_tier_model_refuses_a_prompt_set_with_untrained_tokens_before_encoding(tiny_model_dir, tmp_path,
                                                                                    monkeypatch):
    from anima_probe.model.anima import load_anima

    model = shutil.copytree(tiny_model_dir, tmp_path / "model")  # the shared twin stays without a record
    anima = load_anima(model, with_vae=False)
    sets = load_prompt_sets()
    trained = [sets["guidance"]["positive"], sets["guidance"]["negative"]] + [
        t for axis in ("quality", "resolution") for side in ("positive", "negative") for t in sets["tag_sets"][axis][side]]
    write_training_vocabulary(model, anima.t5_tokenizer, trained, source="the proposal's tags only")

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded before the prompt set was checked")

    monkeypatch.setattr("anima_probe.model.text.encode_prompts", no_encoding)
    for name in ("quality-direction", "quality-resolution", "injection-mse"):
        with pytest.raises(UntrainedTokens, match=r"^data/manifests/content_types\.csv:2: token '.+' in tag "):
            run(name, {"prompt_sets": str(MANIFEST_DIR)}, anima=anima, results=tmp_path / "r",
                cache_dir=tmp_path / "cache", progress=False, registry=REGISTRY)
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())  # nothing written
