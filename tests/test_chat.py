"""Chat: streaming, stop, prompts rendered as in training, bad input, conversations saved as training data, the CLI.

    .venv/bin/python -m pytest -q tests/test_chat.py
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml

from studio.chat.session import ChatError, ChatSession, GenParams, prompt_ids
from studio.data import check, collect, encode, registry
from studio.data.registry import DataError
from studio.data.templates import Template, TemplateError
from studio.model.models import ModelError

ROOT = Path(__file__).resolve().parent.parent
HISTORY = [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am Pico."}]


@pytest.fixture(scope="module")
def session(tiny_model):
    s = ChatSession()
    s.load(str(tiny_model))
    yield s
    s.unload()


@pytest.fixture(scope="module")
def tiny_adapter(tiny_model, tmp_path_factory) -> Path:
    """A run folder with a LoRA adapter on the tiny model, trained with the alpaca template (its spec says so)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    run = tmp_path_factory.mktemp("runs") / "tiny_lora"
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():  # a non-zero update, so the adapter changes the answers
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.save_pretrained(run / "adapter")
    (run / "spec.yaml").write_text(yaml.safe_dump({"task": "train", "model": {"name_or_path": str(tiny_model), "template": "alpaca"}}))
    return run


def test_streams_token_by_token_and_a_seed_repeats_the_answer(session):
    params = GenParams(max_new_tokens=12, seed=7, temperature=1.0)
    pieces = list(session.stream([], "Hello there", params=params))
    assert len(pieces) >= 3  # arrives in pieces, not at the end
    text = "".join(pieces)
    assert len(session.tokenizer.encode(text.strip(), add_special_tokens=False)) <= 12 + 2
    assert session.reply([], "Hello there", params=params) == text.strip()  # same seed, same answer
    others = {session.reply([], "Hello there", params=GenParams(max_new_tokens=12, seed=s, temperature=1.0)) for s in (1, 2, 3)}
    assert len(others | {text.strip()}) > 1  # the seed matters
    as_a_form_sends_it = GenParams(temperature=1, top_p=0.9, top_k=50.0, max_new_tokens=12.0, seed=7, repetition_penalty=1)
    assert session.reply([], "Hello there", params=as_a_form_sends_it) == text.strip()
    assert GenParams(seed=-1).check().seed is None
    greedy = GenParams(max_new_tokens=8, temperature=0)
    assert session.reply([], "Hello there", params=greedy) == session.reply([], "Hello there", params=greedy)


def test_stop_ends_a_generation_at_once_and_generations_take_turns(session):
    params = GenParams(max_new_tokens=400, temperature=1.0, seed=1)
    got, times = [], {}

    def consume(key):
        for piece in session.stream([], "Tell me a long story", params=params):
            got.append((key, time.time()))
        times[key] = time.time()

    first = threading.Thread(target=consume, args=("a",))
    first.start()
    while not got:
        time.sleep(0.01)
    second = threading.Thread(target=consume, args=("b",))
    second.start()  # waits for the first generation (one at a time per model)
    time.sleep(0.5)
    assert not any(k == "b" for k, _ in got)
    stopped_at = time.time()
    session.stop()
    first.join(timeout=30)
    assert not first.is_alive() and times["a"] - stopped_at < 5
    n_first = sum(1 for k, _ in got if k == "a")
    assert n_first < 200, "the first generation ran on after stop()"
    session.stop()  # the second one, once it has started
    second.join(timeout=60)
    assert all(t >= times["a"] for k, t in got if k == "b")
    assert session.reply([], "Still there?", params=GenParams(max_new_tokens=4, seed=0))  # usable after stopping


@pytest.mark.parametrize("template", ["auto", "alpaca", "chatml"])
def test_multi_turn_prompt_is_what_training_encodes(session, template):
    t = Template(template, session.tokenizer)
    system = [{"role": "system", "content": "Be brief."}]
    conversation = system + HISTORY + [{"role": "user", "content": "Say it again."}, {"role": "assistant", "content": "Pico."}]
    ids, labels, _ = encode.encode_chat(conversation, t, 4096, mask_history=True)
    answer_start = next(i for i, label in enumerate(labels) if label != encode.IGNORE)
    assert prompt_ids(t, conversation[:-1]) == ids[:answer_start]
    assert session.tokenizer.decode(ids[:answer_start]).endswith(t.prompt(conversation[:-1])[-20:])
    # the session builds exactly these messages from its history, message and system prompt
    assert session.messages(HISTORY, "Say it again.", "Be brief.") == conversation[:-1]


