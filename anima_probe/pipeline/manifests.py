"""Which prompts and captions does an experiment use? Shipped prompt sets and user caption sets.

Two kinds of data:
- Shipped prompt sets in ``data/manifests/`` (guidance p+/p-, the 8 content types, quality/resolution/neutral
  tag sets; Anima-style tags) and ``data/manifests/toyworld/`` (the same sets in the toy world's own caption
  vocabulary), read by `load_prompt_sets`; `prompt_rows` lists their (file:row, text) for the untrained-token
  check, `anima_probe.pipeline.vocabulary`, which also picks the folder that fits a model. Their
  provenance is in that folder's README.md.
- User caption sets (for the artist-clustering experiment): CSV or JSONL rows ``id, caption, artist`` with
  optional ``image`` and ``tags``. `read_caption_set` validates them with errors that name the file and line;
  `build_caption_set` makes one from a LoRA-trainer style image folder.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from anima_probe.errors import InputError, MissingFileError
from anima_probe.pipeline.atomic import atomic_write_text
from anima_probe.pipeline.provenance import REPO_ROOT

MANIFEST_DIR = REPO_ROOT / "data" / "manifests"
TOY_MANIFEST_DIR = MANIFEST_DIR / "toyworld"  # the same sets in the toy world's own caption vocabulary
PROMPT_FILES = ("guidance_prompts.json", "content_types.csv", "tag_sets.json")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp")
REQUIRED_COLUMNS = ("id", "caption", "artist")
OPTIONAL_COLUMNS = ("image", "tags")
_REPEATS = re.compile(r"^\d+_(.+)$")  # kohya-style "10_artist" folders: the number is a repeat count


@dataclass(frozen=True)
class CaptionRow:
    """One captioned item. image is relative to the manifest's folder when it is not absolute."""

    id: str
    caption: str
    artist: str
    image: str | None = None
    tags: tuple[str, ...] = ()
    line: int = field(default=0, compare=False)  # where it was read from (file line), so errors can name it


def split_tags(text: str) -> tuple[str, ...]:
    """Danbooru-style caption -> tags: "1girl, solo,  smile" -> ("1girl", "solo", "smile")."""
    return tuple(t.strip() for t in text.split(",") if t.strip())


# ---------------------------------------------------------------- shipped prompt sets


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise InputError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from None


def repo_path(text: str | Path) -> Path:
    """A relative path is tried from the working directory, then from the repository root."""
    path = Path(text)
    return path if path.is_absolute() or path.exists() else REPO_ROOT / path


def _where(path: Path) -> str:
    """A file as errors name it: relative to the repository when it is inside it."""
    path = Path(path).resolve()
    return path.relative_to(REPO_ROOT).as_posix() if path.is_relative_to(REPO_ROOT) else str(path)


def _read_content_types(path: Path) -> list[dict[str, str]]:
    with open(path, encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in ("name", "label", "prompt") if c not in (reader.fieldnames or [])]
        if missing:
            raise InputError(f"{path}:1: missing column(s) {missing}")
        rows = [{k: row[k].strip() for k in ("name", "label", "prompt")} for row in reader]
    for line, row in enumerate(rows, start=2):
        if not all(row.values()):
            raise InputError(f"{path}:{line}: empty field in {row}")
        row["where"] = f"{_where(path)}:{line}"
    return rows


def load_prompt_sets(path: str | Path | None = None) -> dict[str, Any]:
    """The shipped prompt sets as plain data.

    Returns ``{"guidance": {positive, negative, provenance, variants}, "content_types": [{name, label, prompt,
    where}, ...], "tag_sets": {quality: {positive, negative}, resolution: {...}, neutral: [...]}, "files": {...}}``
    (`where` = "file:line"; `files` = where each of the three files was read). `path` defaults to ``data/manifests``
    (Anima-style tags). A folder holds the files that differ from ``data/manifests`` and the rest is read from
    there: ``data/manifests/toyworld`` has the toy world's own content prompts and neutral tags and shares the
    proposal's p+ / p-.
    """
    folder = Path(path) if path is not None else MANIFEST_DIR
    if not folder.is_dir():
        raise MissingFileError(f"manifest folder {folder} not found; pass path= to load_prompt_sets")
    files = {name: folder / name if (folder / name).is_file() else MANIFEST_DIR / name for name in PROMPT_FILES}
    guidance = _read_json(files["guidance_prompts.json"])
    for key in ("positive", "negative"):
        if not isinstance(guidance.get(key), str) or not guidance[key].strip():
            raise InputError(f"{files['guidance_prompts.json']}: '{key}' must be a non-empty string")
    tag_sets = _read_json(files["tag_sets.json"])
    for key in ("quality", "resolution", "neutral"):
        if key not in tag_sets:
            raise InputError(f"{files['tag_sets.json']}: missing key '{key}'")
    return {"guidance": guidance, "content_types": _read_content_types(files["content_types.csv"]),
            "tag_sets": tag_sets, "files": {name: _where(p) for name, p in files.items()}}  # fmt: skip


