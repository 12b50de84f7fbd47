"""Export: merge, verify, GGUF, Modelfile, refusals; the identity run end to end through the CLI (slow)."""
from __future__ import annotations

import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from studio.run import events as ev
from studio.export import job as export
from studio.export import gguf as export_gguf
from studio.export import quant
from studio import spec as specmod
from conftest import ROOT

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # llama.cpp's OpenMP threads must not spin on a busy machine
SAMPLE = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Pico."},
          {"role": "user", "content": "What can you do?"}]


# --- helpers ------------------------------------------------------------------------------------------------


def _adapter_run(root: Path, tiny_model: Path, config) -> Path:
    """A run folder holding a real PEFT adapter (random, non-zero update) on the tiny model, and its spec."""
    import peft
    import torch
    from transformers import AutoModelForCausalLM

    run = root / "run"
    spec = specmod.load(None, [f"output_dir={run}", f"model.name_or_path={tiny_model}", "data.dataset=[identity]",
                               "train.learning_rate=0.01", "train.max_steps=4"])
    torch.manual_seed(1)
    model = peft.get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), config)
    model.save_pretrained(run / "adapter")
    specmod.dump(spec, run / "spec.yaml")
    specmod.dump(spec, run / "adapter" / "spec.yaml")
    ev.EventWriter(run, enabled=True).write("done", step=4, train_loss=1.2345)
    return run


