"""Pool unit records into metrics and write ``metrics.json``, ``report.md`` and PNG plots.

Rows are (case, system, grid point) with repeats pooled; the overall rows pool every case of a
system. ``metrics.json`` holds only what the records decide (no clock time of the run itself),
so a resumed run writes the same file as an uninterrupted one; metrics in seconds are
measurements and vary between runs.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

from agent.render import md_text
from evals.metrics import METRICS, pool, values_of
from evals.suite import Suite
from tools.claude import total_usage, usage_summary

DIGITS = 4


def _rounded(value):
    return None if value is None else round(value, DIGITS)


def _status(records: list[dict | None]) -> tuple[str, str | None]:
    statuses = [r["status"] if r else "missing" for r in records]
    reasons = sorted({r.get("reason") for r in records if r and r.get("reason")})
    if all(s == "ok" for s in statuses):
        return "ok", None
    if all(s == "skipped" for s in statuses):
        return "skipped", "; ".join(reasons)
    if "ok" in statuses:
        return "partial", f"{statuses.count('ok')} of {len(statuses)} units ok; " + "; ".join(reasons)
    return ("error" if "error" in statuses else "missing"), "; ".join(reasons) or None


def _pooled(suite: Suite, members: list[tuple[dict, dict | None]]) -> dict:
    result = {}
    for name in suite.metrics:
        metric = METRICS[name]
        values = []
        for unit, record in members:
            if record and record["status"] == "ok":
                values += values_of(metric, record, unit["case"])
        result[name] = _rounded(pool(metric, values))
    return result


def aggregate(suite: Suite, units: list[dict], records: dict[str, dict]) -> dict:
    """The metrics of every (case, system, variant) row and of every (system, variant) overall."""
    rows, overall = defaultdict(list), defaultdict(list)
    for unit in units:
        member = (unit, records.get(unit["key"]))
        rows[(unit["case"]["id"], unit["system"]["name"], unit["variant"])].append(member)
        overall[(unit["system"]["name"], unit["variant"])].append(member)

    def entry(members):
        status, reason = _status([r for _, r in members])
        dropped = [d for _, r in members if r for d in r.get("dropped", [])]
        row = {"status": status, "reason": reason, "units": len(members), "metrics": _pooled(suite, members)}
        if dropped:  # formulae a generator could not place: why a row has fewer structures
            row["dropped"] = {"count": len(dropped), "examples": sorted({d["reason"] for d in dropped})[:3]}
        planners = Counter(r["planner"] for _, r in members if r and r.get("planner"))
        if planners:  # the planner that really ran each unit (Claude, or the offline path after a failure)
            row["planners"] = dict(planners)
        claude = [r["claude"] for _, r in members if r and r.get("claude")]
        if claude:
            row["claude"] = total_usage(claude)
        return row

    failures = _request_failures(suite, units, records)
    return {
        **({"request_failures": failures} if failures is not None else {}),
        "suite": suite.name,
        "task": suite.task,
        "seed": suite.seed,
        "budget": suite.budget.model_dump(),
        "grid": suite.grid,
        "metrics": {n: {"label": METRICS[n].label, "unit": METRICS[n].unit, "pool": METRICS[n].pool,
                        "better": METRICS[n].better, "description": METRICS[n].description} for n in suite.metrics},
        "rows": [{"case": c, "system": s, "variant": v, **entry(m)} for (c, s, v), m in rows.items()],
        "overall": [{"system": s, "variant": v, **entry(m)} for (s, v), m in overall.items()],
    }


def _request_failures(suite: Suite, units: list[dict], records: dict[str, dict]) -> list[dict] | None:
    """Every returned candidate that does not answer its request, with the reasons (for suites
    that measure ``request_conformance``)."""
    from evals.metrics import request_failures_of

    if "request_conformance" not in suite.metrics:
        return None
    found = []
    for unit in units:
        record = records.get(unit["key"])
        for sample in (record or {}).get("samples", []) if (record or {}).get("status") == "ok" else []:
            reasons = request_failures_of(sample, unit["case"])
            if reasons:
                found.append({"case": unit["case"]["id"], "system": unit["system"]["name"], "request": unit["case"]["request"],
                              "formula": sample.get("formula"), "reasons": reasons})
    return found


def _cell(value, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "%":
        return f"{value:.1f}"
    if unit in ("s", "count"):
        return f"{value:.1f}"
    return f"{value:.3f}"


def _md(value) -> str:
    """Outside text (case ids, reasons quoting inputs or errors) for one line of report.md: no table
    cells, links, HTML or code can be opened by it (``agent.render.md_text``)."""
    return md_text(value, emphasis=False)


def _table(metrics: dict, rows: list[dict], names: list[str], keys: list[str]) -> list[str]:
    headers = keys + [f"{metrics[n]['label']} ({metrics[n]['unit']})" for n in names]
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        if row["status"] == "skipped":
            cells = [f"skipped: {_md(row['reason'])}"] + [""] * (len(names) - 1)
        else:
            cells = [_cell(row["metrics"][n], metrics[n]["unit"]) for n in names]
        lines.append("| " + " | ".join([_md(row[k]) for k in keys] + cells) + " |")
    return lines


def markdown(result: dict, suite: Suite, run_info: dict | None, plots: list[str]) -> str:
    names = suite.table or suite.metrics
    metrics = result["metrics"]
    multi_variant = bool(suite.grid)
    keys = ["case", "system"] + (["variant"] if multi_variant else [])
    budget = ", ".join(f"{k} {v}" for k, v in result["budget"].items())
    lines = [f"# Evaluation suite: {suite.name}", "", suite.description.strip(), "",
             f"Task `{suite.task}`; seed {suite.seed}; budget: {budget}."]
    if suite.grid:
        lines.append("Grid: " + "; ".join(f"{k} in {v}" for k, v in suite.grid.items()) + ".")
    if run_info:
        lines.append(f"Ran on {run_info['backend']}: {run_info['units']} units ({run_info['resumed']} resumed from earlier runs, "
                     f"{run_info['computed']} computed) in {run_info['seconds']:.0f} s.")
    lines += ["", "## Results by case and system", ""]
    lines += _table(metrics, result["rows"], names, keys)
    lines += ["", "## Overall by system (every case pooled)", ""]
    lines += _table(metrics, result["overall"], names, ["system"] + (["variant"] if multi_variant else []))
    if set(suite.metrics) - set(names):
        extra = [n for n in suite.metrics if n not in names]
        lines += ["", "## Further metrics", ""] + _table(metrics, result["overall"], extra, ["system"] + (["variant"] if multi_variant else []))
    problems = [r for r in result["rows"] if r["status"] not in ("ok",)]
    if problems:
        lines += ["", "## Skipped and failed", ""]
        lines += [f"- {_md(r['case'])} / {_md(r['system'])}{' / ' + _md(r['variant']) if multi_variant else ''}: "
                  f"**{_md(r['status'])}**: {_md(r['reason'])}" for r in problems]
    dropped = [r for r in result["rows"] if r.get("dropped")]
    if dropped:
        lines += ["", "## Formulae not placed", ""]
        lines += [f"- {_md(r['case'])} / {_md(r['system'])}{' / ' + _md(r['variant']) if multi_variant else ''}: {r['dropped']['count']} "
                  f"(e.g. {_md(r['dropped']['examples'][0])})" for r in dropped]
    if "request_failures" in result:
        lines += ["", "## Candidates that do not answer their request", ""]
        lines += [f"- {_md(f['case'])} / {_md(f['system'])}: **{_md(f['formula'])}** for \"{_md(f['request'])}\": "
                  + "; ".join(_md(r) for r in f["reasons"]) for f in result["request_failures"]] or ["None: every returned candidate answers its request."]
    used = [r for r in result["overall"] if r.get("planners") or r.get("claude")]
    if used:
        lines += ["", "## Planner that ran, and Claude's usage", ""]
        for r in used:
            planners = "; ".join(f"{_md(name)} x{count}" for name, count in sorted(r.get("planners", {}).items()))
            usage = f"; {_md(usage_summary(r['claude']))}" if r.get("claude") else ""
            lines.append(f"- {_md(r['system'])}{' / ' + _md(r['variant']) if multi_variant else ''}: {planners or '-'}{usage}")
    lines += ["", "## Metrics", ""]
    lines += [f"- **{m['label']}** (`{n}`, {m['unit']}, pooled as {m['pool']}, {m['better']} is better): {m['description']}"
              for n, m in metrics.items()]
    if plots:
        lines += ["", "## Plots", ""] + [f"![{Path(p).stem}]({p})" for p in plots]
    return "\n".join(lines) + "\n"


def _plot_metrics(result: dict, suite: Suite, out: Path) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in (suite.table or suite.metrics) if result["metrics"][n]["unit"] != "s"] or list(suite.metrics)
    rows = [r for r in result["rows"] if r["status"] != "skipped"]
    if not rows:
        return []
    cases = list(dict.fromkeys(r["case"] for r in rows))
    series = list(dict.fromkeys((r["system"], r["variant"]) for r in rows))
    columns = min(3, len(names))
    lines = (len(names) + columns - 1) // columns
    figure, axes = plt.subplots(lines, columns, figsize=(5 * columns, 3.4 * lines), squeeze=False)
    width = 0.8 / max(1, len(series))
    lookup = {(r["case"], r["system"], r["variant"]): r["metrics"] for r in rows}
    for index, name in enumerate(names):
        axis = axes[index // columns][index % columns]
        for position, (system, variant) in enumerate(series):
            heights = [(lookup.get((c, system, variant)) or {}).get(name) for c in cases]
            axis.bar([i + position * width for i in range(len(cases))], [h if h is not None else 0 for h in heights], width,
                     label=system if variant == "default" else f"{system} {variant}")
        meta = result["metrics"][name]
        axis.set_title(f"{meta['label']} ({meta['unit']})", fontsize=10)
        axis.set_xticks([i + width * (len(series) - 1) / 2 for i in range(len(cases))])
        axis.set_xticklabels(cases, rotation=30, ha="right", fontsize=8)
    for index in range(len(names), lines * columns):
        axes[index // columns][index % columns].axis("off")
    axes[0][0].legend(fontsize=7)
    figure.suptitle(f"{suite.name}: by case and system")
    figure.tight_layout()
    path = out / "metrics.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return [path.name]


def _plot_grid(result: dict, suite: Suite, out: Path) -> list[str]:
    """Each non-time metric against the first grid field, one line per value of the others."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from evals.suite import grid_points, variant_label

    fields = list(suite.grid)
    points = grid_points(suite)
    names = [n for n in (suite.table or suite.metrics) if result["metrics"][n]["unit"] != "s"]
    paths = []
    for system in dict.fromkeys(r["system"] for r in result["overall"]):
        lookup = {r["variant"]: r["metrics"] for r in result["overall"] if r["system"] == system}
        figure, axes = plt.subplots(1, len(names), figsize=(4.5 * len(names), 3.4), squeeze=False)
        for axis, name in zip(axes[0], names):
            lines = defaultdict(list)
            for point in points:
                rest = tuple((k, v) for k, v in point.items() if k != fields[0])
                value = (lookup.get(variant_label(point)) or {}).get(name)
                if value is not None:
                    lines[rest].append((point[fields[0]], value))
            for rest, xy in lines.items():
                axis.plot([x for x, _ in xy], [y for _, y in xy], marker="o", label=variant_label(dict(rest)))
            meta = result["metrics"][name]
            axis.set_xlabel(variant_label({fields[0]: ""}).rstrip("="))
            axis.set_title(f"{meta['label']} ({meta['unit']})", fontsize=10)
            if len(lines) > 1:
                axis.legend(fontsize=7)
        figure.suptitle(f"{suite.name}: {system}")
        figure.tight_layout()
        path = out / f"grid_{system}.png"
        figure.savefig(path, dpi=90)
        plt.close(figure)
        paths.append(path.name)
    return paths


