"""Run one hierarchical search and write its results (CIFs, results.json, a Markdown report)."""

from __future__ import annotations

import json
import os
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from agent.graph import build_graph, good_candidates
from agent.planner import Planner, default_planner
from memory.runs import RunStore, new_run_id
from tools.claude import run_session, usage_summary
from tools.knowledge import remember_candidates


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
    context: list[dict] = field(default_factory=list)  # retrieved passages that grounded the proposer
    error: str | None = None
    error_kind: str | None = None
    planner: str = "offline"  # the planner that really ran (agent.planner.Planner.ran)
    steps: dict = field(default_factory=dict)  # the path each planner step took
    claude: dict | None = None  # Claude's calls, tokens and estimated cost (None: Claude not configured)
    seconds: float = 0.0

    @property
    def good(self) -> list[dict]:
        return good_candidates(self.candidates, (self.spec or {}).get("max_e_above_hull"))

    def as_dict(self, include_cif: bool = False) -> dict:
        candidates = [c if include_cif else {k: v for k, v in c.items() if k != "cif"} for c in self.candidates]
        return {
            "request": self.request, "spec": self.spec, "planner": self.planner, "error": self.error,
            "error_kind": self.error_kind, "seconds": round(self.seconds, 2), "candidates": candidates,
            "decisions": self.decisions, "dropped": self.dropped, "screened": self.screened, "timings": self.timings,
            "context": self.context, "steps": self.steps, "claude": self.claude,
        }


def run_search(
    request: str,
    overrides: dict | None = None,
    planner: Planner | None = None,
    on_progress: Callable[[dict], None] | None = None,
    stop: threading.Event | None = None,
) -> SearchResult:
    """Search for crystals matching ``request``; ``overrides`` set spec fields (budget, seed, ...).

    ``on_progress`` receives each progress event (``stage, done, total, detail``) and each
    decision (``{"decision": ...}``) as the graph runs. Setting ``stop`` ends the search inside
    its current step, at the step's next progress point (``agent.graph.SearchStopped``).
    """
    planner = planner or default_planner()
    graph = build_graph(planner)
    started = time.time()
    state = {"request": request, "spec": overrides or {}, "started_at": started}
    final: dict = {}
    with run_session(planner.session):
        for mode, payload in graph.stream(state, {"configurable": {"stop": stop}}, stream_mode=["custom", "updates", "values"]):
            if mode == "custom" and on_progress:
                on_progress(payload)
            elif mode == "updates" and on_progress:
                for update in payload.values():
                    for item in (update or {}).get("decisions", []):
                        on_progress({"decision": item})
            elif mode == "values":
                final = payload
    record = planner.record()
    if final.get("ranked") and not final.get("error"):  # how each candidate relates to known compounds
        from tools.lookup import attach_neighbours

        attach_neighbours(final["ranked"])
    return SearchResult(
        request=request, spec=final.get("spec") if not final.get("error") else None,
        candidates=final.get("ranked", []), decisions=final.get("decisions", []), dropped=final.get("dropped", []),
        screened=final.get("screened", []), timings=final.get("timings", []), context=final.get("context", []),
        error=final.get("error"),
        error_kind=final.get("error_kind"), planner=record["planner"], steps=record["steps"], claude=record["claude"],
        seconds=time.time() - started,
    )


def run_summary(result: SearchResult) -> dict:
    """The short record of a run that ``genms memory list`` shows."""
    good = result.good
    return {
        "request": result.request, "planner": result.planner, "seconds": round(result.seconds, 2),
        "family": (result.spec or {}).get("family"), "n_candidates": len(result.candidates), "n_good": len(good),
        "best": [{"formula": c["formula"], "family": c["family"], "formation_energy_per_atom": c["formation_energy_per_atom"],
                  "e_above_hull": c["e_above_hull"]} for c in good[:5]],
    }


def run_files(result: SearchResult) -> dict[str, str]:
    """Each candidate's CIF, ``results.json`` and ``report.md``, by relative name (sets ``cif_path``)."""
    files = {}
    for rank, candidate in enumerate(result.candidates, start=1):
        candidate["cif_path"] = f"cifs/{rank:02d}_{candidate['formula']}.cif"
        files[candidate["cif_path"]] = candidate["cif"]
    files["results.json"] = json.dumps(result.as_dict(), indent=2, allow_nan=False) + "\n"
    files["report.md"] = markdown_report(result)
    return files


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, suffix=".tmp")
    with os.fdopen(handle, "w") as stream:
        stream.write(text)
    os.replace(temporary, path)


