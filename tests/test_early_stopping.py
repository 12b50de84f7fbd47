"""Evaluation during training: eval events, the best checkpoint kept as the adapter, early stopping in the done event."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, tiny_spec
from studio import spec as specmod
from studio.run import events as ev


def test_early_stopping_keeps_the_best_adapter_and_says_so(tiny_model, tmp_path):
    from safetensors.torch import load_file

    over = {"data.val_size": 0.2, "train.eval_steps": 1, "train.save_steps": 1, "train.max_steps": 30, "train.learning_rate": 3.0,
            "train.load_best_model_at_end": "true", "train.early_stopping_patience": 2, "train.save_total_limit": 2}
    res = subprocess.run([sys.executable, "-m", "studio", "train", str(ROOT / "examples" / "identity_lora.yaml"),
                          *tiny_spec(tiny_model, tmp_path, **over)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run = tmp_path / "run"
    events = ev.read_all(run)
    evals = [e for e in events if e["event"] == "eval"]
    done = events[-1]
    assert done["event"] == "done" and done["early_stopped"] is True and done["step"] < 30, done
    losses = {e["step"]: e["eval_loss"] for e in evals}
    best = min(losses, key=losses.get)
    assert done["best_step"] == best == done["weights_from_step"] and done["best_metric"] == pytest.approx(losses[best])
    assert done["step"] == best + 2 and sorted(losses) == list(range(1, done["step"] + 1))  # two evaluations without improvement
    saved, kept = load_file(run / "adapter" / "adapter_model.safetensors"), load_file(run / f"checkpoint-{best}" / "adapter_model.safetensors")
    last = load_file(run / f"checkpoint-{done['step']}" / "adapter_model.safetensors")
    assert all((saved[k] == kept[k]).all() for k in kept) and any((saved[k] != last[k]).any() for k in last)


@pytest.mark.parametrize("over, words", [
    (["train.early_stopping_patience=2"], "needs train.eval_steps"),
    (["train.load_best_model_at_end=true", "train.eval_steps=10", "train.save_steps=15", "data.val_size=0.1"], "multiple of train.eval_steps=10"),
    (["train.load_best_model_at_end=true", "train.eval_steps=10", "train.save_steps=20"], "needs eval data: data.val_size"),
    (["train.early_stopping_patience=0", "train.eval_steps=5", "data.val_size=0.1"], "train.early_stopping_patience: must be at least 1"),
])
def test_best_and_early_stopping_settings_name_the_field(over, words):
    with pytest.raises(specmod.SpecError, match=words):
        specmod.load(ROOT / "examples" / "identity_lora.yaml", ["output_dir=runs/x", *over])