def prompt_rows(sets: dict[str, Any]) -> list[tuple[str, str]]:
    """(where, text) for every prompt and tag of `load_prompt_sets`' result, as `check_prompt_set` takes them."""
    files, tags = sets["files"], sets["tag_sets"]
    rows = [(f"{files['guidance_prompts.json']}: {k}", sets["guidance"][k]) for k in ("positive", "negative")]
    rows += [(row["where"], row["prompt"]) for row in sets["content_types"]]
    for axis in ("quality", "resolution"):
        rows += [(f"{files['tag_sets.json']}: {axis}.{side}[{i}]", t)
                 for side in ("positive", "negative") for i, t in enumerate(tags[axis][side])]
    return rows + [(f"{files['tag_sets.json']}: neutral[{i}]", t) for i, t in enumerate(tags["neutral"])]


# ---------------------------------------------------------------- caption sets: reading


def read_utf8(path: Path) -> str:
    """The file's text; bytes that are not UTF-8 are one error naming the file, line and byte offset (a BOM, as
    Excel writes it, is dropped)."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = data[: err.start].count(b"\n") + 1
        raise InputError(f"{path}:{line}: not UTF-8 text (byte offset {err.start}: "
                         f"{data[err.start : err.start + 4]!r}); save the file as UTF-8") from None


def _raw_rows(path: Path) -> list[tuple[int, dict[str, Any]]]:
    """(line number, row dict) pairs from a CSV (header on line 1) or JSONL file."""
    if path.suffix not in (".csv", ".jsonl"):
        raise InputError(f"{path}: caption sets must be .csv or .jsonl, got {path.suffix!r}")
    if not path.is_file():
        raise MissingFileError(f"{path}: no such caption set")
    text = read_utf8(path)
    if path.suffix == ".csv":
        with io.StringIO(text, newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise InputError(f"{path}:1: missing column(s) {missing}")
            rows = []
            for row in reader:
                if None in row:  # DictReader files surplus cells under the key None
                    raise InputError(f"{path}:{reader.line_num}: more cells than header columns")
                rows.append((reader.line_num, row))
            return rows
    rows = []
    for line, item in enumerate(text.splitlines(), start=1):
        if not item.strip():
            continue
        try:
            row = json.loads(item)
        except json.JSONDecodeError as err:
            raise InputError(f"{path}:{line}: not valid JSON ({err.msg})") from None
        if not isinstance(row, dict):
            raise InputError(f"{path}:{line}: each line must be a JSON object")
        rows.append((line, row))
    return rows


def _parse_row(row: dict[str, Any], where: str, line: int) -> CaptionRow:
    values = {}
    for column in REQUIRED_COLUMNS:
        if column not in row or row[column] is None:
            raise InputError(f"{where}: missing column '{column}'")
        values[column] = str(row[column]).strip()
        if not values[column]:
            raise InputError(f"{where}: empty {column}")
    image = str(row.get("image") or "").strip() or None
    tags = row.get("tags") or ()
    if isinstance(tags, str):
        tags = split_tags(tags)
    elif not isinstance(tags, (list, tuple)) or not all(isinstance(t, str) for t in tags):
        raise InputError(f"{where}: tags must be a comma-separated string or a list of strings")
    return CaptionRow(**values, image=image, tags=tuple(tags), line=line)


def read_caption_set(path: str | Path) -> list[CaptionRow]:
    """Read and validate a caption set; every error names the file and line, e.g. ``captions.csv:14: empty
    caption``. Checks: required columns (id, caption, artist), no empty values, no duplicate ids."""
    path = Path(path)
    rows, first_line = [], {}
    for line, raw in _raw_rows(path):
        row = _parse_row(raw, f"{path}:{line}", line)
        if row.id in first_line:
            raise InputError(f"{path}:{line}: duplicate id {row.id!r} (first on line {first_line[row.id]})")
        first_line[row.id] = line
        rows.append(row)
    if not rows:
        raise InputError(f"{path}: no rows")
    return rows


def write_caption_set(rows: list[CaptionRow], path: str | Path) -> Path:
    """Write rows as CSV or JSONL (by suffix), atomically; `read_caption_set` reads it back unchanged."""
    path = Path(path)
    if path.suffix == ".jsonl":
        lines = [json.dumps({"id": r.id, "caption": r.caption, "artist": r.artist, "image": r.image,
                             "tags": list(r.tags)}, ensure_ascii=False) for r in rows]  # fmt: skip
        return atomic_write_text(path, "\n".join(lines) + "\n")
    if path.suffix != ".csv":
        raise InputError(f"{path}: caption sets must be .csv or .jsonl, got {path.suffix!r}")
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS])
    for r in rows:
        writer.writerow([r.id, r.caption, r.artist, r.image or "", ", ".join(r.tags)])
    return atomic_write_text(path, buf.getvalue())


# ---------------------------------------------------------------- caption sets: building from a folder


@dataclass(frozen=True)
class BuildReport:
    """What `build_caption_set` made: the rows, where they were written, and the images it skipped."""

    rows: tuple[CaptionRow, ...]
    out: Path | None
    skipped: tuple[tuple[str, str], ...]  # (image path, reason)

    @property
    def n_skipped(self) -> int:
        return len(self.skipped)

    def artist_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for row in self.rows:
            counts[row.artist] = counts.get(row.artist, 0) + 1
        return counts


def _artist_for(rel: Path, caption: str, artist_from: str, pattern: re.Pattern) -> str:
    """The artist label of one image, or ValueError with the reason (the caller adds the file name)."""
    if artist_from == "subfolder":
        if len(rel.parts) < 2:
            raise InputError("image is not inside an artist sub-folder")
        match = _REPEATS.match(rel.parts[0])
        return match.group(1) if match else rel.parts[0]
    found = sorted({m.rstrip(",;") for m in pattern.findall(caption)} - {""})
    if not found:
        raise InputError(f"no artist tag matching {pattern.pattern!r} in the caption")
    if len(found) > 1:
        raise InputError(f"several artist tags {found}; one label per image is needed")
    return found[0]


def _row_for(image: Path, folder: Path, artist_from: str, pattern: re.Pattern, image_base: Path | None):
    caption_file = image.with_suffix(".txt")
    if not caption_file.is_file():
        raise InputError(f"no caption file {caption_file.name}")
    caption = " ".join(caption_file.read_text(encoding="utf-8").split())  # one line; CSV rows stay 1 line
    if not caption:
        raise InputError(f"empty caption in {caption_file.name}")
    rel = image.relative_to(folder)
    artist = _artist_for(rel, caption, artist_from, pattern)
    where = str(image.resolve()) if image_base is None else _relpath(image, image_base)
    return CaptionRow(rel.with_suffix("").as_posix(), caption, artist, where, split_tags(caption))


def _relpath(path: Path, base: Path) -> str:
    return Path(os.path.relpath(path.resolve(), base.resolve())).as_posix()


def _find_images(folder: Path) -> list[Path]:
    """Image files under `folder`, sorted; hidden folders (.cache, .ipynb_checkpoints) are skipped."""
    return sorted(
        p
        for p in folder.rglob("*")
        if p.suffix.lower() in IMAGE_SUFFIXES
        and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def build_caption_set(
    folder: str | Path,
    artist_from: str = "subfolder",
    tag_pattern: str = r"@(\S+)",
    out: str | Path | None = None,
    skip_bad: bool = False,
) -> BuildReport:
    """Caption set from a LoRA-trainer style folder: ``x.png|jpg|jpeg|webp`` next to a caption ``x.txt``.

    artist_from="subfolder": the artist is the first sub-folder under `folder` (a kohya repeat prefix such
    as "10_" is dropped); "tag": the first group of `tag_pattern` found in the caption (trailing "," or ";"
    dropped, so "@name, 1girl" gives "name"). An image without caption or artist is an error naming the file;
    with skip_bad=True it is skipped and listed in the report. With `out`, the set is written atomically and
    image paths are stored relative to the manifest's folder; without it they are absolute.
    """
    if artist_from not in ("subfolder", "tag"):
        raise InputError(f"artist_from must be 'subfolder' or 'tag', got {artist_from!r}")
    folder, pattern = Path(folder), re.compile(tag_pattern)
    if pattern.groups < 1:
        raise InputError(f"tag_pattern {tag_pattern!r} needs a capture group for the artist name")
    images = _find_images(folder)
    if not images:
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    base = Path(out).parent if out is not None else None
    rows, bad, seen = [], [], set()
    for image in images:
        try:
            row = _row_for(image, folder, artist_from, pattern, base)
            if row.id in seen:
                raise InputError(f"another image has the same name; id {row.id!r} would repeat")
        except ValueError as err:
            bad.append((str(image), str(err)))
            continue
        seen.add(row.id)
        rows.append(row)
    if bad and not skip_bad:
        listing = "\n".join(f"  {path}: {reason}" for path, reason in bad[:20])
        raise InputError(f"{len(bad)} bad image(s) in {folder} (skip_bad=True skips them):\n{listing}")
    if not rows:
        raise InputError(f"{folder}: every image was skipped; nothing to write")
    if out is not None:
        write_caption_set(rows, out)
    return BuildReport(tuple(rows), Path(out) if out is not None else None, tuple(bad))