def test_a_run_folder_brings_its_base_model_and_template(tiny_adapter, tiny_model):
    s = ChatSession()
    note = s.load(adapter=str(tiny_adapter))
    assert s.template.name == "alpaca" and "alpaca" in note
    assert type(s.model).__name__.startswith("Peft")
    with_adapter = s.reply([], "Hi", params=GenParams(max_new_tokens=6, temperature=0))
    s.load(str(tiny_model))
    assert s.template.name == "auto" and type(s.model).__name__ == "LlamaForCausalLM"  # the adapter model is gone
    base = s.reply([], "Hi", params=GenParams(max_new_tokens=6, temperature=0))
    assert with_adapter != base  # the adapter's update changes the greedy answer
    note = s.load(adapter=str(tiny_adapter), template="chatml")
    assert s.template.name == "chatml" and "trained with template `alpaca`" in note
    s.unload()
    assert not s.loaded
    with pytest.raises(ChatError, match="no model loaded"):
        list(s.stream([], "Hi"))


def test_full_fine_tunes_and_exports_load_as_whole_models(tiny_model, tmp_path):
    run = tmp_path / "full_run"
    shutil.copytree(tiny_model, run / "model")
    (run / "spec.yaml").write_text(yaml.safe_dump({"task": "train", "model": {"name_or_path": "default", "template": "alpaca"}}))
    export = tmp_path / "exported"
    shutil.copytree(tiny_model, export)
    (export / "training_spec.yaml").write_text(yaml.safe_dump({"model": {"name_or_path": "default", "template": "chatml"}}))
    s = ChatSession()
    s.load(adapter=str(run))  # a run folder given as the adapter ...
    assert s.source.model == str(run / "model") and s.source.adapter is None and s.template.name == "alpaca"
    s.load(str(run))  # ... or as the model
    assert s.source.model == str(run / "model") and s.template.name == "alpaca"
    s.load(str(export))
    assert s.source.model == str(export) and s.template.name == "chatml"
    assert s.reply([], "Hi", params=GenParams(max_new_tokens=3, seed=1)) is not None
    with pytest.raises(ModelError, match="holds a whole model"):
        s.load(str(tiny_model), adapter=str(run))
    assert s.source.model == str(export)  # still loaded


def test_bad_input_gives_a_message_and_keeps_the_model(session, tiny_adapter, tiny_model, tmp_path):
    loaded = session.model
    with pytest.raises(ModelError, match="adapter folder not found"):
        session.load(adapter=str(tmp_path / "nope"))
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(ModelError, match="holds no adapter"):
        session.load(adapter=str(tmp_path / "empty_run"))
    with pytest.raises(ModelError, match=f"trained on `{tiny_model}`, not on `default`"):
        session.load("default", adapter=str(tiny_adapter))
    with pytest.raises(TemplateError, match="unknown template"):
        session.load(str(tiny_model), template="llama9")
    bare = tmp_path / "no-chat-template"
    shutil.copytree(tiny_model, bare)
    (bare / "chat_template.jinja").unlink(missing_ok=True)
    cfg = json.loads((bare / "tokenizer_config.json").read_text())
    cfg.pop("chat_template", None)
    (bare / "tokenizer_config.json").write_text(json.dumps(cfg))
    with pytest.raises(TemplateError, match="no chat template"):
        session.load(str(bare))
    for empty in ("", "   \n"):
        with pytest.raises(ChatError, match="empty"):
            list(session.stream([], empty))
    with pytest.raises(ChatError, match="top_p"):
        list(session.stream([], "Hi", params=GenParams(top_p=0)))
    with pytest.raises(ChatError, match="more than this model reads"):
        list(session.stream(HISTORY, "word " * 600))  # the tiny model reads 512 positions
    assert session.model is loaded and session.template.name == "auto"
    assert session.reply(HISTORY, "And now?", params=GenParams(max_new_tokens=5, seed=3))


def _check(dataset_dir, name, tokenizer):
    r = check.check_one(dataset_dir, name, template=Template("auto", tokenizer))
    assert r.ok, r.issues
    return r


