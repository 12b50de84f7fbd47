"""Every fine-tuning method trains for real on the tiny model: what should train changed, nothing else did,
and the saved artefact reloads to the same logits. Invalid combinations are refused before launch.

    .venv/bin/python -m pytest -q tests/test_methods.py
"""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import ROOT, tiny_spec
from studio import spec as specmod

# name -> overrides; each case trains 3 steps in-process through studio.train.run (the child's own code path)
CASES = {
    "lora_plus": ["method.lora.loraplus_lr_ratio=16", "train.weight_decay=0.1", "train.lr_scheduler_type=constant_with_warmup",
                  "train.warmup_steps=1"],
    "lora_dora_rslora": ["method.lora.dora=true", "method.lora.rslora=true", "train.optim=adafactor"],
    "lora_layers_modules_to_save": ["method.lora.layers=[1]", "method.lora.modules_to_save=[norm]"],  # with target all-linear
    "lora_pissa": ["method.lora.pissa=true", "train.lr_scheduler_type=polynomial"],
    "qlora_nf4": ["model.quantization_bit=4", "model.quantization_type=nf4", "model.double_quantization=true"],
    "qlora_fp4_adamw_8bit": ["model.quantization_bit=4", "model.quantization_type=fp4", "model.double_quantization=false", "train.optim=adamw_8bit"],
    "qlora_8bit": ["model.quantization_bit=8", "train.gradient_checkpointing=true"],
    "adalora": ["method.finetuning_type=adalora", "method.adalora.init_rank=8", "method.adalora.target_rank=2",
                "method.adalora.tinit=1", "method.adalora.tfinal=1", "train.max_steps=4"],
    "ia3": ["method.finetuning_type=ia3", "train.lr_scheduler_type=linear"],
    "prefix": ["method.finetuning_type=prefix", "method.prompt.num_virtual_tokens=4", "method.prompt.encoder_hidden_size=32"],
    "ptuning_v2": ["method.finetuning_type=ptuning_v2", "method.prompt.num_virtual_tokens=4"],
    "prompt": ["method.finetuning_type=prompt", "method.prompt.num_virtual_tokens=4", "method.prompt.init_text=You are Pico",
               "train.neftune_alpha=5"],
    "ptuning": ["method.finetuning_type=ptuning", "method.prompt.num_virtual_tokens=4", "method.prompt.encoder_hidden_size=32",
                "train.gradient_checkpointing=true"],
    "full": ["method.finetuning_type=full", "train.lr_scheduler_type=cosine_with_restarts", "train.max_grad_norm=0.5"],
    "freeze": ["method.finetuning_type=freeze", "method.freeze.trainable_layers=1", "method.freeze.trainable_modules=[mlp]",
               "method.freeze.extra_modules=[norm]", "train.gradient_checkpointing=true"],
}


