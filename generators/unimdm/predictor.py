"""Uni-MDM symmetry predictor: composition + target property -> space group and Wyckoff letters.

A small autoregressive transformer (the offline stand-in for the paper's fine-tuned GLM4).
Input (a bidirectional prefix): a register token and one token per property (band gap,
formation energy: value MLP or null embedding, :class:`generators.unimdm.network.PropertyTokens`),
then one token per element (element embedding + embedding of its atom count in the primitive
cell), elements in increasing Z. Output (causal): ``BOS, space group, letters of element 1,
SEP, letters of element 2, SEP, ...`` with the letters of an element in pyxtal's order. Each
output position also sees the element whose letters come next and how many of its atoms (in
the conventional cell) are still unplaced.

Decoding is constrained (:mod:`generators.unimdm.wyckoff`): only space groups whose Wyckoff
positions can hold the composition, only letters after which the assignment can still be
completed exactly, SEP exactly when an element is complete. Every output is therefore
consistent; it is still validated with pyxtal (:func:`check_assignment`) and an invalid one
would be resampled (a counter records it).

Commands:
``python -m generators.unimdm.predictor train --data .device_data_unimdm --minutes 12``
(weights to ``generators/weights/unimdm/predictor.pt``) and
``python -m generators.unimdm.predictor predict-split --data .device_data_unimdm --top 5``
(writes ``test_pred.pt``, the top-5 candidates of every MP-20 test crystal as DiT inputs, and
prints the accuracies).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from generators.unimdm.network import PROPERTIES, PROPERTY_SCALE, PropertyTokens
from generators.unimdm.symmetry import LETTERS, centering_factor, wyckoff_table
from generators.unimdm.wyckoff import check_assignment, completable

WEIGHTS = Path(__file__).resolve().parents[1] / "weights" / "unimdm" / "predictor.pt"
FORMAT = "genms-unimdm-predictor/1"
PAD, BOS, SEP = 0, 1, 2
SG0 = 3  # token of space group g: SG0 + g
LETTER0 = SG0 + 231  # token of letter i: LETTER0 + i
VOCAB = LETTER0 + len(LETTERS)
MAX_REMAINING = 255
MAX_OUTPUT = 48


@dataclass
class PredictorConfig:
    width: int = 128
    depth: int = 3
    heads: int = 4
    max_count: int = 64

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Example:
    """One crystal: primitive counts {Z: n}, properties (eV, eV/atom; NaN unknown), space group, letters {Z: [..]}."""

    counts: dict[int, int]
    band_gap: float = float("nan")
    formation_energy: float = float("nan")
    space_group: int | None = None
    letters: dict[int, list[str]] = field(default_factory=dict)


def output_tokens(example: Example) -> tuple[list[int], list[int], list[int]]:
    """(tokens, next element Z per position, remaining conventional atoms per position) of the full output."""
    elements = sorted(example.counts)
    factor = centering_factor(example.space_group)
    mult = {letter: m for letter, m, _ in wyckoff_table(example.space_group)}
    tokens, nxt, remaining = [BOS, SG0 + example.space_group], [elements[0], elements[0]], []
    remaining = [0, example.counts[elements[0]] * factor]
    for i, z in enumerate(elements):
        left = example.counts[z] * factor
        for letter in example.letters[z]:
            left -= mult[letter]
            tokens.append(LETTER0 + LETTERS.index(letter))
            nxt.append(z)
            remaining.append(left)
        tokens.append(SEP)
        following = elements[i + 1] if i + 1 < len(elements) else 0
        nxt.append(following)
        remaining.append(example.counts[following] * factor if following else 0)
    return tokens, nxt, remaining


class Block(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x, mask, cache: list | None = None):
        """``mask`` [B, 1, L, K] over keys; with ``cache`` ([k, v] of earlier positions, extended in place)
        the keys are the cached ones followed by those of ``x`` (incremental decoding)."""
        b, length, w = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, length, 3, self.heads, w // self.heads).permute(2, 0, 3, 1, 4)
        if cache is not None:
            if cache:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            cache[:] = [k, v]
        x = x + self.out(F.scaled_dot_product_attention(q, k, v, attn_mask=mask).transpose(1, 2).reshape(b, length, w))
        return x + self.mlp(self.norm2(x))


class SymmetryTransformer(nn.Module):
    def __init__(self, config: PredictorConfig):
        super().__init__()
        self.config = config
        w = config.width
        self.properties = PropertyTokens(w)
        self.element = nn.Embedding(101, w)
        self.count = nn.Embedding(config.max_count + 1, w)
        self.token = nn.Embedding(VOCAB, w)
        self.position = nn.Embedding(MAX_OUTPUT, w)
        self.next_element = nn.Embedding(101, w)
        self.remaining = nn.Embedding(MAX_REMAINING + 1, w)
        self.blocks = nn.ModuleList(Block(w, config.heads) for _ in range(config.depth))
        self.norm = nn.LayerNorm(w)
        self.head = nn.Linear(w, VOCAB)

    def _prefix(self, properties, elements, counts):
        prefix = torch.cat([self.properties(properties),
                            self.element(elements) + self.count(counts.clamp(0, self.config.max_count))], dim=1)
        key_ok = torch.cat([torch.ones(elements.shape[0], prefix.shape[1] - elements.shape[1], dtype=torch.bool,
                                       device=elements.device), elements > 0], dim=1)
        return prefix, key_ok

    def _output_embedding(self, tokens, nxt, remaining, offset: int = 0):
        positions = torch.arange(offset, offset + tokens.shape[1], device=tokens.device).clamp_max(MAX_OUTPUT - 1)
        return (self.token(tokens) + self.position(positions)[None] + self.next_element(nxt)
                + self.remaining(remaining.clamp(0, MAX_REMAINING)))

    def start(self, properties, elements, counts) -> dict:
        """Incremental decoding state after the prefix (per-block key/value caches)."""
        x, key_ok = self._prefix(properties, elements, counts)
        caches = [[] for _ in self.blocks]
        mask = key_ok[:, None, None, :]
        for block, cache in zip(self.blocks, caches):
            x = block(x, mask, cache)
        return {"caches": caches, "key_ok": key_ok, "length": 0}

    def step(self, state: dict, tokens, nxt, remaining) -> torch.Tensor:
        """Logits [B, VOCAB] after feeding one output token per row ([B] each); extends ``state``."""
        x = self._output_embedding(tokens[:, None], nxt[:, None], remaining[:, None], state["length"])
        state["key_ok"] = torch.cat([state["key_ok"], torch.ones_like(state["key_ok"][:, :1])], dim=1)
        mask = state["key_ok"][:, None, None, :]
        for block, cache in zip(self.blocks, state["caches"]):
            x = block(x, mask, cache)
        state["length"] += 1
        return self.head(self.norm(x[:, 0]))

    def forward(self, properties, elements, counts, tokens, nxt, remaining):
        """properties [B,P] scaled (NaN unknown); elements/counts [B,E] (0 pad); tokens/nxt/remaining [B,T].
        Returns logits [B, T, VOCAB] for the token after each output position."""
        b = elements.shape[0]
        t = tokens.shape[1]
        prefix, prefix_ok = self._prefix(properties, elements, counts)
        p = prefix.shape[1]
        x = torch.cat([prefix, self._output_embedding(tokens, nxt, remaining)], dim=1)
        length = p + t
        allowed = torch.zeros(length, length, dtype=torch.bool, device=tokens.device)
        allowed[:, :p] = True
        allowed[:p, :p] = True
        allowed[p:, p:] = torch.tril(torch.ones(t, t, dtype=torch.bool, device=tokens.device))
        key_ok = torch.cat([prefix_ok, torch.ones(b, t, dtype=torch.bool, device=tokens.device)], dim=1)
        mask = (allowed[None] & key_ok[:, None, :]).unsqueeze(1)
        for block in self.blocks:
            x = block(x, mask)
        return self.head(self.norm(x[:, p:]))


def scaled_properties(band_gap, formation_energy) -> list[float]:
    values = {"band_gap": band_gap, "formation_energy": formation_energy}
    return [float(values[name]) / PROPERTY_SCALE[name] if values[name] is not None else float("nan") for name in PROPERTIES]


def batch_tensors(examples: list[Example], with_outputs: bool = True):
    """Padded tensors of examples (the outputs only when their space group and letters are known)."""
    b = len(examples)
    e = max(len(x.counts) for x in examples)
    elements = torch.zeros(b, e, dtype=torch.long)
    counts = torch.zeros(b, e, dtype=torch.long)
    props = torch.tensor([scaled_properties(x.band_gap, x.formation_energy) for x in examples], dtype=torch.float32)
    for i, x in enumerate(examples):
        for j, z in enumerate(sorted(x.counts)):
            elements[i, j], counts[i, j] = z, x.counts[z]
    if not with_outputs:
        return props, elements, counts
    seqs = [output_tokens(x) for x in examples]
    t = max(len(s[0]) for s in seqs)
    tokens = torch.zeros(b, t, dtype=torch.long)
    nxt = torch.zeros(b, t, dtype=torch.long)
    remaining = torch.zeros(b, t, dtype=torch.long)
    for i, (tok, nx, rem) in enumerate(seqs):
        tokens[i, : len(tok)], nxt[i, : len(tok)], remaining[i, : len(tok)] = torch.tensor(tok), torch.tensor(nx), torch.tensor(rem)
    return props, elements, counts, tokens, nxt, remaining


def examples_from_split(split: dict) -> list[Example]:
    """Examples of a symmetry tensor file (primitive counts = conventional counts / centring factor)."""
    examples = []
    start = 0
    n_orbits = split["n_orbits"].long().tolist()
    for m, count in enumerate(n_orbits):
        sg = int(split["space_group"][m])
        zs = split["orbit_z"][start : start + count].long().tolist()
        letters_idx = split["orbit_letter"][start : start + count].long().tolist()
        mults = split["orbit_multiplicity"][start : start + count].long().tolist()
        start += count
        factor = centering_factor(sg)
        conv: dict[int, int] = {}
        letters: dict[int, list[str]] = {}
        for z, li, mult in zip(zs, letters_idx, mults):
            conv[z] = conv.get(z, 0) + mult
            letters.setdefault(z, []).append(LETTERS[li])
        if any(n % factor for n in conv.values()):
            continue
        letters = {z: sorted(v, key=LETTERS.index) for z, v in letters.items()}
        examples.append(Example({z: n // factor for z, n in conv.items()}, float(split["band_gap"][m]),
                                float(split["formation_energy"][m]), sg, letters))
    return examples


class SymmetryPredictor:
    """A trained predictor: ``predict(counts, band_gap=..., top_k=5)`` -> consistent candidates."""

    def __init__(self, model: SymmetryTransformer, meta: dict | None = None):
        self.model = model.eval()
        self.meta = meta or {}
        self.resampled = 0

    @classmethod
    def load(cls, path: str | Path | None = None) -> SymmetryPredictor:
        path = Path(path) if path else WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"no symmetry predictor weights at {path}: train them with `python -m generators.unimdm.predictor train`")
        payload = torch.load(path, map_location="cpu", weights_only=True)
        if payload.get("format") != FORMAT:
            raise ValueError(f"{path} is not a Uni-MDM symmetry predictor")
        model = SymmetryTransformer(PredictorConfig(**payload["config"]))
        model.load_state_dict({k: v.float() for k, v in payload["state_dict"].items()})
        return cls(model, payload.get("meta", {}))

    @torch.no_grad()
    def space_group_scores(self, examples: list[Example]) -> torch.Tensor:
        """[B, 231] log-probabilities of the space group, infeasible groups -inf."""
        props, elements, counts = batch_tensors(examples, with_outputs=False)
        state = self.model.start(props, elements, counts)
        first = torch.tensor([min(x.counts) for x in examples])
        logits = self.model.step(state, torch.full((len(examples),), BOS), first, torch.zeros(len(examples), dtype=torch.long))
        logits = logits[:, SG0 : SG0 + 231].float()
        feasible = torch.zeros(len(examples), 231, dtype=torch.bool)
        for i, x in enumerate(examples):
            values = list(x.counts.values())
            for g in range(1, 231):
                feasible[i, g] = space_group_feasible(g, tuple(sorted(values)))
        return torch.log_softmax(logits.masked_fill(~feasible, float("-inf")), dim=-1)

    @torch.no_grad()
    def decode_letters(self, examples: list[Example], temperature: float = 0.0, generator: torch.Generator | None = None) -> list[float]:
        """Fill ``letters`` of examples whose space group is set (greedy, or sampled at ``temperature``); returns log-probs."""
        props, elements, counts = batch_tensors(examples, with_outputs=False)
        b = len(examples)
        states = []
        for x in examples:
            order = sorted(x.counts)
            factor = centering_factor(x.space_group)
            states.append({"order": order, "element": 0, "left": [x.counts[z] * factor for z in order], "used": set(),
                           "letters": {z: [] for z in order}, "table": wyckoff_table(x.space_group), "done": False,
                           "tokens": [], "nxt": [], "remaining": []})
        cache = self.model.start(props, elements, counts)
        first = torch.tensor([s["order"][0] for s in states])
        self.model.step(cache, torch.full((b,), BOS), first, torch.zeros(b, dtype=torch.long))
        feed = torch.tensor([SG0 + x.space_group for x in examples])
        feed_nxt = first
        feed_remaining = torch.tensor([s["left"][0] for s in states])
        logp = [0.0] * b
        for _ in range(MAX_OUTPUT - 2):
            if all(s["done"] for s in states):
                break
            logits = self.model.step(cache, feed, feed_nxt, feed_remaining).float()
            feed, feed_nxt, feed_remaining = feed.clone(), feed_nxt.clone(), feed_remaining.clone()
            for i, s in enumerate(states):
                if s["done"]:
                    feed[i], feed_nxt[i], feed_remaining[i] = PAD, 0, 0
                    continue
                allowed = self._allowed(s)
                masked = torch.full((VOCAB,), float("-inf"))
                masked[allowed] = logits[i, allowed]
                logprobs = torch.log_softmax(masked, -1)
                if temperature > 0:
                    choice = int(torch.multinomial(torch.softmax(masked / temperature, -1), 1, generator=generator))
                else:
                    choice = int(torch.argmax(masked))
                logp[i] += float(logprobs[choice])
                self._advance(s, choice)
                feed[i], feed_nxt[i], feed_remaining[i] = choice, s["nxt"][-1], s["remaining"][-1]
        for x, s in zip(examples, states):
            x.letters = {z: sorted(v, key=LETTERS.index) for z, v in s["letters"].items()}
        return logp

    @staticmethod
    def _allowed(s: dict) -> list[int]:
        j = s["element"]
        left = s["left"][j]
        if left == 0:
            return [SEP]
        others = s["left"][j + 1 :]
        allowed = []
        for letter, mult, free in s["table"]:
            if mult > left or (not free and letter in s["used"]):
                continue
            used = s["used"] if free else s["used"] | {letter}
            if completable_from(s["table"], [left - mult, *others], used):
                allowed.append(LETTER0 + LETTERS.index(letter))
        return allowed

    @staticmethod
    def _advance(s: dict, choice: int) -> None:
        j = s["element"]
        z = s["order"][j]
        s["tokens"].append(choice)
        if choice == SEP:
            s["element"] += 1
            if s["element"] == len(s["order"]):
                s["done"] = True
                nxt, rem = 0, 0
            else:
                nxt, rem = s["order"][s["element"]], s["left"][s["element"]]
        else:
            letter = LETTERS[choice - LETTER0]
            mult, free = next((m, f) for lt, m, f in s["table"] if lt == letter)
            s["letters"][z].append(letter)
            s["left"][j] -= mult
            if not free:
                s["used"].add(letter)
            nxt, rem = z, s["left"][j]
        s["nxt"].append(nxt)
        s["remaining"].append(rem)

    def predict(self, counts: dict[int, int], band_gap: float | None = None, formation_energy: float | None = None,
                top_k: int = 5, space_group: int | None = None) -> list[dict]:
        """Top-k candidates ``{space_group, letters {Z: [..]}, log_prob}`` (greedy letters per group), all validated."""
        return self.predict_many([Example(dict(counts), _nan(band_gap), _nan(formation_energy))], top_k, space_group)[0]

    def predict_many(self, examples: list[Example], top_k: int = 5, space_group: int | None = None,
                     batch_size: int = 512) -> list[list[dict]]:
        results = []
        for start in range(0, len(examples), batch_size):
            chunk = examples[start : start + batch_size]
            scores = self.space_group_scores(chunk)
            if space_group is not None:
                keep = torch.full_like(scores, float("-inf"))
                keep[:, space_group] = 0.0
                scores = scores + keep
            top = torch.topk(scores, top_k, dim=-1)
            jobs, owners = [], []
            for i, x in enumerate(chunk):
                for rank in range(top_k):
                    if math.isfinite(float(top.values[i, rank])):
                        jobs.append(Example(dict(x.counts), x.band_gap, x.formation_energy, int(top.indices[i, rank])))
                        owners.append((i, float(top.values[i, rank])))
            logps = self.decode_letters(jobs) if jobs else []
            chunk_results: list[list[dict]] = [[] for _ in chunk]
            for job, (i, sg_logp), lp in zip(jobs, owners, logps):
                ok, _ = check_assignment(job.space_group, job.counts, job.letters)
                if not ok:  # cannot happen with exact constrained decoding; resample from the sampled decoder
                    job = self._resample(job)
                    if job is None:
                        continue
                chunk_results[i].append({"space_group": job.space_group, "letters": job.letters, "log_prob": sg_logp + lp})
            results += chunk_results
        return results

    def _resample(self, job: Example, attempts: int = 8) -> Example | None:
        generator = torch.Generator().manual_seed(0)
        for _ in range(attempts):
            self.resampled += 1
            self.decode_letters([job], temperature=1.0, generator=generator)
            if check_assignment(job.space_group, job.counts, job.letters)[0]:
                return job
        return None


def completable_from(table, counts: list[int], used: set[str]) -> bool:
    """:func:`generators.unimdm.wyckoff.completable` from a Wyckoff table and the fixed letters used."""
    from generators.unimdm.wyckoff import _completable

    free = tuple(sorted({m for _, m, f in table if f}))
    fixed = tuple(sorted(m for letter, m, f in table if not f and letter not in used))
    return _completable(free, fixed, tuple(sorted((c for c in counts if c > 0), reverse=True)))


@lru_cache(maxsize=1_000_000)
def space_group_feasible(space_group: int, primitive_counts: tuple[int, ...]) -> bool:
    """Can a composition with these primitive-cell counts take this space group's Wyckoff positions?"""
    factor = centering_factor(space_group)
    return completable(space_group, [n * factor for n in primitive_counts])


