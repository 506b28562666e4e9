"""The offline planner as a LangChain chat model: deterministic rules that emit tool calls.

It reads the user's last message and calls the tool that fits (a formula question ->
``check_formulas``, a property question about a known material -> ``lookup_material``, a CIF
file -> ``check_structure`` or ``score_structures``, "propose" -> ``propose_formulas``, a crystal
request -> ``search_materials``), then turns the tool's result into a short answer. The same
agent graph runs it or Claude; nothing downstream can tell.
"""

from __future__ import annotations

import json
import re
import uuid
from pathlib import Path

from langchain_core.language_models.chat_models import BaseChatModel
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, ToolMessage
from langchain_core.outputs import ChatGeneration, ChatResult

from tools.formula import is_valid_formula
from tools.limits import MAX_CHAT_MESSAGE_CHARS
from tools.spec import RequestNotUnderstood, SpecConflict, family_mentioned, parse_request
from tools.structure import StructureError, read_text_file
from tools.vocabulary import vocabulary

HELP = (
    "I can check formulas ('is LiMn2O4 known?'), look up known materials ('band gap of anatase TiO2', 'is rutile "
    "stable?'), check or score a CIF file ('score examples/SrTiO3.cif'), "
    "propose formulas ('propose a lead-free halide perovskite'), and run a full search "
    "('find a novel spinel oxide containing Mn'), look things up ('what is the Goldschmidt tolerance factor?') and "
    "recall earlier results ('show me the spinels we found'). I am the offline planner: no network needed."
)
_FORMULA = re.compile(r"\b(?:[A-Z][a-z]?\d*(?:\.\d+)?){2,}\b|\b[A-Z][a-z]?\d+\b")
_SEARCH_WORDS = re.compile(r"\b(find|search|generate|give me|i want|i need|looking for|discover|design|suggest)\b", re.I)


def _formulas(text: str) -> list[str]:
    return [token for token in _FORMULA.findall(text) if is_valid_formula(token) and not token.isupper()]


_QUOTES = "'\"`,;:()[]{}<>"


def _cif_paths(text: str) -> list[str]:
    """Structure files named in a message (``*.cif``, ``*.vasp``, ``POSCAR*``) that exist.

    Token by token, so the work is linear in the message (a pattern scanning for the suffix
    backtracked quadratically over long runs of path characters)."""
    paths = []
    for token in text.split():
        token = token.lstrip(_QUOTES).rstrip(_QUOTES + ".!?")
        name = token.rsplit("/", 1)[-1]
        if not (name.lower().endswith((".cif", ".vasp")) or name.startswith("POSCAR")):
            continue
        try:
            if Path(token).expanduser().is_file():
                paths.append(token)
        except (OSError, ValueError):  # a name too long for the filesystem, a NUL byte
            continue
    return paths


def _tool_call(name: str, arguments: dict) -> AIMessage:
    return AIMessage(content="", tool_calls=[{"name": name, "args": arguments, "id": f"call_{uuid.uuid4().hex[:12]}", "type": "tool_call"}])


_QUESTION = re.compile(r"^\s*(what|which|how|why|explain|tell me|describe|is|are|does|do|can)\b", re.I)
_RECALL = re.compile(r"\b(we|you|i) (?:have )?(?:found|generated|produced|made|discovered)\b|\b(earlier|previous|past|last) "
                     r"(?:runs?|searches|results|candidates)\b", re.I)
_ABOUT_GENMS = re.compile(r"\b(you|genms)\b.*\b(do|help|work)\b|^\s*help\b", re.I)


# Property questions about a known material go to lookup_material ("band gap of GaAs", "is rutile stable?").
_PROPERTY = re.compile(
    r"\b(band[\s-]?gaps?|gaps?|formation[\s-]energ(?:y|ies)|energy above (?:the )?hull|e[_ ]?hull|hull|stable|stability|"
    r"space[\s-]?groups?|symmetry|polymorphs?|phases?|propert(?:y|ies)|structure|lattice|crystal system)\b", re.I)