def _train(tiny_model, tmp_path, data_dir, overrides):
    """Train in-process; -> (spec, run_dir, parameters before training, the trained model, metrics)."""
    from transformers import TrainerCallback

    from studio.run import events
    from studio.train import job as train

    spec = specmod.load(None, tiny_spec(tiny_model, tmp_path, data_dir, **{"train.max_steps": 3}) + overrides)
    run_dir = tmp_path / "run"
    run_dir.mkdir(parents=True)

    class Snapshot(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kw):
            self.model = model
            self.before = {n: (p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()}

    snap = Snapshot()
    metrics = train.run(spec, run_dir, events.EventWriter(run_dir), callbacks=[snap])
    return spec, run_dir, snap.before, snap.model, metrics


def _logits(model, tokenizer):
    import torch

    batch = tokenizer(["Who are you?", "Name three colours, please."], return_tensors="pt", padding=True)
    model.eval()
    with torch.no_grad():
        return model(**batch).logits.float()


def _reload(spec, run_dir):
    """The artefact loaded the way Evaluate and Chat load it: base model (+ adapter), or the saved model folder."""
    import dataclasses

    from studio.model import methods
    from studio.model import models

    if methods.is_peft(spec):
        from peft import PeftModel

        return PeftModel.from_pretrained(models.load_model(spec.model, spec.train.compute_dtype), str(run_dir / "adapter"))
    return models.load_model(dataclasses.replace(spec.model, name_or_path=str(run_dir / "model"), quantization_bit=None))


@pytest.mark.parametrize("case", list(CASES))
def test_method_trains_only_its_parameters_and_reloads(case, tiny_model, tmp_path, data_dir):
    import torch

    from studio.model import models

    spec, run_dir, before, model, metrics = _train(tiny_model, tmp_path, data_dir, CASES[case])
    assert metrics["step"] == spec.train.max_steps and metrics["train_loss"] == metrics["train_loss"]  # finite, not NaN
    after = dict(model.named_parameters())
    trainable = [n for n, (_, rg) in before.items() if rg]
    frozen = [n for n, (_, rg) in before.items() if not rg]
    assert trainable and 0 < metrics["trainable_params"] <= metrics["total_params"]
    unchanged = [n for n in trainable if torch.equal(before[n][0], after[n].detach())]
    if case == "adalora":  # the singular values of a matrix whose ranks were all pruned are zero again, as they started
        unchanged = [n for n in unchanged if not ("lora_E" in n and not after[n].any())]
        ranks = json.loads((run_dir / "adapter" / "adapter_config.json").read_text())["rank_pattern"]
        assert ranks and sum(sum(v) for v in ranks.values()) < 8 * len(ranks), "update_and_allocate pruned no rank"
    assert not unchanged, f"{case}: trainable parameters that did not change: {unchanged[:5]}"
    changed = [n for n in frozen if not torch.equal(before[n][0], after[n].detach())]
    assert not changed, f"{case}: frozen parameters that changed: {changed[:5]}"
    if case == "full":
        assert not frozen
    if case == "freeze":  # layer 1's mlp and the final norm train; attention and layer 0 stay
        assert all((".layers.1.mlp." in n) or n.startswith("model.norm.") for n in trainable)
        assert "model.layers.1.self_attn.q_proj.weight" in frozen and "model.layers.0.mlp.up_proj.weight" in frozen
    if case == "lora_layers_modules_to_save":
        lora = [n for n in trainable if "lora_" in n]
        assert lora and all(".layers.1." in n for n in lora)
        assert {n.split(".")[-4] for n in lora} == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
        assert any("modules_to_save" in n and "norm" in n for n in trainable)

    tok = models.load_tokenizer(str(tiny_model))
    expected = _logits(model, tok)
    reloaded = _reload(spec, run_dir)
    saved_state = reloaded.state_dict()
    for n, p in model.state_dict().items():
        if case in ("lora_pissa", "adalora"):
            break  # saved as a plain LoRA of rank 2r for the original base / with pruned ranks cut out: logits below
        # (prefix and ptuning save their encoder's output table, not the encoder: their logits are compared below)
        if "lora_" in n or "modules_to_save" in n or (case in ("prompt", "ptuning_v2") and "prompt_encoder" in n):
            assert n in saved_state and torch.equal(saved_state[n], p), f"{case}: {n} not saved as trained"
    # bitsandbytes 0.50 on the CPU: 4-bit layers give ~1e-3 different outputs in train and eval mode, and after training
    tol = 1e-2 if spec.model.quantization_bit else 1e-4
    assert torch.allclose(_logits(reloaded, tok), expected, atol=tol), f"{case}: reloaded logits differ"
    batch = tok(["Who are you?"], return_tensors="pt")  # and it generates, as Evaluate and Chat will ask it to
    out = reloaded.generate(**batch, max_new_tokens=3, min_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id)
    assert out.shape[1] == batch["input_ids"].shape[1] + 3
    saved = specmod.load(run_dir / ("adapter" if (run_dir / "adapter").exists() else "model") / "spec.yaml")
    assert saved.method.finetuning_type == spec.method.finetuning_type


def test_loraplus_gives_lora_b_a_higher_learning_rate(tiny_model, tmp_path):
    from transformers import TrainingArguments

    from studio.model import methods
    from studio.model import models

    spec = specmod.load(None, tiny_spec(tiny_model, tmp_path) + ["method.lora.loraplus_lr_ratio=16", "train.weight_decay=0.1"])
    model = methods.apply(spec, models.load_model(spec.model))
    args = TrainingArguments(output_dir=str(tmp_path), learning_rate=1e-3, weight_decay=0.1, optim="adamw_torch", use_cpu=True)
    opt, _ = methods.optimizers(spec, model, args)
    names = {id(p): n for n, p in model.named_parameters()}
    lrs = {}
    for group in opt.param_groups:
        for p in group["params"]:
            lrs[names[id(p)]] = group["lr"]
    assert {v for k, v in lrs.items() if "lora_A" in k} == {1e-3}
    assert [round(v, 9) for v in {v for k, v in lrs.items() if "lora_B" in k}] == [0.016]


def test_tensorboard_logs_into_the_run_folder(tiny_model, tmp_path, data_dir):
    pytest.importorskip("tensorboard")
    from studio.run import events
    from studio.train import job as train

    spec = specmod.load(None, tiny_spec(tiny_model, tmp_path, data_dir) + ["train.report_to=tensorboard", "train.max_steps=2"])
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    train.run(spec, run_dir, events.EventWriter(run_dir))
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))


