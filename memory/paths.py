"""Where genms keeps per-user state: caches and data (XDG base directories, overridable)."""

from __future__ import annotations

import os
from pathlib import Path


def _xdg(variable: str, fallback: str) -> Path:
    return Path(os.environ.get(variable) or Path.home() / fallback)


def user_cache_dir() -> Path:
    """Recomputable artifacts (reference energies, hull entries): ``GENMS_CACHE_DIR`` or XDG cache."""
    path = Path(os.environ.get("GENMS_CACHE_DIR") or _xdg("XDG_CACHE_HOME", ".cache") / "genms")
    path.mkdir(parents=True, exist_ok=True)
    return path


def user_data_dir() -> Path:
    """State worth keeping (vector store, runs): ``GENMS_HOME`` or the XDG data directory."""
    path = Path(os.environ.get("GENMS_HOME") or _xdg("XDG_DATA_HOME", ".local/share") / "genms")
    path.mkdir(parents=True, exist_ok=True)
    return path