@pytest.fixture(scope="module")
def lora_run(tiny_model, tmp_path_factory) -> Path:
    import peft

    cfg = peft.LoraConfig(task_type="CAUSAL_LM", r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    return _adapter_run(tmp_path_factory.mktemp("lora"), tiny_model, cfg)


def _export(out: Path, *overrides: str) -> tuple[int, list[dict]]:
    """Run the export child's main() in this process (the CLI path is covered by the slow test)."""
    spec = specmod.load(None, ["task=export", f"output_dir={out}", *overrides])
    specmod.dump(spec, out / "spec.yaml")
    old = signal.getsignal(signal.SIGTERM), signal.getsignal(signal.SIGINT)
    try:
        rc = export.main([str(out)])
    finally:
        signal.signal(signal.SIGTERM, old[0])
        signal.signal(signal.SIGINT, old[1])
    return rc, ev.read_all(out)


def _logits(model, tok, text: str):
    import torch

    with torch.no_grad():
        return model(**tok(text, return_tensors="pt", add_special_tokens=False)).logits[0].float()


def render_ollama(modelfile: str, messages: list[dict]) -> str:
    """Render the Modelfile's TEMPLATE for `messages` the way Ollama does for this fixed structure:
    SYSTEM is inserted as the first message when there is none; each role gets its text around .Content;
    the last user turn adds the generation prompt; the last assistant turn stays open."""
    template = re.search(r'TEMPLATE """(.*?)"""', modelfile, re.S).group(1)
    system = re.search(r'SYSTEM """(.*?)"""', modelfile, re.S)
    parts = re.fullmatch(
        r'\{\{- range \$i, \$_ := \.Messages \}\}\{\{ \$last := eq \(len \(slice \$\.Messages \$i\)\) 1 \}\}'
        r'\{\{ if eq \.Role "system" \}\}(.*?)\{\{ \.Content \}\}(.*?)'
        r'\{\{ else if eq \.Role "assistant" \}\}(.*?)\{\{ \.Content \}\}\{\{ if not \$last \}\}(.*?)\{\{ end \}\}'
        r'\{\{ else \}\}(.*?)\{\{ \.Content \}\}(.*?)\{\{ if \$last \}\}(.*?)\{\{ end \}\}\{\{ end \}\}\{\{ end \}\}', template, re.S)
    assert parts, template
    sys_pre, sys_post, a_pre, a_post, u_pre, u_post, gen = parts.groups()
    msgs = list(messages)
    if system and msgs[0]["role"] != "system":
        msgs.insert(0, {"role": "system", "content": system.group(1)})
    out = ""
    for i, m in enumerate(msgs):
        last = i == len(msgs) - 1
        if m["role"] == "system":
            out += sys_pre + m["content"] + sys_post
        elif m["role"] == "assistant":
            out += a_pre + m["content"] + ("" if last else a_post)
        else:
            out += u_pre + m["content"] + u_post + (gen if last else "")
    return out


# --- fast tests on the tiny model ---------------------------------------------------------------------------


def test_lora_merge_verify_gguf(lora_run, tiny_model, tmp_path):
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    rc, events = _export(tmp_path / "exp", f"model.name_or_path={tiny_model}", f"model.adapter={lora_run}",
                         "export.dtype=fp32", "export.gguf=[f16,q8_0]", "export.max_shard_size=2MB")
    done = events[-1]
    assert rc == 0 and done["event"] == "done", done
    out = Path(done["export_dir"])
    assert out == tmp_path / "exp" / "export" and (out / "export.json").exists()
    assert not list(out.parent.glob(".export.partial*"))
    shards = sorted(out.glob("model-*.safetensors"))
    assert len(shards) == 2 and (out / "model.safetensors.index.json").exists()  # the 12.6 MB embedding, then the rest
    assert not (out / "adapter_config.json").exists()
    # reloaded with plain transformers: equals base + adapter, and differs from the bare base
    tok = AutoTokenizer.from_pretrained(out)
    text = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], tokenize=False, add_generation_prompt=True)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    assert type(merged).__name__ == "LlamaForCausalLM"
    base = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    bare = _logits(base, tok, text)
    with_adapter = _logits(peft.PeftModel.from_pretrained(base, str(lora_run / "adapter")), tok, text)
    got = _logits(merged, tok, text)
    assert (got - with_adapter).abs().max() < 1e-3
    assert (bare - with_adapter).abs().max() > 0.05
    report = json.loads((out / "verify.json").read_text())
    assert report["ok"] and report["max_logit_diff"] < 1e-3 and done["max_logit_diff"] == report["max_logit_diff"]
    # tokenizer, generation config, spec copy, model card
    assert tok.chat_template == AutoTokenizer.from_pretrained(tiny_model).chat_template
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == tok.convert_tokens_to_ids("<|im_end|>")
    assert specmod.load(out / "training_spec.yaml").model.name_or_path == str(tiny_model)
    card = (out / "README.md").read_text()
    for needle in (str(tiny_model), "identity", "lora", "| learning_rate | 0.01 |", "| train_loss | 1.2345 |", "passed"):
        assert needle in card, needle
    # GGUF metadata
    r = quant.reader(out / "model-f16.gguf")
    f = r.fields
    assert f["general.architecture"].contents() == "llama" and f["tokenizer.ggml.model"].contents() == "gpt2"
    assert f["tokenizer.ggml.pre"].contents() == "gpt-2"
    assert len(f["tokenizer.ggml.tokens"].data) == 49152 and f["tokenizer.ggml.tokens"].contents(2) == "<|im_end|>"
    merges = json.loads((out / "tokenizer.json").read_text())["model"]["merges"]
    assert len(f["tokenizer.ggml.merges"].data) == len(merges)
    assert f["tokenizer.ggml.eos_token_id"].contents() == 2 and f["tokenizer.ggml.bos_token_id"].contents() == 1
    assert f["tokenizer.chat_template"].contents() == tok.chat_template
    types = {t.name: t.tensor_type.name for t in r.tensors}
    assert types["blk.0.attn_q.weight"] == "F16" and types["blk.0.attn_norm.weight"] == "F32" and "output.weight" not in types
    q8 = {t.name: t.tensor_type.name for t in quant.reader(out / "model-q8_0.gguf").tensors}
    assert q8["blk.0.attn_q.weight"] == "Q8_0"
    assert (out / "model-q8_0.gguf").stat().st_size < 0.7 * (out / "model-f16.gguf").stat().st_size
    # llama.cpp loaded both files back during the export (the bindings are installed by `make test`)
    pytest.importorskip("llama_cpp")
    for name in ("model-f16.gguf", "model-q8_0.gguf"):
        g = report["gguf"][name]
        assert g["ok"] and g["same_tokens_as_tokenizer"] and g["top1_agreement"] >= 0.95, (name, g)
    assert report["gguf"]["model-f16.gguf"]["max_logit_diff"] < 0.01
    modelfile = (out / "Modelfile").read_text()
    assert modelfile.startswith("FROM ./model-f16.gguf") and 'PARAMETER stop "<|im_end|>"' in modelfile
    assert render_ollama(modelfile, SAMPLE) == tok.apply_chat_template(SAMPLE, tokenize=False, add_generation_prompt=True)


