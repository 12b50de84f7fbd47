"""Data generation: the filters against the all-pairs rule, self_instruct on the tiny and the default model, answer mode
against a local OpenAI-compatible server that fails some requests, kill + restart without redoing kept samples."""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from conftest import ROOT
from studio.run import events as ev
from studio.launch import command as launch
from studio import spec as specmod
from studio.generate import filters, prompts, store

sys.path.insert(0, str(ROOT / "bench"))


def _studio(*args, timeout=900):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "studio", *map(str, args)], capture_output=True, text=True, cwd=ROOT,
                          timeout=timeout, env=env)


# --- filters ---------------------------------------------------------------------------------------------


def test_similarity_filter_keeps_what_the_all_pairs_rule_keeps():
    from generate import synthetic  # bench/generate.py: English and Chinese instructions, a third near-copies

    texts = synthetic(300, seed=3)
    seeds = synthetic(20, seed=4)
    f = filters.Filters(0.7, [], 1, 10 ** 6)
    for s in seeds:
        f.add(s)
    fast = [t.strip() for t in texts if f.offer(t)[0] is None]
    plain = filters.all_pairs_keep(seeds, [t.strip() for t in texts], 0.7)
    assert fast == plain
    assert 0.2 * len(texts) < len(plain) < 0.9 * len(texts)  # the rule had work to do both ways


def test_lcs_and_rouge_l_equal_rouge_score():
    from rouge_score.rouge_scorer import _score_lcs

    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("abcdef") for _ in range(rng.randint(0, 25))]
        b = [rng.choice("abcdef") for _ in range(rng.randint(0, 25))]
        assert filters.rouge_l(a, b) == _score_lcs(a, b).fmeasure


def test_each_filter_names_its_reason():
    f = filters.Filters(0.7, ["image", "go to"], 3, 12)
    f.add("Write a short poem about the sea.")
    cases = {
        "Hi there": "too_short",
        "Describe " + "very " * 20 + "long things": "too_long",
        "Describe the IMAGE below in detail.": "out_of_scope",
        "Go  to the store and buy some milk.": "out_of_scope",
        "Write a short poem about the sea.": "duplicate",
        "write a short poem, about the SEA": "near_duplicate",
        "Write a short poem about the deep sea.": "similar",
        "给这张图片写一个标题。": None,
        "Explain how a rainbow forms.": None,
    }
    for text, reason in cases.items():
        assert f.check(text)[0] == reason, text
    assert f.check("Write a short poem about the deep sea.")[1]["like"] == "Write a short poem about the sea."
    assert filters.Filters(0.7, ["图片"], 1, 99).check("给这张图片写一个标题。")[0] == "out_of_scope"


def test_parsing_the_answers():
    text = "Write a limerick about cats.\n4. 5. Instruction: Classify the sentence as positive or negative.\nSure, here you go:\n6) \"List three rivers in Asia.\"\n7. Input: none"
    assert prompts.parse_instructions(text) == ["Write a limerick about cats.", "Classify the sentence as positive or negative.",
                                               "List three rivers in Asia."]
    assert prompts.parse_instructions("1. Name a planet.\n2. Name a river in", truncated=True) == ["Name a planet."]
    assert prompts.parse_instance(" <noinput>\nOutput: Paris is the capital.") == ("", "Paris is the capital.")
    assert prompts.parse_instance(" cat, dog\nOutput:\ndog, cat") == ("cat, dog", "dog, cat")
    assert prompts.parse_instance("Just an answer.") == ("", "Just an answer.")
    assert prompts.parse_instructions("Sure, here is the list of 8 diverse task instructions:\n4. Name a colour.") == ["Name a colour."]
    f = filters.Filters(0.7, [], 1, 99)
    for line in prompts.requirement_lines():
        f.add(line)
    assert f.check("Mix the kinds of tasks: open-ended writing, classification, editing, question answering")[0] == "similar"
    req = prompts.instruction_request(["A.", "B."], 5)[0]["content"]
    assert "1. A.\n2. B.\n" in req and req.endswith("3.") and "7 diverse" in req


