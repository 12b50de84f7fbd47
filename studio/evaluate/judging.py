"""The evaluate job's judge step: the predictions the job just made, judged by studio.evaluate.judge.

pairwise: every model against eval.judge_against (default: the first model of the plan, `base` when compared),
prompt by prompt, each pair asked in both orders. rubric: every model's answers scored 1-10 on their own.
Writes RUN/judge.json ({"mode", "judge", "against", "pairs": [{"a_name", "b_name", "summary"}], "scores":
{model: {"mean", "low", "high", "n", "failed"}}}) and RUN/judgements.jsonl (one line per judged item, with the two
models' names, both orders and their reasons).
"""
from __future__ import annotations

import json
from pathlib import Path

JUDGE = "judge.json"
JUDGEMENTS = "judgements.jsonl"


def against(spec, names: list[str]) -> str:
    from studio.evaluate.judge import JudgeError

    want = spec.eval.judge_against or names[0]
    if want not in names:
        raise JudgeError(f"eval.judge_against: `{want}` is not one of the evaluated models ({', '.join(names)})")
    return want


def check(spec, entries) -> None:
    """Before the job starts: the judge has answers to judge, the model to judge against, and a judge that answers."""
    from studio.evaluate.judge import JudgeError, EndpointJudge, settings_from
    from studio.evaluate.prefscore import is_pair_eval
    from studio.evaluate.predictions import eval_datasets

    if is_pair_eval(spec) or not eval_datasets(spec):
        raise JudgeError("eval.judge: the judge reads the models' answers on data.eval_dataset; name a dataset of prompts "
                         "(not preference pairs)")
    names = [e.name for e in entries]
    if spec.eval.judge == "pairwise":
        if len(names) < 2:
            raise JudgeError("eval.judge pairwise: compare at least two models (eval.compare=[base], or more runs)")
        against(spec, names)
    s = settings_from(spec)
    if s.model == "endpoint":
        EndpointJudge(s, say=lambda *_: None).close()  # one request: refused or unreachable -> JudgeError now
    elif s.model != "default" and not Path(s.model).expanduser().exists() and "/" not in s.model:
        raise JudgeError(f"eval.judge_model: `{s.model}` is neither `default`, `endpoint`, a folder nor a hub id")


def _answers(run_dir: Path, result: dict) -> list[dict]:
    return [json.loads(line) for line in (run_dir / result["predictions"]).read_text(encoding="utf-8").splitlines() if line.strip()]


def judge_step(spec, entries, results: list[dict], run_dir: Path, writer, say) -> dict:
    from studio.evaluate import judge

    settings = judge.settings_from(spec)
    answers = {r["name"]: _answers(run_dir, r) for r in results}
    names = list(answers)
    ref = against(spec, names) if settings.mode == "pairwise" else None
    jobs = ([(n, ref) for n in names if n != ref] if settings.mode == "pairwise" else [(n, None) for n in names])
    total, done = sum(len(answers[a]) for a, _ in jobs), 0
    say(f"judge: {settings.model if settings.model != 'endpoint' else settings.endpoint_model} ({settings.mode}), "
        f"{total} item(s)" + (", each in both orders" if settings.mode == "pairwise" else ""))
    j = judge.make_judge(settings, say)
    out = {"mode": settings.mode, "judge": j.name, "against": ref, "pairs": [], "scores": {}}
    lines = []
    try:
        for a, b in jobs:
            items = [{"id": i, "prompt": ra["query"], "reference": ra.get("label"), "a": ra["predict"],
                      "b": answers[b][i]["predict"] if b else None, "a_name": a, "b_name": b, "dataset": ra.get("dataset")}
                     for i, ra in enumerate(answers[a])]

            def progress(k, n, base=done, who=a):
                writer.write("progress", done=base + k, total=total, unit="judged items", model=f"judge: {who}")

            fn = judge.pairwise if settings.mode == "pairwise" else judge.rubric
            res = fn(items, j, retries=settings.retries, on_progress=progress)
            done += len(items)
            for item, src in zip(res["items"], items):
                lines.append({**item, "a_name": a, "b_name": b, "dataset": src["dataset"], "reference": src["reference"]})
            if settings.mode == "pairwise":
                s = res["summary"]
                out["pairs"].append({"a_name": a, "b_name": b, "summary": s})
                rate = "no item judged" if s["win_rate"] is None else (
                    f"win rate {s['win_rate'] * 100:.0f}% (95% interval {s['low'] * 100:.0f}-{s['high'] * 100:.0f}%)")
                say(f"judge: {a} vs {b}: {s['wins']} wins, {s['ties']} ties, {s['losses']} losses, {s['failed']} failed; {rate}; "
                    f"failed requests {s['failed_requests']}")
            else:
                s = res["summary"]["a"] if "a" in res["summary"] else {"mean": None, "low": None, "high": None, "n": 0, "failed": len(items)}
                out["scores"][a] = {**s, "failed_requests": res["summary"]["failed_requests"]}
                say(f"judge: {a}: mean score {s['mean']} (95% interval {s['low']}-{s['high']}), {s.get('failed', 0)} failed")
    finally:
        j.close()
    (run_dir / JUDGE).write_text(json.dumps(out, indent=1, ensure_ascii=False))
    with open(run_dir / JUDGEMENTS, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(x, ensure_ascii=False) + "\n" for x in lines)
    short = {p["a_name"]: {k: p["summary"][k] for k in ("win_rate", "low", "high", "wins", "ties", "losses", "failed")}
             for p in out["pairs"]} or {m: {k: s.get(k) for k in ("mean", "low", "high")} for m, s in out["scores"].items()}
    return {"judge": short, "judge_path": str(run_dir / JUDGE)}