def _nan(value) -> float:
    return float("nan") if value is None else float(value)


def train(data_dir: Path, minutes: float, out: Path, config: PredictorConfig, batch: int = 128, lr: float = 1e-3,
          property_dropout: float = 0.2, seed: int = 0, limit: int | None = None, log=print, device: str = "cpu") -> dict:
    """Train on MP-20 train (the symmetry tensor file) for a wall-clock budget; saves ``out`` (float16 weights)."""
    from generators.unimdm.tensor_files import load_split

    torch.manual_seed(seed)
    examples = examples_from_split(load_split(data_dir, "train"))
    if limit:
        examples = examples[:limit]
    device = torch.device(device)
    model = SymmetryTransformer(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    start = time.perf_counter()
    step, epoch, losses = 0, 0, []
    budget = minutes * 60
    history = []
    while time.perf_counter() - start < budget:
        order = torch.randperm(len(examples)).tolist()
        for i in range(0, len(order), batch):
            elapsed = time.perf_counter() - start
            if elapsed >= budget:
                break
            chosen = [examples[j] for j in order[i : i + batch]]
            props, elements, counts, tokens, nxt, remaining = (t.to(device) for t in batch_tensors(chosen))
            drop = torch.rand(props.shape, device=device) < property_dropout
            props = torch.where(drop, torch.full_like(props, float("nan")), props)
            logits = model(props, elements, counts, tokens[:, :-1], nxt[:, :-1], remaining[:, :-1])
            target = tokens[:, 1:]
            loss = F.cross_entropy(logits.reshape(-1, VOCAB), target.reshape(-1), ignore_index=PAD)
            progress = elapsed / budget
            for group in optimizer.param_groups:
                group["lr"] = lr * min(1.0, progress / 0.03 + 0.01) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * progress)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(float(loss.detach()))
            step += 1
            if step % 100 == 0:
                record = {"step": step, "epoch": epoch, "seconds": round(elapsed, 1), "loss": sum(losses) / len(losses)}
                history.append(record)
                log(json.dumps(record))
                losses = []
        epoch += 1
    meta = {"data": "MP-20 train (symmetry tensor file)", "rows": len(examples), "steps": step, "epochs": epoch,
            "device": str(device),
            "seconds": round(time.perf_counter() - start, 1), "batch": batch, "lr": lr, "property_dropout": property_dropout,
            "parameters": sum(p.numel() for p in model.parameters()), "history": history[-5:],
            "command": "python -m generators.unimdm.predictor " + " ".join(sys.argv[1:])}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"format": FORMAT, "config": config.to_dict(), "meta": meta,
                "state_dict": {k: v.detach().to("cpu", torch.float16) for k, v in model.state_dict().items()}}, out)
    return meta


