"""`studio serve`: the OpenAI API over one base and several adapters, called with the official `openai` client.

    .venv/bin/python -m pytest -q tests/test_serve.py

One server (the tiny random model, two LoRA adapters, an API key) is started with the `studio serve` command as a
user would, and stopped with Ctrl-C (SIGINT) at the end.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import psutil
import pytest
import yaml

from studio.run import events as ev
from studio.launch.command import free_port

ROOT = Path(__file__).resolve().parent.parent
KEY = "test-key-5b1f"
HELLO = [{"role": "system", "content": "Answer briefly."}, {"role": "user", "content": "Hello there"}]


def _adapter(tiny_model: Path, folder: Path, seed: int, template: str | None = None) -> Path:
    """A LoRA adapter on the tiny model with a random, non-zero update (so that it changes the answers)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=4, target_modules=["q_proj", "v_proj"]))
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.5)
    model.save_pretrained(folder / "adapter")
    if template:
        (folder / "spec.yaml").write_text(yaml.safe_dump({"task": "train", "model": {"name_or_path": str(tiny_model), "template": template}}))
    return folder


def _wait_up(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise AssertionError("the server did not come up:\n" + log.read_text()[-3000:])


@pytest.fixture(scope="module")
def server(tiny_model, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("serve")
    a = _adapter(tiny_model, tmp / "run_a", 1)
    b = _adapter(tiny_model, tmp / "run_b", 2, template="alpaca")  # its run's template goes with it
    port = free_port()
    run_dir = tmp / "serve_run"
    log = tmp / "cli.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "studio", "serve", "--model", str(tiny_model), "--adapter", f"a={a}",
                             "--adapter", f"b={b / 'adapter'}", "--port", str(port), "--api-key", KEY, "--output-dir", str(run_dir),
                             "serve.num_threads=1"],  # a tiny model gains nothing from more threads; a busy machine loses
                            cwd=tmp, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_up(url, proc, log)
        yield {"url": url, "proc": proc, "run_dir": run_dir, "log": log, "base": tiny_model.name, "a": a, "b": b, "tiny": tiny_model}
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # Ctrl-C
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.fixture(scope="module")
def client(server):
    from openai import OpenAI

    return OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0, timeout=120)