def test_bad_settings_are_refused_naming_the_field(tmp_path, data_dir):
    with pytest.raises(specmod.SpecError, match="generate.api_key_env"):
        specmod.load(None, ["task=generate", "generate.api_key_env=sk-abc123"])
    with pytest.raises(specmod.SpecError, match="generate.base_url"):
        specmod.load(None, ["task=generate", "generate.generator=endpoint"])
    spec = specmod.load(None, ["task=generate", f"data.dataset_dir={data_dir}", "generate.output_dataset=identity",
                               f"output_dir={tmp_path / 'g'}"])
    with pytest.raises(specmod.SpecError, match="already registered"):
        store.check_output(spec, tmp_path / "g")
    res = _studio("generate", "task=generate", f"data.dataset_dir={data_dir}", "generate.source=nope", f"output_dir={tmp_path / 'g'}")
    assert res.returncode == 2 and "unknown dataset `nope`" in res.stderr and "Traceback" not in res.stderr


# --- self_instruct on the tiny model ----------------------------------------------------------------------


def test_self_instruct_tiny_model(tiny_model, tmp_path, data_dir):
    out = tmp_path / "gen"
    res = _studio("generate", "task=generate", f"output_dir={out}", f"model.name_or_path={tiny_model}", f"data.dataset_dir={data_dir}",
                  "generate.num_instructions=2", "generate.batch_size=2", "generate.max_new_tokens=16", "generate.max_rounds=2",
                  "generate.output_dataset=tiny_generated", "generate.max_words=400", "generate.min_words=1", "train.num_threads=1",
                  timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    events = ev.read_all(out)
    assert events[-1]["event"] == "done"
    prog = [e for e in events if e["event"] == "progress"]
    assert prog and {"requested", "generated", "kept", "dropped"} <= set(prog[-1])
    info = json.loads((data_dir / "dataset_info.json").read_text())
    assert info["tiny_generated"] == {"file_name": "tiny_generated.json"} and "identity" in info
    records = json.loads((data_dir / "tiny_generated.json").read_text())
    kept = store.read_jsonl(out / store.INSTRUCTIONS)
    assert 1 <= len(kept) <= 2 and len(records) == events[-1]["records"]
    assert all(r["instruction"] and r["output"] for r in records)
    report = json.loads((out / store.REPORT).read_text())
    assert report["output"]["dataset"] == "tiny_generated" and report["kept"] == len(kept)
    check = _studio("data", "check", "--dataset-dir", data_dir, "tiny_generated", "--model", tiny_model)
    assert check.returncode == 0, check.stdout + check.stderr


# --- answer mode against an OpenAI-compatible server ------------------------------------------------------

KEY = "test-secret-4711"


POOL = ["Write a limerick about a forgetful robot.", "Name three rivers in South America and their lengths.",
        "Explain why ice floats on water.", "Convert 25 degrees Celsius to Fahrenheit and show the formula.",
        "Suggest a weekend itinerary for a rainy city break.", "把这句话改写得更礼貌：把门关上。",
        "Classify the following fruits by color.", "What are the main causes of inflation?",
        "Draft a two-line toast for a colleague who is retiring.", "用三个词形容大海。",
        "Describe the rules of tic-tac-toe for a child.", "Rank these planets by their distance from the sun."]


def teacher_answer(prompt: str, n: int) -> str:
    """Self-instruct requests get three new instructions from POOL (cycling, so later ones repeat) and three that the
    filters drop (out of scope, a seed task, a near-copy of one); anything else gets ANSWER(prompt) as its output."""
    if "diverse task instructions" in prompt:
        new = [POOL[(3 * n + k) % len(POOL)] for k in range(3)]
        extra = ["Describe the image below in one sentence.", "Give three tips for staying focused while studying.",
                 "Give three useful tips for staying focused while studying."]
        return "\n".join(f"{k + 4}. {t}" for k, t in enumerate(new + extra))
    if "Here is a task instruction" in prompt:
        return f" <noinput>\nOutput: ANSWER({prompt.split(chr(10))[2]})"
    return f"ANSWER({prompt})"


class Teacher(ThreadingHTTPServer):
    """POST /v1/chat/completions: answers as teacher_answer says; every third request fails with 500.
    `key`: the bearer key it requires (None: none)."""

    def __init__(self, delay: float = 0.0, key: str | None = KEY):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.delay, self.key, self.lock, self.log, self.n, self.ok = delay, key, threading.Lock(), [], 0, 0
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"

    def handle_error(self, request, client_address):
        if not isinstance(sys.exc_info()[1], ConnectionError):  # a job stopped mid-request hangs up: not an error here
            super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *a):
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][-1]["content"]
        with srv.lock:
            srv.n += 1
            fail = srv.n % 3 == 0
            srv.log.append((time.time(), prompt, "fail" if fail else "ok"))
        time.sleep(srv.delay)
        if self.path != "/v1/chat/completions" or (srv.key and self.headers.get("Authorization") != f"Bearer {srv.key}"):
            return self._send(401, {"error": "bad key or path"})
        if fail:
            return self._send(500, {"error": "overloaded"})
        with srv.lock:
            n, srv.ok = srv.ok, srv.ok + 1
        answer = teacher_answer(prompt, n)
        self._send(200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": answer}, "finish_reason": "stop"}]})

    def _send(self, code, obj):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def _answer_spec(data_dir, out, url, **over):
    rows = [{"instruction": f"Question number {i}?", "input": "", "output": "kept as it is" if i % 5 == 0 else ""} for i in range(24)]
    (data_dir / "questions.json").write_text(json.dumps(rows))
    info = json.loads((data_dir / "dataset_info.json").read_text())
    info["questions"] = {"file_name": "questions.json"}
    (data_dir / "dataset_info.json").write_text(json.dumps(info))
    base = {"task": "generate", "output_dir": str(out), "data.dataset_dir": str(data_dir), "generate.mode": "answer",
            "generate.source": "questions", "generate.output_dataset": "questions_answered", "generate.generator": "endpoint",
            "generate.base_url": url, "generate.endpoint_model": "teacher", "generate.api_key_env": "STUDIO_TEST_KEY",
            "generate.concurrency": 2, "generate.retries": 4, **over}
    return specmod.load(None, [f"{k}={v}" for k, v in base.items()]), rows


def _wait(cond, timeout=120):
    end = time.time() + timeout
    while time.time() < end:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_answer_mode_endpoint_retries_and_restart(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("STUDIO_TEST_KEY", KEY)
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    teacher = Teacher(delay=0.15)
    out = tmp_path / "answer"
    spec, rows = _answer_spec(data_dir, out, teacher.url)
    proc = launch.start(spec)
    assert _wait(lambda: len(store.read_jsonl(out / store.SAMPLES)) >= 12), (out / "output.log").read_text()
    os.killpg(proc.pid, signal.SIGKILL)  # no chance to clean up
    proc.wait()
    before = {s["id"]: s for s in store.read_jsonl(out / store.SAMPLES)}
    assert len(before) < 24
    restart = time.time()
    proc = launch.start(spec)
    assert _wait(lambda: ev.final(ev.read_all(out)) is not None), (out / "output.log").read_text()
    proc.wait()
    end = ev.final(ev.read_all(out))
    assert end["event"] == "done", end
    records = json.loads((data_dir / "questions_answered.json").read_text())
    assert len(records) == 24
    for i, (src, rec) in enumerate(zip(rows, records)):
        assert rec["instruction"] == src["instruction"]
        assert rec["output"] == (src["output"] or f"ANSWER({src['instruction']})")
    asked_again = {p for t, p, _ in teacher.log if t >= restart}
    assert not asked_again & {rows[i]["instruction"] for i in before}, "kept samples were requested again"
    assert any(s == "fail" for _, _, s in teacher.log) and end["failed_requests"] >= 1
    assert json.loads((data_dir / "dataset_info.json").read_text())["questions_answered"] == {"file_name": "questions_answered.json"}
    for f in out.rglob("*"):
        if f.is_file():
            assert KEY not in f.read_text(errors="replace"), f"the API key leaked into {f}"
    teacher.shutdown()


def test_endpoint_refusal_is_a_clear_error(tmp_path, data_dir, monkeypatch):
    monkeypatch.setenv("STUDIO_TEST_KEY", "wrong-key")
    teacher = Teacher()
    spec, _ = _answer_spec(data_dir, tmp_path / "refused", teacher.url)
    run_dir = launch.prepare(spec)
    from studio.generate import job

    assert job.main([str(run_dir)]) == 1
    end = ev.final(ev.read_all(run_dir))
    assert end["event"] == "error" and "HTTP 401" in end["message"] and "STUDIO_TEST_KEY" in end["message"] and not end["traceback"]
    teacher.shutdown()


def test_self_instruct_over_an_endpoint_drops_with_reasons(tmp_path, data_dir):
    from studio.generate import job

    teacher = Teacher(key=None)
    spec = specmod.load(None, ["task=generate", f"output_dir={tmp_path / 'si'}", f"data.dataset_dir={data_dir}",
                               "generate.generator=endpoint", f"generate.base_url={teacher.url}", "generate.endpoint_model=t",
                               "generate.num_instructions=7", "generate.batch_size=2", "generate.concurrency=2",
                               "generate.output_dataset=si_endpoint"])
    run_dir = launch.prepare(spec)
    assert job.main([str(run_dir)]) == 0
    end = ev.final(ev.read_all(run_dir))
    kept = [k["instruction"] for k in store.read_jsonl(run_dir / store.INSTRUCTIONS)]
    assert set(kept) <= set(POOL) and len(set(kept)) == 7  # the order depends on which requests failed first
    for reason in ("out_of_scope", "duplicate", "similar"):
        assert end["dropped"]["instruction"][reason] >= 1, end["dropped"]
    report = json.loads((run_dir / store.REPORT).read_text())
    like = report["examples"]["instruction/similar"][0]
    assert like["like"] == "Give three tips for staying focused while studying." and like["rouge_l"] >= 0.7
    records = json.loads((data_dir / "si_endpoint.json").read_text())
    assert [r["instruction"] for r in records] == kept
    assert all(r["input"] == "" and r["output"] == f"ANSWER({r['instruction']})" for r in records)
    assert end["failed_requests"] >= 1
    teacher.shutdown()


# --- the default model end to end ---------------------------------------------------------------------------


@pytest.mark.long  # minutes of generation or training on the default model: `make test-long`
def test_self_instruct_default_model_trains(tmp_path, data_dir):
    from studio.generate.filters import rouge_l
    from studio.evaluate.metrics import tokenize

    out = tmp_path / "si"
    res = _studio("generate", "task=generate", f"output_dir={out}", f"data.dataset_dir={data_dir}", "generate.num_instructions=40",
                  "generate.output_dataset=si40", "generate.max_new_tokens=128", "train.num_threads=1", timeout=3600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    end = ev.final(ev.read_all(out))
    assert end["event"] == "done"
    kept = [k["instruction"] for k in store.read_jsonl(out / store.INSTRUCTIONS)]
    seeds = [s["instruction"] for s in json.loads((data_dir / "seed_tasks.json").read_text())]
    toks = [tokenize(t) for t in seeds + kept]
    for i in range(len(seeds), len(toks)):
        assert all(rouge_l(toks[j], toks[i]) < 0.7 for j in range(i)), kept[i - len(seeds)]
    assert len(kept) >= 10, res.stdout[-2000:]
    assert "si40" in json.loads((data_dir / "dataset_info.json").read_text())
    check = _studio("data", "check", "--dataset-dir", data_dir, "si40")
    assert check.returncode == 0, check.stdout + check.stderr
    train = _studio("train", ROOT / "examples" / "identity_lora.yaml", f"output_dir={tmp_path / 'train'}", f"data.dataset_dir={data_dir}",
                    "data.dataset=[si40]", "train.max_steps=3", "data.cutoff_len=256", "train.num_threads=1")
    assert train.returncode == 0, train.stdout[-2000:] + train.stderr[-2000:]
    assert ev.final(ev.read_all(tmp_path / "train"))["event"] == "done"
