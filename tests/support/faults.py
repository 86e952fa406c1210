"""Helpers for the fault-injection tests (tests/integration/faults)."""

from __future__ import annotations

from pathlib import Path


def tree(root: Path) -> set[str]:
    """Every file and folder under `root` (relative names): what a failed command must not have changed."""
    return {p.relative_to(root).as_posix() for p in Path(root).rglob("*")} if Path(root).exists() else set()
