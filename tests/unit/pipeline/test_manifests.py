"""Shipped prompt sets (content and provenance) and caption sets (validation, round trip, folder build)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from anima_probe.pipeline.manifests import (
    MANIFEST_DIR,
    TOY_MANIFEST_DIR,
    CaptionRow,
    build_caption_set,
    load_prompt_sets,
    prompt_rows,
    read_caption_set,
    split_tags,
    write_caption_set,
)
from anima_probe.pipeline.provenance import REPO_ROOT
from anima_probe.toyworld.world import ARTISTS, CONTENT_TAGS

PROPOSAL_POS = "absurdres, highres, masterpiece, best quality, score_7, score_8, score_9"
PROPOSAL_NEG = "worst quality, low quality, score_1, score_2, score_3"


# ---------------------------------------------------------------- shipped prompt sets


def test_guidance_prompts_are_the_proposals_and_quoted():
    sets = load_prompt_sets()
    guidance = sets["guidance"]
    assert (guidance["positive"], guidance["negative"]) == (PROPOSAL_POS, PROPOSAL_NEG)
    assert PROPOSAL_POS in guidance["provenance"]["quote"] and PROPOSAL_NEG in guidance["provenance"]["quote"]
    doc = REPO_ROOT / guidance["provenance"]["file"]  # inside the repository: docs/proposal.md
    text = doc.read_text(encoding="utf-8")
    assert f'p+: "{PROPOSAL_POS}"' in text and f'p-: "{PROPOSAL_NEG}"' in text, f"{doc} does not quote them"
    for name, variant in guidance["variants"].items():
        assert variant["positive"] and variant["negative"] and variant["provenance"], name


def test_eight_content_types_in_the_proposals_order():
    rows = load_prompt_sets()["content_types"]
    assert [r["label"] for r in rows] == [
        "solo character", "group scene", "landscape", "action", "mecha", "still life", "abstract", "portrait"
    ]  # fmt: skip
    assert len({r["name"] for r in rows}) == 8
    assert rows[0]["prompt"].startswith("1girl, solo")


def test_tag_sets_partition_the_proposal_and_neutral_pool_is_clean():
    sets = load_prompt_sets()
    tags = sets["tag_sets"]
    quality, resolution = tags["quality"], tags["resolution"]
    # quality + resolution positives are exactly the proposal's p+, quality negatives its p-.
    assert set(quality["positive"]) | set(resolution["positive"]) == set(split_tags(PROPOSAL_POS))
    assert set(quality["negative"]) == set(split_tags(PROPOSAL_NEG))
    assert resolution == {"positive": ["absurdres", "highres"], "negative": ["lowres"]}
    neutral = tags["neutral"]
    assert len(neutral) == len(set(neutral)) >= 40
    special = {*quality["positive"], *quality["negative"], *resolution["positive"], *resolution["negative"]}
    content = {t for row in sets["content_types"] for t in split_tags(row["prompt"])}
    assert not set(neutral) & special
    assert not set(neutral) & content
    meta = re.compile(r"^(score_|@)|quality|(absurd|high|low)res|^rating|^\d{4}$")
    assert [t for t in neutral if meta.search(t)] == []


def test_manifest_readme_describes_every_file():
    readme = (MANIFEST_DIR / "README.md").read_text(encoding="utf-8")
    for path in MANIFEST_DIR.iterdir():
        if path.name != "README.md":
            assert path.name in readme, path.name


def test_load_prompt_sets_explicit_path_and_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="pass path="):
        load_prompt_sets(tmp_path / "nope")
    for name in ("guidance_prompts.json", "content_types.csv", "tag_sets.json"):
        (tmp_path / name).write_bytes((MANIFEST_DIR / name).read_bytes())
    copy, shipped = load_prompt_sets(tmp_path), load_prompt_sets()
    assert (copy["guidance"], copy["tag_sets"]) == (shipped["guidance"], shipped["tag_sets"])
    assert [r["prompt"] for r in copy["content_types"]] == [r["prompt"] for r in shipped["content_types"]]
    assert copy["content_types"][2]["where"] == f"{(tmp_path / 'content_types.csv').resolve()}:4"  # header is line 1
    (tmp_path / "tag_sets.json").write_text(json.dumps({"quality": {}, "resolution": {}}))
    with pytest.raises(ValueError, match="tag_sets.json: missing key 'neutral'"):
        load_prompt_sets(tmp_path)


def test_toy_prompt_sets_are_the_toy_worlds_own_tags_and_share_the_proposals_p_plus_p_minus():
    toy, anima = load_prompt_sets(TOY_MANIFEST_DIR), load_prompt_sets()
    assert toy["files"] == {"guidance_prompts.json": "data/manifests/guidance_prompts.json",
                            "content_types.csv": "data/manifests/toyworld/content_types.csv",
                            "tag_sets.json": "data/manifests/toyworld/tag_sets.json"}  # p+ / p- kept in one file
    assert toy["guidance"] == anima["guidance"]
    assert [(r["name"], r["label"]) for r in toy["content_types"]] == [(r["name"], r["label"])
                                                                       for r in anima["content_types"]]
    assert [r["prompt"] for r in toy["content_types"]] == [", ".join(CONTENT_TAGS[r["label"]])
                                                           for r in toy["content_types"]]
    tags = toy["tag_sets"]
    assert (tags["quality"], tags["resolution"]) == (anima["tag_sets"]["quality"], anima["tag_sets"]["resolution"])
    assert tags["neutral"] == list(ARTISTS)  # trained tags with no quality, resolution or content meaning
    content = {t for r in toy["content_types"] for t in split_tags(r["prompt"])}
    assert not set(tags["neutral"]) & content


def test_prompt_rows_name_the_file_and_row_of_every_prompt_and_tag():
    sets = load_prompt_sets(TOY_MANIFEST_DIR)
    rows = dict(prompt_rows(sets))
    assert rows["data/manifests/guidance_prompts.json: positive"] == sets["guidance"]["positive"]
    assert rows["data/manifests/toyworld/content_types.csv:3"] == "multiple girls, group"
    assert rows["data/manifests/toyworld/tag_sets.json: neutral[11]"] == "@gin_tetsu"
    assert rows["data/manifests/toyworld/tag_sets.json: resolution.negative[0]"] == "lowres"
    assert len(rows) == 2 + 8 + 5 + 5 + 2 + 1 + 12


# ---------------------------------------------------------------- caption sets


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_read_csv_and_jsonl(tmp_path):
    csv_rows = read_caption_set(
        _write(tmp_path / "c.csv", 'id,caption,artist,tags\na,"1girl, solo",x,"1girl, solo"\n')
    )
    assert csv_rows == [CaptionRow("a", "1girl, solo", "x", None, ("1girl", "solo"))]
    jsonl = '{"id": "a", "caption": "1girl", "artist": "x", "image": "a.png", "tags": ["1girl"]}\n\n{"id": 2, "caption": "c", "artist": "y"}\n'
    rows = read_caption_set(_write(tmp_path / "c.jsonl", jsonl))
    assert rows == [CaptionRow("a", "1girl", "x", "a.png", ("1girl",)), CaptionRow("2", "c", "y")]


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("captions.csv", "id,caption\na,b\n", r"captions.csv:1: missing column\(s\) \['artist'\]"),
        ("captions.csv", "id,caption,artist\na,x,p\nb,x,p\nc,  ,p\n", "captions.csv:4: empty caption"),
        ("captions.csv", "id,caption,artist\na,x,p\nb,x,p\na,y,q\n", r"captions.csv:4: duplicate id 'a' \(first on line 2\)"),
        ("captions.csv", "id,caption,artist\na,x,p,extra\n", "captions.csv:2: more cells"),
        ("captions.csv", "id,caption,artist\n", "captions.csv: no rows"),
        ("c.jsonl", '{"id": "a", "caption": "x", "artist": "p"}\n{"id": "b", "caption": "y"}\n', "c.jsonl:2: missing column 'artist'"),
        ("c.jsonl", '{"id": "a", "caption": "x", "artist": ""}\n', "c.jsonl:1: empty artist"),
        ("c.jsonl", '{"id": "a", "caption": "x", "artist": "p"}\n{oops\n', "c.jsonl:2: not valid JSON"),
        ("c.jsonl", '{"id": "a", "caption": "x", "artist": "p", "tags": 3}\n', "c.jsonl:1: tags must be"),
        ("c.tsv", "id\tcaption\tartist\n", "must be .csv or .jsonl"),
    ],
)  # fmt: skip
def test_read_errors_name_file_and_line(tmp_path, name, text, message):
    with pytest.raises(ValueError, match=message):
        read_caption_set(_write(tmp_path / name, text))


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_write_read_round_trip(tmp_path, suffix):
    rows = [
        CaptionRow(
            "a/1", '@artist one, 1girl, "quoted", smile', "artist one", "imgs/1.png", ("1girl", "smile")
        ),
        CaptionRow("b", "landscape, no humans", "zed"),
    ]
    path = write_caption_set(rows, tmp_path / f"set{suffix}")
    assert read_caption_set(path) == rows


def _image(path: Path, caption: str | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not really an image")  # the builder never decodes pixels
    if caption is not None:
        path.with_suffix(".txt").write_text(caption, encoding="utf-8")


def test_build_from_subfolders(tmp_path):
    root = tmp_path / "train"
    _image(root / "10_alice" / "a.png", "1girl, solo\n")
    _image(root / "10_alice" / "nested" / "b.webp", "1girl,  smile")
    _image(root / "bob" / "c.JPG", "landscape")
    _image(root / ".cache" / "d.png", None)  # hidden folders are ignored
    out = tmp_path / "manifests" / "set.csv"
    report = build_caption_set(root, out=out)
    assert [(r.id, r.artist) for r in report.rows] == [
        ("10_alice/a", "alice"), ("10_alice/nested/b", "alice"), ("bob/c", "bob")
    ]  # fmt: skip
    assert report.rows[0].caption == "1girl, solo" and report.rows[1].tags == ("1girl", "smile")
    assert report.artist_counts() == {"alice": 2, "bob": 1} and report.n_skipped == 0
    back = read_caption_set(out)
    assert back == list(report.rows)
    assert (out.parent / back[2].image).resolve() == (root / "bob" / "c.JPG").resolve()


def test_build_from_artist_tags(tmp_path):
    _image(tmp_path / "a.png", "@alice, 1girl, solo")
    _image(tmp_path / "b.png", "1girl, @bob")
    report = build_caption_set(tmp_path, artist_from="tag")
    assert [r.artist for r in report.rows] == ["alice", "bob"]
    assert Path(report.rows[0].image).is_absolute()  # no out: absolute paths


def test_build_errors_name_the_file_and_skip_bad_counts(tmp_path):
    _image(tmp_path / "good.png", "@alice, 1girl")
    _image(tmp_path / "nocap.png", None)
    _image(tmp_path / "noartist.png", "1girl, solo")
    _image(tmp_path / "two.png", "@alice, @bob")
    with pytest.raises(ValueError, match="3 bad image") as err:
        build_caption_set(tmp_path, artist_from="tag")
    message = str(err.value)
    assert "nocap.png: no caption file nocap.txt" in message
    assert "noartist.png: no artist tag" in message
    assert "two.png: several artist tags ['alice', 'bob']" in message
    out = tmp_path / "set.jsonl"
    report = build_caption_set(tmp_path, artist_from="tag", skip_bad=True, out=out)
    assert [r.id for r in report.rows] == ["good"] and report.n_skipped == 3
    assert [r.id for r in read_caption_set(out)] == ["good"]


def test_build_subfolder_mode_rejects_top_level_images_and_bad_args(tmp_path):
    _image(tmp_path / "loose.png", "1girl")
    with pytest.raises(ValueError, match="loose.png: image is not inside an artist sub-folder"):
        build_caption_set(tmp_path)
    with pytest.raises(ValueError, match="artist_from must be"):
        build_caption_set(tmp_path, artist_from="folder")
    with pytest.raises(ValueError, match="needs a capture group"):
        build_caption_set(tmp_path, artist_from="tag", tag_pattern=r"@\S+")
    with pytest.raises(ValueError, match="no images"):
        build_caption_set(tmp_path / "empty_missing")
