"""Training through the real CLI and child process: events, run folder, abort and resume, and the default model."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from conftest import ROOT, tiny_spec
from studio.run import events as ev
from studio.run import status as runs

LOG_KEYS = {"step", "epoch", "loss", "learning_rate", "grad_norm", "tokens_per_second", "elapsed_s", "eta_s", "t"}


def _train(args, **kw):
    return subprocess.run([sys.executable, "-m", "studio", "train", str(ROOT / "examples" / "identity_lora.yaml"), *args],
                          capture_output=True, text=True, cwd=ROOT, timeout=600, **kw)


def test_train_writes_the_run_folder(tiny_model, tmp_path):
    r = _train(tiny_spec(tiny_model, tmp_path))
    assert r.returncode == 0, r.stdout + r.stderr
    run = tmp_path / "run"
    events = ev.read_all(run)
    kinds = [e["event"] for e in events]
    assert kinds[0] == "message" and "start" in kinds and kinds[-1] == "done" and kinds.count("done") == 1
    assert all("t" in e for e in events)
    logs = [e for e in events if e["event"] == "log"]
    assert [e["step"] for e in logs] == [1, 2, 3, 4] and all(LOG_KEYS <= set(e) for e in logs)
    assert all(torch.isfinite(torch.tensor(e["loss"])) for e in logs)
    assert {e["step"] for e in events if e["event"] == "checkpoint"} == {2, 4}
    start = next(e for e in events if e["event"] == "start")
    assert start["total_steps"] == 4 and 0 < start["trainable_params"] < start["total_params"]
    assert (run / "spec.yaml").exists() and (run / "output.log").stat().st_size > 0
    assert (run / "adapter" / "adapter_config.json").exists() and (run / "checkpoint-4").is_dir()
    assert runs.status(run) == "done" and "step 4/4" in r.stdout
    weights = [run / "adapter" / "adapter_model.safetensors", *(run / "checkpoint-4").glob("*.safetensors")]
    assert len(weights) >= 2 and all(w.stat().st_mode & 0o044 == 0o044 for w in weights)  # readable by others (umask 022)
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(run / "adapter"))  # plain peft loads it


def test_user_errors_exit_nonzero_without_traceback(tiny_model, tmp_path):
    r = _train(tiny_spec(tiny_model, tmp_path, **{"data.dataset": "[identiti]"}))
    assert r.returncode == 2 and "Did you mean: identity" in r.stderr and "Traceback" not in r.stderr
    r = _train(tiny_spec(tiny_model, tmp_path, **{"data.cutoff_len": 12}))
    assert r.returncode == 1 and "no trainable tokens" in r.stderr and "Traceback" not in r.stderr
    err = [e for e in ev.read_all(tmp_path / "run") if e["event"] == "error"]
    assert err and "no trainable tokens" in err[-1]["message"] and err[-1]["traceback"] == ""


def test_sigterm_aborts_saves_and_resume_continues(tiny_model, tmp_path):
    run = tmp_path / "run"
    args = tiny_spec(tiny_model, tmp_path, **{"train.max_steps": 100000, "train.save_steps": 100000})
    proc = subprocess.Popen([sys.executable, "-m", "studio", "train", str(ROOT / "examples" / "identity_lora.yaml"), *args, "--detach"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    proc.wait(timeout=60)
    deadline = time.time() + 180
    while time.time() < deadline and not any(e["event"] == "log" and e["step"] >= 3 for e in ev.read_all(run)):
        time.sleep(0.2)
    job = runs.job_info(run)
    assert runs.status(run) == "running"
    os.kill(job["pid"], signal.SIGTERM)
    deadline = time.time() + 60
    while time.time() < deadline and runs.group_alive(job["pgid"]):
        time.sleep(0.2)
    assert not runs.group_alive(job["pgid"]), "a process of the job is still alive"
    last = ev.final(ev.read_all(run))
    assert last["event"] == "aborted" and last["step"] >= 3
    step = last["step"]
    assert (run / f"checkpoint-{step}" / "optimizer.pt").exists() and (run / "adapter" / "adapter_config.json").exists()
    assert runs.status(run) == "aborted"

    r = _train(tiny_spec(tiny_model, tmp_path, **{"train.max_steps": step + 2, "train.resume_from_checkpoint": "auto"}))
    assert r.returncode == 0, r.stdout + r.stderr
    events = ev.read_all(run)
    starts = [e for e in events if e["event"] == "start"]
    assert starts[-1]["resumed_from"] == step
    new_logs = [e["step"] for e in events[events.index(starts[-1]):] if e["event"] == "log"]
    assert new_logs == [step + 1, step + 2] and runs.status(run) == "done"
    state = json.loads((run / f"checkpoint-{step + 2}" / "trainer_state.json").read_text())
    assert state["global_step"] == step + 2


@pytest.mark.slow
def test_identity_run_on_the_default_model(identity_run, default_model_dir):
    """The shipped example teaches the default model its new name; base weights stay as they were."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    events = ev.read_all(identity_run)
    assert ev.final(events)["event"] == "done"
    losses = [e["loss"] for e in events if e["event"] == "log"]
    assert all(torch.isfinite(torch.tensor(losses))) and sum(losses[-4:]) / 4 < 0.5 * sum(losses[:4]) / 4

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    base = AutoModelForCausalLM.from_pretrained(default_model_dir)
    before = {k: v.clone() for k, v in base.state_dict().items()}

    def ask(model, q="Who are you?"):
        ids = tok.apply_chat_template([{"role": "user", "content": q}], add_generation_prompt=True, return_tensors="pt", return_dict=True)
        out = model.generate(**ids, max_new_tokens=24, do_sample=False)
        return tok.decode(out[0][ids["input_ids"].shape[1]:], skip_special_tokens=True)

    assert "Pico" not in ask(base)
    model = PeftModel.from_pretrained(base, str(identity_run / "adapter"))
    assert "Pico" in ask(model) and "Pico" in ask(model, "What is your name?")
    other = ask(model, "What is the capital of France?")  # the rest of what it knew is still there
    assert "Paris" in other and "Pico" not in other, other
    lora_b = [v for k, v in model.state_dict().items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)  # B starts at zero: every one was trained
    for k, v in model.get_base_model().state_dict().items():
        k = k.replace(".base_layer", "")
        if k in before:
            assert torch.equal(before[k], v), f"base weight {k} changed"


