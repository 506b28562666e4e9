"""Run records: each search's files kept under ``$GENMS_HOME/runs/<run_id>/``.

A run folder is published whole: its files are written into a hidden temporary folder that is
then renamed into place, so a crash mid-write never leaves a half-written run, and two
processes saving runs at once never touch each other's files. Readers ignore the hidden
temporary folders; stale ones (older than a day) are cleared on the next save.

The folder is outside input once written: anything may have been put there. Readers never
follow a symbolic link below the store's root (a run folder or a file in it that is a link is
refused, checked component by component and opened with ``O_NOFOLLOW``), read only regular
files of bounded size (``tools.limits``), and treat a ``run.json`` or ``results.json`` that is not
what genms writes as a damaged run: listed with the reason, refused with a clear error when
opened, never an exception that breaks the listing.
"""

from __future__ import annotations

import errno
import json
import math
import os
import re
import shutil
import stat
import tempfile
import time
import uuid
from pathlib import Path

from memory.paths import user_data_dir
from tools.limits import MAX_RUN_FILE_BYTES, MAX_RUN_FILES, MAX_RUN_RESULTS_BYTES, MAX_RUN_SUMMARY_BYTES

RUN_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,79}$")
FILE_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.()+-]{0,119}$")
SUMMARY_FILE = "run.json"
STALE_SECONDS = 86_400


class InvalidRunId(ValueError):
    """A run id or file name that is not one genms writes (path traversal, odd characters)."""


class RunNotFound(LookupError):
    """No run with this id in the store (or its folder is refused: a symbolic link, not a folder)."""


class DamagedRun(RunNotFound):
    """A run whose ``run.json`` or ``results.json`` is unreadable or not what genms writes."""

    def __init__(self, run_id: str, reason: str):
        super().__init__(f"run {run_id!r} is damaged: {reason}")
        self.run_id, self.reason = run_id, reason


class RunFileRefused(FileNotFoundError):
    """A run file that is not served: a symbolic link (or below one), not a regular file, or too large.

    A ``FileNotFoundError``, so that callers treating a missing file as not found refuse it too."""


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


# --- reading without following links ------------------------------------------------------------------

_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_DIRECTORY = getattr(os, "O_DIRECTORY", 0)
_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # a FIFO planted in a run folder must not block the open
_FD_WALK = bool(_NOFOLLOW) and os.open in os.supports_dir_fd and os.stat in os.supports_dir_fd


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "a symbolic link"
    if stat.S_ISDIR(mode):
        return "a folder"
    return "a regular file" if stat.S_ISREG(mode) else "a special file"


def _open_below(root: Path, parts: list[str]) -> int:
    """A read-only descriptor of the regular file ``root/parts...``, no component below ``root`` a link.

    ``root`` itself may be a link (where the user keeps the store is the user's choice). Raises
    ``RunFileRefused`` naming the first refused component, ``FileNotFoundError`` when one is missing.
    """
    if not _FD_WALK:  # no openat(): check each component, then open
        path = Path(root)
        for index, part in enumerate(parts):
            path = path / part
            mode = os.lstat(path).st_mode
            wanted = stat.S_ISREG(mode) if index == len(parts) - 1 else stat.S_ISDIR(mode)
            if not wanted:
                raise RunFileRefused(f"{'/'.join(parts[:index + 1])} refused: {_kind(mode)}")
        return os.open(path, os.O_RDONLY | _NONBLOCK)
    fd = os.open(root, os.O_RDONLY | _DIRECTORY)
    try:
        for index, part in enumerate(parts):
            last = index == len(parts) - 1
            flags = os.O_RDONLY | _NOFOLLOW | _NONBLOCK | (0 if last else _DIRECTORY)
            try:
                child = os.open(part, flags, dir_fd=fd)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    raise FileNotFoundError(errno.ENOENT, "no such file", "/".join(parts[:index + 1])) from None
                try:
                    mode = os.stat(part, dir_fd=fd, follow_symlinks=False).st_mode
                except OSError:
                    raise exc from None
                raise RunFileRefused(f"{'/'.join(parts[:index + 1])} refused: {_kind(mode)}") from None
            os.close(fd)
            fd = child
            mode = os.fstat(fd).st_mode
            if not (stat.S_ISREG(mode) if last else stat.S_ISDIR(mode)):
                raise RunFileRefused(f"{'/'.join(parts[:index + 1])} refused: {_kind(mode)}")
        result, fd = fd, -1
        return result
    finally:
        if fd >= 0:
            os.close(fd)


