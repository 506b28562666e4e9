"""Composition-only band-gap estimate (eV, PBE scale) for a chemical formula, fast and offline.

What it is: a small neural network evaluated in numpy, fitted to the Materials Project PBE
band gaps of the Matbench ``mp_gap`` table (``properties/mp_band_gap.csv.gz`` of the shared data,
read through :func:`generators.datasets.read_table`, so ``GENMS_DATA_DIR`` applies; 106,113
rows). It has two outputs that share their hidden layers: a classifier, metal (gap 0) or not,
and for a non-metal a regressor that gives the gap. The input is the formula alone: fraction-weighted statistics (mean, min, max, range, mean
absolute deviation) of pymatgen element properties, the anion's electronegativity, the
electronegativity difference, the number of elements, the element fractions, and SMACT's
charge-balance verdict (:func:`tools.composition.charge_balance`). The fitted weights are plain
numbers in ``tools/data/gap_estimate.json.gz`` (gzip-compressed JSON, no pickle); the model card is
``tools/data/gap_estimate.md``.

Use: :func:`estimate_band_gap` (one formula) and :func:`estimate_band_gaps` (many, vectorised),
e.g. by the offline formula proposer to keep proposals inside a request's band-gap window.
``python -m tools.gap_estimate build`` refits the artifact from the shared data (about 2 minutes
on 2 cores, torch for training), ``python -m tools.gap_estimate evaluate`` prints the held-out figures.

Limits: the targets are PBE (GGA) gaps, which underestimate measured gaps, often by 30-50 %
(Si: PBE ~0.6 eV, measured 1.1 eV), and call some small-gap semiconductors and Mott insulators
metals. Composition alone cannot tell polymorphs apart (TiO2 anatase vs rutile, C diamond vs
graphite): the estimate is a typical gap for the formula, not for a given structure. On
held-out formulae the mean absolute error is about 0.3 eV (0.4 eV on non-metals) with a tail,
and about one formula in nine gets the wrong metal/non-metal call (see the model card); use
it as a coarse filter (far outside a window or not), not as a prediction to report. Elements
absent from training (noble gases, Po-Ra, Z > 94) give meaningless estimates: see
:func:`in_domain`.
"""

from __future__ import annotations

import argparse
import base64
import gzip
import hashlib
import json
import math
import re
import sys
import time
import warnings
from collections.abc import Iterable, Sequence
from functools import cache, lru_cache
from pathlib import Path

import numpy as np

from tools.formula import FormulaError, parse_formula

__all__ = ["ARTIFACT_PATH", "FormulaError", "estimate_band_gap", "estimate_band_gaps", "featurize", "in_domain",
           "pbe_window"]

ARTIFACT_PATH = Path(__file__).with_name("data") / "gap_estimate.json.gz"  # gzip: the base64 weights shrink by a quarter
MODEL_CARD_PATH = Path(__file__).with_name("data") / "gap_estimate.md"
FORMAT = "genms-gap-estimate/1"

# Elements with a fraction column (H..Pu: every element of the training data lies in this range);
# heavier elements still enter through their properties.
MAX_Z_COLUMN = 94
# Element properties (fraction-weighted statistics of each are features).
PROPERTIES = (
    "Z",
    "mendeleev",
    "row",
    "group",
    "X",
    "radius",
    "ionization",
    "affinity",
    "s_valence",
    "p_valence",
    "d_valence",
    "f_valence",
    "valence",
    "metal",
)
STATISTICS = ("mean", "min", "max", "range", "dev")
# Split of the reduced formulae: a hash of the canonical key with this salt, 10 buckets.
SPLIT_SEED = 2026
SPLIT_BUCKETS = {"train": range(8), "val": range(8, 9), "test": range(9, 10)}
# Classification threshold: a formula whose metal probability is at least this is given 0 eV.
METAL_THRESHOLD = 0.5


# ----------------------------------------------------------------------------------------------
# Features


def _valence_counts(symbol_data: str) -> tuple[int, int, int, int]:
    """Electrons outside the noble-gas core by subshell type, from ``[Ar].3d6.4s2``-style text."""
    counts = {"s": 0, "p": 0, "d": 0, "f": 0}
    for term in symbol_data.split("."):
        match = re.fullmatch(r"(\d+)([spdf])(\d+)", term)
        if match:
            counts[match.group(2)] += int(match.group(3))
    return counts["s"], counts["p"], counts["d"], counts["f"]