def evaluate(predictor: SymmetryPredictor, examples: list[Example], top_k: int = 5) -> tuple[dict, list[list[dict]]]:
    """Top-1 / top-k space group accuracy and exact Wyckoff match (top-1, any of top-k) on examples with truth."""
    queries = [Example(dict(x.counts), x.band_gap, x.formation_energy) for x in examples]
    predictions = predictor.predict_many(queries, top_k)
    top1 = topk = wy1 = wyk = valid = total_candidates = 0
    for x, candidates in zip(examples, predictions):
        groups = [c["space_group"] for c in candidates]
        top1 += bool(groups) and groups[0] == x.space_group
        topk += x.space_group in groups
        same = [c["space_group"] == x.space_group and c["letters"] == x.letters for c in candidates]
        wy1 += bool(same) and same[0]
        wyk += any(same)
        for c in candidates:
            total_candidates += 1
            valid += check_assignment(c["space_group"], x.counts, c["letters"])[0]
    n = max(1, len(examples))
    figures = {"crystals": len(examples), "space_group_top1": top1 / n, f"space_group_top{top_k}": topk / n,
               "wyckoff_exact_top1": wy1 / n, f"wyckoff_exact_top{top_k}": wyk / n,
               "candidates": total_candidates, "valid_candidates": valid / max(1, total_candidates),
               "resampled": predictor.resampled}
    return figures, predictions


