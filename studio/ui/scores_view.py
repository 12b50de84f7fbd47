"""The Evaluate tab's answer to "is it better, and what did it break?": the benchmark table (models x tasks, each
run's delta against the base, red where it lost more than the standard error of the difference), the judge's
verdict (win / tie / loss, win rate with its interval) and the judged pairs, sortable. Pure functions of the
files an eval run leaves (benchmarks.json, judge.json, judgements.jsonl); no components.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import pandas as pd

from studio.evaluate import scorecard

COMMON = ["studio_pack", "studio_identity", "studio_general_mc", "studio_short_answer", "mmlu", "gsm8k", "arc_easy",
          "arc_challenge", "hellaswag", "winogrande", "truthfulqa_mc2", "ifeval", "cmmlu", "ceval-valid"]
JUDGE_SORTS = ["dataset order", "losses first", "wins first", "ties first", "failed first", "position bias first"]


def benchmark_choices(task_dirs=()) -> list[str]:
    """Names for the benchmark picker: the shipped pack's, the task files of `task_dirs` (read as plain YAML), then
    well-known lm-eval names (they need the hub or its cache)."""
    import yaml

    from studio.evaluate.benchmarks import pack_dir

    found = []
    for folder in [pack_dir(), *map(Path, task_dirs or [])]:
        for f in sorted(folder.rglob("*.yaml")) if folder.is_dir() else []:
            try:
                cfg = yaml.load(f.read_text(encoding="utf-8"), Loader=yaml.BaseLoader) or {}
            except (OSError, yaml.YAMLError):
                continue
            name = cfg.get("group") or cfg.get("task") if isinstance(cfg, dict) else None
            if isinstance(name, str):
                found.append(name)
    return list(dict.fromkeys(["studio_pack", *found, *COMMON]))


def _cell(e: dict | None, base: bool) -> str:
    if e is None:
        return "<td>–</td>"
    se = f" ± {e['stderr'] * 100:.1f}" if isinstance(e.get("stderr"), (int, float)) else ""
    text = f"{e['value'] * 100:.1f}{se}"
    cls = ""
    if not base and e.get("delta") is not None:
        d = e["delta"] * 100
        cls = "st-lost" if e.get("lost") else ("st-gain" if d > 0 else "")
        why = " (lost more than the standard error)" if e.get("lost") else ""
        text += f" <span class='st-delta' title='run minus base{why}'>({d:+.1f})</span>"
    return f"<td class='{cls}' data-lost='{str(bool(e.get('lost'))).lower()}'>{text}</td>"


def benchmark_html(bench: dict | None) -> str:
    """A models x tasks table on a 0-100 scale: value ± stderr, and for each run (run - base); red: lost more than
    the standard error of the difference; green: gained."""
    if not bench or not bench.get("models"):
        return ""
    base = bench.get("base", "base")
    names = list(bench["models"])
    metric = {t: (bench["models"][base].get(t) or {}).get("metric", "") for t in bench["tasks"]}
    head = "".join(f"<th scope='col'>{html.escape(t)}<br><small>{html.escape(metric[t])}</small></th>" for t in bench["tasks"])
    body = "".join(f"<tr><th scope='row'>{html.escape(n)}{' (base)' if n == base else ''}</th>"
                   + "".join(_cell(bench["models"][n].get(t), n == base) for t in bench["tasks"]) + "</tr>" for n in names)
    lost = [r for r in scorecard.rows(bench) if r["lost"]]
    note = ("<p class='st-lost-note'>Lost more than the standard error: "
            + "; ".join(f"{html.escape(r['model'])} on {html.escape(r['task'])} ({r['delta'] * 100:+.1f})" for r in lost) + "</p>"
            if lost else "<p>No run lost more than the standard error on any task.</p>" if len(names) > 1 else "")
    s = bench.get("settings") or {}
    how = (f"lm-evaluation-harness {html.escape(str(s.get('lm_eval', '')))} · chat template "
           f"{'on' if s.get('apply_chat_template') else 'off'} · few-shot {s.get('num_fewshot') if s.get('num_fewshot') is not None else 'task default'}"
           f" · limit {s.get('limit') or 'all'}")
    return (f"<table class='st-bench' aria-label='benchmark scores'><thead><tr><th scope='col'>model</th>{head}</tr></thead>"
            f"<tbody>{body}</tbody></table>{note}<p class='st-how'>Scores 0-100 (lm-eval's metric × 100) ± standard error; "
            f"(run − base) in brackets. {how}</p>")


def read_judge(run_dir) -> tuple[dict | None, list[dict]]:
    """judge.json's summary and judgements.jsonl's items of an eval run (None, [] when it has none)."""
    run_dir = Path(run_dir)
    try:
        summary = json.loads((run_dir / "judge.json").read_text())
    except (OSError, ValueError):
        return None, []
    items = []
    try:
        for line in (run_dir / "judgements.jsonl").read_text(encoding="utf-8").splitlines():
            try:
                items.append(json.loads(line))
            except ValueError:
                continue
    except OSError:
        pass
    return summary, items


def judge_md(summary: dict | None) -> str:
    if not summary:
        return ""
    lines = []
    for pair in summary.get("pairs", []):
        s = pair["summary"]
        if s.get("win_rate") is None:
            lines.append(f"- **{pair['a_name']} vs {pair['b_name']}**: no item could be judged ({s.get('failed', 0)} failed)")
            continue
        lines.append(f"- **{pair['a_name']} vs {pair['b_name']}**: {s['wins']} wins · {s['ties']} ties · {s['losses']} losses"
                     f" · {s.get('failed', 0)} failed → win rate **{s['win_rate'] * 100:.0f}%** "
                     f"(95% interval {s['low'] * 100:.0f}–{s['high'] * 100:.0f}%), orders disagreed on "
                     f"{s.get('position_bias', 0) * 100:.0f}% · failed requests {s.get('failed_requests', 0)}")
    for model, s in (summary.get("scores") or {}).items():
        lines.append(f"- **{model}**: mean score {s['mean']:.2f} / 10 (95% interval {s['low']:.2f}–{s['high']:.2f}), "
                     f"{s['n']} scored, {s.get('failed', 0)} failed")
    judge = summary.get("judge") or ""
    return (f"**Judge** `{judge}` ({summary.get('mode', 'pairwise')}; each pair asked in both orders; a win only when both "
            f"orders agree):  \n" + "\n".join(lines)) if lines else ""


def judgements_frame(items: list[dict], sort: str = "dataset order") -> pd.DataFrame:
    """One row per judged item: the prompt, both answers, the verdict (pairwise) or the scores (rubric), and the
    judge's reasons (pairwise: one per order)."""
    cols = ["#", "pair", "verdict", "prompt", "answer A", "answer B", "reason (A shown first)", "reason (B shown first)"]
    rank = {"losses first": "b", "wins first": "a", "ties first": "tie", "failed first": "failed"}
    rows = list(items)
    if sort in rank:
        rows.sort(key=lambda r: r.get("verdict", "failed" if r.get("failed") else "") != rank[sort])
    elif sort == "position bias first":
        rows.sort(key=lambda r: r.get("consistent") is not False)
    out = []
    for r in rows:
        a, b = r.get("a_name") or "A", r.get("b_name")
        if "scores" in r:  # rubric: each answer scored alone
            sc = r["scores"]
            verdict = " · ".join(f"{n}: {sc[s]['score'] if sc[s]['score'] is not None else 'failed'}/10"
                                 for s, n in (("a", a), ("b", b)) if s in sc)
            out.append([r.get("id"), a if not b else f"{a} vs {b}", verdict, r.get("prompt"), r.get("a"), r.get("b"),
                        (sc.get("a") or {}).get("reason"), (sc.get("b") or {}).get("reason")])
            continue
        orders = {o.get("shown_first"): o for o in r.get("orders", [])}
        verdict = {"a": f"{a} wins", "b": f"{b} wins"}.get(r.get("verdict"), r.get("verdict"))
        if r.get("consistent") is False:
            verdict += " (orders disagreed)"
        out.append([r.get("id"), f"{a} vs {b}", verdict, r.get("prompt"), r.get("a"), r.get("b"),
                    (orders.get("a") or {}).get("reason"), (orders.get("b") or {}).get("reason")])
    return pd.DataFrame(out, columns=cols)