_ABOUT = re.compile(r"^\s*(?:what(?:'s|\s+is|\s+are)|tell\s+me\s+about|describe)\s", re.I)
_NOT_KNOWN = re.compile(r"\b(novel|new|hypothetical|undiscovered|unreported)\b", re.I)
_ARTICLE_BEFORE = re.compile(r"\b(a|an|any|some|other)\s*$", re.I)
_TYPE_AFTER = re.compile(r"^(?:[\s-]*(?:type|types|structures?|famil(?:y|ies)|oxides?|compounds?|materials?|analogues?|like)\b|s\b)",
                         re.I)
LOOKUP_LIMIT = 10


def _named_polymorph(text: str) -> str | None:
    """A polymorph named as a material ('is rutile stable?'), not as a kind ('a rutile-type oxide', 'spinels')."""
    from tools.lookup import find_polymorph_names

    for name, before, after in find_polymorph_names(text):
        if not _ARTICLE_BEFORE.search(before[-20:]) and not _TYPE_AFTER.match(after):
            return name
    return None


def _lookup_request(text: str, formulas: list[str]) -> dict | None:
    """lookup_material's arguments for a property question about a known material, else None."""
    if _NOT_KNOWN.search(text):
        return None
    name = _named_polymorph(text)
    if not formulas and not name:
        return None
    if _PROPERTY.search(text):
        if _SEARCH_WORDS.search(text) and not _QUESTION.search(text) and not re.search(r"\b(of|for)\b", text, re.I):
            return None  # "find perovskites like SrTiO3 with a band gap near 3 eV" is a search
    elif not (_ABOUT.match(text) and (formulas or not family_mentioned(text))):
        return None  # "what is LiFePO4?", "what is anatase?"; but "what is rutile?" describes the family
    subject = f"{name} {formulas[0]}" if name and formulas else (name or formulas[0])
    return {"formula": subject, "limit": LOOKUP_LIMIT}


ASK_BACK = "Before I search:"  # how a question back to the user starts (the next 'yes' searches anyway)
_YES = re.compile(r"^\s*(?:yes|yeah|yep|ok(?:ay)?|sure|go ahead|search anyway|do it|please do|y)\b", re.I)
# What makes a reading specific enough to search without asking: elements and novelty alone are not,
# when a word of the request that was not understood may have been its subject ('a Zintl phase with Ba').
_SUBJECT_FIELDS = ("family", "stoichiometry", "allowed_elements", "anion_class", "application", "structure_type",
                   "band_gap", "electronic", "spacegroup", "n_elements", "density")


def _understood(text: str):
    """(the spec the text reads as, or None; the conflict that stops it if any; the words of a reading
    that misses its subject: the request's words not understood)."""
    try:
        spec = parse_request(text)
    except SpecConflict as exc:
        return None, str(exc), []
    except RequestNotUnderstood as exc:
        return None, None, exc.ignored_words
    subject = any(getattr(spec, name) for name in _SUBJECT_FIELDS)
    return spec, None, [] if subject else spec.ignored_words


def _ask_back(unread: list[str], spec) -> AIMessage:
    """A question instead of a search whose key word was not understood (``spec``: what it reads as, if anything)."""
    words = ", ".join(f"'{w}'" for w in unread)
    if spec is not None:
        read = spec.summary()
        return AIMessage(content=f"{ASK_BACK} I did not understand {words}, so a search would look only for: {read}. "
                                 "Say 'yes' to search anyway, or say what you mean as a crystal family (perovskite, "
                                 "spinel ...), an anion class (oxide, sulfide, nitride ...), an atom ratio such as 1:1:2, a "
                                 "structure type (kesterite, NASICON ...) or an application (for battery cathodes ...).")
    return AIMessage(content=f"{ASK_BACK} I did not understand {words}, and found no crystal family, composition or "
                             "property to search for. Which family, elements, anion class or application do you mean? "
                             "For example: 'a novel sulfide spinel with Cr' or 'a Li-ion cathode without cobalt'.")