REFUSED = [
    (["model.quantization_bit=4", "method.finetuning_type=full"], ["model.quantization_bit", "method.finetuning_type"]),
    (["model.quantization_bit=8", "method.finetuning_type=freeze"], ["model.quantization_bit", "method.finetuning_type"]),
    (["model.quantization_bit=4", "method.finetuning_type=prefix"], ["model.quantization_bit", "method.finetuning_type"]),
    (["model.quantization_bit=4", "method.lora.pissa=true"], ["method.lora.pissa", "model.quantization_bit"]),
    (["data.packing=true", "method.finetuning_type=prompt"], ["data.packing", "method.finetuning_type"]),
    (["method.finetuning_type=ia3", "method.lora.dora=true"], ["method.lora.dora", "method.finetuning_type"]),
    (["method.finetuning_type=full", "method.lora.loraplus_lr_ratio=16"], ["method.lora.loraplus_lr_ratio"]),
    (["method.finetuning_type=prefix", "method.lora.layers=[0]"], ["method.lora.layers"]),
    (["method.lora.pissa=true", "method.lora.dora=true"], ["method.lora.pissa", "method.lora.dora"]),
    (["method.finetuning_type=adalora", "method.adalora.target_rank=16"], ["method.adalora.target_rank", "method.adalora.init_rank"]),
    (["method.finetuning_type=adalora", "train.max_steps=4", "method.adalora.tfinal=4"], ["method.adalora.tfinal", "train.max_steps"]),
    (["method.finetuning_type=freeze", "method.freeze.trainable_layers=0"], ["method.freeze.trainable_layers"]),
    (["method.finetuning_type=ptuning_v2", "train.gradient_checkpointing=true"], ["train.gradient_checkpointing", "method.finetuning_type"]),
    (["method.finetuning_type=ptuning", "method.prompt.init_text=hello"], ["method.prompt.init_text"]),
    (["train.lr_scheduler_type=exponential"], ["train.lr_scheduler_type"]),
    (["train.optim=lion"], ["train.optim"]),
    (["train.warmup_steps=-1"], ["train.warmup_steps"]),
    (["train.neftune_alpha=0"], ["train.neftune_alpha"]),
    (["train.report_to=comet"], ["train.report_to"]),
]


@pytest.mark.parametrize("overrides,fields", REFUSED, ids=[" ".join(o) for o, _ in REFUSED])
def test_invalid_combinations_are_refused_naming_the_fields(overrides, fields):
    with pytest.raises(specmod.SpecError) as e:
        specmod.load(ROOT / "examples" / "identity_lora.yaml", overrides)
    for f in fields:
        assert f in str(e.value)


def test_preflight_refuses_what_this_machine_lacks(monkeypatch):
    import importlib.util

    import torch

    from studio.model import methods

    if not torch.cuda.is_available():
        with pytest.raises(specmod.SpecError, match="train.compute_dtype=fp16"):
            methods.preflight(specmod.load(None, ["train.compute_dtype=fp16"]))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(specmod.SpecError, match=r"train.report_to=wandb: the `wandb` package is not installed"):
        methods.preflight(specmod.load(None, ["train.report_to=wandb"]))


def test_cli_refuses_before_starting_a_job(tiny_model, tmp_path, studio_cmd):
    """The refusal comes before launch: a clear `error:` line, no traceback, no run folder."""
    over = tiny_spec(tiny_model, tmp_path, **{"model.quantization_bit": 4, "method.finetuning_type": "full"})
    res = subprocess.run([*studio_cmd, "train", str(ROOT / "examples" / "identity_lora.yaml"), *over],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0
    assert "error: " in res.stderr and "model.quantization_bit=4" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "run").exists()
    if sys.platform.startswith("linux"):
        res = subprocess.run([*studio_cmd, "train", str(ROOT / "examples" / "identity_lora.yaml"),
                              *tiny_spec(tiny_model, tmp_path, **{"train.compute_dtype": "fp16"})],
                             cwd=ROOT, capture_output=True, text=True, timeout=120)
        import torch

        if not torch.cuda.is_available():
            assert res.returncode != 0 and "train.compute_dtype=fp16" in res.stderr and "Traceback" not in res.stderr
            assert not (tmp_path / "run").exists()


def test_train_tab_shows_each_methods_options_for_that_method_only():
    pytest.importorskip("gradio")
    from studio.ui import train_tab

    shown: dict = {}
    for _, types, names in train_tab.METHOD_GROUPS:
        for n in names:
            assert n not in shown, f"{n} is in two groups: a field is drawn once, so the second group would lack it"
            shown[n] = set(types)
    prompt_style = {"prefix", "prompt", "ptuning", "ptuning_v2"}
    expected = {f"method.lora.{n}": {"lora"} for n in ("rank", "dora", "rslora", "pissa", "loraplus_lr_ratio", "layers", "modules_to_save")}
    expected |= {"method.lora.alpha": {"lora", "adalora"}, "method.lora.dropout": {"lora", "adalora"},
                 "method.lora.target": {"lora", "adalora", "ia3"}}
    expected |= {f"method.adalora.{n}": {"adalora"} for n in ("init_rank", "target_rank", "tinit", "tfinal", "delta_t")}
    expected |= {f"method.freeze.{n}": {"freeze"} for n in ("trainable_layers", "trainable_modules", "extra_modules")}
    expected |= {"method.prompt.num_virtual_tokens": prompt_style, "method.prompt.encoder_hidden_size": {"prefix", "ptuning"},
                 "method.prompt.init_text": {"prompt"}}
    assert shown == expected
    for name in ("train.neftune_alpha", "train.report_to", "train.report_offline", "model.quantization_type", "model.double_quantization",
                 "train.optim", "train.weight_decay", "train.max_grad_norm", "train.warmup_steps", "train.gradient_checkpointing"):
        assert name in train_tab.MORE or any(name in g for g in train_tab.GROUPS), name