@pytest.mark.parametrize("name", ["auto", "alpaca", "vicuna", "chatml", "default"])
def test_modelfile_template_renders_like_chat_template(default_model_dir, name):
    from transformers import AutoTokenizer

    from studio.data.templates import Template

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    template = Template(name, tok)
    tok.chat_template = template.chat_template()
    fmt = export_gguf.turn_format(lambda m, g: tok.apply_chat_template(m, tokenize=False, add_generation_prompt=g))
    assert fmt is not None
    modelfile = export_gguf.modelfile("model-f16.gguf", fmt, [template.stop])
    for msgs in (SAMPLE, [{"role": "system", "content": "Be terse."}, *SAMPLE]):
        want = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
        assert render_ollama(modelfile, msgs) == want
        assert want.endswith(template.prompt([msgs[-1]])[-12:])


def test_full_model_export_and_earlier_export_replaced(tiny_model, tmp_path):
    rc, events = _export(tmp_path / "exp", f"model.name_or_path={tiny_model}", "export.gguf=[]", "export.dtype=bf16")
    assert rc == 0, events[-1]
    out = tmp_path / "exp" / "export"
    assert events[-1]["verify"]["ok"] and events[-1]["verify"]["max_logit_diff"] < 0.5
    assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
    first = json.loads((out / "export.json").read_text())["created"]
    rc, events = _export(tmp_path / "exp", f"model.name_or_path={tiny_model}", "export.gguf=[]", "export.verify=false")
    assert rc == 0 and json.loads((out / "export.json").read_text())["created"] > first  # an earlier export is replaced


def test_qlora_adapter_is_merged_into_full_precision_weights(lora_run, tiny_model, tmp_path):
    import shutil

    run = tmp_path / "qlora_run"
    shutil.copytree(lora_run, run)
    for f in (run / "spec.yaml", run / "adapter" / "spec.yaml"):
        spec = specmod.load(f)
        spec.model.quantization_bit = 4
        specmod.dump(spec, f)
    rc, events = _export(tmp_path / "exp", f"model.name_or_path={tiny_model}", f"model.adapter={run}", "export.gguf=[]")
    assert rc == 0 and events[-1]["verify"]["ok"], events[-1]
    out = tmp_path / "exp" / "export"
    assert "quantization_config" not in json.loads((out / "config.json").read_text())
    assert "4-bit base" in (out / "README.md").read_text() and "full precision" in (out / "README.md").read_text()


def test_prompt_tuning_exports_the_adapter(tiny_model, tmp_path):
    import peft

    run = _adapter_run(tmp_path, tiny_model, peft.PromptTuningConfig(task_type="CAUSAL_LM", num_virtual_tokens=4))
    rc, events = _export(tmp_path / "exp", f"model.name_or_path={tiny_model}", f"model.adapter={run}")
    done = events[-1]
    assert rc == 0 and done["merged"] is False and "nothing to merge" in done["why_not_merged"]
    out = Path(done["export_dir"])
    assert (out / "adapter" / "adapter_config.json").exists() and not list(out.glob("*.safetensors"))
    assert "nothing to merge" in (out / "README.md").read_text()


def test_refusals(lora_run, tiny_model, tmp_path, capsys):
    from studio import cli

    spec_file = tmp_path / "e.yaml"
    spec_file.write_text(f"task: export\noutput_dir: {tmp_path / 'exp'}\nmodel: {{name_or_path: default, adapter: {lora_run}}}\n")
    # another base model than the adapter's: refused, naming both
    assert cli.main(["export", str(spec_file)]) == 2
    err = capsys.readouterr().err
    assert "trained on base model" in err and str(tiny_model) in err and "`default`" in err
    # no base named: it comes from the run, so the same spec passes the checks (dry run)
    spec_file.write_text(f"task: export\noutput_dir: {tmp_path / 'exp'}\nmodel: {{adapter: {lora_run}}}\n")
    assert cli.main(["export", str(spec_file), "--dry-run"]) == 0
    # an existing folder that is not an export: refused unless overwrite
    other = tmp_path / "mine"
    other.mkdir()
    (other / "notes.txt").write_text("keep me")
    assert cli.main(["export", str(spec_file), f"export.export_dir={other}", "--dry-run"]) == 2
    assert "not an earlier export" in capsys.readouterr().err and (other / "notes.txt").exists()
    assert cli.main(["export", str(spec_file), f"export.export_dir={other}", "export.overwrite=true", "--dry-run"]) == 0
    for where in (tmp_path, ROOT):  # a folder that holds the job's own folder, or the working folder: never replaced
        assert cli.main(["export", str(spec_file), f"export.export_dir={where}", "export.overwrite=true", "--dry-run"]) == 2
        assert "would replace" in capsys.readouterr().err
    with pytest.raises(specmod.SpecError, match="would replace the model"):
        export.target_dir(specmod.load(spec_file, [f"export.export_dir={lora_run}"]), export.find_source(
            specmod.load(spec_file, [f"model.name_or_path={tiny_model}"])))