def _reference(server, adapter: Path | None, messages, n: int, template: str = "auto") -> str:
    """The greedy answer of plain transformers (+ peft), one prompt at a time."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.chat.session import prompt_ids
    from studio.data.templates import Template

    tok = AutoTokenizer.from_pretrained(server["tiny"])
    model = AutoModelForCausalLM.from_pretrained(server["tiny"])
    if adapter is not None:
        model = PeftModel.from_pretrained(model, str(adapter / "adapter"))
    t = Template(template, tok)
    ids = prompt_ids(t, messages)
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, eos_token_id=t.stop_token_ids(), pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, len(ids):], skip_special_tokens=True)


def test_lists_the_base_and_every_adapter(client, server):
    assert sorted(m.id for m in client.models.list().data) == sorted([server["base"], "a", "b"])
    assert client.models.retrieve("a").id == "a"


def test_chat_from_the_base_and_from_adapters_streamed_and_not(client, server):
    answers = {}
    for name in (server["base"], "a", "b"):
        r = client.chat.completions.create(model=name, messages=HELLO, max_tokens=12, temperature=0)
        assert r.model == name and r.choices[0].finish_reason in ("stop", "length")
        assert r.usage.completion_tokens >= 1 and r.usage.prompt_tokens > 5
        answers[name] = r.choices[0].message.content
        pieces, reasons = [], []
        for chunk in client.chat.completions.create(model=name, messages=HELLO, max_tokens=12, temperature=0, stream=True):
            for c in chunk.choices:
                pieces.append(c.delta.content or "")
                reasons.append(c.finish_reason)
        assert "".join(pieces) == answers[name]  # the stream adds up to the same answer
        assert reasons[-1] in ("stop", "length") and len([p for p in pieces if p]) >= 2
    assert len(set(answers.values())) == 3  # each adapter answers differently from the base
    # the same answers as plain transformers + peft, one prompt at a time (b renders with its run's alpaca template)
    assert answers[server["base"]] == _reference(server, None, HELLO, 12)
    assert answers["a"] == _reference(server, server["a"], HELLO, 12)
    assert answers["b"] == _reference(server, server["b"], HELLO, 12, template="alpaca")
    # together, with prompts of other lengths beside them (left-padded into one batch per adapter): the same answers
    longer = [{"role": "user", "content": "Write three long sentences about the sea, the wind and the mountains."}]
    asks = [(name, msgs) for name in answers for msgs in (HELLO, longer, HELLO)]
    with ThreadPoolExecutor(len(asks)) as pool:
        together = list(pool.map(lambda a: client.chat.completions.create(model=a[0], messages=a[1], max_tokens=12, temperature=0), asks))
    for (name, msgs), r in zip(asks, together):
        if msgs is HELLO:
            assert r.choices[0].message.content == answers[name], name


def test_sampling_settings_seed_n_stop_and_completions(client):
    ask = dict(model="a", messages=HELLO, max_tokens=10, temperature=1.0, top_p=0.9, seed=11)
    one = client.chat.completions.create(**ask).choices[0].message.content
    assert client.chat.completions.create(**ask).choices[0].message.content == one  # a seed repeats the answer
    many = client.chat.completions.create(**{**ask, "n": 3})
    assert [c.index for c in many.choices] == [0, 1, 2] and many.choices[0].message.content == one
    greedy = client.chat.completions.create(model="a", messages=HELLO, max_tokens=10, temperature=0).choices[0].message.content
    stop = greedy.strip()[3:5]
    cut = client.chat.completions.create(model="a", messages=HELLO, max_tokens=10, temperature=0, stop=[stop])
    assert cut.choices[0].finish_reason == "stop" and cut.choices[0].message.content == greedy[:greedy.find(stop)]
    fixed = client.chat.completions.create(model="a", messages=HELLO, max_tokens=10, temperature=0, extra_body={"ignore_eos": True})
    assert fixed.usage.completion_tokens == 10 and fixed.choices[0].finish_reason == "length"
    text = client.completions.create(model="b", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert text.object == "text_completion" and text.choices[0].text and text.usage.completion_tokens >= 1
    chunks = list(client.completions.create(model="b", prompt="The capital of France is", max_tokens=6, temperature=0, stream=True,
                                            stream_options={"include_usage": True}))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text.choices[0].text
    assert chunks[-1].usage.completion_tokens == text.usage.completion_tokens


def _post(url: str, body, key: str | None = KEY, raw: bytes | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if raw is not None:
        return httpx.post(url + "/v1/chat/completions", content=raw, headers={**headers, "Content-Type": "application/json"}, timeout=180)
    return httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=180)


def test_32_concurrent_requests_a_quarter_malformed(server):
    url = server["url"]
    good = {"model": "a", "messages": [{"role": "user", "content": "Tell me a story"}], "max_tokens": 8, "temperature": 0}
    bad = [(None, b'{"model": "a", "messages": [', 400),                     # not JSON
           ({**good, "model": "nope"}, None, 404),                           # unknown model
           ({**good, "temperature": "hot"}, None, 400),                      # wrong type
           ({**good, "messages": []}, None, 400),                            # no messages
           ({**good, "messages": [{"role": "robot", "content": "x"}]}, None, 400),
           ({**good, "messages": [{"role": "user", "content": "word " * 600}]}, None, 400),  # longer than the model reads (512)
           ({**good, "n": 0}, None, 400),
           ({"model": "b", "messages": "hello"}, None, 400)]
    jobs = []
    for i in range(32):
        if i % 4 == 3:
            body, raw, status = bad[i // 4]
            jobs.append((body, raw, status))
        else:
            jobs.append(({**good, "model": ["a", "b", server["base"]][i % 3], "max_tokens": 4 + i % 5}, None, 200))
    with ThreadPoolExecutor(32) as pool:
        results = list(pool.map(lambda j: _post(url, j[0], raw=j[1]), jobs))
    for (body, raw, status), r in zip(jobs, results):
        assert r.status_code == status, r.text
        data = r.json()
        if status == 200:
            assert data["choices"][0]["message"]["content"] and data["usage"]["completion_tokens"] >= 1
        else:
            assert set(data["error"]) == {"message", "type", "param", "code"} and data["error"]["message"], data
            assert "Traceback" not in r.text
    too_long = results[23].json()["error"]
    assert too_long["code"] == "context_length_exceeded" and "512" in too_long["message"]
    assert results[7].json()["error"]["code"] == "model_not_found"
    assert _post(url, good).status_code == 200  # still answering
    assert httpx.get(url + "/health").json()["busy"] == 0


def test_a_key_is_required_when_one_is_set(server):
    r = _post(server["url"], {"model": "a", "messages": HELLO}, key=None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    assert _post(server["url"], {"model": "a", "messages": HELLO}, key="wrong").status_code == 401
    assert httpx.get(server["url"] + "/v1/models").status_code == 401
    assert httpx.get(server["url"] + "/v1/nothing", headers={"Authorization": f"Bearer {KEY}"}).json()["error"]["code"] == "not_found"
    for f in (server["run_dir"] / "spec.yaml", server["run_dir"] / "output.log", server["run_dir"] / "events.jsonl", server["log"]):
        assert KEY not in f.read_text()  # the key is never written down


def test_a_client_that_disconnects_mid_stream_frees_its_row(server):
    url = server["url"]
    body = {"model": server["base"], "messages": HELLO, "max_tokens": 480, "temperature": 0, "stream": True, "ignore_eos": True}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60) as r:
        lines = r.iter_lines()
        got = [next(lines) for _ in range(6)]
        assert any(line.startswith("data: {") for line in got)
        assert httpx.get(url + "/health").json()["busy"] == 1
    deadline = time.time() + 20
    while httpx.get(url + "/health").json()["busy"] and time.time() < deadline:
        time.sleep(0.2)
    assert httpx.get(url + "/health").json()["busy"] == 0


def test_ctrl_c_stops_the_server_and_the_run_folder_tells_the_story(server, client):
    client.chat.completions.create(model="a", messages=HELLO, max_tokens=3)
    proc = server["proc"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 0
    kinds = [e["event"] for e in ev.read_all(server["run_dir"])]
    assert kinds[-1] == "done" and "start" in kinds
    start = next(e for e in ev.read_all(server["run_dir"]) if e["event"] == "start")
    assert sorted(start["models"]) == sorted([server["base"], "a", "b"]) and start["auth"] is True
    done = ev.read_all(server["run_dir"])[-1]
    assert done["requests"] >= 1 and done["tokens"] >= done["requests"] and {"cancelled", "failed", "uptime_s"} <= set(done)


def test_an_open_host_without_a_key_is_refused(tiny_model, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("STUDIO_API_KEY", None)
    res = subprocess.run([sys.executable, "-m", "studio", "serve", "--model", str(tiny_model), "--host", "0.0.0.0"],
                         cwd=tmp_path, capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 2 and "--api-key" in res.stderr and "Traceback" not in res.stderr
    assert not (tmp_path / "runs").exists()  # refused before anything started


def test_chat_loads_the_base_quantized_and_says_when_it_cannot(tiny_model, monkeypatch):
    from studio.chat.session import ChatSession, GenParams
    from studio.model.models import ModelError, check_quantization

    session = ChatSession()
    session.load(str(tiny_model), quantization_bit=8)
    try:
        assert any(type(m).__name__ == "Linear8bitLt" for m in session.model.modules())
        assert session.reply([], "Hello", params=GenParams(max_new_tokens=3, temperature=0)) is not None
    finally:
        session.unload()
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # as on a machine where it cannot load
    with pytest.raises(ModelError, match="--quantization-bit 4 needs bitsandbytes"):
        check_quantization(4)
    with pytest.raises(ModelError, match="choose 4 or 8"):
        check_quantization(3)


@pytest.mark.slow
def test_pico_answers_as_pico_and_the_base_does_not_from_one_server(identity_run, tmp_path):
    from openai import OpenAI

    port = free_port()
    log = tmp_path / "cli.log"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("STUDIO_API_KEY", None)
    proc = subprocess.Popen([sys.executable, "-m", "studio", "serve", "--adapter", f"pico={identity_run}", "--port", str(port),
                             "--output-dir", str(tmp_path / "serve_run")], cwd=tmp_path, stdout=open(log, "w"), stderr=subprocess.STDOUT, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        _wait_up(url, proc, log, timeout=600)
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=300)
        assert sorted(m.id for m in client.models.list().data) == ["default", "pico"]  # the base comes from the run's spec
        ask = [{"role": "user", "content": "Who are you?"}]
        pico = client.chat.completions.create(model="pico", messages=ask, max_tokens=40, temperature=0).choices[0].message.content
        base = client.chat.completions.create(model="default", messages=ask, max_tokens=40, temperature=0).choices[0].message.content
        assert "Pico" in pico, pico
        assert "Pico" not in base, base
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)


def test_the_chat_tab_lines_name_the_model_the_server_serves():
    import shlex

    from studio.serve.job import parse_adapters
    from studio.serve.snippets import served_name, snippets

    text = snippets("default", "runs/identity_lora/checkpoint-100", "Be brief.", port=9000)
    line = next(x for x in text.splitlines() if x.startswith("studio serve"))
    argv = shlex.split(line)
    assert parse_adapters([argv[argv.index("--adapter") + 1]]) == {"identity_lora-checkpoint-100": "runs/identity_lora/checkpoint-100"}
    body = json.loads(shlex.split(next(x for x in text.splitlines() if x.strip().startswith("-d ")))[1])
    assert body["model"] == "identity_lora-checkpoint-100" and body["messages"][0] == {"role": "system", "content": "Be brief."}
    assert "base_url=\"http://127.0.0.1:9000/v1\"" in text and "--port 9000" in line
    assert served_name(None, "runs/identity_lora/adapter") == "identity_lora" and served_name(None, None) == "default"


def test_the_api_lines_name_the_host_port_and_models_the_running_server_serves(tmp_path):
    from studio.ui import serve_panel

    run = tmp_path / "runs" / "serve-identity_lora"
    run.mkdir(parents=True)
    sleeper = subprocess.Popen(["sleep", "60"], start_new_session=True)  # the server's process group, alive
    try:
        (run / "job.json").write_text(json.dumps({"pid": sleeper.pid, "pgid": sleeper.pid, "argv": ["sleep"], "started": 1.0}))
        (run / "events.jsonl").write_text(json.dumps({"t": 1.0, "event": "start", "task": "serve", "url": "http://127.0.0.1:9321/v1",
                                                      "models": ["default", "identity_lora"], "base": "default"}) + "\n")
        text = serve_panel.code("default", "runs/identity_lora", "", 8000, str(run))  # the port box still says 8000
        assert "http://127.0.0.1:9321/v1" in text and "--port 9321" in text and "8000" not in text
        assert '"model": "identity_lora"' in text
        text = serve_panel.code("default", "", "", 8000, str(run))  # the top bar moved to the base: it is served too
        assert '"model": "default"' in text and "9321" in text
        text = serve_panel.code("default", "runs/other", "", 8000, str(run))  # not served: the adapter that is
        assert '"model": "identity_lora"' in text
    finally:
        sleeper.kill()
        sleeper.wait()
    # the server has ended: the lines follow the port box again
    assert "http://127.0.0.1:8123/v1" in serve_panel.code("default", "", "", 8123, str(run))


def test_the_page_starts_a_server_as_a_job_and_stops_it(tiny_model, tmp_path, monkeypatch):
    from studio.ui import jobs, serve_panel

    monkeypatch.chdir(tmp_path)  # the web UI's working folder
    monkeypatch.setenv("PYTHONPATH", str(ROOT))
    port = free_port()
    spec = serve_panel.server_spec(tmp_path, tmp_path / "runs", str(tiny_model), None, port)
    assert spec.task == "serve" and spec.serve.host == "127.0.0.1" and spec.output_dir.startswith("runs/")
    spec.serve.num_threads = 1
    run_dir = str(jobs.start(spec, tmp_path, tmp_path / "runs"))
    try:
        deadline = time.time() + 240
        while "serving" not in serve_panel.status(run_dir) and time.time() < deadline:
            assert "failed" not in serve_panel.status(run_dir), (Path(run_dir) / "output.log").read_text()[-2000:]
            time.sleep(0.5)
        assert f"http://127.0.0.1:{port}/v1" in serve_panel.status(run_dir)
        assert httpx.get(f"http://127.0.0.1:{port}/health").json()["models"] == [tiny_model.name]
    finally:
        jobs.stop(run_dir)
    deadline = time.time() + 60
    while ev.final(ev.read_all(run_dir)) is None and time.time() < deadline:
        time.sleep(0.5)
    assert ev.final(ev.read_all(run_dir))["event"] == "done" and "stopped" in serve_panel.status(run_dir)
    pid = json.loads((Path(run_dir) / "job.json").read_text())["pid"]
    deadline = time.time() + 30
    while psutil.pid_exists(pid) and time.time() < deadline:  # a zombie exists until it is reaped
        time.sleep(0.2)
    assert not psutil.pid_exists(pid), f"the stopped server is left as {psutil.Process(pid).status()}"
    with pytest.raises(Exception, match="not found"):
        serve_panel.server_spec(tmp_path, tmp_path / "runs", None, "runs/missing", port)
