"""The evaluate judge: pairwise (both orders) and rubric judging against a local OpenAI-compatible server with
scripted replies, its retry and refusal rules, the Wilson and t intervals, position bias, and local judges (the
tiny model, an adapter run folder on it, and the default model)."""
from __future__ import annotations

import json
import math
import re
import socket
import threading
import time

import pytest
from fastapi import Request  # at module level: the handler's annotation is read from these globals

from studio.evaluate import judge as J
from studio.generate import generators

KEY = "judge-secret-1234"
PROBE = "Reply with the word OK."


def _between(text: str, start: str, end: str) -> str:
    return text.split(start + "\n", 1)[1].split("\n" + end, 1)[0]


class Server:
    """POST /v1/chat/completions, served by uvicorn in a thread. `mode` scripts the replies:
    longer: the longer answer wins (equal lengths: a tie), the verdict line written in a few styles;
    fail_first: as longer, but the first request of every distinct chat gets a 500;
    junk: a reply without a verdict for questions that contain "junk" (as longer for the others);
    score: rubric, the score is the answer's word count; refuse: always 401. Every request is logged."""

    def __init__(self):
        import uvicorn
        from fastapi import FastAPI
        from fastapi.responses import JSONResponse

        self.mode, self.key, self.log, self.seen, self.lock = "longer", None, [], set(), threading.Lock()
        app = FastAPI()

        @app.post("/v1/chat/completions")
        async def chat(request: Request):
            body = await request.json()
            msgs = body["messages"]
            with self.lock:
                self.log.append(msgs)
                first_time = json.dumps(msgs) not in self.seen
                self.seen.add(json.dumps(msgs))
            if self.mode == "refuse" or (self.key and request.headers.get("authorization") != f"Bearer {self.key}"):
                return JSONResponse({"error": "bad key"}, status_code=401)
            if self.mode == "fail_first" and first_time:
                return JSONResponse({"error": "overloaded"}, status_code=500)
            text = "OK" if msgs[-1]["content"] == PROBE else self.reply(msgs)
            return {"choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}

        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="error", lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [sock]}, daemon=True)
        self.thread.start()
        end = time.time() + 20
        while not self.server.started and time.time() < end:
            time.sleep(0.02)
        assert self.server.started

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def reply(self, msgs: list[dict]) -> str:
        task = msgs[0]["content"]
        question = _between(task, "[Question]", "[End of question]")
        if self.mode == "score":
            n = len(_between(task, "[Answer]", "[End of answer]").split())
            return [f"Plain and short.\nScore: {n}", f"**Score:** {n}/10", f"It has {n} words.\nRating: {n}"][n % 3]
        if "junk" in question:
            return "Both answers have their merits, and I would not like to choose."
        one, two = _between(task, "[Answer 1]", "[End of answer 1]"), _between(task, "[Answer 2]", "[End of answer 2]")
        said, why = ("1", "Answer 1 is longer.") if len(one) > len(two) else ("2", "Answer 2 is longer.") if len(two) > len(one) \
            else ("tie", "They are equally long.")
        style = int(re.sub(r"\D", "", question) or 0) % 4
        return [f"{why}\nVerdict: {said}", f"Reason: {why}\n**Verdict:** {said}", f"{why}\nVerdict: [[{said}]]",
                f"{why}\n\nFinal verdict: {'Answer ' + said if said != 'tie' else 'Tie'}"][style]

    def reset(self, mode: str, key: str | None = None):
        with self.lock:
            self.mode, self.key, self.log, self.seen = mode, key, [], set()

    def close(self):
        self.server.should_exit = True
        self.thread.join(10)


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def quick_backoff(monkeypatch):
    monkeypatch.setattr(generators, "BACKOFF", 0.01)


def _endpoint(server, **over) -> J.JudgeSettings:
    return J.JudgeSettings(**{"model": "endpoint", "base_url": server.url, "endpoint_model": "judge", **over})


def _items(pairs, reference_for=()):
    return [{"id": k, "prompt": f"Question {k}?", "reference": "A reference." if k in reference_for else None,
             "a": a, "b": b, "a_name": "tuned", "b_name": "base"} for k, (a, b) in enumerate(pairs)]


def _wilson(w, t, l, z=1.96):
    n = w + t + l
    p = (w + t / 2) / n
    c = (p + z * z / (2 * n)) / (1 + z * z / n)
    h = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return p, c - h, c + h


# --- pairwise against the server ---------------------------------------------------------------------------


