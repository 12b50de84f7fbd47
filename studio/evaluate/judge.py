"""A judge model reads two models' answers to the same prompts and says which is better (or scores each one).

    judge = make_judge(settings_from(spec), say)       # LocalJudge or EndpointJudge (an endpoint is probed first)
    result = pairwise(items, judge, on_progress=lambda done, total: ...)    # or rubric(items, judge)
    judge.close()

pairwise: items are {"id", "prompt", "reference" (or None), "a", "b", "a_name", "b_name"}. Each pair is asked in
both orders (A shown as answer 1, then B shown as answer 1), and the judge's reply must end with a line
`Verdict: 1`, `Verdict: 2` or `Verdict: tie` (read anywhere in the reply, the last one counting; `**Verdict:** 2`,
`Verdict: [[1]]`, `Verdict: Answer 2`, `[[tie]]` are read too). The two orders combine as in MT-Bench: the same model
preferred in both wins; anything inconsistent (opposite preferences, or a preference in one order and a tie in the
other) is a tie, and position_bias is the share of judged items whose two orders disagreed. The win rate of A is
(wins + ties / 2) / judged items, with a 95% Wilson score interval on that share (ties counted as half a win).

rubric: every answer (a, and b where given) is scored alone; the reply must end with `Score: N`, N from 1 to 10.
Each model gets the mean score with a 95% t interval over items, and `difference` the paired mean of a - b.

A reply no verdict or score can be read from is asked again (`retries` more times) with a reminder of the format;
still unreadable, or a request that failed for good, and the item is "failed" with the reason: nothing is dropped,
failed items and requests are counted in the summary. A local judge is greedy (asking again would repeat it): it
picks the option its own next-token likelihoods favour after its reply and "Verdict:" (or "Score:"), and the
record says so ("by": "likelihood"); a local judge always decides.
"""
from __future__ import annotations

import math
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace

from studio.generate.generators import EndpointGenerator, LocalGenerator
from studio.spec import SpecError


class JudgeError(SpecError):
    """A judge that cannot work (a refused or unreachable endpoint, a missing key): the message says what to change."""


@dataclass
class JudgeSettings:
    mode: str = "pairwise"            # none, pairwise or rubric
    model: str = "default"            # a model the studio loads (name, folder, run folder), or `endpoint`
    base_url: str | None = None       # endpoint: the OpenAI-compatible base URL (POST BASE_URL/chat/completions)
    endpoint_model: str | None = None
    api_key_env: str | None = None    # NAME of the environment variable holding the key; the key is never stored
    retries: int = 2                  # asks again after a failed request or an unreadable reply
    concurrency: int = 4              # endpoint: requests in flight
    timeout: float = 120.0            # endpoint: seconds for one reply
    max_new_tokens: int = 192
    batch_size: int = 8               # local: replies generated together
    compute_dtype: str = "auto"       # local
    trust_remote_code: bool = False   # local
    temperature: float = 0.0          # greedy
    top_p: float = 1.0
    seed: int = 0


def settings_from(spec) -> JudgeSettings:
    """The judge's settings from a JobSpec (or its eval section): eval.judge, eval.judge_model, eval.judge_* ."""
    e, d = getattr(spec, "eval", spec), JudgeSettings()
    own = {k: getattr(e, "judge_" + k, getattr(d, k)) for k in ("model", "base_url", "endpoint_model", "api_key_env", "retries", "max_new_tokens")}
    return JudgeSettings(mode=getattr(e, "judge", "none"), batch_size=getattr(e, "batch_size", d.batch_size),
                         compute_dtype=getattr(getattr(spec, "train", None), "compute_dtype", d.compute_dtype), **own)


# --- the prompts and reading the replies ----------------------------------------------------------------------

ASK = {"pairwise": "Compare two answers to the question below and decide which one answers it better: more correct, "
                   "more helpful and closer to what was asked{guide}. Do not let the order of the answers or their length decide.",
       "rubric": "Rate how well the answer below answers the question, on a scale from 1 to 10: 10 for a correct, "
                 "complete and helpful answer, 1 for a wrong, empty or off-topic one{guide}."}
FORMAT = {"pairwise": "Give your reason in one or two sentences, then end with a line that is exactly one of:\nVerdict: 1\n"
                      "Verdict: 2\nVerdict: tie\n(1: answer 1 is better; 2: answer 2 is better; tie: they are equally good or equally bad.)",
          "rubric": "Give your reason in one or two sentences, then end with a line:\nScore: N\nwhere N is a whole number from 1 to 10."}