def _read_fd(fd: int, label: str, max_bytes: int) -> bytes:
    """Read the open regular file ``fd`` (closed after), refused beyond ``max_bytes``."""
    try:
        size = os.fstat(fd).st_size
        if size > max_bytes:
            raise RunFileRefused(f"{label} refused: {size:,} bytes, more than the {max_bytes:,} read back")
        chunks, total = [], 0
        while chunk := os.read(fd, min(1 << 20, max_bytes + 1 - total)):
            chunks.append(chunk)
            total += len(chunk)
            if total > max_bytes:  # it grew while being read
                raise RunFileRefused(f"{label} refused: more than the {max_bytes:,} bytes read back")
        return b"".join(chunks)
    finally:
        os.close(fd)


def _read_below(root: Path, parts: list[str], max_bytes: int) -> bytes:
    """The bytes of ``root/parts...`` (see ``_open_below``), refused beyond ``max_bytes``."""
    return _read_fd(_open_below(root, parts), "/".join(parts), max_bytes)


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} out of range")
    return value


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _parse_json(data: bytes, name: str) -> object:
    """JSON as genms writes it (UTF-8, finite numbers); ValueError with the reason otherwise."""
    try:
        return json.loads(data.decode("utf-8"), parse_float=_finite_float, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise ValueError(f"{name} is not UTF-8 text") from None
    except RecursionError:
        raise ValueError(f"{name} is nested too deeply") from None
    except ValueError as exc:
        raise ValueError(f"{name} is not valid JSON ({str(exc)[:120]})") from None


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _type_name(value: object) -> str:
    return "null" if value is None else {dict: "an object", list: "a list", str: "a string", bool: "a boolean",
                                         int: "a number", float: "a number"}.get(type(value), type(value).__name__)


# What ``run.json`` holds (``agent.search.run_summary``): field -> (check, what it must be, required).
_SUMMARY_FIELDS = {
    "request": (lambda v: isinstance(v, str), "a string", True),
    "planner": (lambda v: isinstance(v, str), "a string", True),
    "seconds": (_is_number, "a number", True),
    "n_candidates": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a count", True),
    "n_good": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v >= 0, "a count", True),
    "family": (lambda v: v is None or isinstance(v, str), "a string or null", False),
    "saved_at": (lambda v: isinstance(v, str), "a string", False),
    "best": (lambda v: isinstance(v, list), "a list", False),
}
_BEST_FIELDS = {"formula": str, "family": (str, type(None))}
_BEST_NUMBERS = ("formation_energy_per_atom", "e_above_hull")


def _summary_problem(record: object) -> str | None:
    """Why ``record`` is not a run summary genms writes, or None."""
    if not isinstance(record, dict):
        return f"run.json holds {_type_name(record)}, not an object"
    for key, (check, wanted, required) in _SUMMARY_FIELDS.items():
        if key not in record:
            if required:
                return f"run.json has no {key!r}"
        elif not check(record[key]):
            return f"run.json's {key!r} is {_type_name(record[key])}, not {wanted}"
    for entry in record.get("best", []):
        if not isinstance(entry, dict):
            return f"run.json's 'best' holds {_type_name(entry)}, not an object"
        for key, kinds in _BEST_FIELDS.items():
            if key in entry and not isinstance(entry[key], kinds) or key == "formula" and key not in entry:
                return f"a 'best' entry of run.json has a bad {key!r}"
        if any(entry.get(key) is not None and not _is_number(entry[key]) for key in _BEST_NUMBERS):
            return "a 'best' entry of run.json has an energy that is not a number"
    return None


# What ``results.json`` holds (``SearchResult.as_dict``), as far as readers rely on it.
_RESULTS_LISTS = ("candidates", "decisions", "dropped", "screened", "timings", "context")
_RESULTS_TEXT = ("request", "planner", "error", "error_kind")
_RESERVED = ("run_id", "summary", "files", "resources")  # keys ``load`` and its callers set


