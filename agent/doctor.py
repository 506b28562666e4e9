"""``genms doctor``: what this installation has and which features run offline."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
from pathlib import Path


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def chgnet_weights() -> list[str]:
    """Pretrained CHGNet checkpoints shipped inside the installed ``chgnet`` package."""
    spec = importlib.util.find_spec("chgnet")
    if spec is None or not spec.submodule_search_locations:
        return []
    root = Path(list(spec.submodule_search_locations)[0]) / "pretrained"
    return sorted(str(p.relative_to(root)) for p in root.glob("*/*.pth.tar"))


def _index_status() -> dict[str, object]:
    from tools.uniqueness import INDEX_PATH, known_formula_index

    try:
        return {"path": str(INDEX_PATH), "present": INDEX_PATH.is_file(), "formulas": len(known_formula_index())}
    except Exception as exc:  # a missing index with no data to rebuild it from
        return {"path": str(INDEX_PATH), "present": False, "formulas": 0, "error": str(exc)}


def claude_check() -> dict[str, object]:
    """One tiny real Claude call when a key is set: the model, whether it answered, and why not.

    Skipped (no network) without ``ANTHROPIC_API_KEY``. A deprecated model is reported without a call."""
    import time

    from tools.claude import classify, claude_configured, configured_model, model_info

    name = configured_model()
    info = model_info(name)
    report: dict[str, object] = {"model": name, "known_to_sdk": info.known, "deprecated": info.deprecated,
                                 "output": "JSON schema" if info.json_schema_output else "tool call", "called": False,
                                 "answered": False, "seconds": None, "error": None}
    if not claude_configured():
        report["error"] = "ANTHROPIC_API_KEY is not set: no call made (the offline planner runs)"
        return report
    if info.deprecated:
        report["error"] = f"{name} is deprecated (end of life {info.deprecated}): set GENMS_CLAUDE_MODEL to a current model"
        return report
    from langchain_core.messages import HumanMessage

    from tools.claude import chat_model

    started = time.monotonic()
    report["called"] = True
    try:
        reply = chat_model("doctor", max_tokens=1024, model=name).invoke([HumanMessage("Reply with the word OK.")])
        report["answered"] = True
        report["stop_reason"] = (reply.response_metadata or {}).get("stop_reason")
    except Exception as exc:  # every API error is reported, classified, never raised
        error = classify(exc)
        report["error"] = f"{error.kind}: {error}"
    report["seconds"] = round(time.monotonic() - started, 2)
    return report


def diagnose(call_claude: bool = True) -> dict[str, object]:
    """Collect the installation report (no model loading; one tiny Claude call when a key is set)."""
    from generators.datasets import data_status

    data = data_status()
    index = _index_status()
    weights = chgnet_weights()
    from tools.formation_energy import REFERENCES_PATH

    references = REFERENCES_PATH.is_file()
    have_data = all(data["files"].values())
    api_key = bool(os.environ.get("ANTHROPIC_API_KEY"))
    features = [
        {"feature": "formula checks (parse, SMACT, families)", "available": True, "offline": True},
        {"feature": "structure checks (CIF, distances, space group)", "available": True, "offline": True},
        {"feature": "uniqueness vs MP/ICSD/OQMD", "available": index["formulas"] > 0, "offline": True},
        {"feature": "family reference structures (shared data)", "available": have_data, "offline": True},
        {"feature": "CHGNet scoring: energies, formation energy, relaxation", "available": bool(weights and references), "offline": True},
        {"feature": "energy above the MP hull (shared data)", "available": have_data, "offline": True},
        {"feature": "offline formula proposer + R_hi screen", "available": True, "offline": True},
        {"feature": "Claude planner, proposer, symmetry predictor (fall back offline)", "available": api_key, "offline": False},
        {"feature": "prototype-substitution structure generator", "available": True, "offline": True},
    ]
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": {
            name: _package_version(name)
            for name in ("genms", "torch", "pymatgen", "smact", "chgnet", "langchain-core", "langchain-anthropic")
        },
        "chgnet_weights": weights,
        "data": data,
        "formula_index": index,
        "anthropic_api_key": api_key,
        "claude": claude_check() if call_claude else None,
        "planner": "claude" if api_key else "offline",
        "features": features,
        "ok": bool(have_data and index["formulas"] > 0 and weights and references and _package_version("torch")),
    }
