"""Evaluation during training: eval events, the best checkpoint kept as the adapter, early stopping in the done event."""
from __future__ import annotations

import subprocess
import sys

import pytest

from conftest import ROOT, tiny_spec
from studio import spec as specmod
from studio.run import events as ev


def test_early_stopping_keeps_the_best_adapter_and_says_so(tiny_model, tmp_path):
    """Stopping is certain by construction: at learning rate 1e-30 each step moves the LoRA weights (B starts at 0)
    by about 1e-30, far below float32's resolution of the layers' outputs, so the eval loss is the same number at every
    evaluation: the first one is the best, and patience 2 ends the run two evaluations later."""
    from safetensors.torch import load_file

    over = {"data.val_size": 0.2, "train.eval_steps": 1, "train.save_steps": 1, "train.max_steps": 30, "train.learning_rate": 1e-30,
            "train.warmup_steps": 0, "train.load_best_model_at_end": "true", "train.early_stopping_patience": 2,
            "train.save_total_limit": 2}
    res = subprocess.run([sys.executable, "-m", "studio", "train", str(ROOT / "examples" / "identity_lora.yaml"),
                          *tiny_spec(tiny_model, tmp_path, **over)], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    run = tmp_path / "run"
    events = ev.read_all(run)
    losses = {e["step"]: e["eval_loss"] for e in events if e["event"] == "eval"}
    done = events[-1]
    assert len(set(losses.values())) == 1, losses  # the construction above holds
    assert done["event"] == "done" and done["early_stopped"] is True, done
    assert done["step"] == 3 and sorted(losses) == [1, 2, 3], (done, losses)  # two evaluations without improvement
    assert done["best_step"] == 1 == done["weights_from_step"] and done["best_metric"] == pytest.approx(losses[1])
    saved, kept = load_file(run / "adapter" / "adapter_model.safetensors"), load_file(run / "checkpoint-1" / "adapter_model.safetensors")
    last = load_file(run / "checkpoint-3" / "adapter_model.safetensors")
    assert all((saved[k] == kept[k]).all() for k in kept)
    assert any((saved[k] != last[k]).any() for k in last)  # the weights did move (by ~1e-30): the best step's are kept


@pytest.mark.parametrize("metrics, stop_at, best", [
    ([3.0, 2.0, 2.5, 2.4], 4, 2),         # two evaluations without improvement after the best
    ([3.0, 2.0, 2.5, 1.9, 2.0, 2.1], 6, 4),  # an improvement resets the count
    ([3.0, 2.0, 1.0, 0.5], None, 4),      # always improving: never stopped
])
def test_the_early_stopping_rule_on_given_evaluations(metrics, stop_at, best):
    """The rule and the done event's fields on a given sequence of eval losses, through transformers' own callback
    (patience 2) and the trainer's own choice of the best metric."""
    from types import SimpleNamespace

    from transformers import EarlyStoppingCallback, TrainerControl, TrainerState, TrainingArguments
    from transformers.trainer import Trainer

    from studio.train.job import best_fields

    args = TrainingArguments(output_dir="unused", eval_strategy="steps", eval_steps=1, save_steps=1, metric_for_best_model="eval_loss",
                             greater_is_better=False, load_best_model_at_end=True, report_to=[])
    state, control = TrainerState(), TrainerControl()
    stopper = EarlyStoppingCallback(early_stopping_patience=2)
    trainer = SimpleNamespace(args=args, state=state)
    stopped = None
    for step, loss in enumerate(metrics, 1):
        state.global_step = step
        stopper.on_evaluate(args, state, control, metrics={"eval_loss": loss})  # the trainer's order: callbacks, then the best
        if Trainer._determine_best_metric(trainer, {"eval_loss": loss}, trial=None):
            state.best_model_checkpoint = f"checkpoint-{step}"
        if control.should_training_stop:
            stopped = step
            break
    assert stopped == stop_at
    spec = SimpleNamespace(train=SimpleNamespace(load_best_model_at_end=True, early_stopping_patience=2, metric_for_best_model="eval_loss"))
    out = best_fields(spec, SimpleNamespace(state=state), [stopper], total_steps=30)
    assert out["best_step"] == out["weights_from_step"] == best and out["best_metric"] == min(metrics[:stopped or len(metrics)])
    assert out["early_stopped"] is (stop_at is not None)


@pytest.mark.parametrize("over, words", [
    (["train.early_stopping_patience=2"], "needs train.eval_steps"),
    (["train.load_best_model_at_end=true", "train.eval_steps=10", "train.save_steps=15", "data.val_size=0.1"], "multiple of train.eval_steps=10"),
    (["train.load_best_model_at_end=true", "train.eval_steps=10", "train.save_steps=20"], "needs eval data: data.val_size"),
    (["train.early_stopping_patience=0", "train.eval_steps=5", "data.val_size=0.1"], "train.early_stopping_patience: must be at least 1"),
])
def test_best_and_early_stopping_settings_name_the_field(over, words):
    with pytest.raises(specmod.SpecError, match=words):
        specmod.load(ROOT / "examples" / "identity_lora.yaml", ["output_dir=runs/x", *over])