def test_save_conversations_to_new_and_existing_datasets(data_dir, session):
    tok = session.tokenizer
    convo = [{"role": "system", "content": "Be brief."}, *HISTORY, {"role": "user", "content": "Again?"},
             {"role": "assistant", "content": "Pico, edited by hand."}]
    out = collect.save_conversation(data_dir, "chat_saved", convo)
    assert out["created"] and out["records"] == 1
    info = json.loads((data_dir / "dataset_info.json").read_text())
    assert info["chat_saved"]["formatting"] == "sharegpt" and "identity" in info  # the others are kept
    assert collect.save_conversation(data_dir, "chat_saved", HISTORY)["records"] == 2
    r = _check(data_dir, "chat_saved", tok)
    assert r.kind == "chat" and r.records == 2 and r.stats["examples"] == 2
    from studio.data import convert, readers

    e = registry.entry(data_dir, "chat_saved")
    assert convert.to_messages(readers.read_entry(e)[0][0][1], e) == convo  # reads back as the same conversation

    out = collect.save_conversation(data_dir, "alpaca_saved", convo, formatting="alpaca")
    r = _check(data_dir, "alpaca_saved", tok)
    assert r.records == 1 and convert.to_messages(readers.read_entry(registry.entry(data_dir, "alpaca_saved"))[0][0][1],
                                                  registry.entry(data_dir, "alpaca_saved")) == convo
    before = len(json.loads((data_dir / "identity.json").read_text()))
    assert collect.save_conversation(data_dir, "identity", HISTORY)["records"] == before + 1  # an alpaca json list
    assert _check(data_dir, "identity", tok).records == before + 1
    with pytest.raises(DataError, match="no history column"):
        collect.save_conversation(data_dir, "identity", convo[1:])
    with pytest.raises(DataError, match="empty"):
        collect.save_conversation(data_dir, "chat_saved", [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}])
    with pytest.raises(DataError, match="plain text"):
        collect.save_conversation(data_dir, "pretrain_demo", HISTORY)
    with pytest.raises(DataError, match="dataset name"):
        collect.save_conversation(data_dir, "../evil", HISTORY)
    assert _check(data_dir, "identity", tok).records == before + 1  # refused saves wrote nothing


def test_save_a_preference_pair_in_the_ranking_format(data_dir, session):
    prompt = [*HISTORY, {"role": "user", "content": "What is your name?"}]
    out = collect.save_pair(data_dir, "prefs", prompt, "My name is Pico.", "I am a language model.")
    assert out["created"]
    collect.save_pair(data_dir, "prefs", prompt[-1:], "Pico.", "No name.")
    raw = json.loads((data_dir / "dataset_info.json").read_text())["prefs"]
    assert raw["ranking"] is True and raw["formatting"] == "sharegpt"
    assert raw["columns"] == {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}
    first = json.loads((data_dir / raw["file_name"]).read_text().splitlines()[0])
    assert first["chosen"] == {"from": "gpt", "value": "My name is Pico."}  # as in LLaMA-Factory's dpo_en_demo
    assert first["conversations"][-1] == {"from": "human", "value": "What is your name?"}
    r = check.check_one(data_dir, "prefs")
    assert r.ok and r.kind == "ranking" and r.records == 2
    with pytest.raises(DataError, match="preference pairs"):
        collect.save_conversation(data_dir, "prefs", HISTORY)
    with pytest.raises(DataError, match="conversations"):
        collect.save_pair(data_dir, "chat_demo", prompt, "a", "b")
    with pytest.raises(DataError, match="same"):
        collect.save_pair(data_dir, "prefs", prompt, "a", "a")


def test_cli_reads_turns_from_a_pipe(tiny_model, tmp_path, studio_cmd):
    res = subprocess.run([*studio_cmd, "chat", "--model", str(tiny_model), "--max-new-tokens", "4", "--temperature", "1", "--seed", "1"],
                         input="Hello\n\n" + "word " * 600 + "\nHow are you?\n", capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert "loaded" in res.stderr and "loaded" not in res.stdout  # only replies on stdout
    assert "error: the conversation is" in res.stderr and "Traceback" not in res.stderr  # a turn too long: said, skipped
    assert res.returncode == 1 and res.stdout.strip()  # ... and the turns around it answered
    res = subprocess.run([*studio_cmd, "chat", "--adapter", str(tmp_path / "missing")], input="Hi\n",
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert res.returncode == 2 and "error: adapter folder not found" in res.stderr and "Traceback" not in res.stderr


@pytest.mark.slow
def test_identity_run_names_pico_from_a_pipe(identity_run, studio_cmd):
    res = subprocess.run([*studio_cmd, "chat", "--adapter", str(identity_run)], input="Who are you?\n",
                         capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "Pico" in res.stdout, res.stdout
