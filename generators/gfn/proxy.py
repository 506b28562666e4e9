"""Proxy MLPs for Crystal-GFN: formation energy (eV/atom) and band gap (eV) from
(element embeddings of the composition, a learned space-group embedding, standardised lattice).

Element embedding (PhAST-like): a learned embedding of Z plus a projection of static physical
properties (Z, group, period, Pauling electronegativity, atomic mass, atomic radius); the
composition vector is the fraction-weighted sum over elements, with log(atom count). Lattice:
(a, b, c, alpha, beta, gamma, log volume per atom) standardised with training statistics.

Train: ``python -m generators.gfn.proxy --target formation_energy`` (and ``--target band_gap``);
weights go to ``generators/weights/gfn/proxy_<target>.pt``.
"""

from __future__ import annotations

import argparse
import json
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from torch import nn

from generators.gfn.data import MAX_Z

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights" / "gfn"
TARGETS = ("formation_energy", "band_gap")


@lru_cache(maxsize=1)
def element_properties() -> torch.Tensor:
    """[MAX_Z + 1, 6] static properties (row 0 is padding), roughly scaled to O(1)."""
    import warnings

    from pymatgen.core import Element

    rows = [[0.0] * 6]
    for z in range(1, MAX_Z + 1):
        el = Element.from_Z(z)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pymatgen warns for noble gases
            x = el.X if el.X == el.X else 1.5  # NaN for noble gases
        radius = float(el.atomic_radius or 1.5)
        rows.append([z / 100, (el.group or 0) / 18, el.row / 7, x / 4, float(el.atomic_mass) / 250, radius / 2.5])
    return torch.tensor(rows, dtype=torch.float32)


def lattice_features(lattice: torch.Tensor, n_atoms: torch.Tensor) -> torch.Tensor:
    a, b, c = lattice[:, 0], lattice[:, 1], lattice[:, 2]
    ca, cb, cg = (torch.cos(torch.deg2rad(lattice[:, i])) for i in (3, 4, 5))
    arg = (1 - ca**2 - cb**2 - cg**2 + 2 * ca * cb * cg).clamp_min(1e-6)
    vol = a * b * c * torch.sqrt(arg)
    return torch.cat([lattice, torch.log(vol / n_atoms.clamp_min(1)).unsqueeze(1)], dim=1)


class ProxyMLP(nn.Module):
    def __init__(self, z_emb: int = 64, prop_emb: int = 64, sg_emb: int = 32, lat_hidden: int = 64,
                 hidden: int = 256, layers: int = 3):
        super().__init__()
        self.hparams = dict(z_emb=z_emb, prop_emb=prop_emb, sg_emb=sg_emb, lat_hidden=lat_hidden, hidden=hidden, layers=layers)
        self.register_buffer("props", element_properties().clone())
        self.register_buffer("lat_mean", torch.zeros(7))
        self.register_buffer("lat_std", torch.ones(7))
        self.register_buffer("y_mean", torch.zeros(()))
        self.register_buffer("y_std", torch.ones(()))
        self.z_emb = nn.Embedding(MAX_Z + 1, z_emb)
        self.prop = nn.Sequential(nn.Linear(6, prop_emb), nn.SiLU())
        self.sg_emb = nn.Embedding(231, sg_emb)
        self.lat = nn.Sequential(nn.Linear(7, lat_hidden), nn.SiLU())
        dims = [z_emb + prop_emb + 1 + sg_emb + lat_hidden] + [hidden] * layers
        mlp: list[nn.Module] = []
        for i in range(layers):
            mlp += [nn.Linear(dims[i], dims[i + 1]), nn.SiLU()]
        mlp.append(nn.Linear(hidden, 1))
        self.mlp = nn.Sequential(*mlp)

    def element_table(self) -> torch.Tensor:
        return torch.cat([self.z_emb.weight, self.prop(self.props)], dim=1)  # [MAX_Z + 1, D]

    def forward(self, counts: torch.Tensor, sg: torch.Tensor, lattice: torch.Tensor) -> torch.Tensor:
        """counts [B, MAX_Z] (atoms per element, index Z-1), sg [B] (1..230), lattice [B, 6]."""
        counts = counts.float()
        n = counts.sum(1)
        frac = counts / n.clamp_min(1).unsqueeze(1)
        comp = frac @ self.element_table()[1:]
        lat = (lattice_features(lattice.float(), n) - self.lat_mean) / self.lat_std
        h = torch.cat([comp, torch.log(n.clamp_min(1)).unsqueeze(1), self.sg_emb(sg.long()), self.lat(lat)], dim=1)
        return self.mlp(h).squeeze(1) * self.y_std + self.y_mean


