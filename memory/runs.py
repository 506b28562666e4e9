"""Run records: each search's files kept under ``$GENMS_HOME/runs/<run_id>/``.

A run folder is published whole: its files are written into a hidden temporary folder that is
then renamed into place, so a crash mid-write never leaves a half-written run, and two
processes saving runs at once never touch each other's files. Readers ignore the hidden
temporary folders; stale ones (older than a day) are cleared on the next save.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
import time
import uuid
from pathlib import Path

from memory.paths import user_data_dir

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")
FILE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.()+-]{0,119}$")
SUMMARY_FILE = "run.json"
STALE_SECONDS = 86_400


class InvalidRunId(ValueError):
    """A run id or file name that is not one genms writes (path traversal, odd characters)."""


class RunNotFound(LookupError):
    """No run with this id in the store."""


def new_run_id() -> str:
    """``<UTC time>-<6 hex>``: sortable by time, unique across processes."""
    return f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{uuid.uuid4().hex[:6]}"


def check_run_id(run_id: str) -> str:
    if not isinstance(run_id, str) or not RUN_ID_PATTERN.match(run_id):
        raise InvalidRunId(f"invalid run id {run_id!r}: use the id `genms memory list` shows (letters, digits, '-', '_')")
    return run_id


def _check_relative(relative: str) -> list[str]:
    parts = relative.replace("\\", "/").split("/") if isinstance(relative, str) else []
    if not parts or len(parts) > 2 or not all(FILE_PATTERN.match(part) for part in parts):
        raise InvalidRunId(f"invalid file name {relative!r} in a run: use names such as report.md or cifs/01_MgAl2O4.cif")
    return parts


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as stream:
        stream.write(text)
        stream.flush()
        os.fsync(stream.fileno())


class RunStore:
    """The folder of run records (default ``user_data_dir()/runs``)."""

    def __init__(self, root: Path | None = None):
        self.root = Path(root) if root else user_data_dir() / "runs"

    def path(self, run_id: str) -> Path:
        return self.root / check_run_id(run_id)

    def save(self, run_id: str, files: dict[str, str], summary: dict) -> Path:
        """Publish a run's ``files`` (relative name -> text) and ``summary`` atomically; returns its folder.

        Raises ``FileExistsError`` if the id is taken (ids are unique; this never overwrites).
        """
        final = self.path(run_id)
        self.root.mkdir(parents=True, exist_ok=True)
        self._clear_stale()
        staging = Path(tempfile.mkdtemp(prefix=f".tmp-{run_id}-", dir=self.root))
        try:
            for relative, text in files.items():
                _write_text(staging.joinpath(*_check_relative(relative)), text)
            record = {"run_id": run_id, "saved_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), **summary}
            _write_text(staging / SUMMARY_FILE, json.dumps(record, indent=2, allow_nan=False) + "\n")
            if final.exists():
                raise FileExistsError(f"run {run_id} already exists")
            os.rename(staging, final)  # atomic on one filesystem; fails if final appeared meanwhile
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        return final

    def _clear_stale(self) -> None:
        cutoff = time.time() - STALE_SECONDS
        for staging in self.root.glob(".tmp-*"):
            try:
                if staging.stat().st_mtime < cutoff:
                    shutil.rmtree(staging, ignore_errors=True)
            except FileNotFoundError:
                pass

    def ids(self) -> list[str]:
        """Run ids, newest first."""
        if not self.root.is_dir():
            return []
        names = [p.name for p in self.root.iterdir() if p.is_dir() and RUN_ID_PATTERN.match(p.name) and (p / SUMMARY_FILE).is_file()]
        return sorted(names, reverse=True)

    def summary(self, run_id: str) -> dict:
        """The run's summary record (request, planner, counts, best candidates)."""
        path = self.path(run_id) / SUMMARY_FILE
        if not path.is_file():
            raise RunNotFound(f"no run {run_id!r} in {self.root}")
        return json.loads(path.read_text(encoding="utf-8"))

    def list(self, limit: int | None = None) -> list[dict]:
        """Summaries of the newest ``limit`` runs (all when None), newest first; unreadable ones skipped."""
        summaries = []
        for run_id in self.ids():
            if limit is not None and len(summaries) >= limit:
                break
            try:
                summaries.append(self.summary(run_id))
            except (OSError, ValueError):
                continue
        return summaries

    def files(self, run_id: str) -> list[str]:
        """Relative names of the run's files (``report.md``, ``cifs/01_X.cif``, ...)."""
        folder = self.path(run_id)
        if not (folder / SUMMARY_FILE).is_file():
            raise RunNotFound(f"no run {run_id!r} in {self.root}")
        return sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())

    def file(self, run_id: str, relative: str) -> Path:
        """The path of one of the run's files; names outside the run folder are refused."""
        parts = _check_relative(relative)
        path = self.path(run_id).joinpath(*parts)
        if not path.is_file():
            if not (self.path(run_id) / SUMMARY_FILE).is_file():
                raise RunNotFound(f"no run {run_id!r} in {self.root}")
            raise FileNotFoundError(f"run {run_id} has no file {relative!r}")
        return path

    def load(self, run_id: str) -> dict:
        """The run's full results (``results.json``) with its summary and file list."""
        summary = self.summary(run_id)
        results_path = self.path(run_id) / "results.json"
        results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else {}
        return {**results, "run_id": run_id, "summary": summary, "files": self.files(run_id)}