@cache
def _element_row(symbol: str) -> tuple[float, ...]:
    """The raw property values of one element (NaN where pymatgen has none)."""
    from pymatgen.core import Element

    element = Element(symbol)

    def get(read):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = read()
        except Exception:  # noqa: BLE001 - pymatgen raises KeyError/AttributeError/ValueError for missing data
            return math.nan
        try:
            value = float(value)
        except (TypeError, ValueError):
            return math.nan
        return value if math.isfinite(value) else math.nan

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            valence = _valence_counts(element.electronic_structure)
    except Exception:  # noqa: BLE001 - superheavy elements have no electronic structure in pymatgen
        valence = (math.nan,) * 4
    values = {
        "Z": element.Z,
        "mendeleev": get(lambda: element.mendeleev_no),
        "row": get(lambda: element.row),
        "group": get(lambda: element.group),
        "X": get(lambda: element.X),
        "radius": get(lambda: element.atomic_radius),
        "ionization": get(lambda: element.ionization_energy),
        "affinity": get(lambda: element.electron_affinity),
        "s_valence": valence[0],
        "p_valence": valence[1],
        "d_valence": valence[2],
        "f_valence": valence[3],
        "valence": sum(valence),
        "metal": get(lambda: element.is_metal),
    }
    return tuple(float(values[name]) for name in PROPERTIES)


@lru_cache(maxsize=1)
def _property_table() -> tuple[dict[str, int], np.ndarray]:
    """Symbol -> row index, and the property table (rows: elements H..Og) with gaps filled.

    Missing values are filled with the mean over the elements that have them, except the
    noble gases' electronegativity (pymatgen has none for He, Ne, Ar), which takes 4.0.
    """
    from pymatgen.core import Element

    symbols = [Element.from_Z(z).symbol for z in range(1, 119)]
    table = np.array([_element_row(s) for s in symbols], dtype=np.float64)
    x = PROPERTIES.index("X")
    for symbol in ("He", "Ne", "Ar"):
        if math.isnan(table[symbols.index(symbol), x]):
            table[symbols.index(symbol), x] = 4.0
    column_means = np.nanmean(table, axis=0)
    missing = np.isnan(table)
    table[missing] = np.take(column_means, np.nonzero(missing)[1])
    return {s: i for i, s in enumerate(symbols)}, table


def feature_names() -> list[str]:
    """Names of the feature columns, in order."""
    from pymatgen.core import Element

    names = [f"{p}_{s}" for p in PROPERTIES for s in STATISTICS]
    names += [
        "X_anion",
        "X_difference",
        "anion_fraction",
        "X_cation_mean",
        "n_elements",
        "norm_2",
        "norm_3",
        "norm_5",
        "norm_10",
        "charge_balanced",
        "electronegativity_ok",
        "mixed_valence",
        "alloy",
        "cation_charge_mean",
        "anion_charge",
    ]
    names += [f"frac_{Element.from_Z(z).symbol}" for z in range(1, MAX_Z_COLUMN + 1)]
    return names


def _charge_features(formula) -> tuple[float, ...]:
    """SMACT verdicts and the oxidation states they found, as numbers."""
    from tools.composition import charge_balance

    verdict = charge_balance(formula)
    cation_mean, anion = 0.0, 0.0
    if verdict.oxidation_states and verdict.charge_balanced:
        amounts = formula.reduced_amounts
        total_cations = 0.0
        for symbol, states in verdict.oxidation_states.items():
            mean_state = sum(states) / len(states)
            if mean_state > 0:
                cation_mean += amounts[symbol] * mean_state
                total_cations += amounts[symbol]
            elif mean_state < 0:
                anion = min(anion, mean_state)
        cation_mean = cation_mean / total_cations if total_cations else 0.0
    return (
        float(verdict.charge_balanced),
        float(verdict.electronegativity_ok),
        float(verdict.mixed_valence),
        float(verdict.is_alloy),
        cation_mean,
        anion,
    )


def featurize(formulas: Sequence[str]) -> np.ndarray:
    """Feature matrix (one row per formula, columns :func:`feature_names`).

    Raises :class:`tools.formula.FormulaError` for the first formula that cannot be read.
    """
    index, table = _property_table()
    parsed = [parse_formula(f) for f in formulas]
    fractions = np.zeros((len(parsed), len(index)))
    charge = np.zeros((len(parsed), 6))
    for row, formula in enumerate(parsed):
        total = sum(formula.amounts.values())
        for symbol, amount in formula.amounts.items():
            fractions[row, index[symbol]] = amount / total
        charge[row] = _charge_features(formula)
    chunk = 4096  # bounds the rows x elements x properties intermediates (~45 MB a chunk)
    parts = [_features_from_fractions(fractions[i : i + chunk], table, charge[i : i + chunk]) for i in range(0, len(parsed), chunk)]
    return np.vstack(parts) if parts else np.zeros((0, len(feature_names())))


