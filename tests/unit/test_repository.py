"""Does the repository stand on its own? No committed file names a path of the machine it was written on, and every
reference to docs/ points at a doc and a heading that exist (the facts the code relies on live in docs/)."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from anima_probe.pipeline.provenance import REPO_ROOT

# Top folders of the machines this was written on (a workspace, home folders), assembled at run time so that this
# file does not contain the strings it looks for.
MACHINE_ROOTS = tuple(f"/{top}/" for top in ("work", "root", "home", "Users"))
DOCS = REPO_ROOT / "docs"
# `docs/name.md` followed by quoted section names: (docs/anima.md, "Text path") or docs/x.md ("A", "B").
DOC_REF = re.compile(r"docs/([\w-]+\.md)`?[,;]?\s*\(?((?:\"[^\"\n]+\"(?:,\s*|\s+and\s+)?)*)")
LINK = re.compile(r"\]\(([\w-]+\.md)(?:#([\w-]+))?\)")


def tracked_text_files() -> dict[str, str]:
    """path -> text of every file git tracks that is text (no NUL byte in its first 8 KiB)."""
    if shutil.which("git") is None or not (REPO_ROOT / ".git").exists():
        pytest.skip("not a git checkout: nothing to list")
    names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO_ROOT, capture_output=True, check=True).stdout
    out = {}
    for name in filter(None, names.decode().split("\0")):
        path = REPO_ROOT / name
        if not path.is_file():
            continue  # deleted in the working tree, not yet committed
        with path.open("rb") as f:
            if b"\0" in f.read(8192):
                continue
        out[name] = path.read_text(encoding="utf-8", errors="replace")
    return out


def headings(doc: str) -> list[str]:
    return [line.lstrip("#").strip() for line in (DOCS / doc).read_text(encoding="utf-8").splitlines()
            if line.startswith("#")]


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.lower()).replace(" ", "-")


def test_no_committed_file_names_a_path_of_this_machine():
    found = [f"{name}:{i}: {line.strip()[:100]}" for name, text in tracked_text_files().items()
             for i, line in enumerate(text.splitlines(), 1) if any(root in line for root in MACHINE_ROOTS)]
    assert not found, "machine paths in committed files (cite the public source or docs/ instead):\n" + \
        "\n".join(found)


def test_every_docs_reference_names_a_doc_and_headings_that_exist():
    bad = []
    this = Path(__file__).resolve().relative_to(REPO_ROOT).as_posix()  # its examples name missing docs on purpose
    for name, text in tracked_text_files().items():
        if name == this:
            continue
        for i, line in enumerate(text.splitlines(), 1):
            for doc, quoted in DOC_REF.findall(line):
                if not (DOCS / doc).is_file():
                    bad.append(f"{name}:{i}: no docs/{doc}")
                    continue
                known = headings(doc)
                bad += [f"{name}:{i}: docs/{doc} has no heading starting {section!r}"
                        for section in re.findall(r'"([^"]+)"', quoted)
                        if not any(h.startswith(section) for h in known)]
    assert not bad, "\n".join(bad)


def test_links_between_docs_resolve_to_a_doc_and_an_anchor():
    bad = []
    for doc in sorted(p.name for p in DOCS.glob("*.md")):
        for target, anchor in LINK.findall((DOCS / doc).read_text(encoding="utf-8")):
            if not (DOCS / target).is_file():
                bad.append(f"docs/{doc}: link to missing {target}")
            elif anchor and anchor not in {slug(h) for h in headings(target)}:
                bad.append(f"docs/{doc}: no heading in {target} for #{anchor}")
    assert not bad, "\n".join(bad)


def test_the_checks_can_fail():
    """The patterns find what they are for (a test that cannot fail would prove nothing)."""
    line = f'see {MACHINE_ROOTS[0]}x and docs/anima.md, "No such heading" or docs/missing.md ("A")'
    assert any(root in line for root in MACHINE_ROOTS)
    refs = DOC_REF.findall(line)
    assert refs == [("anima.md", '"No such heading"'), ("missing.md", '"A"')]
    assert not any(h.startswith("No such heading") for h in headings("anima.md"))
    assert slug("Where the vector enters") == "where-the-vector-enters"