def test_pairwise_counts_both_orders_and_the_interval(server):
    server.reset("longer")
    pairs = [("a long answer", "short"), ("longer answer here", "tiny"), ("xxxxxxxx", "yyy"),  # a wins
             ("no", "a much longer one"), ("b", "bbbb"),  # b wins
             ("same", "size"), ("equal!", "equal?")]  # ties
    items = _items(pairs, reference_for={1})
    judge = J.make_judge(_endpoint(server), say=lambda *_: None)
    progress = []
    result = J.pairwise(items, judge, on_progress=lambda done, total: progress.append((done, total)), chunk=3)
    judge.close()
    s = result["summary"]
    assert (s["wins"], s["ties"], s["losses"], s["failed"], s["n"]) == (3, 2, 2, 0, 7)
    p, low, high = _wilson(3, 2, 2)
    assert s["win_rate"] == pytest.approx(p, abs=1e-4) and s["low"] == pytest.approx(low, abs=1e-4)
    assert s["high"] == pytest.approx(high, abs=1e-4)
    assert s["position_bias"] == 0 and s["failed_requests"] == 0 and (s["a_name"], s["b_name"]) == ("tuned", "base")
    assert progress == [(3, 7), (6, 7), (7, 7)]
    tasks = [m[0]["content"] for m in server.log]
    assert tasks[0] == PROBE and len(tasks) == 1 + 2 * len(items)
    for it, r in zip(items, result["items"]):
        shown = {(_between(t, "[Answer 1]", "[End of answer 1]"), _between(t, "[Answer 2]", "[End of answer 2]"))
                 for t in tasks[1:] if f"[Question]\n{it['prompt']}\n" in t}
        assert shown == {(it["a"], it["b"]), (it["b"], it["a"])}  # both orders asked
        assert [o["shown_first"] for o in r["orders"]] == ["a", "b"]
        assert all(o["reason"].endswith(("longer.", "long.")) and o["attempts"] == 1 and o["by"] == "reply" for o in r["orders"])
        longer = "a" if len(it["a"]) > len(it["b"]) else "b" if len(it["b"]) > len(it["a"]) else "tie"
        assert r["consistent"] and r["reason"] and r["verdict"] == longer
    assert sum("[Reference answer]\nA reference." in t for t in tasks) == 2  # item 1, in both orders


def test_pairwise_retries_failed_requests_and_counts_them(server):
    server.reset("fail_first")
    items = _items([("a long answer", "short"), ("no", "a much longer one"), ("same", "size")])
    judge = J.make_judge(_endpoint(server, retries=2), say=lambda *_: None)
    result = J.pairwise(items, judge)
    s = result["summary"]
    assert (s["wins"], s["losses"], s["ties"], s["failed"]) == (1, 1, 1, 0)
    assert s["failed_requests"] == 2 * len(items) and judge.failed_requests == 2 * len(items) + 1  # and the probe
    assert len(server.log) == 2 * (1 + 2 * len(items))
    judge.close()


def test_unreadable_replies_are_asked_again_then_failed_not_dropped(server):
    server.reset("junk")
    items = _items([("a long answer", "short"), ("x", "y")]) + [
        {"id": "j", "prompt": "A junk question?", "a": "one", "b": "two", "a_name": "tuned", "b_name": "base"}]
    judge = J.make_judge(_endpoint(server), say=lambda *_: None)
    result = J.pairwise(items, judge, retries=1)
    judge.close()
    s = result["summary"]
    assert (s["wins"], s["ties"], s["losses"], s["failed"], s["n"], s["items"]) == (1, 1, 0, 1, 2, 3)
    assert s["win_rate"] == pytest.approx(_wilson(1, 1, 0)[0], abs=1e-4)
    bad = result["items"][2]
    assert bad["id"] == "j" and bad["verdict"] == "failed" and bad["consistent"] is None
    for o in bad["orders"]:
        assert o["verdict"] == "failed" and o["attempts"] == 2 and "after 2 tries" in o["reason"] and "merits" in o["raw"]
    reminders = [m for m in server.log if len(m) == 3]
    assert len(reminders) == 2 and all(m[1]["role"] == "assistant" and m[2]["content"] == J.PAIR_REMINDER for m in reminders)