def _results_problem(results: object) -> str | None:
    if not isinstance(results, dict):
        return f"results.json holds {_type_name(results)}, not an object"
    for key in _RESULTS_LISTS:
        if key in results and not isinstance(results[key], list):
            return f"results.json's {key!r} is {_type_name(results[key])}, not a list"
    for key in _RESULTS_TEXT:
        if results.get(key) is not None and not isinstance(results[key], str):
            return f"results.json's {key!r} is {_type_name(results[key])}, not a string"
    if "seconds" in results and not _is_number(results["seconds"]):
        return f"results.json's 'seconds' is {_type_name(results['seconds'])}, not a number"
    if results.get("spec") is not None and not isinstance(results["spec"], dict):
        return f"results.json's 'spec' is {_type_name(results['spec'])}, not an object"
    for candidate in results.get("candidates", []):
        if not isinstance(candidate, dict):
            return f"results.json's 'candidates' holds {_type_name(candidate)}, not an object"
        if not isinstance(candidate.get("formula"), str):
            return "a candidate in results.json has no formula"
        if candidate.get("checks") is not None and not isinstance(candidate["checks"], dict):
            return "a candidate in results.json has checks that are not an object"
    return None


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
            if os.path.lexists(final):
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
                info = staging.lstat()
            except FileNotFoundError:
                continue
            if stat.S_ISDIR(info.st_mode) and info.st_mtime < cutoff:  # never a link: rmtree would not follow it anyway
                shutil.rmtree(staging, ignore_errors=True)

    def ids(self) -> list[str]:
        """Run ids, newest first: folders with a ``run.json``, and links where a run folder should be
        (listed so that ``list`` reports them refused; nothing below a link is looked at)."""
        if not self.root.is_dir():
            return []
        names = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                if not RUN_ID_PATTERN.match(entry.name):
                    continue
                if entry.is_symlink() or entry.is_dir(follow_symlinks=False) and os.path.lexists(Path(entry.path) / SUMMARY_FILE):
                    names.append(entry.name)
        return sorted(names, reverse=True)

    def _folder(self, run_id: str) -> Path:
        """The run's folder; RunNotFound when missing, or refused when a link or not a folder."""
        folder = self.path(run_id)
        try:
            mode = folder.lstat().st_mode
        except FileNotFoundError:
            raise RunNotFound(f"no run {run_id!r} in {self.root}") from None
        if not stat.S_ISDIR(mode):
            raise RunNotFound(f"run {run_id!r} refused: {_kind(mode)} where its folder should be")
        return folder

    def _read(self, run_id: str, parts: list[str], max_bytes: int) -> bytes:
        self._folder(run_id)
        return _read_below(self.root, [run_id, *parts], max_bytes)

    def summary(self, run_id: str) -> dict:
        """The run's summary record (request, planner, counts, best candidates).

        Raises ``RunNotFound`` (no such run, or its folder refused) or ``DamagedRun`` (a
        ``run.json`` missing, refused, unreadable or not what genms writes)."""
        try:
            data = self._read(run_id, [SUMMARY_FILE], MAX_RUN_SUMMARY_BYTES)
        except RunFileRefused as exc:
            raise DamagedRun(run_id, str(exc).removeprefix(f"{run_id}/")) from None
        except FileNotFoundError:
            raise RunNotFound(f"no run {run_id!r} in {self.root}") from None
        except OSError as exc:
            raise DamagedRun(run_id, f"run.json unreadable: {exc.strerror or exc}") from None
        try:
            record = _parse_json(data, SUMMARY_FILE)
        except ValueError as exc:
            raise DamagedRun(run_id, str(exc)) from None
        problem = _summary_problem(record)
        if problem:
            raise DamagedRun(run_id, problem)
        clean = {key: value for key, value in record.items() if key not in ("damaged", "reason")}
        return {**clean, "run_id": run_id, "best": record.get("best", [])}

    def list(self, limit: int | None = None) -> list[dict]:
        """Summaries of the newest ``limit`` runs (all when None), newest first.

        A run that cannot be read is listed as ``{"run_id", "damaged": True, "reason"}``; one bad
        run never breaks the listing."""
        summaries = []
        for run_id in self.ids():
            if limit is not None and len(summaries) >= limit:
                break
            try:
                summaries.append(self.summary(run_id))
            except DamagedRun as exc:
                summaries.append({"run_id": run_id, "damaged": True, "reason": exc.reason})
            except RunNotFound as exc:  # gone meanwhile, or its folder refused
                summaries.append({"run_id": run_id, "damaged": True, "reason": str(exc).removeprefix(f"run {run_id!r} ")})
            except OSError as exc:
                summaries.append({"run_id": run_id, "damaged": True, "reason": f"unreadable: {exc.strerror or exc}"})
        return summaries

    def files(self, run_id: str) -> list[str]:
        """Relative names of the run's regular files (``report.md``, ``cifs/01_X.cif``, ...).

        Links, special files and names genms does not write are left out: they are not served."""
        folder = self._folder(run_id)
        if not os.path.lexists(folder / SUMMARY_FILE):
            raise RunNotFound(f"no run {run_id!r} in {self.root}")
        names: list[str] = []

        def scan(directory: Path, prefix: str, depth: int) -> None:
            with os.scandir(directory) as entries:
                for entry in entries:
                    if len(names) >= MAX_RUN_FILES or not FILE_PATTERN.match(entry.name) or entry.is_symlink():
                        continue
                    if entry.is_file(follow_symlinks=False):
                        names.append(prefix + entry.name)
                    elif depth == 0 and entry.is_dir(follow_symlinks=False):
                        scan(Path(entry.path), f"{entry.name}/", 1)

        scan(folder, "", 0)
        return sorted(names)

    def file(self, run_id: str, relative: str) -> Path:
        """The path of one of the run's files; names outside the run folder, and links, are refused.

        Prefer ``read_text``, which reads what it checked (no window for a swap in between)."""
        parts = _check_relative(relative)
        os.close(self._open(run_id, parts, relative))
        return self.path(run_id).joinpath(*parts)

    def _open(self, run_id: str, parts: list[str], relative: str) -> int:
        self._folder(run_id)
        try:
            return _open_below(self.root, [run_id, *parts])
        except RunFileRefused as exc:
            raise RunFileRefused(f"run {run_id}: {str(exc).removeprefix(f'{run_id}/')}") from None
        except FileNotFoundError:
            if not os.path.lexists(self.path(run_id) / SUMMARY_FILE):
                raise RunNotFound(f"no run {run_id!r} in {self.root}") from None
            raise FileNotFoundError(f"run {run_id} has no file {relative!r}") from None
        except OSError as exc:
            raise RunFileRefused(f"run {run_id}: {relative!r} unreadable: {exc.strerror or exc}") from None

    def read_text(self, run_id: str, relative: str, max_bytes: int = MAX_RUN_FILE_BYTES) -> str:
        """The text of one of the run's files, read through the descriptor that was checked (links
        and special files refused, at most ``max_bytes``; undecodable bytes replaced)."""
        fd = self._open(run_id, _check_relative(relative), relative)
        return _read_fd(fd, f"run {run_id}: {relative}", max_bytes).decode("utf-8", errors="replace")

    def load(self, run_id: str) -> dict:
        """The run's full results (``results.json``) with its summary and file list.

        Raises ``RunNotFound``, or ``DamagedRun`` when its records are not what genms writes."""
        summary = self.summary(run_id)
        try:
            results = _parse_json(self._read(run_id, ["results.json"], MAX_RUN_RESULTS_BYTES), "results.json")
        except RunFileRefused as exc:
            raise DamagedRun(run_id, str(exc).removeprefix(f"{run_id}/")) from None
        except FileNotFoundError:
            results = {}
        except ValueError as exc:
            raise DamagedRun(run_id, str(exc)) from None
        except OSError as exc:
            raise DamagedRun(run_id, f"results.json unreadable: {exc.strerror or exc}") from None
        problem = _results_problem(results)
        if problem:
            raise DamagedRun(run_id, problem)
        kept = {key: value for key, value in results.items() if key not in _RESERVED}
        return {**kept, "run_id": run_id, "summary": summary, "files": self.files(run_id)}