def _features_from_fractions(fractions: np.ndarray, table: np.ndarray, charge: np.ndarray) -> np.ndarray:
    present = fractions > 0
    mean = fractions @ table
    big = np.where(present[:, :, None], table[None, :, :], np.inf)
    low = big.min(axis=1)
    high = np.where(present[:, :, None], table[None, :, :], -np.inf).max(axis=1)
    deviation = np.einsum("ne,nek->nk", fractions, np.abs(table[None, :, :] - mean[:, None, :]))
    stats = np.stack([mean, low, high, high - low, deviation], axis=2).reshape(len(fractions), -1)
    x = table[:, PROPERTIES.index("X")]
    x_present = np.where(present, x[None, :], -np.inf)
    anion = x_present.argmax(axis=1)
    rows = np.arange(len(fractions))
    x_anion = x[anion]
    x_difference = x_anion - np.where(present, x[None, :], np.inf).min(axis=1)
    anion_fraction = fractions[rows, anion]
    cation_weight = fractions.copy()
    cation_weight[rows, anion] = 0.0
    cation_total = cation_weight.sum(axis=1)
    x_cation = np.where(cation_total > 0, (cation_weight @ x) / np.maximum(cation_total, 1e-12), x_anion)
    norms = [(fractions**p).sum(axis=1) ** (1.0 / p) for p in (2, 3, 5, 10)]
    scalars = np.column_stack([x_anion, x_difference, anion_fraction, x_cation, present.sum(axis=1), *norms, charge])
    return np.hstack([stats, scalars, fractions[:, :MAX_Z_COLUMN]])


# ----------------------------------------------------------------------------------------------
# Inference


def _encode(array: np.ndarray) -> dict:
    data = np.ascontiguousarray(array, dtype="<f4")
    return {"shape": list(data.shape), "dtype": "<f4", "base64": base64.b64encode(data.tobytes()).decode("ascii")}


def _decode(entry: dict) -> np.ndarray:
    if entry.get("dtype") != "<f4":
        raise ValueError(f"unsupported array dtype {entry.get('dtype')!r} in the gap-estimate artifact")
    data = np.frombuffer(base64.b64decode(entry["base64"]), dtype="<f4")
    return data.reshape(entry["shape"]).astype(np.float64)