def test_a_refusing_endpoint_is_a_clear_error_before_any_item(server, monkeypatch):
    server.reset("longer", key=KEY)
    monkeypatch.setenv("STUDIO_JUDGE_KEY", "wrong-key")
    with pytest.raises(J.JudgeError) as e:
        J.make_judge(_endpoint(server, api_key_env="STUDIO_JUDGE_KEY"), say=lambda *_: None)
    msg = str(e.value)
    assert server.url in msg and "HTTP 401" in msg and "$STUDIO_JUDGE_KEY" in msg and "eval.judge_base_url" in msg
    assert [m[-1]["content"] for m in server.log] == [PROBE]
    monkeypatch.setenv("STUDIO_JUDGE_KEY", KEY)  # the right key: judged
    judge = J.make_judge(_endpoint(server, api_key_env="STUDIO_JUDGE_KEY"), say=lambda *_: None)
    assert J.pairwise(_items([("aa", "a")]), judge)["summary"]["wins"] == 1
    judge.close()
    monkeypatch.delenv("STUDIO_JUDGE_KEY")
    with pytest.raises(J.JudgeError, match="eval.judge_api_key_env: the environment variable STUDIO_JUDGE_KEY is not set"):
        J.make_judge(_endpoint(server, api_key_env="STUDIO_JUDGE_KEY"))
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/v1"
    with pytest.raises(J.JudgeError, match=re.escape(url) + ".*gave no answer in 3 tries.*ConnectError"):
        J.make_judge(_endpoint(server, base_url=url), say=lambda *_: None)


# --- rubric against the server -----------------------------------------------------------------------------


def test_rubric_scores_each_answer(server):
    server.reset("score")
    items = _items([("one two three four five", "one two"), ("a b c d e f g", "a b c"), ("x y z", "x y z w"),
                    ("just six words in this answer", "w")])
    judge = J.make_judge(_endpoint(server), say=lambda *_: None)
    result = J.rubric(items, judge)
    judge.close()
    s = result["summary"]
    a, b = [5, 7, 3, 6], [2, 3, 4, 1]
    assert [r["scores"]["a"]["score"] for r in result["items"]] == a and [r["scores"]["b"]["score"] for r in result["items"]] == b
    assert all(x["reason"] and x["raw"] and x["by"] == "reply" for r in result["items"] for x in r["scores"].values())

    def t_interval(v):
        m = sum(v) / len(v)
        h = 3.182 * math.sqrt(sum((x - m) ** 2 for x in v) / (len(v) - 1) / len(v))  # t(0.975, 3 df)
        return pytest.approx((m, m - h, m + h), abs=1e-3)

    assert (s["a"]["mean"], s["a"]["low"], s["a"]["high"]) == t_interval(a) and s["a"]["name"] == "tuned"
    assert (s["b"]["mean"], s["b"]["low"], s["b"]["high"]) == t_interval(b) and s["b"]["failed"] == 0
    assert (s["difference"]["mean"], s["difference"]["low"], s["difference"]["high"]) == t_interval([x - y for x, y in zip(a, b)])
    assert s["n"] == 4 and s["failed"] == 0 and s["failed_requests"] == 0 and len(server.log) == 1 + 8


# --- scripted judges and the numbers ------------------------------------------------------------------------


def test_a_judge_that_always_says_1_is_all_position_bias():
    asked = []

    def always_one(chats):
        asked.extend(chats)
        return ["Answer 1 looks fine.\nVerdict: 1"] * len(chats)

    result = J.pairwise(_items([("a", "bbb"), ("aaa", "b"), ("same", "same")]), always_one)
    s = result["summary"]
    assert (s["wins"], s["ties"], s["losses"], s["failed"], s["position_bias"]) == (0, 3, 0, 0, 1.0)
    assert s["win_rate"] == 0.5 and s["failed_requests"] == 0 and len(asked) == 6
    for r in result["items"]:
        assert [o["verdict"] for o in r["orders"]] == ["a", "b"] and r["consistent"] is False
        assert "disagreed" in r["reason"] and all(o["reason"] == "Answer 1 looks fine." for o in r["orders"])


def test_one_order_a_tie_the_other_a_preference_is_a_tie():
    replies = iter(["Verdict: 1", "Verdict: tie"])
    result = J.pairwise(_items([("a", "b")]), lambda chats: [next(replies) for _ in chats])
    assert result["items"][0]["verdict"] == "tie" and result["summary"]["position_bias"] == 1.0