def test_out_of_disk_removes_partial_output(lora_run, tiny_model, tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    args = (f"model.name_or_path={tiny_model}", f"model.adapter={lora_run}")
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 10**6, 10**6))
    rc, events = _export(tmp_path / "a", *args)
    assert rc == 1 and "not enough disk space" in events[-1]["message"] and "GB free" in events[-1]["message"]
    monkeypatch.undo()

    def full(*a, **k):  # the disk fills up while the GGUF file is written
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export_gguf, "write", full)
    rc, events = _export(tmp_path / "b", *args, "export.verify=false")
    assert rc == 1 and "out of disk space" in events[-1]["message"] and "partial output was removed" in events[-1]["message"]
    assert not events[-1]["traceback"]
    assert not (tmp_path / "b" / "export").exists() and not list((tmp_path / "b").glob(".export*"))


def test_sigterm_aborts_and_cleans_up(lora_run, tiny_model, tmp_path, monkeypatch):
    def slow(*a, **k):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)

    monkeypatch.setattr(export_gguf, "write", slow)
    rc, events = _export(tmp_path / "x", f"model.name_or_path={tiny_model}", f"model.adapter={lora_run}", "export.verify=false")
    assert rc == 130 and events[-1]["event"] == "aborted"
    assert any(e["event"] == "progress" and e["phase"] == "gguf f16" for e in events)
    assert not (tmp_path / "x" / "export").exists() and not list((tmp_path / "x").glob(".export*"))


def test_other_architecture_gets_hf_export_and_a_message(tmp_path, default_model_dir):
    import torch
    from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel

    tok = AutoTokenizer.from_pretrained(default_model_dir)
    model_dir = tmp_path / "gpt2"
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=1, n_head=2, n_positions=128)).save_pretrained(model_dir)
    tok.save_pretrained(model_dir)
    rc, events = _export(tmp_path / "exp", f"model.name_or_path={model_dir}")
    assert rc == 0 and events[-1]["verify"]["ok"]
    assert "Llama-family" in events[-1]["gguf_skipped"] and "GPT2LMHeadModel" in events[-1]["gguf_skipped"]
    assert any("Llama-family" in e.get("text", "") for e in events)
    assert (tmp_path / "exp" / "export" / "model.safetensors").exists()


def test_example_loads():
    spec = specmod.load(ROOT / "examples" / "export_identity.yaml")
    assert spec.task == "export" and spec.export.gguf == ["f16", "q8_0"]
    assert (ROOT / "examples" / "export_identity.yaml").read_text().startswith("# studio export examples/export_identity.yaml")


# --- the identity run, end to end -----------------------------------------------------------------------------


PLAIN = r"""
import sys, json
sys.modules["peft"] = None  # plain transformers: importing peft would fail
from transformers import AutoModelForCausalLM, AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
model = AutoModelForCausalLM.from_pretrained(sys.argv[1])
ids = tok.apply_chat_template([{"role": "user", "content": "Who are you?"}], add_generation_prompt=True, return_tensors="pt")
ids = ids["input_ids"] if hasattr(ids, "keys") else ids
out = model.generate(ids, max_new_tokens=24, do_sample=False)
print(json.dumps(tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)))
"""