def _plot_best_of_n(units: list[dict], records: dict, out: Path) -> list[str]:
    """GenMS Figure 4: E_f of the single sample against the best of N, one point per composition."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    points = defaultdict(list)
    for unit in units:
        record = records.get(unit["key"])
        energies = (record or {}).get("energies") or []
        scored = [e for e in energies if e is not None]
        if record and record["status"] == "ok" and energies and energies[0] is not None:
            points[unit["system"]["name"]].append((energies[0], min(scored)))
    if not points:
        return []
    figure, axes = plt.subplots(1, 2, figsize=(10, 4))
    for system, xy in points.items():
        axes[0].scatter([x for x, _ in xy], [y for _, y in xy], label=system, s=14)
        axes[1].hist([x - y for x, y in xy], bins=20, alpha=0.6, label=system)
    low = min(min(x, y) for xy in points.values() for x, y in xy)
    high = max(max(x, y) for xy in points.values() for x, y in xy)
    axes[0].plot([low, high], [low, high], color="grey", linewidth=0.8)
    axes[0].set_xlabel("single sample E_f (eV/atom)")
    axes[0].set_ylabel("best of N E_f (eV/atom)")
    axes[1].set_xlabel("single - best of N (eV/atom)")
    axes[1].set_ylabel("compositions")
    axes[0].legend(fontsize=8)
    figure.tight_layout()
    path = out / "best_of_n.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    return [path.name]


def write_report(suite: Suite, units: list[dict], records: dict[str, dict], out: Path, run_info: dict | None = None) -> dict:
    """Write ``metrics.json``, ``report.md`` and the plots under ``out``; return the metrics."""
    from evals.runner import atomic_write

    out = Path(out)
    result = aggregate(suite, units, records)
    atomic_write(out / "metrics.json", json.dumps(result, indent=2, allow_nan=False) + "\n")
    plots = _plot_metrics(result, suite, out)
    if suite.grid:
        plots += _plot_grid(result, suite, out)
    if suite.task == "best_of_n":
        plots += _plot_best_of_n(units, records, out)
    atomic_write(out / "report.md", markdown(result, suite, run_info, plots))
    return result