def prediction_split(examples: list[Example], predictions: list[list[dict]], material_ids: list[str], formulas: list[str]) -> dict:
    """The candidates as a symmetry tensor file (DiT inputs; representatives and lattice unknown)."""
    import numpy as np

    from generators.unimdm.data import pack_infos
    from generators.unimdm.symmetry import SymmetryInfo, orbits_from_letters

    infos, ids, names, gaps, energies, candidate = [], [], [], [], [], []
    for m, (x, candidates) in enumerate(zip(examples, predictions)):
        for rank, c in enumerate(candidates):
            infos.append(SymmetryInfo(c["space_group"], np.array([1.0, 1.0, 1.0, 90.0, 90.0, 90.0]),
                                      orbits_from_letters(c["space_group"], c["letters"])))
            ids.append(material_ids[m])
            names.append(formulas[m])
            gaps.append(x.band_gap)
            energies.append(x.formation_energy)
            candidate.append(rank)
    packed = pack_infos(infos, ids, names, gaps, energies)
    packed["candidate"] = torch.tensor(candidate, dtype=torch.int16)
    return packed


def write_control_inputs(args: argparse.Namespace) -> None:
    """``control_bg<target>.pt`` in ``--data``: for each band-gap target, the same compositions with the
    predictor's top-1 symmetry for that target (formation energy unknown) and the target as condition."""
    from generators.unimdm.tensor_files import load_split

    split = load_split(args.data, args.split)
    examples = examples_from_split(split)
    generator = torch.Generator().manual_seed(args.seed)
    rows = torch.randperm(len(examples), generator=generator)[: args.rows].tolist()
    predictor = SymmetryPredictor.load(args.weights)
    summary = {}
    for target in [float(t) for t in args.targets.split(",")]:
        queries = [Example(dict(examples[r].counts), target, float("nan")) for r in rows]
        predictions = [p[:1] for p in predictor.predict_many(queries, top_k=1)]
        packed = prediction_split(queries, predictions, [split["material_ids"][r] for r in rows], [split["formulas"][r] for r in rows])
        out = args.data / f"control_bg{target:g}.pt"
        torch.save(packed, out)
        groups = [p[0]["space_group"] for p in predictions if p]
        summary[f"{target:g}"] = {"rows": len(groups), "out": str(out), "distinct_space_groups": len(set(groups)),
                                  "same_as_truth": sum(g == examples[r].space_group for g, r in zip(groups, rows)) / max(1, len(groups))}
    print(json.dumps(summary, indent=2))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m generators.unimdm.predictor", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    t = commands.add_parser("train")
    t.add_argument("--data", type=Path, default=Path(".device_data_unimdm"))
    t.add_argument("--minutes", type=float, default=12.0)
    t.add_argument("--out", type=Path, default=WEIGHTS)
    t.add_argument("--batch", type=int, default=128)
    t.add_argument("--lr", type=float, default=1e-3)
    t.add_argument("--limit", type=int, default=None)
    t.add_argument("--threads", type=int, default=None)
    t.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    t.add_argument("--width", type=int, default=PredictorConfig.width)
    t.add_argument("--depth", type=int, default=PredictorConfig.depth)
    t.add_argument("--heads", type=int, default=PredictorConfig.heads)
    p = commands.add_parser("predict-split", help="top-k candidates of a split as DiT inputs, with accuracies")
    p.add_argument("--data", type=Path, default=Path(".device_data_unimdm"))
    p.add_argument("--split", default="test")
    p.add_argument("--weights", type=Path, default=None)
    p.add_argument("--top", type=int, default=5)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--out", type=Path, default=None, help="default: DATA/<split>_pred.pt")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--threads", type=int, default=None)
    c = commands.add_parser("control", help="property-control inputs: symmetry predicted for each band-gap target")
    c.add_argument("--data", type=Path, default=Path(".device_data_unimdm"))
    c.add_argument("--split", default="test")
    c.add_argument("--weights", type=Path, default=None)
    c.add_argument("--rows", type=int, default=500, help="compositions (a seeded random subset of the split)")
    c.add_argument("--targets", default="0,1.5,3", help="band gaps (eV)")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    operations = getattr(args, "data", None) and Path(args.data) / "wyckoff_ops.pt"
    if args.command != "train" and operations and operations.is_file():  # no pyxtal needed (GPU host)
        from generators.unimdm.symmetry import load_operation_table

        load_operation_table(operations)
    if args.command == "control":
        write_control_inputs(args)
        return
    if args.command == "train":
        device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
        meta = train(args.data, args.minutes, args.out, PredictorConfig(width=args.width, depth=args.depth, heads=args.heads),
                     args.batch, args.lr, limit=args.limit, device=device)
        print(json.dumps({k: v for k, v in meta.items() if k != "history"}))
        return
    from generators.unimdm.tensor_files import load_split, take_rows

    split = load_split(args.data, args.split)
    if args.limit:
        split = take_rows(split, list(range(min(args.limit, len(split["material_ids"])))))
    examples = examples_from_split(split)
    kept = [m for m in range(len(split["material_ids"]))]  # examples_from_split keeps rows with whole primitive counts
    if len(examples) != len(kept):
        raise ValueError("a crystal's conventional counts are not a multiple of its centring factor")
    predictor = SymmetryPredictor.load(args.weights)
    start = time.perf_counter()
    figures, predictions = evaluate(predictor, examples, args.top)
    figures["seconds"] = round(time.perf_counter() - start, 1)
    figures["weights"] = str(args.weights or WEIGHTS)
    out = args.out or args.data / f"{args.split}_pred.pt"
    torch.save(prediction_split(examples, predictions, split["material_ids"], split["formulas"]), out)
    figures["out"] = str(out)
    print(json.dumps(figures, indent=2))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(figures, indent=2) + "\n")


if __name__ == "__main__":
    main()
