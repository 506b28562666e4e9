"""The shared budgeted training loop (generators/training.py), through the diffusion model's command."""

from __future__ import annotations

import json
import math

import pytest
import torch

from generators.training import atomic_save, learning_rate, update_ema


def test_learning_rate_warms_up_then_follows_the_cosine_to_its_floor():
    peak = 1e-3
    assert learning_rate(0.0, peak, 0.1, 0.05) == pytest.approx(peak * 0.01)  # never exactly zero
    assert learning_rate(0.05, peak, 0.1, 0.05) == pytest.approx(peak * 0.5)
    assert learning_rate(0.1, peak, 0.1, 0.05) == pytest.approx(peak)
    middle = learning_rate(0.55, peak, 0.1, 0.05)
    assert middle == pytest.approx(peak * (0.05 + 0.95 * 0.5))
    assert learning_rate(1.0, peak, 0.1, 0.05) == pytest.approx(peak * 0.05)
    assert learning_rate(2.0, peak, 0.1, 0.05) == pytest.approx(peak * 0.05)  # past the budget: stays at the floor
    values = [learning_rate(p / 100, peak, 0.1, 0.05) for p in range(10, 101)]
    assert all(a >= b for a, b in zip(values, values[1:]))


def test_ema_moves_a_fraction_towards_the_parameters():
    ema, parameters = [torch.zeros(3)], [torch.ones(3)]
    update_ema(ema, parameters, 0.9)
    assert torch.allclose(ema[0], torch.full((3,), 0.1))
    update_ema(ema, parameters, 0.0)
    assert torch.allclose(ema[0], parameters[0])


def test_atomic_save_replaces_the_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "sub" / "model.pt"
    atomic_save({"a": torch.tensor([1.0])}, path)
    atomic_save({"a": torch.tensor([2.0])}, path)
    assert torch.load(path, weights_only=True)["a"].item() == 2.0
    assert [p.name for p in path.parent.iterdir()] == ["model.pt"]


@pytest.fixture(scope="module")
def diffusion_data(tmp_path_factory):
    """The first 24 MP-20 train crystals as train split, the first 8 val crystals as val split."""
    from generators.diffusion.data import build_split
    from generators.diffusion.tensor_files import split_path

    folder = tmp_path_factory.mktemp("diffusion_data")
    for split, limit in (("train", 24), ("val", 8)):
        tensors, skipped = build_split(split, workers=1, limit=limit)
        assert skipped == 0
        torch.save(tensors, split_path(folder, split))
    return folder


def _log(folder):
    return [json.loads(line) for line in (folder / "train_log.jsonl").read_text().splitlines()]


def test_diffusion_training_runs_saves_and_resumes(diffusion_data, tmp_path):
    from generators.diffusion import train
    from generators.diffusion.checkpoint import load_model

    out = tmp_path / "run"
    common = ["--data", str(diffusion_data), "--out", str(out), "--preset", "tiny", "--batch", "8", "--threads", "1",
              "--log-seconds", "0.2", "--val-seconds", "0.5", "--minutes", "0.1"]
    first = train.train(train.parse_args([*common, "--stop-after", "0.05"]))
    assert first["step"] > 0 and math.isfinite(first["val_loss"])
    log = _log(out)
    assert log[0]["event"] == "start" and log[-1] == {**log[-1], "event": "end", "reason": "stop_after", "finished": False}
    model = load_model(out / "model.pt")
    assert model.training["steps"] == first["step"] and model.training["train_rows"] == 24
    assert model.training["formula_units_prior"]  # the sampler's prior travels in the model file
    assert next(iter(torch.load(out / "model.pt", weights_only=True)["state_dict"].values())).dtype == torch.float16

    second = train.train(train.parse_args([*common, "--resume", str(out / "checkpoint.pt")]))
    log = _log(out)
    starts = [r for r in log if r.get("event") == "start"]
    assert starts[1]["resumed_at_step"] == first["step"]
    assert second["step"] > first["step"] and log[-1]["reason"] == "budget" and log[-1]["finished"]
    assert second["seconds"] >= 0.1 * 60
    val_losses = [r["val_loss"] for r in log if "val_loss" in r]
    best = load_model(out / "model_best.pt").training
    assert best["selected"] == "lowest validation loss" and best["val_loss"] == pytest.approx(min(val_losses))
    lrs = [r["lr"] for r in log if "lr" in r]
    assert lrs[-1] < 0.5 * max(lrs)  # the cosine went on where the first invocation stopped


def test_training_refuses_held_out_splits_and_foreign_checkpoints(diffusion_data, tmp_path):
    from generators.diffusion import train

    with pytest.raises(ValueError, match="held out"):
        train.train(train.parse_args(["--data", str(diffusion_data), "--out", str(tmp_path), "--minutes", "0.01",
                                      "--train-sets", "train,val"]))
    foreign = tmp_path / "other.pt"
    torch.save({"format": "genms-unimdm-dit/1"}, foreign)
    with pytest.raises(ValueError, match="not a genms-diffusion-csp/1 model"):
        train.train(train.parse_args(["--data", str(diffusion_data), "--out", str(tmp_path), "--minutes", "0.01",
                                      "--preset", "tiny", "--resume", str(foreign)]))