def write_results(result: SearchResult, out: Path) -> dict[str, str]:
    """Write each candidate's CIF, results.json and report.md under ``out`` (each file atomically)."""
    for relative, text in run_files(result).items():
        _atomic_write(out / relative, text)
    return {"results": str(out / "results.json"), "report": str(out / "report.md"), "cifs": str(out / "cifs")}


def save_run(result: SearchResult, out: Path | None = None, store: RunStore | None = None) -> dict[str, str]:
    """Record the run in memory (run folder published atomically, candidates indexed); copy to ``out``.

    A run that never searched (an unusable request) is not recorded; with ``out`` its report
    is still written there. Returns the run id and the paths of the user-facing files.
    """
    if result.error:
        return write_results(result, out) if out else {}
    store = store or RunStore()
    run_id = new_run_id()
    folder = store.save(run_id, run_files(result), run_summary(result))
    remember_candidates(run_id, result.request, result.candidates, result.good, folder)
    written = write_results(result, out) if out else {
        "results": str(folder / "results.json"), "report": str(folder / "report.md"), "cifs": str(folder / "cifs")}
    return {"run_id": run_id, "run_dir": str(folder), **written}


def _number(value, digits=3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown_report(result: SearchResult) -> str:
    """A human-readable report of the search.

    Every piece of outside text (the request, formulas, reasons, rationales, retrieved titles) is
    escaped with ``md_text``: a request cannot add headings, links, HTML or table cells."""
    from agent.render import md_text as md
    from agent.render import neighbours_lines

    lines = [f"# genms search: {md(result.request)}", ""]
    if result.error:
        return "\n".join(lines + [f"**Not searched:** {md(result.error)}", ""])
    lines += [f"Planner: {md(result.planner)}. Time: {result.seconds:.1f} s. Good candidates: {len(result.good)} of {len(result.candidates)}.", ""]
    if result.steps.get("understand"):
        proposers = ", ".join(result.steps.get("propose") or []) or "none"
        lines += [f"Request read by: {md(result.steps['understand'])}. Proposer each round: {md(proposers)}.", ""]
    if result.claude:
        lines += [md(usage_summary(result.claude)) + ".", ""]
    lines += ["| rank | formula | family / prototype | E_f (eV/atom) | E_hull (eV/atom) | space group | known in | plausible |",
              "|---|---|---|---|---|---|---|---|"]
    for rank, c in enumerate(result.candidates, start=1):
        cut = (result.spec or {}).get("max_e_above_hull")
        above = f"above the {cut:g} eV/atom asked for" if cut is not None else "too far above the hull"
        verdict = "yes" if c in result.good else "no: " + md(c["reason"] or above)
        lines.append(
            f"| {rank} | {md(c['formula'])} | {md(c['family'])} / {md(c['prototype'])} | {_number(c['formation_energy_per_atom'])} | "
            f"{_number(c['e_above_hull'])} | {md(c['checks']['spacegroup_symbol'] or '-')} | {md(', '.join(c['known_in'] or []) or 'novel')} | "
            f"{verdict} |"
        )
    lines += ["", "## Decisions", ""]
    lines += [f"- round {d['round']}, {d['elapsed_s']:.1f} s, **{md(d['step'])}** -> {md(d['decision'])}: {md(d['reason'])}"
              for d in result.decisions]
    if result.dropped:
        lines += ["", "## Dropped formulae", ""] + [f"- {md(d['formula'])}: {md(d['reason'])}" for d in result.dropped]
    if result.context:
        lines += ["", "## Background retrieved", ""]
        sources = {p["source"]: p for p in result.context}
        lines += [f"- {md(p['title'])} ({md(p['kind'])}): {md(source)}, similarity {p['score']:.2f}" for source, p in sources.items()]
    lines += ["", "## Candidates", ""]
    lines += [f"- **{md(c['formula'])}**: {md(c['rationale'])}" for c in result.candidates]
    lines += neighbours_lines(result.good)
    return "\n".join(lines) + "\n"