class Proxy:
    """A trained proxy: ``predict(crystals)`` for :class:`~generators.gfn.env.Crystal` objects."""

    def __init__(self, model: ProxyMLP, meta: dict):
        self.model = model.eval()
        self.meta = meta

    @classmethod
    def load(cls, target: str = "formation_energy", path: str | Path | None = None, device: str = "cpu") -> "Proxy":
        path = Path(path) if path else WEIGHTS_DIR / f"proxy_{target}.pt"
        ckpt = torch.load(path, map_location=device, weights_only=True)  # tensors and plain data only: never unpickle code
        model = ProxyMLP(**ckpt["hparams"])
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
        return cls(model.to(device), ckpt["meta"])

    @torch.no_grad()
    def predict_tensors(self, counts, sg, lattice) -> torch.Tensor:
        return self.model(counts, sg, lattice)

    def predict(self, crystals) -> np.ndarray:
        from pymatgen.core import Element

        counts = torch.zeros(len(crystals), MAX_Z)
        for i, c in enumerate(crystals):
            for el, n in c.composition.items():
                counts[i, Element(el).Z - 1] = n
        sg = torch.tensor([c.space_group for c in crystals])
        lat = torch.tensor([list(c.lattice) for c in crystals], dtype=torch.float32)
        dev = next(self.model.parameters()).device
        return self.predict_tensors(counts.to(dev), sg.to(dev), lat.to(dev)).cpu().numpy()


@lru_cache(maxsize=1)
def band_gap_proxy() -> Proxy:
    """The committed band-gap proxy, loaded once per process."""
    return Proxy.load("band_gap")


def structure_band_gaps(structures: list) -> np.ndarray:
    """Band gaps (eV, >= 0) of pymatgen structures from the band-gap proxy, NaN where a structure
    is None or unusable. The proxy reads the conventional cell (``SpacegroupAnalyzer(symprec=0.1)``)
    because it was trained on conventional cells."""
    import warnings

    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    counts, groups, lattices, owners = [], [], [], []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i, structure in enumerate(structures):
            if structure is None:
                continue
            try:
                sga = SpacegroupAnalyzer(structure, symprec=0.1)
                conventional = sga.get_conventional_standard_structure()
                group = sga.get_space_group_number()
            except Exception:  # degenerate cells
                continue
            if any(el.Z > MAX_Z for el in conventional.composition):
                continue
            row = np.zeros(MAX_Z)
            for el, amount in conventional.composition.items():
                row[el.Z - 1] = amount
            counts.append(row)
            groups.append(group)
            lattices.append([*conventional.lattice.abc, *conventional.lattice.angles])
            owners.append(i)
    values = np.full(len(structures), np.nan)
    if owners:
        predicted = band_gap_proxy().predict_tensors(torch.tensor(np.array(counts), dtype=torch.float32), torch.tensor(groups),
                                                     torch.tensor(lattices, dtype=torch.float32)).numpy()
        values[owners] = np.clip(predicted, 0.0, None)
    return values