def plan(text: str) -> AIMessage:
    """The tool call (or direct answer) for one user message."""
    if len(text) > MAX_CHAT_MESSAGE_CHARS:
        return AIMessage(content=f"That message is {len(text):,} characters; I read at most {MAX_CHAT_MESSAGE_CHARS:,}. "
                                 "Please shorten it.")
    paths = _cif_paths(text)
    if paths:
        try:  # bounded and regular files only: a FIFO or /dev/zero named in a message must not hang the chat
            cifs = [read_text_file(Path(p).expanduser()) for p in paths]
        except StructureError as exc:
            return AIMessage(content=f"I cannot read that structure file: {exc}")
        if re.search(r"\b(score|energy|energies|relax|stable|stability|hull)\b", text, re.I):
            return _tool_call("score_structures", {"cifs": cifs, "relax": bool(re.search(r"\brelax", text, re.I))})
        return _tool_call("check_structure", {"cif": cifs[0]})
    if re.search(r"\bpropose\b", text, re.I):
        return _tool_call("propose_formulas", {"request": text, "n": 20})
    if _RECALL.search(text):
        return _tool_call("recall_candidates", {"query": text, "k": 20})
    formulas = _formulas(text)
    looked_up = _lookup_request(text, formulas)
    if looked_up:
        return _tool_call("lookup_material", looked_up)
    if _QUESTION.search(text) or (formulas and not _SEARCH_WORDS.search(text)):
        if formulas:
            return _tool_call("check_formulas", {"formulas": formulas})
        family = family_mentioned(text)
        if family:
            return _tool_call("describe_family", {"name": family})
        return AIMessage(content=HELP) if _ABOUT_GENMS.search(text) else _tool_call("retrieve_knowledge", {"query": text, "k": 3})
    spec, conflict, unread = _understood(text)
    if unread and (spec is not None or _SEARCH_WORDS.search(text) or vocabulary().novelty.search(text)):
        return _ask_back(unread, spec)
    if spec is not None:
        return _tool_call("search_materials", {"request": text})
    return AIMessage(content=f"I cannot search for that: {conflict}" if conflict else HELP)


def _summarise_formulas(reports: list[dict]) -> str:
    lines = []
    for r in reports:
        if not r["valid"]:
            lines.append(f"{r['input']}: not a valid formula ({r['error']}).")
            continue
        known = f"known in {', '.join(r['known_in'])}" if r["known_in"] else "not in MP, ICSD or OQMD (novel)"
        states = ", ".join(f"{el} {'/'.join(f'{q:+d}' for q in qs)}" for el, qs in (r["oxidation_states"] or {}).items())
        balance = f"charge balanced ({states})" if r["charge_balanced"] else "not charge balanced"
        families = f"; fits {', '.join(r['families'])}" if r["families"] else ""
        lines.append(f"{r['reduced_formula']}: {known}; {balance}{families}.")
    return "\n".join(lines)


def _summarise_scores(reports: list[dict]) -> str:
    lines = []
    for r in reports:
        if r.get("energy_per_atom") is None:
            lines.append(f"{r['label']}: not scored ({r['reason']}).")
            continue
        hull = "unknown" if r["e_above_hull"] is None else f"{r['e_above_hull']:.3f} eV/atom"
        verdict = "plausible" if r["plausible"] else f"implausible ({r['reason']})"
        lines.append(f"{r['reduced_formula']}: E_f {r['formation_energy_per_atom']:.3f} eV/atom, E_hull {hull}, {verdict}.")
    return "\n".join(lines)


def _summarise_search(result: dict) -> str:
    if result.get("error"):
        return f"I could not search for that: {result['error']}"
    cut = (result.get("spec") or {}).get("max_e_above_hull")
    good = [c for c in result["candidates"] if c["plausible"]
            and (cut is None or (c["e_above_hull"] is not None and c["e_above_hull"] <= cut))]
    lines = [f"Search finished in {result['seconds']:.0f} s with {len(good)} good candidates"
             + (f" (within {cut:g} eV/atom of the hull, as asked)" if cut is not None else "") + f" (planner {result['planner']})."]
    ignored = (result.get("spec") or {}).get("ignored_words") or []
    if ignored:  # say what the search did not act on, and ask for it in words genms reads
        lines.append(f"I did not understand: {', '.join(ignored)}; the search ran without them. If they matter, say them "
                     "as elements, a family, an anion class, a band gap or an application (e.g. 'for battery cathodes').")
    for rank, c in enumerate(result["candidates"][:10], start=1):
        hull = "-" if c["e_above_hull"] is None else f"{c['e_above_hull']:.3f}"
        known = ", ".join(c["known_in"] or []) or "novel"
        lines.append(f"{rank}. {c['formula']} ({c['family']}, {c['checks']['spacegroup_symbol']}): "
                     f"E_f {c['formation_energy_per_atom']:.3f} eV/atom, E_hull {hull} eV/atom, {known}")
    if result.get("files"):
        lines.append(f"Files: {result['files']['results']}")
    return "\n".join(lines)