GUIDE = ", taking the reference answer as the guide to what is correct"
PAIR_REMINDER = "Your reply did not end with a verdict line. Reply with one line only: Verdict: 1, Verdict: 2 or Verdict: tie"
SCORE_REMINDER = "Your reply did not end with a score line. Reply with one line only: Score: N (N a whole number from 1 to 10)"
PAIR_OPTIONS = ("1", "2", "tie")
SCORE_OPTIONS = tuple(str(n) for n in range(1, 11))

_VERDICT = re.compile(r"(?:final\s+)?verdict\W{0,8}(?:(?:is|answer|response|the|final)\W+){0,3}(1|2|tied?|draw|equal|both)\b", re.I)
_BRACKETS = re.compile(r"\[\[\s*(1|2|tie)\s*\]\]", re.I)
_SCORE = re.compile(r"(?:score|rating)\W{0,8}(?:(?:is|of)\W+){0,2}(\d+(?:\.\d+)?)(?!\.?\d)", re.I)
_SCORE_BRACKETS = re.compile(r"\[\[\s*(\d+(?:\.\d+)?)\s*\]\]")


def judge_chat(mode: str, item: dict, answers: list[str]) -> list[dict]:
    """The judge's chat: the task, the question, the reference (when there is one), the answers, the reply's format."""
    ref, _block = item.get("reference"), lambda title, text: f"[{title}]\n{text or ''}\n[End of {title.lower()}]\n\n"
    titles = ["Answer"] if len(answers) == 1 else [f"Answer {k + 1}" for k in range(len(answers))]
    text = (ASK[mode].format(guide=GUIDE if ref else "") + "\n\n" + _block("Question", item["prompt"])
            + (_block("Reference answer", ref) if ref else "") + "".join(_block(t, a) for t, a in zip(titles, answers))
            + FORMAT[mode])
    return [{"role": "user", "content": text}]


def _reason(text: str) -> str:
    text = re.sub(r"^\W*(reason(ing)?|explanation)\s*[:：]\s*", "", text.strip(), flags=re.I)
    return text.rstrip("*#-:：[( \n\t")[:1000].strip()


def _last(text: str, patterns, value):
    """(value(the last match of the first pattern that matches) or None, the reason: the reply before that match)."""
    found = next((m for m in (list(p.finditer(text)) for p in patterns) if m), None)
    said = value(found[-1].group(1)) if found else None
    return (None, _reason(text)) if said is None else (said, _reason(text[:found[-1].start()]))


def parse_verdict(text: str) -> tuple[str | None, str]:
    """("1" | "2" | "tie" | None, the reason)."""
    return _last(text, (_VERDICT, _BRACKETS), lambda w: w if w in ("1", "2") else "tie")


def parse_score(text: str) -> tuple[float | int | None, str]:
    """(a score from 1 to 10, an int where it is whole, or None; the reason)."""
    return _last(text, (_SCORE, _SCORE_BRACKETS), lambda w: None if not 1 <= float(w) <= 10 else int(float(w)) if float(w).is_integer() else float(w))


# --- asking, with the retry rules ---------------------------------------------------------------------------


def _parts(ask):
    """(the ask function, the judge object or None): `ask` is a judge, its bound .ask, or any function."""
    owner = ask if hasattr(ask, "ask") else getattr(ask, "__self__", None)
    return (ask.ask if hasattr(ask, "ask") else ask), owner


def _resolve(chats: list, ask, parse, options, retries: int, reminder: str, cue: str) -> list[dict]:
    """One record per chat: {"said", "reason", "raw", "attempts", "by"} ("said" None: failed, "reason" says why)."""
    fn, owner = _parts(ask)
    choose = getattr(owner, "choose", None)
    out, convo, replies, asks = [None] * len(chats), list(chats), [[] for _ in chats], [0] * len(chats)

    def rec(i, said, reason, by, **more):
        return {"said": said, "reason": reason, "raw": replies[i][-1] if replies[i] else None, "attempts": asks[i], "by": by, **more}

    pending = list(range(len(chats)))
    for _ in range(retries + 1):
        if not pending:
            break
        texts = fn([convo[i] for i in pending])
        errors = getattr(owner, "last_errors", None) or [None] * len(pending)
        unread = []
        for i, text, err in zip(pending, texts, errors):
            asks[i] += 1
            if text is None:
                out[i] = rec(i, None, "the request to the judge failed" + (f" ({err})" if err else ""), None)
                continue
            replies[i].append(text)
            said, reason = parse(text)
            if said is None:
                unread.append(i)
            else:
                out[i] = rec(i, said, reason or _reason(replies[i][0]) or "(no reason given)", "reply")
        if unread and choose is not None:
            for i, (said, scores) in zip(unread, choose([convo[i] for i in unread], [replies[i][-1] for i in unread], options, cue)):
                out[i] = rec(i, said, _reason(replies[i][-1]) or "(no reason given)", "likelihood", likelihoods=scores)
            unread = []
        for i in unread:
            convo[i] = chats[i] + [{"role": "assistant", "content": replies[i][-1]}, {"role": "user", "content": reminder}]
        pending = unread
    for i in pending:
        out[i] = rec(i, None, f"no {cue.rstrip(':').lower()} could be read from the judge's reply after {asks[i]} tries", None)
    return out


