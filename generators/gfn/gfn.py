"""Crystal-GFN policy, trajectory-balance training and sampling (pure torch in the loop; CPU or GPU).

- Forward policy: one MLP (3 hidden layers of 256 by default) over an encoding of the whole state
  (stage, crystal-lattice system, point symmetry, space group, atom counts); its head gives logits
  for every discrete action (masked per stage) and the parameters of a mixture of Beta
  distributions per lattice parameter (5 components by default).
- Backward policy: uniform over the parents of a state (the space-group sub-space has up to 4,
  a composition with k elements has k; the lattice step and the stop actions have one).
- Trajectory balance: (log Z + sum log P_F - log R - sum log P_B)^2, log Z a sum of 16 learned
  weights with its own learning rate; a fraction ``epsilon`` of the actions is drawn uniformly
  among the valid ones (lattice: uniform on the unit cube) during training.
- Sampling-time restrictions narrow the masks; lattice ranges are applied by rejection (up to 64
  draws of the policy, then uniform in the restricted box).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from generators.gfn import spacegroups as sgs
from generators.gfn.env import (
    FREE_PARAMETERS, NO_RESTRICTIONS, STAGE_COMP, STAGE_DONE, STAGE_SG, Crystal,
    CrystalConfig, CrystalEnv, Restrictions,
)

WEIGHTS_DIR = Path(__file__).resolve().parents[1] / "weights" / "gfn"
ALPHA_RANGE = (0.1, 100.0)


def mlp(n_in: int, n_out: int, hidden: int, layers: int) -> nn.Sequential:
    mods: list[nn.Module] = []
    d = n_in
    for _ in range(layers):
        mods += [nn.Linear(d, hidden), nn.LeakyReLU()]
        d = hidden
    mods.append(nn.Linear(d, n_out))
    return nn.Sequential(*mods)


class CrystalPolicy(nn.Module):
    def __init__(self, env: CrystalEnv, hidden: int = 256, layers: int = 3):
        super().__init__()
        self.env = env
        sg, comp = env.sg_env, env.comp_env
        self.n_k = env.config.n_components
        self.in_dim = 3 + (sg.n_cls + 1) + (sg.n_ps + 1) + (sg.n_sg + 1) + 2 * comp.n_el
        self.out_dim = env.n_discrete + 6 * 3 * self.n_k
        self.net = mlp(self.in_dim, self.out_dim, hidden, layers)
        self.hparams = {"hidden": hidden, "layers": layers}

    def encode(self, states) -> torch.Tensor:
        sg, comp = self.env.sg_env, self.env.comp_env
        x = np.zeros((len(states), self.in_dim), dtype=np.float32)
        o1 = 3
        o2 = o1 + sg.n_cls + 1
        o3 = o2 + sg.n_ps + 1
        o4 = o3 + sg.n_sg + 1
        for i, s in enumerate(states):
            x[i, min(s.stage, 2)] = 1
            cls, ps, g = s.sg_state
            x[i, o1 + cls + 1] = 1
            x[i, o2 + ps + 1] = 1
            x[i, o3 + g + 1] = 1
            c = np.asarray(s.comp_state, dtype=np.float32)
            x[i, o4: o4 + comp.n_el] = c / comp.max_n
            x[i, o4 + comp.n_el:] = c > 0
        return torch.from_numpy(x)

    def forward(self, x):
        out = self.net(x)
        disc = out[:, : self.env.n_discrete]
        lat = out[:, self.env.n_discrete:].view(-1, 6, 3, self.n_k)
        logits = lat[:, :, 0]
        lo, hi = ALPHA_RANGE
        alpha = lo + (hi - lo) * torch.sigmoid(lat[:, :, 1] - 3.0)
        beta = lo + (hi - lo) * torch.sigmoid(lat[:, :, 2] - 3.0)
        return disc, (logits, alpha, beta)


def beta_mixture_log_prob(params, x: torch.Tensor) -> torch.Tensor:
    """[B, 6] log densities of x in (0, 1) under the per-dimension mixtures."""
    logits, alpha, beta = params
    x = x.clamp(1e-5, 1 - 1e-5).unsqueeze(-1)
    comp = torch.distributions.Beta(alpha, beta).log_prob(x)
    return torch.logsumexp(torch.log_softmax(logits, -1) + comp, -1)


def beta_mixture_sample(params, generator=None) -> torch.Tensor:
    logits, alpha, beta = params
    with torch.no_grad():
        k = torch.multinomial(torch.softmax(logits, -1).reshape(-1, logits.shape[-1]), 1, generator=generator)
        a = alpha.reshape(-1, alpha.shape[-1]).gather(1, k)
        b = beta.reshape(-1, beta.shape[-1]).gather(1, k)
        # Beta via two Gammas (torch's Beta sampler takes no generator)
        ga = torch._standard_gamma(a)
        gb = torch._standard_gamma(b)
        return (ga / (ga + gb)).view(logits.shape[:2]).clamp(1e-5, 1 - 1e-5)


@dataclass
class Rollout:
    states: list
    log_pf: torch.Tensor
    log_pb: torch.Tensor
    dead: torch.Tensor  # bool: no valid action was left (excluded from the loss and the samples)


def rollout(policy: CrystalPolicy, n: int, epsilon: float = 0.0, restrictions: Restrictions = NO_RESTRICTIONS,
            generator: torch.Generator | None = None, device="cpu", grad: bool = True) -> Rollout:
    env = policy.env
    states = [env.source() for _ in range(n)]
    log_pf = [torch.zeros((), device=device) for _ in range(n)]
    log_pb = np.zeros(n)
    dead = np.zeros(n, dtype=bool)
    ctx = torch.enable_grad() if grad else torch.no_grad()
    with ctx:
        while True:
            active = [i for i in range(n) if states[i].stage != STAGE_DONE and not dead[i]]
            if not active:
                break
            x = policy.encode([states[i] for i in active]).to(device)
            disc, latp = policy(x)
            masks = np.stack([env.mask(states[i], restrictions) for i in active])
            is_disc = np.array([states[i].stage in (STAGE_SG, STAGE_COMP) for i in active])
            # discrete steps
            rows = np.flatnonzero(is_disc)
            if rows.size:
                m = torch.from_numpy(masks[rows]).to(device)
                has = m.any(1)
                logits = disc[torch.as_tensor(rows, device=device)].masked_fill(~m, -1e9)
                logp = torch.log_softmax(logits, -1)
                probs = logp.detach().exp()
                if epsilon > 0:
                    uni = m.float() / m.float().sum(1, keepdim=True).clamp_min(1)
                    probs = (1 - epsilon) * probs + epsilon * uni
                probs = torch.where(has.unsqueeze(1), probs, torch.ones_like(probs))
                acts = torch.multinomial(probs, 1, generator=generator).squeeze(1)
                chosen = logp.gather(1, acts.unsqueeze(1)).squeeze(1)
                for r, row in enumerate(rows):
                    i = active[row]
                    if not bool(has[r]):
                        dead[i] = True
                        continue
                    states[i], lpb = env.step(states[i], int(acts[r]))
                    log_pf[i] = log_pf[i] + chosen[r]
                    log_pb[i] += lpb
            # lattice step
            rows = np.flatnonzero(~is_disc)
            if rows.size:
                ridx = torch.as_tensor(rows, device=device)
                params = tuple(p[ridx] for p in latp)
                xs, overrides = _sample_lattice(env, policy, params, [states[active[r]] for r in rows], epsilon, restrictions, generator)
                lp = beta_mixture_log_prob(params, xs)
                free = torch.zeros(len(rows), 6, device=device)
                for r, row in enumerate(rows):
                    sg = env.sg_env.space_group(states[active[row]].sg_state)
                    free[r, list(FREE_PARAMETERS[sgs.lattice_system(sg)])] = 1
                lp = (lp * free).sum(1)
                for r, row in enumerate(rows):
                    i = active[row]
                    states[i], _ = env.step(states[i], xs[r].detach().cpu().numpy())
                    if overrides[r] is not None:
                        states[i].lattice = overrides[r]
                    log_pf[i] = log_pf[i] + lp[r]
    return Rollout(states, torch.stack(log_pf), torch.as_tensor(log_pb, dtype=torch.float32, device=device),
                   torch.as_tensor(dead, device=device))


def _sample_lattice(env, policy, params, states, epsilon, restrictions, generator, tries: int = 64):
    """Unit-cube draws [B, 6] from the policy (with ``epsilon`` uniform ones), and per row either
    None or a lattice that replaces the mapped draw: under lattice-range restrictions, rows whose
    64 policy draws all miss the box get free parameters uniform in the box (sampling only)."""
    device = params[0].device
    xs = beta_mixture_sample(params, generator)
    overrides = [None] * len(states)
    if epsilon > 0:
        u = torch.rand(xs.shape, generator=generator, device=device)
        pick = torch.rand(xs.shape[0], 1, generator=generator, device=device) < epsilon
        xs = torch.where(pick, u, xs)
    if restrictions.length_range is None and restrictions.angle_range is None:
        return xs, overrides
    lat_env = env.lat_env
    out = xs.clone()
    for r, s in enumerate(states):
        sg = env.sg_env.space_group(s.sg_state)
        ok = False
        for t in range(tries):
            x = xs[r] if t == 0 else beta_mixture_sample(tuple(p[r: r + 1] for p in params), generator)[0]
            if lat_env.in_restriction(sg, lat_env.to_lattice(sg, x.cpu().numpy(), s.comp_state), restrictions):
                out[r], ok = x, True
                break
        if not ok:
            rand = lambda: float(torch.rand((), generator=generator, device=device))  # noqa: E731
            for _ in range(tries):
                overrides[r] = lat_env.uniform_in(sg, restrictions, rand)
                if lat_env.in_restriction(sg, overrides[r], restrictions):
                    break
    return out, overrides


def states_to_tensors(env: CrystalEnv, states, device="cpu"):
    """(counts [B, 94], space group [B], lattice [B, 6]) for finished states."""
    from pymatgen.core import Element

    from generators.gfn.data import MAX_Z

    zs = torch.tensor([Element(e).Z - 1 for e in env.config.elements])
    comp = torch.tensor([list(s.comp_state) for s in states], dtype=torch.float32)
    counts = torch.zeros(len(states), MAX_Z)
    counts[:, zs] = comp
    sg = torch.tensor([env.sg_env.space_group(s.sg_state) or 1 for s in states])
    lat = torch.tensor([list(s.lattice) if s.lattice else [1.0] * 3 + [90.0] * 3 for s in states], dtype=torch.float32)
    return counts.to(device), sg.to(device), lat.to(device)


@dataclass
class TrainConfig:
    iterations: int = 500
    batch_size: int = 16
    lr: float = 1e-3
    lr_logz: float = 0.05
    epsilon: float = 0.1
    temperature: float = 0.25
    hidden: int = 256
    layers: int = 3
    seed: int = 0
    max_seconds: float | None = None
    log_every: int = 25


def parse_reward(spec: str) -> tuple[str, float | None]:
    """``formation_energy`` | ``band_gap[:target]`` (1.34 eV by default) | ``density`` -> (kind, target)."""
    kind, _, arg = str(spec).strip().partition(":")
    kind = kind.strip().lower().replace("-", "_")
    if kind not in REWARDS:
        raise ValueError(f"unknown reward {spec!r}; use formation_energy, band_gap[:TARGET_EV] or density")
    if kind != "band_gap":
        if arg:
            raise ValueError(f"reward {kind} takes no target (got {spec!r})")
        return kind, None
    try:
        target = float(arg) if arg else 1.34
    except ValueError:
        raise ValueError(f"band-gap target must be a number of eV, got {arg!r}") from None
    if not 0.0 <= target <= 10.0:
        raise ValueError(f"band-gap target must lie in 0-10 eV, got {target}")
    return kind, target


REWARDS = ("formation_energy", "band_gap", "density")


class ProxyReward:
    """log R of finished states and the property it rewards: ``formation_energy`` (Boltzmann of the
    proxy E_f, ``exp(-E_f / T)``), ``band_gap`` (``exp(-|gap - target| / width)`` of the proxy gap)
    or ``density`` (``rho ** scale``, exact). Degenerate cells (no volume) get the lowest reward."""

    def __init__(self, kind: str, env: CrystalEnv, proxy=None, temperature: float = 0.25, target: float = 1.34,
                 width: float = 0.25, scale: float = 4.0, device="cpu"):
        if kind not in REWARDS:
            raise ValueError(f"unknown reward {kind!r}")
        self.kind, self.env, self.proxy, self.device = kind, env, proxy, device
        self.temperature, self.target, self.width, self.scale = temperature, target, width, scale

    def params(self) -> dict:
        return {"formation_energy": {"temperature": self.temperature},
                "band_gap": {"target": self.target, "width": self.width},
                "density": {"scale": self.scale}}[self.kind]

    def __call__(self, states):
        from generators.gfn.rewards import (
            cell_volumes, density, log_reward_band_gap, log_reward_density, log_reward_formation_energy,
        )

        counts, sg, lat = states_to_tensors(self.env, states, self.device)
        bad = cell_volumes(lat) <= 1e-6
        if self.kind == "density":
            value = torch.where(bad, torch.zeros(()), density(counts, lat))
            log_r = log_reward_density(value, self.scale)
        else:
            value = self.proxy.predict_tensors(counts, sg, lat)
            if self.kind == "formation_energy":
                value = torch.where(bad, torch.full_like(value, 5.0), value)  # as +5 eV/atom
                log_r = log_reward_formation_energy(value, self.temperature)
            else:
                log_r = log_reward_band_gap(value, self.target, self.width)
        return torch.where(bad, torch.full_like(log_r, -20.0), log_r), value


class FormationEnergyReward(ProxyReward):
    def __init__(self, proxy, env: CrystalEnv, temperature: float, device="cpu"):
        super().__init__("formation_energy", env, proxy, temperature=temperature, device=device)


def train(env: CrystalEnv, reward_fn, cfg: TrainConfig, device="cpu", log=print,
          policy: CrystalPolicy | None = None, logz_init: float = 0.0):
    """Trajectory balance; ``policy``/``logz_init`` continue an earlier run."""
    torch.manual_seed(cfg.seed)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    policy = (policy or CrystalPolicy(env, cfg.hidden, cfg.layers)).to(device).train()
    logz = nn.Parameter(torch.full((16,), logz_init / 16, device=device))
    opt = torch.optim.Adam([{"params": policy.parameters(), "lr": cfg.lr}, {"params": [logz], "lr": cfg.lr_logz}])
    history = []
    t0 = time.time()
    for it in range(1, cfg.iterations + 1):
        ro = rollout(policy, cfg.batch_size, cfg.epsilon, generator=gen, device=device)
        ok = ~ro.dead
        done = [s for s, d in zip(ro.states, ro.dead.tolist()) if not d]
        if not done:
            continue
        log_r, e = reward_fn(done)
        loss = ((logz.sum() + ro.log_pf[ok] - log_r - ro.log_pb[ok]) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        rec = {"iter": it, "loss": float(loss.detach()), "logZ": float(logz.detach().sum()), "mean_log_reward": float(log_r.mean()),
               "mean_value": float(e.mean()), "median_value": float(e.median()), "dead_ends": int(ro.dead.sum()),
               "seconds": round(time.time() - t0, 1)}
        history.append(rec)
        if log and (it % cfg.log_every == 0 or it == 1):
            log(json.dumps(rec))
        if cfg.max_seconds and time.time() - t0 > cfg.max_seconds:
            break
    return policy, logz, history


class GFNSampler:
    """A trained Crystal-GFN: ``GFNSampler.load().sample(n, elements=..., space_groups=...,
    lattice_ranges={"lengths": (10, 20), "angles": (75, 135)}, seed=...)`` -> pymatgen Structures."""

    def __init__(self, policy: CrystalPolicy, meta: dict | None = None, device="cpu"):
        self.policy = policy.eval()
        self.env = policy.env
        self.meta = meta or {}
        self.device = device

    @classmethod
    def untrained(cls, config: CrystalConfig, seed: int = 0, device="cpu") -> "GFNSampler":
        torch.manual_seed(seed)
        return cls(CrystalPolicy(CrystalEnv(config)).to(device), {"trained": False}, device)

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "cpu") -> "GFNSampler":
        path = Path(path) if path else WEIGHTS_DIR / "sampler_formation_energy.pt"
        ckpt = torch.load(path, map_location=device, weights_only=True)  # tensors and plain data only: never unpickle code
        env = CrystalEnv(CrystalConfig.from_dict(ckpt["config"]))
        policy = CrystalPolicy(env, **ckpt["hparams"])
        policy.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()})
        return cls(policy.to(device), ckpt.get("meta", {}), device)

    def save(self, path: str | Path, meta: dict | None = None) -> None:
        torch.save({"config": self.env.config.to_dict(), "hparams": self.policy.hparams,
                    "state_dict": {k: v.half() if v.dtype == torch.float32 else v for k, v in self.policy.state_dict().items()},
                    "meta": meta or self.meta}, path)

    def _restrictions(self, elements, space_groups, lattice_ranges, max_atoms_per_element, max_atoms,
                      formula=None) -> Restrictions:
        if formula:
            formula = {str(e): int(n) for e, n in dict(formula).items()}
            cfg = self.env.config
            unknown = set(formula) - set(cfg.elements)
            if unknown:
                raise ValueError(f"elements outside this model's vocabulary ({', '.join(cfg.elements)}): {sorted(unknown)}")
            if not cfg.min_elements <= len(formula) <= cfg.max_elements or min(formula.values()) < 1:
                raise ValueError(f"a formula needs {cfg.min_elements}-{cfg.max_elements} elements with positive amounts")
            elements = None
        if elements:
            unknown = set(elements) - set(self.env.config.elements)
            if unknown:
                raise ValueError(f"elements outside this model's vocabulary: {sorted(unknown)}")
        if space_groups:
            unknown = set(int(s) for s in space_groups) - set(self.env.config.space_groups)
            if unknown:
                raise ValueError(f"space groups outside this model's set: {sorted(unknown)}")
        r = Restrictions.make(elements, space_groups, lattice_ranges, max_atoms_per_element, max_atoms, formula)
        if not self.env.usable_groups(r).any():
            if formula:
                raise ValueError("no allowed space group fits a whole number of formula units within the atom limits "
                                 f"({r.max_atoms or self.env.config.max_atoms} atoms, "
                                 f"{r.max_atoms_per_element or self.env.config.max_atoms_per_element} per element)")
            raise ValueError("no space group admits a valid composition under these restrictions")
        return r

    def sample_crystals(self, n: int, elements=None, space_groups=None, lattice_ranges=None, seed=None,
                        max_atoms_per_element=None, max_atoms=None, batch_size: int = 256, formula=None) -> list[Crystal]:
        """Crystals (space group, composition, lattice) without atom positions; ``formula``
        ({element: amount}) fixes the composition up to the number of formula units."""
        r = self._restrictions(elements, space_groups, lattice_ranges, max_atoms_per_element, max_atoms, formula)
        seed = int(seed) if seed is not None else int(torch.randint(0, 2**31 - 1, ()).item())
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        out: list[Crystal] = []
        # the Beta draws use torch's global generator: seed it inside a forked RNG state
        with torch.random.fork_rng(devices=[] if str(self.device) == "cpu" else None):
            torch.manual_seed(seed)
            for _ in range(20 * (n // batch_size + 1)):
                if len(out) >= n:
                    break
                ro = rollout(self.policy, min(batch_size, 2 * (n - len(out))), 0.0, r, gen, self.device, grad=False)
                out += [self.env.to_crystal(s) for s, d in zip(ro.states, ro.dead.tolist()) if not d]
        return out[:n]

    def sample(self, n: int, elements=None, space_groups=None, lattice_ranges=None, seed=None,
               max_atoms_per_element=None, max_atoms=None, max_attempts: int = 5, timeout_s: float = 5.0, formula=None):
        """pymatgen Structures: sampled crystals with atoms placed symmetrically by pyxtal
        (``from_random`` with the sampled group, composition and lattice); crystals pyxtal cannot
        fill (cell too small for the atoms) are replaced by new samples."""
        structures = []
        rng_seed = seed
        for attempt in range(max_attempts):
            need = n - len(structures)
            if need <= 0:
                break
            crystals = self.sample_crystals(2 * need, elements, space_groups, lattice_ranges,
                                            None if rng_seed is None else rng_seed + attempt,
                                            max_atoms_per_element, max_atoms, formula=formula)
            for c in crystals:
                s = place_atoms(c, seed=None if seed is None else seed + len(structures), timeout_s=timeout_s)
                if s is not None:
                    structures.append(s)
                    if len(structures) >= n:
                        break
        return structures


def place_atoms(crystal: Crystal, seed: int | None = None, timeout_s: float = 5.0, max_count: int = 3):
    """Symmetric placement with pyxtal (``from_random`` with the crystal's group, composition and
    lattice); a pymatgen Structure, or None when pyxtal finds no placement within ``max_count``
    attempts or ``timeout_s`` seconds (the limit applies in the main thread, through SIGALRM)."""
    import signal
    import threading
    import warnings

    from pyxtal import pyxtal
    from pyxtal.lattice import Lattice as PxLattice

    ltype = {"trigonal-rhombohedral": "hexagonal", "trigonal-hexagonal": "hexagonal",
             "hexagonal-hexagonal": "hexagonal"}.get(sgs.crystal_lattice_system(crystal.space_group),
                                                     sgs.crystal_lattice_system(crystal.space_group))

    class _Timeout(Exception):
        pass

    def _alarm(signum, frame):
        raise _Timeout

    use_alarm = timeout_s and threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGALRM, _alarm) if use_alarm else None
    try:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, timeout_s)
        lat = PxLattice.from_para(*crystal.lattice, ltype=ltype)
        xtal = pyxtal()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            xtal.from_random(3, crystal.space_group, list(crystal.composition), list(crystal.composition.values()),
                             lattice=lat, random_state=seed, max_count=max_count)
        if not xtal.valid:
            return None
        return xtal.to_pymatgen()
    except (_Timeout, Exception):  # noqa: BLE001 - pyxtal raises several kinds when a placement is impossible
        return None
    finally:
        if use_alarm:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, old)