def _summarise_recalled(candidates: list[dict], query: str) -> str:
    if not candidates:
        return f"No earlier run produced anything matching '{query}'."
    lines = [f"{len(candidates)} candidates from earlier runs:"]
    for c in candidates:
        energy = "-" if c["formation_energy_per_atom"] is None else f"{c['formation_energy_per_atom']:.3f}"
        hull = "-" if c["e_above_hull"] is None else f"{c['e_above_hull']:.3f}"
        lines.append(f"- {c['formula']} ({c['family']}, {c['spacegroup'] or '-'}): E_f {energy} eV/atom, E_hull {hull} eV/atom, "
                     f"{'good' if c['good'] else 'not good'}, run {c['run_id']}, {c['cif_path']}")
    return "\n".join(lines)


def _polymorph_label(p: dict) -> str:
    return ", ".join([*p["names"], p["material_id"], p["spacegroup_symbol"] or "space group not computed"])


def _polymorph_numbers(p: dict, short: bool = False) -> str:
    parts = []
    if p["band_gap"] is not None:
        parts.append(f"{'gap' if short else 'PBE band gap'} {p['band_gap']:.2f} eV")
    if p["formation_energy_per_atom"] is not None:
        parts.append(f"{'E_f' if short else 'formation energy'} {p['formation_energy_per_atom']:.3f} eV/atom")
    if p["e_above_hull"] is not None:
        if short:
            parts.append(f"E_hull {p['e_above_hull']:.3f} eV/atom")
        else:
            parts.append("on the MP hull (0 eV/atom above it)" if p["e_above_hull"] <= 0
                         else f"{p['e_above_hull']:.3f} eV/atom above the MP hull")
    return ", ".join(parts) or "no energies or band gap in the data"


def _summarise_lookup(r: dict) -> str:
    polymorphs = r["polymorphs"]
    if not polymorphs:
        lines = [r["message"]]
    else:
        first = polymorphs[0]
        lines = [f"{r['formula']} ({_polymorph_label(first)}): {_polymorph_numbers(first)}; source: {first['source']}."]
        if r["polymorph_name"] and not first["match"]:
            lines.append(r["message"])
        on_hull = [p for p in polymorphs if p["e_above_hull"] is not None]
        lowest = min(on_hull, key=lambda p: p["e_above_hull"]) if on_hull else None
        if first["e_above_hull"] and lowest and lowest["e_above_hull"] < first["e_above_hull"]:
            lines.append(f"The lowest-energy entry is {_polymorph_label(lowest)} ({lowest['e_above_hull']:.3f} eV/atom above the hull).")
        others = polymorphs[1:6]
        if others:
            more = "; ..." if r["n_polymorphs"] > 1 + len(others) else ""
            lines.append("Other polymorphs: " + "; ".join(f"{_polymorph_label(p)} ({_polymorph_numbers(p, short=True)})"
                                                          for p in others) + more)
        lines.append(f"{r['n_polymorphs']} MP entr{'y' if r['n_polymorphs'] == 1 else 'ies'} in all; known in "
                     f"{', '.join(r['known_in']) or 'none of MP, ICSD, OQMD'}.")
    matbench = r.get("matbench") or {}
    values = [f"{label} {v['min']:.3f} to {v['max']:.3f} {unit}" for key, label, unit in
              (("formation_energy_per_atom", "formation energy", "eV/atom"), ("band_gap", "band gap", "eV"))
              if (v := matbench.get(key))]
    if values:
        lines.append(f"Matbench (composition level, all MP entries of {r['formula']}): {'; '.join(values)}.")
    lines.append("Band gaps are PBE (GGA/GGA+U) values, which underestimate measured gaps; energies are MP GGA/GGA+U "
                 "(MP2020-corrected in MP-20). Data: Materials Project (CC BY 4.0) via MP-20 and a 2018 snapshot; Matbench.")
    return "\n".join(lines)