class GapModel:
    """The fitted estimator: feature scaling, then one ReLU network with two outputs.

    Output 0 is the logit of "metal" (PBE gap exactly 0), output 1 the gap in eV of a
    non-metal; the estimate is 0 where the metal probability reaches ``metal_threshold`` and
    the (non-negative) regressed gap elsewhere, i.e. a classifier and a regressor that share
    their hidden layers.
    """

    def __init__(self, artifact: dict):
        if artifact.get("format") != FORMAT:
            raise ValueError(f"not a gap-estimate artifact (format {artifact.get('format')!r}, expected {FORMAT!r})")
        if artifact["features"] != feature_names():
            raise ValueError("the gap-estimate artifact was built with other features; rebuild it")
        self.meta = artifact["meta"]
        self.mean = _decode(artifact["scaler"]["mean"])
        self.scale = _decode(artifact["scaler"]["scale"])
        self.weights = [_decode(w) for w in artifact["network"]["weights"]]
        self.biases = [_decode(b) for b in artifact["network"]["biases"]]
        self.threshold = float(artifact["metal_threshold"])

    def outputs(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(metal probability, regressed gap in eV) per row of a feature matrix."""
        x = (features - self.mean) / self.scale
        for w, b in zip(self.weights[:-1], self.biases[:-1]):
            x = np.maximum(x @ w + b, 0.0)
        out = x @ self.weights[-1] + self.biases[-1]
        return 1.0 / (1.0 + np.exp(-np.clip(out[:, 0], -50, 50))), out[:, 1]

    def predict(self, features: np.ndarray) -> np.ndarray:
        """Estimated gaps (eV, >= 0) per row of a feature matrix."""
        p_metal, gap = self.outputs(features)
        return np.where(p_metal >= self.threshold, 0.0, np.maximum(gap, 0.0))


@lru_cache(maxsize=4)
def load_model(path: str | None = None) -> GapModel:
    """The fitted model of the committed artifact (read once per process)."""
    return GapModel(read_artifact(Path(path) if path else ARTIFACT_PATH))


def read_artifact(path: Path = ARTIFACT_PATH) -> dict:
    """The artifact's JSON (gzip-compressed on disk)."""
    with gzip.open(path, "rt", encoding="utf-8") as handle:
        return json.load(handle)


def estimate_band_gaps(formulas: Iterable[str]) -> list[float]:
    """Estimated PBE band gaps (eV, >= 0) of many formulae at once.

    Raises :class:`tools.formula.FormulaError` when any formula cannot be read.
    """
    formulas = list(formulas)
    if not formulas:
        return []
    gaps = load_model().predict(featurize(formulas))
    return [float(round(g, 4)) for g in gaps]


def estimate_band_gap(formula: str) -> float:
    """Estimated PBE band gap of a formula in eV (0 for a predicted metal).

    Composition only: the typical gap of the formula, about 0.3 eV off on average (0.4 eV for
    non-metals), PBE scale (below measured gaps). Raises :class:`tools.formula.FormulaError` for a bad formula.
    """
    return estimate_band_gaps([formula])[0]


# ----------------------------------------------------------------------------------------------
# Data, split, training


# eV: the estimate's error on non-metals (held-out MAE 0.42 eV, tools/data/gap_estimate.md), by
# which a window is widened before an estimate is judged outside it.
GAP_ESTIMATE_MARGIN = 0.5
# PBE underestimates measured gaps by up to about half (LDA/GGA gaps are typically 50-100 % too
# small: Si 0.6 vs 1.1 eV, SrTiO3 1.8 vs 3.2 eV): a measured gap g lies at g / PBE_UNDERESTIMATE
# to g on the PBE scale.
PBE_UNDERESTIMATE = 2.0


def pbe_window(target: float, tolerance: float) -> tuple[float, float]:
    """The PBE-scale window (eV) in which an estimate may lie for a request's gap ``target`` ±
    ``tolerance`` as measured (what a scientist writes: a solar absorber's 1.4 ± 0.4 eV), widened
    by the estimate's error."""
    low = max(target - tolerance, 0.0) / PBE_UNDERESTIMATE - GAP_ESTIMATE_MARGIN
    return max(low, 0.0), target + tolerance + GAP_ESTIMATE_MARGIN


def split_of(key: str, seed: int = SPLIT_SEED) -> str:
    """'train', 'val' or 'test' for a canonical formula key (a salted hash: 80/10/10)."""
    bucket = int(hashlib.sha256(f"{seed}:{key}".encode()).hexdigest()[:8], 16) % 10
    return next(name for name, buckets in SPLIT_BUCKETS.items() if bucket in buckets)


def load_dataset(rows: int | None = None, seed: int = 0):
    """The shared band-gap table with each row's canonical key and split (a new DataFrame); with
    ``rows``, a seeded sample of that many rows (parsing every formula takes seconds)."""
    from generators.datasets import BAND_GAP_FILE, read_table

    table = read_table(BAND_GAP_FILE, ["formula", "band_gap"]).copy()
    if rows is not None and rows < len(table):
        table = table.sample(n=rows, random_state=seed).copy()
    keys = [parse_formula(str(f)).key for f in table["formula"]]
    table["key"] = keys
    table["split"] = [split_of(k) for k in keys]
    return table


def training_elements(table) -> list[str]:
    """Elements of the training rows, by atomic number (others are outside the model's domain)."""
    from pymatgen.core import Element

    found = {symbol for formula in table.loc[table["split"] == "train", "formula"] for symbol in parse_formula(str(formula)).amounts}
    return sorted(found, key=lambda s: Element(s).Z)


def in_domain(formula: str) -> bool:
    """Are all the formula's elements ones the model was trained on? (FormulaError if unreadable.)"""
    return set(parse_formula(formula).amounts) <= set(load_model().meta.get("elements", ()))


def metrics(true: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """The figures of the model card for one set of rows."""
    true, predicted = np.asarray(true, float), np.asarray(predicted, float)
    non_metal = true > 0
    window = (true >= 1.0) & (true <= 1.8)
    wide = true > 4.0
    return {
        "rows": len(true),
        "mae": float(np.abs(true - predicted).mean()),
        "mae_non_metal": float(np.abs(true - predicted)[non_metal].mean()),
        "mae_metal": float(np.abs(true - predicted)[~non_metal].mean()),
        "rmse": float(np.sqrt(((true - predicted) ** 2).mean())),
        "metal_accuracy": float(((predicted > 0) == non_metal).mean()),
        "window_1.0_1.8_in_0.6_2.4": float(((predicted[window] >= 0.6) & (predicted[window] <= 2.4)).mean()),
        "window_rows": int(window.sum()),
        "wide_gt4_above_2.4": float((predicted[wide] > 2.4).mean()),
        "wide_rows": int(wide.sum()),
    }


def _featurize_by_key(table) -> np.ndarray:
    """Features of every row, computed once per reduced formula (polymorphs share them)."""
    first = table.drop_duplicates("key")
    unique = featurize(first["formula"].astype(str).tolist())
    position = {key: i for i, key in enumerate(first["key"])}
    return unique[[position[k] for k in table["key"]]]


def _train(x: np.ndarray, gap: np.ndarray, config: dict, threads: int, log=print, monitor=None) -> list[tuple[np.ndarray, np.ndarray]]:
    """Fit the two-output network (torch, CPU); returns its layers as (in x out weights, bias)."""
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(config["seed"])
    generator = torch.Generator().manual_seed(config["seed"])
    layers, width = [], x.shape[1]
    for hidden in config["hidden"]:
        layers += [torch.nn.Linear(width, hidden), torch.nn.ReLU()]
        if config["dropout"]:
            layers.append(torch.nn.Dropout(config["dropout"]))
        width = hidden
    layers.append(torch.nn.Linear(width, 2))
    net = torch.nn.Sequential(*layers)
    inputs = torch.from_numpy(x.astype(np.float32))
    targets = torch.from_numpy(gap.astype(np.float32))
    batch, epochs = config["batch_size"], config["epochs"]
    steps = epochs * ((len(inputs) + batch - 1) // batch)
    optimizer = torch.optim.AdamW(net.parameters(), lr=config["learning_rate"], weight_decay=config["weight_decay"])
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=config["learning_rate"], total_steps=steps)
    bce = torch.nn.BCEWithLogitsLoss()
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(inputs), generator=generator)
        for start in range(0, len(inputs), batch):
            index = order[start : start + batch]
            out, target = net(inputs[index]), targets[index]
            non_metal = target > 0
            loss = bce(out[:, 0], (target == 0).float())
            if non_metal.any():  # L1 on the gap of non-metals: the MAE is what is reported
                loss = loss + config["l1_weight"] * (out[non_metal, 1] - target[non_metal]).abs().mean()
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        if monitor and (epoch + 1) % 10 == 0:
            net.eval()
            monitor(epoch + 1, _layers(net))
    net.eval()
    return _layers(net)


def _layers(net) -> list[tuple[np.ndarray, np.ndarray]]:
    import torch

    return [
        (m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()) for m in net if isinstance(m, torch.nn.Linear)
    ]


def _artifact(mean, scale, layers, meta) -> dict:
    return {
        "format": FORMAT,
        "features": feature_names(),
        "scaler": {"mean": _encode(mean), "scale": _encode(scale)},
        "network": {"activation": "relu", "outputs": ["metal_logit", "gap_eV"], "weights": [_encode(w) for w, _ in layers], "biases": [_encode(b) for _, b in layers]},
        "metal_threshold": METAL_THRESHOLD,
        "meta": meta,
    }


def build(threads: int = 2, log=print) -> dict:
    """Fit the network on the train split; return the artifact (a dict) with its figures."""
    from generators.datasets import BAND_GAP_FILE

    started = time.perf_counter()
    table = load_dataset()
    features = _featurize_by_key(table)
    log(f"features: {features.shape[0]} rows x {features.shape[1]} in {time.perf_counter() - started:.0f} s")
    gap = table["band_gap"].to_numpy(float)
    split = table["split"].to_numpy()
    masks = {name: split == name for name in SPLIT_BUCKETS}
    train = masks["train"]
    mean = features[train].mean(axis=0)
    scale = features[train].std(axis=0)
    scale[scale < 1e-8] = 1.0

    def monitor(epoch, layers):
        model = GapModel(_artifact(mean, scale, layers, {}))
        rows = masks["val"]
        mae = np.abs(model.predict(features[rows]) - gap[rows]).mean()
        log(f"epoch {epoch}: val MAE {mae:.3f} eV ({time.perf_counter() - started:.0f} s)")

    layers = _train((features[train] - mean) / scale, gap[train], TRAINING, threads, log, monitor)
    trained = time.perf_counter() - started
    model = GapModel(_artifact(mean, scale, layers, {}))  # evaluate exactly what is stored (float32)
    predicted = model.predict(features)
    median = float(np.median(gap[train]))
    figures = {}
    for name, rows in masks.items():
        figures[name] = metrics(gap[rows], predicted[rows])
        figures[name]["mae_predict_train_median"] = float(np.abs(gap[rows] - median).mean())
    meta = {
        "data": f"{BAND_GAP_FILE} of the shared data (Matbench mp_gap: Materials Project PBE band gaps)",
        "rows": len(table),
        "formulae": int(table["key"].nunique()),
        "split": f"reduced formula (canonical key) -> sha256('{SPLIT_SEED}:' + key) mod 10: 0-7 train, 8 val, 9 test",
        "split_rows": {name: int(rows.sum()) for name, rows in masks.items()},
        "split_formulae": {name: int(table.loc[rows, "key"].nunique()) for name, rows in masks.items()},
        "elements": training_elements(table),
        "training": TRAINING,
        "threads": threads,
        "build_seconds": round(trained, 1),
        "test_mae": round(figures["test"]["mae"], 4),
        "metrics": {name: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in f.items()} for name, f in figures.items()},
    }
    return _artifact(mean, scale, layers, meta)