def _chunks(items: list, size: int):
    return (items[start:start + size] for start in range(0, len(items), size))


def pairwise(items: list[dict], ask, retries: int = 2, on_progress=None, chunk: int = 8) -> dict:
    """{"summary": {...}, "items": [...]}: every item judged in both orders (see the module's docstring)."""
    _, owner = _parts(ask)
    before, results = getattr(owner, "failed_requests", 0), []
    for part in _chunks(items, chunk):
        chats = [judge_chat("pairwise", it, [it[first], it["b" if first == "a" else "a"]]) for it in part for first in "ab"]
        got = _resolve(chats, ask, parse_verdict, PAIR_OPTIONS, retries, PAIR_REMINDER, "Verdict:")
        results += [_combine(it, got[2 * k], got[2 * k + 1]) for k, it in enumerate(part)]
        if on_progress:
            on_progress(len(results), len(items))
    judged = [r for r in results if r["verdict"] != "failed"]
    count = {v: sum(r["verdict"] == v for r in results) for v in ("a", "tie", "b", "failed")}
    rate = win_rate(count["a"], count["tie"], count["b"])
    first = items[0] if items else {}
    summary = {"a_name": first.get("a_name", "a"), "b_name": first.get("b_name", "b"), "wins": count["a"],
               "ties": count["tie"], "losses": count["b"], "failed": count["failed"], "n": len(judged), "items": len(results),
               **{k: _round(rate[k]) for k in ("win_rate", "low", "high")},
               "position_bias": _round(sum(not r["consistent"] for r in judged) / len(judged)) if judged else None,
               "by_likelihood": sum(o["by"] == "likelihood" for r in results for o in r["orders"]),
               "failed_requests": getattr(owner, "failed_requests", 0) - before, "judge": getattr(owner, "name", None)}
    return {"summary": summary, "items": results}


def _combine(item: dict, one: dict, two: dict) -> dict:
    names = {"a": item.get("a_name", "a"), "b": item.get("b_name", "b")}
    orders = []
    for first, rec in (("a", one), ("b", two)):
        said = rec["said"]
        verdict = "failed" if said is None else "tie" if said == "tie" else first if said == "1" else ("b" if first == "a" else "a")
        orders.append({"shown_first": first, "verdict": verdict, **rec})
    v1, v2 = orders[0]["verdict"], orders[1]["verdict"]
    why = " | ".join(f"{names[o['shown_first']]} first: {names.get(o['verdict'], o['verdict'])} ({o['reason'][:300]})" for o in orders)
    if "failed" in (v1, v2):
        verdict, consistent, head = "failed", None, "not judged"
    elif v1 == v2:
        verdict, consistent = v1, True
        head = "a tie in both orders" if v1 == "tie" else f"{names[v1]} preferred in both orders"
    else:
        verdict, consistent, head = "tie", False, "the two orders disagreed (position bias), counted as a tie"
    return {"id": item.get("id"), "prompt": item["prompt"], "a": item["a"], "b": item["b"], "verdict": verdict,
            "consistent": consistent, "orders": orders, "reason": f"{head}. {why}"}


