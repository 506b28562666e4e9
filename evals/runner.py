"""Run a suite: expand it into units, skip the finished ones, run the rest, write the report.

Each finished unit is one JSON file, ``<out>/cases/<key>.json``, written atomically (a temporary
file renamed into place), so a killed run leaves only whole records; running the suite again
recomputes only what is missing. Units are seeded from the suite's seed and the repeat
number alone, so a resumed run gives the same records, hence the same metrics. Skipped units
(a missing generator, weights or key) and failed ones are not stored: they are tried again
next time.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from evals.backends import make_backend
from evals.report import write_report
from evals.suite import Suite, expand


def atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".", suffix=".tmp")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(text)
            stream.flush()
            os.fsync(stream.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def load_finished(cases_dir: Path, keys: set[str]) -> dict[str, dict]:
    """Records of finished units of this suite (files of other budgets or unreadable files are ignored)."""
    found = {}
    for path in cases_dir.glob("*.json") if cases_dir.is_dir() else []:
        if path.stem not in keys:
            continue
        try:
            record = json.loads(path.read_text(encoding="utf-8"))["record"]
        except (OSError, ValueError, KeyError):
            continue
        if record.get("status") == "ok":
            found[path.stem] = record
    return found


def run_suite(
    suite: Suite,
    out: Path,
    workers: int = 1,
    ray_address: str | None = None,
    on_event: Callable[[dict], None] | None = None,
) -> dict:
    """Run what is not finished yet and write ``metrics.json``, ``report.md`` and plots under ``out``.

    ``on_event`` receives ``{"event": "start", "total", "finished", "backend"}`` once, then
    ``{"event": "unit", "unit", "record"}`` as each unit finishes. Returns the metrics.
    """
    out = Path(out)
    units = expand(suite)
    cases_dir = out / "cases"
    records = load_finished(cases_dir, {u["key"] for u in units})
    pending = [u for u in units if u["key"] not in records]
    backend = make_backend(workers, ray_address)
    atomic_write(out / "suite.json", json.dumps(suite.model_dump(), indent=2) + "\n")
    if on_event:
        on_event({"event": "start", "total": len(units), "finished": len(units) - len(pending), "backend": backend.label})
    started = time.time()
    for unit, record in backend.run(pending):
        records[unit["key"]] = record
        if record["status"] == "ok":
            atomic_write(cases_dir / f"{unit['key']}.json", json.dumps({"unit": unit, "record": record}, allow_nan=False) + "\n")
        if on_event:
            on_event({"event": "unit", "unit": unit, "record": record})
    run_info = {"backend": backend.label, "units": len(units), "resumed": len(units) - len(pending),
                "computed": len(pending), "seconds": round(time.time() - started, 1)}
    atomic_write(out / "run.json", json.dumps(run_info, indent=2) + "\n")
    return write_report(suite, units, records, out, run_info)