def test_win_rate_is_the_wilson_interval():
    w = J.win_rate(3, 1, 2)  # p = 3.5 / 6; by hand: centre 0.550805, half width 0.309731
    assert (w["win_rate"], w["low"], w["high"], w["n"]) == pytest.approx((0.583333, 0.241074, 0.860536, 6), abs=1e-5)
    w = J.win_rate(10, 0, 0)  # p = 1: low = n / (n + z^2)
    assert (w["low"], w["high"]) == pytest.approx((10 / (10 + 1.96 ** 2), 1.0))
    w = J.win_rate(0, 0, 5)  # p = 0: high = z^2 / (n + z^2)
    assert (w["win_rate"], w["low"], w["high"]) == pytest.approx((0.0, 0.0, 1.96 ** 2 / (5 + 1.96 ** 2)))
    assert J.win_rate(0, 4, 0)["win_rate"] == 0.5 and J.win_rate(0, 0, 0) == {"win_rate": None, "low": None, "high": None, "n": 0}
    m = J.mean_interval([1, 2, 3, 4, 5])  # sd 1.5811, se 0.7071, t(0.975, 4) = 2.776
    assert (m["mean"], m["low"], m["high"]) == pytest.approx((3, 3 - 1.9629, 3 + 1.9629), abs=1e-3)
    assert J.t95(40) == pytest.approx(2.0211, abs=1e-3) and J.t95(200) == pytest.approx(1.9719, abs=1e-3)


def test_reading_verdicts_and_scores():
    for text, said in [("Better.\nVerdict: 1", "1"), ("**Verdict:** 2", "2"), ("Verdict: [[tie]]", "tie"), ("x [[2]]", "2"),
                       ("Final verdict: Answer 1.", "1"), ("verdict: Tie", "tie"), ("Verdict: 1\n...\nVerdict: 2", "2"),
                       ("I prefer answer 1", None), ("Verdict: 12", None), ("My verdict is that both are fine.", None)]:
        assert J.parse_verdict(text)[0] == said, text
    assert J.parse_verdict("Reason: the first is right.\nVerdict: 1") == ("1", "the first is right.")
    for text, score in [("Score: 7", 7), ("**Score:** 8/10", 8), ("Rating: 6.5", 6.5), ("Score: 10", 10), ("Score: 11", None),
                        ("Score: 0", None), ("a fine answer", None)]:
        assert J.parse_score(text)[0] == score, text


def test_settings_from_the_eval_section():
    from types import SimpleNamespace

    s = J.settings_from(SimpleNamespace(eval=SimpleNamespace(judge="rubric", judge_model="endpoint", judge_retries=4,
                                                             batch_size=3), train=SimpleNamespace(compute_dtype="fp32")))
    assert (s.mode, s.model, s.retries, s.batch_size, s.compute_dtype, s.max_new_tokens, s.base_url) == \
        ("rubric", "endpoint", 4, 3, "fp32", 192, None)
    assert J.settings_from(SimpleNamespace()).mode == "none"


# --- local judges -------------------------------------------------------------------------------------------

ITEMS3 = [("Paris is the capital of France.", "London."), ("2 + 2 = 4", "It is 5."), ("Water boils at 100 C.", "Water boils at 100 C.")]


def test_a_local_judge_always_decides(tiny_model, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    judge = J.make_judge(J.JudgeSettings(model=str(tiny_model), max_new_tokens=8), say=lambda *_: None)
    result = J.pairwise(_items(ITEMS3), judge)
    assert result["summary"]["failed"] == 0 and result["summary"]["n"] == 3
    for r in result["items"]:
        assert r["verdict"] in ("a", "b", "tie") and [o["shown_first"] for o in r["orders"]] == ["a", "b"]
        for o in r["orders"]:
            assert o["by"] in ("reply", "likelihood") and o["verdict"] in ("a", "b", "tie") and o["reason"]
            if o["by"] == "likelihood":
                assert set(o["likelihoods"]) == {"1", "2", "tie"} and o["said"] == max(o["likelihoods"], key=o["likelihoods"].get)
    assert result["summary"]["by_likelihood"] >= 1  # a random model writes no verdict
    scored = J.rubric(_items(ITEMS3[:2]), judge)
    assert all(1 <= x["score"] <= 10 for r in scored["items"] for x in r["scores"].values()) and scored["summary"]["failed"] == 0
    judge.close()

    torch.manual_seed(0)  # a run folder with an adapter on the tiny model: loaded on the base its adapter names
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model), LoraConfig(r=2, target_modules=["q_proj"]))
    peft.save_pretrained(tmp_path / "run" / "adapter")
    judge = J.make_judge(J.JudgeSettings(model=str(tmp_path / "run"), max_new_tokens=4), say=lambda *_: None)
    assert judge.gen.spec.model.name_or_path == str(tiny_model) and hasattr(judge.gen.model, "peft_config")
    assert J.pairwise(_items(ITEMS3[:1]), judge)["items"][0]["verdict"] in ("a", "b", "tie")
    judge.close()