def rubric(items: list[dict], ask, retries: int = 2, on_progress=None, chunk: int = 8) -> dict:
    """{"summary": {...}, "items": [...]}: each answer ("a", and "b" where not None) scored 1-10 on its own."""
    _, owner = _parts(ask)
    before, results = getattr(owner, "failed_requests", 0), []
    for part in _chunks(items, chunk):
        jobs = [(k, side) for k, it in enumerate(part) for side in ("a", "b") if it.get(side) is not None]
        got = _resolve([judge_chat("rubric", part[k], [part[k][side]]) for k, side in jobs], ask, parse_score, SCORE_OPTIONS, retries,
                       SCORE_REMINDER, "Score:")
        scores = [{} for _ in part]
        for (k, side), rec in zip(jobs, got):
            said = rec.pop("said")
            scores[k][side] = {"score": None if said is None else (int(said) if isinstance(said, str) else said), **rec}
        results += [{"id": it.get("id"), "prompt": it["prompt"], "a": it.get("a"), "b": it.get("b"), "scores": s,
                     "failed": any(x["score"] is None for x in s.values())} for it, s in zip(part, scores)]
        if on_progress:
            on_progress(len(results), len(items))
    first = items[0] if items else {}
    summary = {"n": len(results), "failed": sum(r["failed"] for r in results), "failed_requests":
               getattr(owner, "failed_requests", 0) - before, "judge": getattr(owner, "name", None)}
    for side in ("a", "b"):
        got = [r["scores"][side]["score"] for r in results if side in r["scores"]]
        if got:
            summary[side] = {"name": first.get(f"{side}_name", side), **mean_interval([g for g in got if g is not None]),
                             "failed": sum(g is None for g in got)}
    pairs = [r["scores"] for r in results if all(r["scores"].get(s, {}).get("score") is not None for s in ("a", "b"))]
    if "b" in summary:
        summary["difference"] = mean_interval([p["a"]["score"] - p["b"]["score"] for p in pairs])
    return {"summary": summary, "items": results}


# --- the numbers ----------------------------------------------------------------------------------------------

T95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
       2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t95(df: int) -> float:
    """The two-sided 95% quantile of Student's t: the table to 30 degrees of freedom, then its series in 1/df."""
    if df <= len(T95):
        return T95[df - 1]
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df ** 2)


def win_rate(wins: int, ties: int, losses: int, z: float = 1.96) -> dict:
    """(wins + ties / 2) / n with its Wilson score interval; all None when nothing was judged."""
    n = wins + ties + losses
    if n == 0:
        return {"win_rate": None, "low": None, "high": None, "n": 0}
    p, scale = (wins + 0.5 * ties) / n, 1 + z * z / n
    centre, half = (p + z * z / (2 * n)) / scale, z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / scale
    return {"win_rate": p, "low": max(0.0, centre - half), "high": min(1.0, centre + half), "n": n}


def mean_interval(values: list[float]) -> dict:
    """The mean with a 95% t interval (None with fewer than two values)."""
    n = len(values)
    mean = sum(values) / n if n else None
    half = t95(n - 1) * math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else None
    low, high = (None, None) if half is None else (mean - half, mean + half)
    return {"mean": _round(mean), "low": _round(low), "high": _round(high), "n": n}


def _round(x):
    return None if x is None else round(x, 4)


# --- the judges -------------------------------------------------------------------------------------------


class EndpointJudge:
    """An OpenAI-compatible server (EndpointGenerator: retries with backoff on 5xx and connection errors). One small
    request is sent at once: a refusal or a server that cannot be reached is a JudgeError before any item is judged."""

    def __init__(self, settings: JudgeSettings, say=print, probe: bool = True):
        if not (settings.base_url and settings.endpoint_model):
            raise JudgeError("eval.judge_model endpoint: set eval.judge_base_url (e.g. http://127.0.0.1:8000/v1) and eval.judge_endpoint_model")
        self.settings = settings
        self.gen = EndpointGenerator(None, say, settings=settings, field="eval.judge_", error=JudgeError)
        self.url, self.name = self.gen.url, f"{settings.endpoint_model} at {settings.base_url}"
        self.refused, self.last_errors = 0, []
        errors: list = []
        try:
            if probe and self.gen.one([{"role": "user", "content": "Reply with the word OK."}], errors)[0] is None:
                raise JudgeError(f"the judge endpoint {self.url} gave no answer in {len(errors)} tries (last: {errors[-1]}). "
                                 "Check eval.judge_base_url (is the server running there?) and eval.judge_endpoint_model")
        except JudgeError:  # refused (HTTP 4xx) or not reachable
            self.close()
            raise

    @property
    def failed_requests(self) -> int:
        return self.gen.failed_requests + self.refused

    def ask(self, chats: list[list[dict]]) -> list[str | None]:
        errors = [[] for _ in chats]

        def one(i):
            try:
                return self.gen.one(chats[i], errors[i])[0]
            except JudgeError as e:  # refused after the first request passed (e.g. too long): this item fails
                errors[i].append("refused: " + str(e).splitlines()[0])
                return None

        pool = ThreadPoolExecutor(self.settings.concurrency)
        try:
            texts = list(pool.map(one, range(len(chats))))
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        self.last_errors = [e[-1] if e else None for e in errors]
        self.refused += sum(bool(e) and e.startswith("refused: ") for e in self.last_errors)
        return texts

    def close(self) -> None:
        self.gen.close()


