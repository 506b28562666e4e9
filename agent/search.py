"""Run one hierarchical search and write its results (CIFs, results.json, a Markdown report)."""

from __future__ import annotations

import json
import os
import tempfile
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.graph import build_graph, good_candidates
from agent.planner import Planner, default_planner


@dataclass
class SearchResult:
    """Outcome of a search: the spec, ranked candidates, decisions and timings."""

    request: str
    spec: dict | None
    candidates: list[dict]
    decisions: list[dict]
    dropped: list[dict] = field(default_factory=list)
    screened: list[dict] = field(default_factory=list)
    timings: list[dict] = field(default_factory=list)
    error: str | None = None
    error_kind: str | None = None
    planner: str = "offline"
    seconds: float = 0.0

    @property
    def good(self) -> list[dict]:
        return good_candidates(self.candidates)

    def as_dict(self, include_cif: bool = False) -> dict:
        candidates = [c if include_cif else {k: v for k, v in c.items() if k != "cif"} for c in self.candidates]
        return {
            "request": self.request, "spec": self.spec, "planner": self.planner, "error": self.error,
            "error_kind": self.error_kind, "seconds": round(self.seconds, 2), "candidates": candidates,
            "decisions": self.decisions, "dropped": self.dropped, "screened": self.screened, "timings": self.timings,
        }


def run_search(
    request: str,
    overrides: dict | None = None,
    planner: Planner | None = None,
    on_progress: Callable[[dict], None] | None = None,
) -> SearchResult:
    """Search for crystals matching ``request``; ``overrides`` set spec fields (budget, seed, ...).

    ``on_progress`` receives each progress event (``stage, done, total, detail``) and each
    decision (``{"decision": ...}``) as the graph runs.
    """
    planner = planner or default_planner()
    graph = build_graph(planner)
    started = time.time()
    state = {"request": request, "spec": overrides or {}, "started_at": started}
    final: dict = {}
    for mode, payload in graph.stream(state, stream_mode=["custom", "updates", "values"]):
        if mode == "custom" and on_progress:
            on_progress(payload)
        elif mode == "updates" and on_progress:
            for update in payload.values():
                for item in (update or {}).get("decisions", []):
                    on_progress({"decision": item})
        elif mode == "values":
            final = payload
    return SearchResult(
        request=request, spec=final.get("spec") if not final.get("error") else None,
        candidates=final.get("ranked", []), decisions=final.get("decisions", []), dropped=final.get("dropped", []),
        screened=final.get("screened", []), timings=final.get("timings", []), error=final.get("error"),
        error_kind=final.get("error_kind"), planner=planner.name, seconds=time.time() - started,
    )


def default_run_dir() -> Path:
    """A new folder for one run's files: ``$GENMS_HOME/runs/<UTC time>-<id>``."""
    from memory.paths import user_data_dir

    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime())
    return user_data_dir() / "runs" / f"{stamp}-{uuid.uuid4().hex[:6]}"


def _atomic_write(path: Path, text: str) -> None:
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    os.replace(temporary, path)


def write_results(result: SearchResult, out: Path) -> dict[str, str]:
    """Write each candidate's CIF, results.json and report.md under ``out`` (atomically)."""
    out.mkdir(parents=True, exist_ok=True)
    (out / "cifs").mkdir(exist_ok=True)
    for rank, candidate in enumerate(result.candidates, start=1):
        path = out / "cifs" / f"{rank:02d}_{candidate['formula']}.cif"
        _atomic_write(path, candidate["cif"])
        candidate["cif_path"] = str(path.relative_to(out))
    _atomic_write(out / "results.json", json.dumps(result.as_dict(), indent=2, allow_nan=False) + "\n")
    _atomic_write(out / "report.md", markdown_report(result))
    return {"results": str(out / "results.json"), "report": str(out / "report.md"), "cifs": str(out / "cifs")}


def _number(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_report(result: SearchResult) -> str:
    """A human-readable report of the search."""
    lines = [f"# genms search: {result.request}", ""]
    if result.error:
        return "\n".join(lines + [f"**Not searched:** {result.error}", ""])
    lines += [f"Planner: {result.planner}. Time: {result.seconds:.1f} s. Good candidates: {len(result.good)} of {len(result.candidates)}.", ""]
    lines += ["| rank | formula | family / prototype | E_f (eV/atom) | E_hull (eV/atom) | space group | known in | plausible |",
              "|---|---|---|---|---|---|---|---|"]
    for rank, c in enumerate(result.candidates, start=1):
        lines.append(
            f"| {rank} | {c['formula']} | {c['family']} / {c['prototype']} | {_number(c['formation_energy_per_atom'])} | "
            f"{_number(c['e_above_hull'])} | {c['checks']['spacegroup_symbol'] or '-'} | {', '.join(c['known_in'] or []) or 'novel'} | "
            f"{'yes' if c in result.good else 'no: ' + str(c['reason'] or 'too far above the hull')} |"
        )
    lines += ["", "## Decisions", ""]
    lines += [f"- round {d['round']}, {d['elapsed_s']:.1f} s, **{d['step']}** -> {d['decision']}: {d['reason']}" for d in result.decisions]
    if result.dropped:
        lines += ["", "## Dropped formulae", ""] + [f"- {d['formula']}: {d['reason']}" for d in result.dropped]
    lines += ["", "## Candidates", ""]
    lines += [f"- **{c['formula']}**: {c['rationale']}" for c in result.candidates]
    return "\n".join(lines) + "\n"