# The network and its training (torch, CPU; a classifier and a regressor sharing hidden layers).
TRAINING = {
    "hidden": [512, 256, 128],
    "dropout": 0.0,
    "epochs": 40,
    "batch_size": 512,
    "learning_rate": 2e-3,
    "schedule": "one-cycle",
    "weight_decay": 1e-5,
    "l1_weight": 1.0,
    "loss": "BCE(metal) + L1(gap of non-metals)",
    "seed": 0,
}


def write_artifact(artifact: dict, path: Path = ARTIFACT_PATH) -> None:
    """Write the artifact atomically, gzip-compressed with no timestamp (a rebuild gives the same bytes)."""
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as raw, gzip.GzipFile(filename="", fileobj=raw, mode="wb", mtime=0, compresslevel=9) as packed:
        packed.write((json.dumps(artifact, indent=1) + "\n").encode("utf-8"))
    tmp.replace(path)


def evaluate(path: Path = ARTIFACT_PATH, split: str = "test", sample: int | None = None, seed: int = 0) -> dict:
    """Figures of the committed artifact on one split (optionally a seeded sample of its rows,
    drawn from a seeded sample of the whole table large enough to hold them)."""
    table = load_dataset(rows=None if sample is None else 20 * sample, seed=seed)
    rows = table[table["split"] == split]
    if sample is not None and sample < len(rows):
        rows = rows.sample(n=sample, random_state=seed)
    model = load_model(str(path))
    predicted = model.predict(featurize(rows["formula"].astype(str).tolist()))
    return metrics(rows["band_gap"].to_numpy(float), predicted)