@pytest.mark.slow
def test_the_default_model_as_judge():
    judge = J.make_judge(J.JudgeSettings(model="default", max_new_tokens=16), say=lambda *_: None)
    result = J.pairwise(_items(ITEMS3[:1]), judge)
    judge.close()
    assert result["summary"]["failed"] == 0 and all(r["verdict"] in ("a", "b", "tie") for r in result["items"])
    assert all(o["reason"] and o["raw"] is not None for r in result["items"] for o in r["orders"])


def _studio(*args, timeout=600):
    import subprocess
    import sys

    from conftest import ROOT

    return subprocess.run([sys.executable, "-m", "studio", *map(str, args)], capture_output=True, text=True, cwd=ROOT, timeout=timeout)


def test_the_eval_job_judges_a_run_against_the_base(server, tiny_model, tmp_path):
    """Through the CLI: predictions of base and a run on identity_eval, judged by the test server in both orders;
    the server prefers the longer answer, so every verdict is known from the predictions."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from studio import spec as specmod

    run = tmp_path / "runs" / "tiny_lora"
    torch.manual_seed(1)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                          LoraConfig(r=4, lora_alpha=64, target_modules="all-linear", init_lora_weights=False))
    peft.save_pretrained(run / "adapter")
    specmod.dump(specmod.load(None, [f"model.name_or_path={tiny_model}", f"output_dir={run}"]), run / "spec.yaml")
    server.reset("longer")
    common = [f"model.name_or_path={tiny_model}", f"model.adapter={run}", "eval.compare=[base]", "data.eval_dataset=[identity_eval]",
              "data.max_samples=4", "eval.max_new_tokens=12", "eval.do_sample=true", "eval.judge=pairwise", "eval.judge_model=endpoint",
              f"eval.judge_base_url={server.url}", "eval.judge_endpoint_model=judge", "eval.compute_loss=false"]
    out = tmp_path / "eval"
    r = _studio("eval", *common, f"output_dir={out}")
    assert r.returncode == 0, r.stdout + r.stderr
    summary = json.loads((out / "judge.json").read_text())
    assert summary["against"] == "base" and [(p["a_name"], p["b_name"]) for p in summary["pairs"]] == [("tiny_lora", "base")]
    items = [json.loads(line) for line in (out / "judgements.jsonl").read_text().splitlines()]
    base = [json.loads(line)["predict"] for line in (out / "predictions-base.jsonl").read_text().splitlines()]
    tuned = [json.loads(line)["predict"] for line in (out / "predictions-tiny_lora.jsonl").read_text().splitlines()]
    want = ["a" if len(t) > len(b) else "b" if len(b) > len(t) else "tie" for t, b in zip(tuned, base)]
    assert [i["verdict"] for i in items] == want and [i["a"] for i in items] == tuned
    assert all([o["shown_first"] for o in i["orders"]] == ["a", "b"] and all(o["reason"] for o in i["orders"]) for i in items)
    s = summary["pairs"][0]["summary"]
    assert (s["wins"], s["ties"], s["losses"], s["failed"]) == (want.count("a"), want.count("tie"), want.count("b"), 0)
    assert s["win_rate"] == pytest.approx((want.count("a") + want.count("tie") / 2) / 4, abs=1e-4)
    assert len([m for m in server.log if m[-1]["content"] != PROBE]) == 8  # 4 items x 2 orders
    assert "judge: tiny_lora vs base" in r.stdout

    server.reset("score")  # rubric: each model's answers scored alone (the server scores an answer by its word count)
    r = _studio("eval", *[c for c in common if c != "eval.judge=pairwise"], "eval.judge=rubric", f"output_dir={tmp_path / 'rubric'}")
    assert r.returncode == 0, r.stdout + r.stderr
    scores = json.loads((tmp_path / "rubric" / "judge.json").read_text())["scores"]
    rows = {n: [json.loads(line)["predict"] for line in (tmp_path / "rubric" / f"predictions-{n}.jsonl").read_text().splitlines()]
            for n in ("base", "tiny_lora")}
    for name, answers in rows.items():
        want = [len(a.split()) for a in answers if 1 <= len(a.split()) <= 10]  # other counts are no score: failed, counted
        assert scores[name]["n"] == len(want) and scores[name]["failed"] == 4 - len(want), (name, answers)
        assert scores[name]["mean"] == (pytest.approx(sum(want) / len(want), abs=1e-3) if want else None)

    server.reset("refuse")  # a judge that refuses: before the job starts, nothing written
    r = _studio("eval", *common, f"output_dir={tmp_path / 'refused'}")
    assert r.returncode == 2 and "Traceback" not in r.stderr and "HTTP 401" in r.stderr and server.url in r.stderr, r.stderr
    assert not (tmp_path / "refused").exists()
