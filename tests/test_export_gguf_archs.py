"""GGUF for Qwen2, Qwen3 and Mistral (tiny random models built from a config), k-quants made by llama.cpp's
quantizer, the usual file modes of an export, and the model card's usage snippet run as written."""
from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from studio.export import gguf as export_gguf
from studio.export import quant as export_quant
from studio import spec as specmod
from test_export import _export

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # llama.cpp's OpenMP threads must not spin on a busy machine
QWEN2_PRE = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": export_gguf.QWEN2_SPLIT}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}


def tiny(root: Path, default_model_dir: Path, kind: str, qwen_tokenizer: bool = False, train_steps: int = 0, **over) -> Path:
    """A 2-layer random model of `kind` with the default model's tokenizer and chat template.

    `train_steps`: a few AdamW steps on the identity data, so that next-token choices are clear-cut; a random
    model's are near ties over 49k tokens, which 4-bit rounding flips at most positions (measured: next-token
    agreement 0.34 for q4_k_m untrained, 0.99 after 8 steps). `qwen_tokenizer`: the Qwen2 pre-tokenizer (one
    digit per token) in place of the default model's GPT-2 one.
    """
    import torch
    import transformers
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    config_cls, model_cls = {"qwen2": ("Qwen2Config", "Qwen2ForCausalLM"), "qwen3": ("Qwen3Config", "Qwen3ForCausalLM"),
                             "mistral": ("MistralConfig", "MistralForCausalLM")}[kind]
    args = dict(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=True,
                bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    args.update(over)
    out = root / f"tiny-{kind}"
    torch.manual_seed(0)
    model = getattr(transformers, model_cls)(getattr(transformers, config_cls)(**args))
    if train_steps:
        _train(model, tok, train_steps)
    model.save_pretrained(out)
    tok.save_pretrained(out)
    if qwen_tokenizer:
        tj = json.loads((out / "tokenizer.json").read_text())
        tj["pre_tokenizer"] = QWEN2_PRE
        (out / "tokenizer.json").write_text(json.dumps(tj))
    return out


def _train(model, tok, steps: int) -> None:
    import torch

    from conftest import ROOT

    data = json.loads((ROOT / "data" / "identity.json").read_text())
    texts = [tok.apply_chat_template([{"role": "user", "content": d["instruction"]}, {"role": "assistant", "content": d["output"]}],
                                     tokenize=False) for d in data]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model.train()
    for s in range(steps):
        enc = tok(texts[s * 4:(s + 1) * 4], return_tensors="pt", padding=True, add_special_tokens=False)
        model(**enc, labels=enc.input_ids.masked_fill(enc.attention_mask == 0, -100)).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()


def _tensors(path: Path) -> dict:
    r = export_quant.reader(path)
    return {t.name: t.tensor_type.name for t in r.tensors}, r.fields


def _llama_cpp_continuation(path: Path, ids: list[int], n: int) -> list[int]:
    import llama_cpp

    llm = llama_cpp.Llama(str(path), n_ctx=256, verbose=False, n_threads=2)
    try:
        out = []
        for t in llm.generate(ids, temp=0.0, top_k=1):
            out.append(t)
            if len(out) == n:
                return out
    finally:
        llm.close()


def test_tiny_qwen2_q4_k_m_continues_like_transformers(default_model_dir, tmp_path):
    """The must-show: a Qwen2-architecture export writes a Q4_K_M GGUF that llama.cpp loads and continues like
    transformers for its first tokens; the Modelfile points at it."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    pytest.importorskip("llama_cpp")
    model = tiny(tmp_path, default_model_dir, "qwen2", qwen_tokenizer=True, train_steps=8)
    rc, events = _export(tmp_path / "exp", f"model.name_or_path={model}", "export.gguf=[q4_k_m]", "export.dtype=fp32")
    done = events[-1]
    assert rc == 0 and done["event"] == "done", done
    out = Path(done["export_dir"])
    assert sorted(p.name for p in out.glob("*.gguf")) == ["model-q4_k_m.gguf"]  # the f16 source was not kept
    types, fields = _tensors(out / "model-q4_k_m.gguf")
    assert fields["general.architecture"].contents() == "qwen2" and fields["tokenizer.ggml.pre"].contents() == "qwen2"
    assert types["blk.0.attn_q.bias"] == "F32" and types["blk.0.attn_k.bias"] == "F32" and types["blk.0.attn_v.bias"] == "F32"
    assert types["blk.0.attn_q.weight"] == "Q4_K" and "Q6_K" in types.values()
    quant = done["gguf_quant"]["model-q4_k_m.gguf"]
    assert quant["fallback"] == {} and quant["tensor_types"]["Q4_K"] > 0
    check = done["verify"]["gguf"]["model-q4_k_m.gguf"]
    assert check["ok"] and check["same_tokens_as_tokenizer"], check
    assert check["first_tokens_same"] == check["first_tokens"] == 8, check
    # the same, measured here: transformers' greedy continuation vs llama.cpp's
    tok = AutoTokenizer.from_pretrained(out)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is 12 plus 30?"}], tokenize=False, add_generation_prompt=True)
    ids = tok(prompt, add_special_tokens=False).input_ids
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    with torch.no_grad():
        want = hf.generate(torch.tensor([ids]), max_new_tokens=6, do_sample=False, eos_token_id=None)[0, len(ids):].tolist()
    assert _llama_cpp_continuation(out / "model-q4_k_m.gguf", ids, 6) == want
    assert (out / "Modelfile").read_text().startswith("FROM ./model-q4_k_m.gguf")
    card = (out / "README.md").read_text()
    assert "`model-q4_k_m.gguf` in llama.cpp" in card and "first 8 of 8 tokens as transformers" in card
    assert "every matrix k-quantized" in card
    report = json.loads((out / "verify.json").read_text())
    assert report["gguf"]["model-q4_k_m.gguf"]["top1_agreement"] == check["top1_agreement"]


def test_tiny_qwen3_k_quants_and_fallback(default_model_dir, tmp_path):
    """Qwen3 (q_norm/k_norm, explicit head_dim): f16 and the k-quants; the MLP rows of 320 values cannot be
    k-quantized, llama.cpp falls back for those tensors and the export says so."""
    pytest.importorskip("llama_cpp")
    model = tiny(tmp_path, default_model_dir, "qwen3", qwen_tokenizer=True, train_steps=8, intermediate_size=320, head_dim=64)
    rc, events = _export(tmp_path / "exp", f"model.name_or_path={model}", "export.gguf=[Q6_K,f16]", "export.dtype=fp32")
    done = events[-1]
    assert rc == 0 and done["event"] == "done", done
    out = Path(done["export_dir"])
    assert done["gguf"] == ["model-f16.gguf", "model-q6_k.gguf"]  # f16 first: the quantizer's source
    types, fields = _tensors(out / "model-f16.gguf")
    assert fields["general.architecture"].contents() == "qwen3"
    assert types["blk.1.attn_q_norm.weight"] == "F32" and types["blk.1.attn_k_norm.weight"] == "F32"
    assert fields["qwen3.attention.key_length"].contents() == 64
    for name in ("model-q6_k.gguf",):
        fb = done["gguf_quant"][name]["fallback"]
        assert set(fb) == {"blk.0.ffn_down.weight", "blk.1.ffn_down.weight"}, fb
        assert all("rows of 320 values, not a multiple of 256" in v for v in fb.values())
        assert any(f"{name}: 2 tensor(s) could not be k-quantized" in e.get("text", "") for e in events)
        assert _tensors(out / name)[0]["blk.0.ffn_up.weight"].endswith("_K")
    for name, g in done["verify"]["gguf"].items():
        assert g["ok"] and g["same_tokens_as_tokenizer"], (name, g)
    assert done["verify"]["gguf"]["model-f16.gguf"]["top1_agreement"] == 1.0
    assert (out / "Modelfile").read_text().startswith("FROM ./model-f16.gguf")  # no q4_k_m written


def test_tiny_mistral_gguf(default_model_dir, tmp_path):
    """Mistral is written as llama (q/k rows permuted); f16 agrees with transformers at every position."""
    model = tiny(tmp_path, default_model_dir, "mistral", hidden_size=64, intermediate_size=128, sliding_window=None)
    rc, events = _export(tmp_path / "exp", f"model.name_or_path={model}", "export.gguf=[f16]", "export.dtype=fp32")
    done = events[-1]
    assert rc == 0 and done["event"] == "done", done
    out = Path(done["export_dir"])
    types, fields = _tensors(out / "model-f16.gguf")
    assert fields["general.architecture"].contents() == "llama" and fields["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert "blk.0.attn_q.bias" not in types
    pytest.importorskip("llama_cpp")
    g = done["verify"]["gguf"]["model-f16.gguf"]
    assert g["ok"] and g["top1_agreement"] == 1.0 and g["first_tokens_same"] == 8, g


def test_k_quants_refused_without_llama_cpp(tiny_model, tmp_path, monkeypatch, capsys):
    from studio import cli

    monkeypatch.setattr(export_quant, "available", lambda: False)
    assert cli.main(["export", str(_spec_file(tmp_path, tiny_model)), "export.gguf=[q4_k_m,f16]", "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert "q4_k_m are made by llama.cpp's quantizer" in err and "llama-cpp-python is not installed" in err
    with pytest.raises(specmod.SpecError, match="export.gguf: q4_k_x not known; choose from q4_k_m, f16"):
        specmod.load(None, ["task=export", "export.gguf=[q4_k_x]"])


def _spec_file(tmp_path: Path, model: Path) -> Path:
    f = tmp_path / "e.yaml"
    f.write_text(f"task: export\noutput_dir: {tmp_path / 'exp'}\nmodel: {{name_or_path: {model}}}\n")
    return f


SNIPPET_GUARD = "import sys\nsys.modules['peft'] = None  # plain transformers only\n"


def test_export_files_readable_and_card_snippet_runs(tiny_model, tmp_path):
    old = os.umask(0o022)
    try:
        rc, events = _export(tmp_path / "exp", f"model.name_or_path={tiny_model}", "export.gguf=[]", "export.verify=false")
    finally:
        os.umask(old)
    assert rc == 0, events[-1]
    out = tmp_path / "exp" / "export"
    modes = {p.name: oct(stat.S_IMODE(p.stat().st_mode)) for p in out.iterdir() if p.is_file()}
    assert modes["model.safetensors"] == "0o644" and set(modes.values()) == {"0o644"}, modes
    card = (out / "README.md").read_text()
    code = re.search(r"## Use\n\n```python\n(.*?)```", card, re.S).group(1)
    assert f'PATH = "{out.resolve()}"' in code
    res = subprocess.run([sys.executable, "-c", SNIPPET_GUARD + code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip()  # the random model answers something