def summarise(tool_name: str, content: str) -> str:
    """A short answer from a tool's JSON result."""
    try:
        result = json.loads(content)
    except json.JSONDecodeError:
        return content
    if isinstance(result, dict) and result.get("error") and tool_name != "search_materials":
        return f"That did not work: {result['error']}"
    if tool_name == "check_formulas":
        return _summarise_formulas(result)
    if tool_name == "score_structures":
        return _summarise_scores(result)
    if tool_name == "check_structure":
        r = result
        if not r["cif_valid"]:
            return f"Not a readable structure: {r['error']}"
        return (f"{r['reduced_formula']}: {r['n_sites']} sites, space group {r['spacegroup_symbol']} ({r['spacegroup_number']}), "
                f"shortest distance {r['min_distance']} Å, {'valid' if r['structurally_valid'] else 'invalid: ' + str(r['error'])}, "
                f"composition {'valid' if r['composition_valid'] else 'invalid'}, known in {', '.join(r['known_in']) or 'none'}.")
    if tool_name == "propose_formulas":
        passed = [p for p in result["proposals"] if p["passed"]]
        head = f"Proposed {len(result['proposals'])} formulas for '{result['spec']}'; {len(passed)} pass the screen:"
        return "\n".join([head] + [f"- {p['formula']} (score {p['score']:.2f}): {p['rationale']}" for p in passed[:10]])
    if tool_name == "search_materials":
        return _summarise_search(result)
    if tool_name == "lookup_material":
        return _summarise_lookup(result)
    if tool_name == "recall_candidates":
        return _summarise_recalled(result["candidates"], result["query"])
    if tool_name == "retrieve_knowledge":
        passages = result["passages"]
        if not passages:
            return "I found nothing about that in the knowledge store."
        sources = "; ".join(dict.fromkeys(f"{p['title']} ({p['source']})" for p in passages))
        return f"{passages[0]['text'][:600]}\nSources: {sources}"
    if tool_name == "describe_family":
        templates = ", ".join(f"{t['name']} ({t['ratio']})" for t in result["templates"])
        return (f"{result['title']}: {result['description']} Templates: {templates}. Roles: {result['roles']} "
                f"Prototypes: {'; '.join(result['prototypes'])}. Typical space groups: {', '.join(map(str, result['spacegroups']))}.")
    return content


def _asked_back(messages: list[BaseMessage]) -> str | None:
    """The request the previous answer asked back about (that answer just before the last message), or None."""
    if len(messages) < 3 or not isinstance(messages[-2], AIMessage) or not str(messages[-2].content).startswith(ASK_BACK):
        return None
    request = messages[-3]
    return str(request.content) if isinstance(request, HumanMessage) else None


class OfflineChatModel(BaseChatModel):
    """Deterministic stand-in for Claude: same messages in, same kinds of tool calls out."""

    @property
    def _llm_type(self) -> str:
        return "genms-offline-planner"

    def bind_tools(self, tools, **kwargs):
        return self

    def _generate(self, messages: list[BaseMessage], stop=None, run_manager=None, **kwargs) -> ChatResult:
        last = messages[-1]
        if isinstance(last, ToolMessage):
            # The chat shows models each tool result fenced as data (agent.chat.for_the_model) and
            # keeps the unfenced result in ``artifact``: rules summarise that, not the fence.
            result = last.artifact if isinstance(last.artifact, str) else last.content
            message = AIMessage(content=summarise(last.name or "", str(result)))
        elif isinstance(last, HumanMessage):
            asked = _asked_back(messages)
            if asked and _YES.match(str(last.content)):
                message = _tool_call("search_materials", {"request": asked})  # searched as read, as the user agreed
            else:
                message = plan(str(last.content))
        else:
            message = AIMessage(content=HELP)
        return ChatResult(generations=[ChatGeneration(message=message)])