@pytest.mark.parametrize("packing", [False, True])
def test_cpu_trainer_loss_and_gradients_match_trl(tiny_model, tmp_path, packing):
    """The CPU trainer's plain loss equals TRL's fused-head loss, with the gradient-accumulation normaliser."""
    from trl import SFTTrainer

    from studio.model import methods
    from studio.model import models
    from studio import spec as specmod
    from studio.data import encode
    from studio.data.templates import Template
    from studio.train.stages.sft import sft_config, trainer_class

    spec = specmod.load(ROOT / "examples" / "identity_lora.yaml",
                        tiny_spec(tiny_model, tmp_path, **{"data.packing": str(packing).lower()}))
    tok = models.load_tokenizer(spec.model.name_or_path)
    train, _, _ = encode.build(spec, tok, Template(spec.model.template, tok))
    model = methods.apply(spec, models.load_model(spec.model, "fp32"))
    model.config.use_cache = False
    ours, trl = (cls(model=model, args=sft_config(spec, tmp_path / "out", False), train_dataset=train, processing_class=tok)
                 for cls in (trainer_class(), SFTTrainer))
    assert (type(ours) is SFTTrainer) == torch.cuda.is_available()  # the plain loss on the CPU, TRL's on a GPU
    batch = next(iter(trl.get_train_dataloader()))
    assert ("position_ids" in batch) == packing
    items = int((batch["labels"][:, 1:] != -100).sum()) * 2  # as if a second micro-batch of the same size followed
    results = []
    for trainer in (ours, trl):
        model.zero_grad()
        loss = trainer.compute_loss(model, dict(batch), num_items_in_batch=torch.tensor(items))
        loss.backward()
        results.append((loss.item(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (a, ga), (b, gb) = results
    assert abs(a - b) < 1e-4 * abs(b) and a > 0
    assert max((ga[n] - gb[n]).abs().max().item() for n in ga) < 1e-5