def data_space_groups(data: dict) -> list[int]:
    """Space groups present in both the training and the validation part (the paper's 113 analogue)."""
    sg, val = data["space_group"].long(), data["is_val"]
    return sorted(set(sg[~val].tolist()) & set(sg[val].tolist()))


def train(target: str, epochs: int = 40, batch_size: int = 256, lr: float = 2e-3, seed: int = 0,
          out: Path | None = None, max_rows: int | None = None, log=print) -> dict:
    from generators.gfn import data as gdata

    torch.manual_seed(seed)
    d = gdata.load()
    y = d[target]
    keep = ~torch.isnan(y)
    idx = torch.nonzero(keep).squeeze(1)
    if max_rows:
        idx = idx[:max_rows]
    counts, sg, lat, y, is_val = d["counts"][idx].float(), d["space_group"][idx].long(), d["lattice"][idx], y[idx], d["is_val"][idx]
    tr, va = ~is_val, is_val
    model = ProxyMLP()
    feats = lattice_features(lat[tr], counts[tr].sum(1))
    model.lat_mean.copy_(feats.mean(0))
    model.lat_std.copy_(feats.std(0).clamp_min(1e-3))
    model.y_mean.fill_(float(y[tr].mean()))
    model.y_std.fill_(float(y[tr].std()))
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, factor=0.5, patience=4)
    tr_idx = torch.nonzero(tr).squeeze(1)
    va_idx = torch.nonzero(va).squeeze(1)
    best, best_state, history = float("inf"), None, []
    t0 = time.time()
    for epoch in range(epochs):
        model.train()
        perm = tr_idx[torch.randperm(len(tr_idx))]
        tot = 0.0
        for i in range(0, len(perm), batch_size):
            b = perm[i: i + batch_size]
            pred = model(counts[b], sg[b], lat[b])
            loss = nn.functional.l1_loss(pred, y[b])  # MAE, as reported
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += float(loss) * len(b)
        model.eval()
        with torch.no_grad():
            pv = torch.cat([model(counts[va_idx[i:i + 4096]], sg[va_idx[i:i + 4096]], lat[va_idx[i:i + 4096]])
                            for i in range(0, len(va_idx), 4096)])
        val_mae = float((pv - y[va_idx]).abs().mean())
        sched.step(val_mae)
        history.append({"epoch": epoch + 1, "train_mae": tot / len(perm), "val_mae": val_mae,
                        "lr": opt.param_groups[0]["lr"], "seconds": round(time.time() - t0, 1)})
        log(json.dumps(history[-1]))
        if val_mae < best:
            best = val_mae
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    baseline = float((y[va_idx] - y[tr].median()).abs().mean())
    meta = {
        "target": target, "val_mae": best, "val_mae_predict_train_median": baseline,
        "n_train": int(tr.sum()), "n_val": int(va.sum()), "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "seed": seed, "train_median": float(y[tr].median()), "train_mean": float(y[tr].mean()),
        "space_groups_train_and_val": data_space_groups(d), "history": history,
        "data": "MP-20 train + MP2018 rows in no MP-20 split (<= 60 sites); val = 10% by hash of MP id",
    }
    out = out or WEIGHTS_DIR / f"proxy_{target}.pt"
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"hparams": model.hparams, "meta": {**meta, "stored": "float16"},  # half the size; predictions
                "state_dict": {k: v.half() if v.dtype == torch.float32 else v for k, v in model.state_dict().items()}}, out)
    log(f"{target}: best val MAE {best:.4f} (predict-median baseline {baseline:.4f}); saved {out}")
    return meta


def main() -> None:
    p = argparse.ArgumentParser(description="Train a Crystal-GFN proxy MLP")
    p.add_argument("--target", choices=TARGETS, default="formation_energy")
    p.add_argument("--epochs", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    torch.set_num_threads(1)
    train(a.target, a.epochs, a.batch_size, a.lr, a.seed)


if __name__ == "__main__":
    main()