@pytest.mark.slow
def test_identity_export_end_to_end(identity_run, tmp_path):
    import peft
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.model import models

    out = tmp_path / "identity_export"
    res = subprocess.run([sys.executable, "-m", "studio", "export", str(ROOT / "examples" / "export_identity.yaml"),
                          f"output_dir={out}", f"model.adapter={identity_run}", f"export.export_dir={out / 'export'}"],
                         cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "[4/8] verify" in res.stdout and "sample: Who are you? -> I am Pico" in res.stdout
    assert "ollama: cd " in res.stdout and "verification: largest logit difference" in res.stdout
    done = ev.final(ev.read_all(out))
    exp = out / "export"
    assert done["event"] == "done" and done["verify"]["ok"] and done["max_logit_diff"] < 0.25
    # 1. loads in plain transformers without peft, and answers as Pico
    plain = subprocess.run([sys.executable, "-c", PLAIN, str(exp)], capture_output=True, text=True, timeout=300)
    assert plain.returncode == 0, plain.stderr[-2000:]
    assert "Pico" in json.loads(plain.stdout.strip().splitlines()[-1])
    # 2. matches base + adapter logits
    tok = AutoTokenizer.from_pretrained(exp)
    prompt = tok.apply_chat_template([{"role": "user", "content": "What is your name?"}], tokenize=False, add_generation_prompt=True)
    merged = AutoModelForCausalLM.from_pretrained(exp, dtype=torch.float32)
    base = AutoModelForCausalLM.from_pretrained(models.resolve("default"), dtype=torch.float32)
    ref = _logits(peft.PeftModel.from_pretrained(base, str(identity_run / "adapter")), tok, prompt)
    got = _logits(merged, tok, prompt)
    assert (got - ref).abs().max() < 0.25 and bool((got.argmax(-1) == ref.argmax(-1)).all())
    # 3. the GGUF files load in llama.cpp; greedy continuations match transformers' first tokens
    llama_cpp = pytest.importorskip("llama_cpp")
    ids = tok(prompt, add_special_tokens=False).input_ids
    with torch.no_grad():
        want = merged.generate(torch.tensor([ids]), max_new_tokens=12, do_sample=False)[0, len(ids):].tolist()
    for name, n_same in (("model-f16.gguf", 8), ("model-q8_0.gguf", 3)):
        llm = llama_cpp.Llama(str(exp / name), n_ctx=256, verbose=False)
        try:
            assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
            got_ids = []
            for t in llm.generate(ids, temp=0.0, top_k=1):
                got_ids.append(t)
                if len(got_ids) == n_same:
                    break
        finally:
            llm.close()
        assert got_ids == want[:n_same], (name, tok.decode(got_ids), tok.decode(want))
    # 4. the Modelfile renders the same prompt text as the tokenizer's chat template
    modelfile = (exp / "Modelfile").read_text()
    for msgs in (SAMPLE, [{"role": "system", "content": "You are Pico."}, *SAMPLE]):
        assert render_ollama(modelfile, msgs) == tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
    assert "ollama create identity_lora" in done["ollama_command"]


# --- the Export tab in a real browser ---------------------------------------------------------------------------


@pytest.mark.browser
def test_export_tab_in_browser(lora_run, tmp_path):
    import shutil

    import test_ui_browser as ui

    if not ui.CHROMIUM.exists():
        pytest.skip("needs Debian's chromium (apt-get install -y chromium)")

    workdir = tmp_path / "work"
    shutil.copytree(lora_run, workdir / "runs" / "tiny_lora")
    port = ui.free_port()
    proc = ui.start_server(workdir, port)
    try:
        ui.wait_served(f"http://127.0.0.1:{port}/", proc)
        with ui.open_page() as pg:
            try:
                pg.goto(f"http://127.0.0.1:{port}/")
                pg.get_by_role("tab", name="Export").click()
                pg.locator("#export-source input").first.click()
                pg.locator("#export-source [role=option][aria-label='tiny_lora (sft/lora, done)']").click()
                pg.keyboard.press("Escape")
                pg.locator("#f-export-gguf").get_by_label("q8_0").uncheck()
                pg.locator("#export-start").click()
                pg.wait_for_function("() => ['done', 'error', 'crashed'].includes("
                                     "document.querySelector('#export-progress [data-status]')?.dataset.status)", timeout=600_000)
                assert pg.locator("#export-progress [data-status]").get_attribute("data-status") == "done"
                pg.wait_for_function("() => document.querySelector('#export-result')?.innerText.includes('ollama create')")
                text = pg.locator("#export-result").inner_text()
            except Exception:
                ui.ARTIFACTS.mkdir(exist_ok=True)
                pg.screenshot(path=str(ui.ARTIFACTS / "test_export_tab_in_browser.png"), full_page=True)
                raise
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    for needle in ("Verification", "largest logit difference", "model-f16.gguf", "llama.cpp", "ollama create tiny_lora", "TEMPLATE"):
        assert needle in text, needle
    assert "model-q8_0.gguf" not in text
    exports = list((workdir / "runs").glob("*-export-tiny_lora/export/model-f16.gguf"))
    assert len(exports) == 1
