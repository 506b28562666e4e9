"""Train a Crystal-GFN sampler with trajectory balance (CPU or GPU).

    python -m generators.gfn.train --reward formation_energy --minutes 12
    python -m generators.gfn.train --reward band_gap:1.34 --minutes 12
    python -m generators.gfn.train --reward density --minutes 12

Setting: the paper's 22 elements, up to 5 elements / 16 atoms each / 80 in all, the space groups
present in both the proxy's training and validation parts, lengths and angles over the bulk of
the data (2.5-30 A, 55-140 deg), the volume prior (volume per atom within the composition's
plausible range; ``--no-volume-prior`` for the paper's lattice). Rewards: exp(-E_f / T),
exp(-|gap - target| / width), density ** scale. Default output:
``generators/weights/gfn/sampler_<reward>.pt``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from generators.gfn.env import PAPER_ELEMENTS, CrystalConfig, CrystalEnv, with_volume_prior
from generators.gfn.gfn import WEIGHTS_DIR, GFNSampler, ProxyReward, TrainConfig, parse_reward, train
from generators.gfn.proxy import Proxy

TRAIN_LENGTHS = (2.5, 30.0)
TRAIN_ANGLES = (55.0, 140.0)


def default_config(proxy: Proxy, volume_prior: bool = True) -> CrystalConfig:
    cfg = CrystalConfig(elements=PAPER_ELEMENTS, space_groups=tuple(proxy.meta["space_groups_train_and_val"]),
                        length_range=TRAIN_LENGTHS, angle_range=TRAIN_ANGLES)
    return with_volume_prior(cfg) if volume_prior else cfg


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--reward", default="formation_energy", help="formation_energy | band_gap[:TARGET] | density")
    p.add_argument("--width", type=float, default=0.25, help="band-gap reward width (eV)")
    p.add_argument("--scale", type=float, default=4.0, help="density reward exponent")
    p.add_argument("--no-volume-prior", action="store_true")
    p.add_argument("--minutes", type=float, default=12)
    p.add_argument("--iterations", type=int, default=100_000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--lr-logz", type=float, default=0.05)
    p.add_argument("--temperature", type=float, default=0.25)
    p.add_argument("--epsilon", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--init", default=None, help="continue from this sampler checkpoint (its config)")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    kind, target = parse_reward(a.reward)
    out = a.out or str(WEIGHTS_DIR / f"sampler_{kind}.pt")
    torch.set_num_threads(1)
    proxy = Proxy.load("formation_energy" if kind == "density" else kind, device=a.device)
    init = GFNSampler.load(a.init, a.device) if a.init else None
    env = init.env if init else CrystalEnv(default_config(proxy, not a.no_volume_prior))
    prev = init.meta.get("summary", {}) if init else {}
    cfg = TrainConfig(iterations=a.iterations, batch_size=a.batch_size, lr=a.lr, lr_logz=a.lr_logz,
                      epsilon=a.epsilon, temperature=a.temperature, seed=a.seed, max_seconds=a.minutes * 60)
    t0 = time.time()
    reward = ProxyReward(kind, env, None if kind == "density" else proxy, temperature=a.temperature,
                         target=target if target is not None else 1.34, width=a.width, scale=a.scale, device=a.device)
    policy, logz, history = train(env, reward, cfg, a.device,
                                  policy=init.policy if init else None, logz_init=prev.get("logZ", 0.0))
    first = history[: max(1, len(history) // 20)]
    last = history[-max(1, len(history) // 20):]
    summary = {
        "iterations": len(history), "seconds": round(time.time() - t0, 1), "logZ": float(logz.sum()),
        "first_5pct_mean_log_reward": float(np.mean([h["mean_log_reward"] for h in first])),
        "last_5pct_mean_log_reward": float(np.mean([h["mean_log_reward"] for h in last])),
        "first_5pct_mean_value": float(np.mean([h["mean_value"] for h in first])),
        "last_5pct_mean_value": float(np.mean([h["mean_value"] for h in last])),
        "first_5pct_dead_end_rate": float(np.mean([h["dead_ends"] for h in first])) / cfg.batch_size,
        "last_5pct_dead_end_rate": float(np.mean([h["dead_ends"] for h in last])) / cfg.batch_size,
        "train_config": cfg.__dict__, "proxy_val_mae": None if kind == "density" else proxy.meta["val_mae"],
        "continued_from": a.init, "previous_iterations": prev.get("iterations", 0) + prev.get("previous_iterations", 0),
    }
    print(json.dumps(summary))
    meta = {"trained": True, "reward": kind, "reward_params": reward.params(), "temperature": a.temperature, "summary": summary,
            "history": history[:: max(1, len(history) // 200)]}
    GFNSampler(policy, meta).save(out, meta)
    print("saved", out)


if __name__ == "__main__":
    main()
