"""Merging LoRA adapters (`studio merge`, PEFT's add_weighted_adapter) on the tiny model: the exact method's merged
update is the weighted sum of the adapters' updates and loads like a training run's adapter (TIES: the page's test), and
adapters that cannot be merged are refused before the job starts, each with its reason.

    .venv/bin/python -m pytest -q tests/test_merge.py
"""
from __future__ import annotations

import json
import subprocess

import pytest


def lora(tiny_model, folder, seed: int, r: int = 4, kind: str = "lora", base: str | None = None):
    """A LoRA (or IA3) adapter of the tiny model with random, non-zero weights, saved to `folder`."""
    import torch
    from peft import IA3Config, LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    config = (LoraConfig(r=r, lora_alpha=2 * r, target_modules=["q_proj", "v_proj"]) if kind == "lora"
              else IA3Config(target_modules=["q_proj", "v_proj"], feedforward_modules=[]))
    peft_model = get_peft_model(model, config)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_B" in name or "ia3_l" in name:
                p.normal_(0, 0.05)
    peft_model.save_pretrained(folder)
    if base:
        cfg = json.loads((folder / "adapter_config.json").read_text())
        (folder / "adapter_config.json").write_text(json.dumps({**cfg, "base_model_name_or_path": base}))
    return folder


def delta(adapter_dir, module: str = "model.layers.0.self_attn.q_proj"):
    """The update B @ A * scaling of one module of a saved LoRA adapter."""
    from safetensors.torch import load_file

    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    w = load_file(adapter_dir / "adapter_model.safetensors")
    a = next(v for k, v in w.items() if module in k and "lora_A" in k)
    b = next(v for k, v in w.items() if module in k and "lora_B" in k)
    return (b @ a) * (cfg["lora_alpha"] / cfg["r"])


def merge(studio_cmd, tmp_path, tiny_model, *over):
    return subprocess.run([*studio_cmd, "merge", f"model.name_or_path={tiny_model}", f"output_dir={tmp_path / 'merged'}",
                           *over], capture_output=True, text=True, timeout=300, cwd=tmp_path)


@pytest.fixture(scope="module")
def two(tiny_model, tmp_path_factory):
    root = tmp_path_factory.mktemp("adapters")
    return lora(tiny_model, root / "a", 1), lora(tiny_model, root / "b", 2)


def test_cat_is_the_weighted_sum_and_loads_like_a_run(studio_cmd, tmp_path, tiny_model, two):
    a, b = two
    out = merge(studio_cmd, tmp_path, tiny_model, f"merge.adapters=[{a},{b}]", "merge.weights=[0.5,2]", "merge.method=cat",
                "merge.prompts=[Hello]")
    assert out.returncode == 0, out.stdout + out.stderr
    merged = tmp_path / "merged" / "adapter"
    want = 0.5 * delta(a) + 2 * delta(b)
    assert (delta(merged) - want).abs().max() < 1e-5
    assert json.loads((merged / "adapter_config.json").read_text())["r"] == 8  # cat: the ranks add up
    end = [json.loads(x) for x in (tmp_path / "merged" / "events.jsonl").read_text().splitlines()][-1]
    assert end["event"] == "done" and end["method"] == "cat" and end["answers"][0]["prompt"] == "Hello"
    assert "merged 2 adapters (cat" in out.stdout

    from studio.model.source import resolve_folder

    r = resolve_folder(tmp_path / "merged", str(tiny_model))  # what chat, evaluate, serve and export resolve
    assert r.adapter == merged and r.trained_on == str(tiny_model) and r.peft_type == "LORA"
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), str(r.adapter))


def test_what_cannot_be_merged_is_refused_before_the_job_with_its_reason(studio_cmd, tmp_path, tiny_model, two, capsys):
    a, b = two
    r8 = lora(tiny_model, tmp_path / "r8", 3, r=8)
    ia3 = lora(tiny_model, tmp_path / "ia3", 4, kind="ia3")
    other = lora(tiny_model, tmp_path / "other", 5, base="HuggingFaceTB/SmolLM2-360M")
    cases = [
        ([f"merge.adapters=[{a}]"], "two or more adapters"),
        ([f"merge.adapters=[{a},{r8}]", "merge.method=linear"], "ranks [4, 8]"),
        ([f"merge.adapters=[{a},{ia3}]"], "a IA3 adapter"),
        ([f"merge.adapters=[{a},{other}]"], "was trained on `HuggingFaceTB/SmolLM2-360M`"),
        ([f"merge.adapters=[{a},{b}]", "merge.method=ties", "merge.density=0"], "merge.density"),
        ([f"merge.adapters=[{a},{tmp_path / 'nowhere'}]"], "merge.adapters[1]"),
    ]
    from studio.cli import main

    for over, said in cases:  # `studio merge ...` in this process: each is refused before a child would start
        rc = main(["merge", f"model.name_or_path={tiny_model}", f"output_dir={tmp_path / 'merged'}", *over])
        err = capsys.readouterr().err
        assert rc == 2 and said in err and "Traceback" not in err, (over, err)
        assert not (tmp_path / "merged").exists()  # nothing started
    out = merge(studio_cmd, tmp_path, tiny_model, f"merge.adapters=[{a},{r8}]", "merge.method=ties_svd", "merge.prompts=[]")
    assert out.returncode == 0, out.stderr  # an _svd method takes adapters of different ranks
    assert json.loads((tmp_path / "merged" / "adapter" / "adapter_config.json").read_text())["r"] == 8
