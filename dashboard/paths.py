"""Turning user-supplied paths into paths the server may touch.

Everything is resolved (``..`` collapsed, symlinks followed) *before* the containment check, so
neither ``../`` nor a symlink pointing outside the allowed root gets through.
"""

from __future__ import annotations

from pathlib import Path


class PathRejected(ValueError):
    """A path the user may not use; the message is safe to show (it names no server path)."""


def inside(root: Path, candidate: Path) -> bool:
    """True when ``candidate`` (already resolved) is ``root`` or below it."""
    root = root.resolve()
    return candidate == root or root in candidate.parents


def _under(root: Path, value: str | Path) -> Path:
    """A path given relative to ``root`` (or absolute), not yet resolved."""
    raw = Path(value)
    return raw if raw.is_absolute() else root / raw


def resolve_dataset_root(value: str, data_dir: Path) -> Path:
    """Resolve a dataset folder given relative to the data root (or absolute inside it)."""
    value = (value or "").strip()
    if not value:
        raise PathRejected("enter a dataset folder")
    if "\x00" in value:
        raise PathRejected("the path contains a NUL character")
    root = data_dir.resolve()
    try:
        resolved = _under(root, value).resolve(strict=True)
    except (FileNotFoundError, NotADirectoryError):
        raise PathRejected("no such folder inside the data root") from None
    except (OSError, RuntimeError):  # symlink loops, permission problems
        raise PathRejected("the folder cannot be read") from None
    if not inside(root, resolved) or resolved == root:
        raise PathRejected("the dataset must be a folder inside the data root")
    if not resolved.is_dir():
        raise PathRejected("not a folder")
    return resolved


def display_dataset_root(path: str | Path, data_dir: Path) -> str:
    """The dataset path relative to the data root, for pages (never leaks the server layout)."""
    try:
        return str(Path(path).resolve().relative_to(data_dir.resolve()))
    except (ValueError, OSError):
        return Path(path).name


def safe_artefact_file(path: str | Path, artefact_dir: Path) -> Path | None:
    """The artefact's file if it exists and resolves inside the artefact root, else None."""
    root = artefact_dir.resolve()
    try:
        resolved = _under(root, path).resolve(strict=True)
    except (OSError, RuntimeError):
        return None
    if not inside(root, resolved) or not resolved.is_file():
        return None
    return resolved