def main(argv: list[str] | None = None) -> None:
    """``python -m tools.gap_estimate build|evaluate|estimate FORMULA...``."""
    parser = argparse.ArgumentParser(description="Composition-only PBE band-gap estimate (eV).")
    parser.add_argument("command", choices=["build", "evaluate", "estimate"])
    parser.add_argument("formulas", nargs="*", help="formulae for 'estimate'")
    parser.add_argument("--out", type=Path, default=ARTIFACT_PATH, help="artifact path (build)")
    parser.add_argument("--split", default="test", choices=list(SPLIT_BUCKETS), help="split (evaluate)")
    parser.add_argument("--sample", type=int, default=None, help="evaluate a seeded sample of this many rows")
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for training (build)")
    args = parser.parse_args(argv)
    if args.command == "build":
        artifact = build(threads=args.threads)
        write_artifact(artifact, args.out)
        meta = artifact["meta"]
        print(f"wrote {args.out} ({args.out.stat().st_size / 1e6:.2f} MB) in {meta['build_seconds']} s")
        print(json.dumps(meta["metrics"], indent=1))
    elif args.command == "evaluate":
        print(json.dumps(evaluate(args.out, args.split, args.sample), indent=1))
    else:
        for formula in args.formulas:
            try:
                print(f"{formula}\t{estimate_band_gap(formula):.2f} eV")
            except FormulaError as exc:
                print(f"{formula}\terror: {exc}", file=sys.stderr)


if __name__ == "__main__":
    main()