def _judge_model(settings: JudgeSettings):
    """The model section that loads the judge: a base model, or a run/adapter folder on the base it was trained on."""
    from studio.model import models
    from studio.spec import ModelSpec

    p = Path(settings.model).expanduser()
    if settings.model == models.DEFAULT or not p.is_dir() or (p / "config.json").exists():
        return ModelSpec(name_or_path=settings.model, trust_remote_code=settings.trust_remote_code)
    folder = p / "model" if (p / "model" / "config.json").exists() else models.find_adapter(p)
    base = models.adapter_base(folder)  # the run's spec, else adapter_config.json
    if not base:
        raise JudgeError(f"eval.judge_model: cannot tell which base model {p} was trained on (no spec.yaml, no base in its adapter_config.json)")
    return ModelSpec(name_or_path=base, adapter=str(p), trust_remote_code=settings.trust_remote_code)


class LocalJudge:
    """A model the studio loads (LocalGenerator: the evaluate loading path, batched greedy decoding)."""

    def __init__(self, settings: JudgeSettings, say=print):
        self.settings, self.say, self.failed_requests, self.name = settings, say, 0, settings.model
        self.spec = SimpleNamespace(model=_judge_model(settings), data=SimpleNamespace(cutoff_len=4096),
                                    train=SimpleNamespace(compute_dtype=settings.compute_dtype))
        self.gen = LocalGenerator(self.spec, say, settings=settings)
        context = getattr(self.gen.model.config, "max_position_embeddings", None) or 4096
        self.spec.data.cutoff_len = max(256, min(context, 8192) - settings.max_new_tokens - 8)  # a left cut keeps the format

    def ask(self, chats: list[list[dict]]) -> list[str | None]:
        return self.gen.generate(chats, self.say)

    def choose(self, chats: list, replies: list[str], options, cue: str) -> list[tuple[str, dict]]:
        """For each chat, the option with the highest log-likelihood (summed over its tokens) after the prompt, the
        reply and the cue ("Verdict:"), with every option's log-likelihood."""
        import torch

        tok, model = self.gen.tokenizer, self.gen.model
        device = next(model.parameters()).device
        rows = []
        for chat, reply in zip(chats, replies):
            head = self.gen.prompt_ids(chat) + tok((reply.rstrip() + "\n" + cue).lstrip(), add_special_tokens=False)["input_ids"]
            for opt in options:
                tail = tok(" " + opt, add_special_tokens=False)["input_ids"]
                rows.append(((head + tail)[-self.spec.data.cutoff_len:], len(tail)))
        scores, pad = [], tok.pad_token_id if tok.pad_token_id is not None else 0
        for part in _chunks(rows, max(1, self.settings.batch_size)):
            width, keep = max(len(ids) for ids, _ in part), max(n for _, n in part) + 1
            ids = torch.tensor([[pad] * (width - len(r)) + r for r, _ in part], device=device)  # left-padded
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r, _ in part], device=device)
            with torch.no_grad():
                logits = model(input_ids=ids, attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0),
                               logits_to_keep=keep).logits[:, -keep:].float().log_softmax(-1)
            for k, (r, n) in enumerate(part):
                scores.append(sum(float(logits[k, keep - n - 1 + t, r[len(r) - n + t]]) for t in range(n)))
        per = [dict(zip(options, scores[c * len(options):(c + 1) * len(options)])) for c in range(len(chats))]
        return [(max(m, key=m.get), {k: round(v, 3) for k, v in m.items()}) for m in per]

    def close(self) -> None:
        import torch

        self.gen.model = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def make_judge(settings: JudgeSettings, say=print):
    """An EndpointJudge when settings.model is `endpoint` (probed at once), else a LocalJudge (loaded at once)."""
    return EndpointJudge(settings, say) if settings.model == "endpoint" else LocalJudge(settings, say)
