"""Evaluate & Predict tab: evaluate the top bar's model and adapter (and more, side by side) on datasets,
benchmarks and a judge.

The form makes a `task: eval` spec (the model, template and adapter come from the top bar); Start runs
`python -m studio.evaluate.job` as a child job, followed by its events. When it ends: the metrics of every
model side by side, the benchmark table with each run's deltas against the base and the judge's win rate with
the judged pairs (studio/ui/scores_view.py), the predictions of one model sortable and filterable by score, and
its worst and best samples. Earlier evaluations can be opened from the list of eval runs.
"""
from __future__ import annotations

import html
import json
from pathlib import Path

import gradio as gr
import pandas as pd

from studio.run import events as ev
from studio.evaluate import metrics
from studio.evaluate.prefscore import COLUMNS as PAIR_COLUMNS, KEYS as PAIR_KEYS
from studio.evaluate import predictions
from studio.run import status as runs
from studio import spec as specmod
from studio.errors import UserError, is_user_error
from studio.evaluate import scorecard
from studio.ui import form, jobs, monitor, scores_view, watch

TITLE = "Evaluate & Predict"

FIELDS = [
    ["data.dataset_dir", "data.eval_dataset", "eval.compare", "data.max_samples", "data.cutoff_len"],
    ["eval.batch_size", "eval.max_new_tokens", "eval.do_sample", "eval.temperature", "eval.top_p", "eval.top_k", "eval.seed"],
    ["eval.compute_loss", "output_dir"],
]
BENCH_FIELDS = ["eval.benchmarks", "eval.benchmark_dirs", "eval.num_fewshot", "eval.benchmark_limit", "eval.benchmark_batch_size",
                "eval.chat_template"]
JUDGE_FIELDS = [["eval.judge", "eval.judge_against", "eval.judge_model", "eval.judge_retries", "eval.judge_max_new_tokens"],
                ["eval.judge_base_url", "eval.judge_endpoint_model", "eval.judge_api_key_env"]]
GENERATION = ["eval.max_new_tokens", "eval.do_sample", "eval.temperature", "eval.top_p", "eval.top_k", "eval.seed"]
SCORES = [*metrics.KEYS]
SORTS = [f"{k} {d}" for k in ("rouge-l", "bleu-4", "rouge-1", "rouge-2") for d in ("worst first", "best first")] + ["dataset order"]
SHOWN = 500  # prediction rows sent to the page


# --- pure helpers (no components) ----------------------------------------------------------------------


def compare_choices(runs_root: Path, workdir: Path) -> list[str]:
    """`base` and the run folders holding an adapter or a trained model, relative to the working folder."""
    out = ["base"]
    for r in runs.list_runs(runs_root):
        if (r.path / "adapter" / "adapter_config.json").exists() or (r.path / "model" / "config.json").exists():
            out.append(jobs.shown(r.path, workdir))
    return out


def dataset_names(workdir: Path, dataset_dir: str | None) -> list[str]:
    """The datasets registered in `dataset_dir` (none when it has no readable dataset_info.json: Start says why)."""
    from studio.data import registry

    try:
        return registry.names(Path(workdir) / (dataset_dir or "data"))
    except (UserError, OSError):
        return []


def only_pairs(workdir: Path, dataset_dir: str, names) -> bool:
    """Whether every dataset chosen is preference pairs (none chosen, or one that cannot be read: no)."""
    from studio.data import registry

    names = [names] if isinstance(names, str) else list(names or [])
    try:
        folder = Path(workdir) / (dataset_dir or "data")
        return bool(names) and all(registry.entry(folder, n).kind == "ranking" for n in names)
    except (UserError, OSError):  # an unreadable entry is said at Start, where it belongs
        return False


def eval_runs(runs_root: Path) -> list[str]:
    return [str(r.path) for r in runs.list_runs(runs_root) if r.task == "eval"]


def make_spec(values: dict, top: dict, runs_root: Path, workdir: Path) -> specmod.JobSpec:
    """Form values (dotted -> widget value) and the top bar's -> a validated eval spec with an output folder."""
    vals = {**top, **values}
    auto = not str(vals.get("output_dir") or "").strip()
    vals["output_dir"] = "runs/auto" if auto else vals["output_dir"]
    base = specmod.from_dict(specmod.JobSpec, {"task": "eval", "data": {"dataset": []}})
    spec = form.values_to_spec(vals, base)
    if not spec.data.eval_dataset and not spec.eval.benchmarks:
        raise specmod.SpecError("data.eval_dataset: choose at least one dataset to evaluate on, or benchmarks (eval.benchmarks)")
    if auto:
        name = f"{runs.stamp()}-eval-{'+'.join(spec.data.eval_dataset or spec.eval.benchmarks)[:40]}"
        p = runs.unique_dir(runs_root, name)
        try:
            spec.output_dir = str(p.resolve().relative_to(Path(workdir).resolve()))
        except ValueError:
            spec.output_dir = str(p)
    return spec


def progress_html(events: list[dict], status: str, run: str | None) -> str:
    """A progress bar: samples (or preference pairs, or benchmark tasks) done of all models, the rate, ETA, the model
    at work."""
    if not run:
        return monitor.idle_html("No evaluation followed. Press Start, or open an earlier one below.", "evaluation progress")
    start = next((e for e in events if e["event"] == "start"), {})
    prog = [e for e in events if e["event"] == "progress"]
    last = prog[-1] if prog else {}
    total = last.get("total") or start.get("total_steps") or 0  # the phase at work counts in its own unit
    unit = last.get("unit") or start.get("unit") or "samples"
    done = total if status == "done" else last.get("done", 0)
    pct = 100 * done / total if total else 0
    bits = [f"{done}/{total or '?'} {unit}"]
    if last.get("model") and status == "running":
        bits.append(f"model {html.escape(last['model'])}")
    if last.get("rate"):
        bits.append(f"{last['rate']:.2f} {unit}/s")
    if status == "running" and last.get("eta_s") is not None:
        bits.append(f"ETA {int(last['eta_s'])}s")
    if status == "running":
        msgs = [e["text"] for e in events if e["event"] == "message"]
        bits.append(html.escape(msgs[-1].splitlines()[0]) if msgs else "loading data and model ...")
    if status in ("error", "crashed"):
        end = ev.final(events) or {}
        bits.append(html.escape(end.get("message") or "the process ended without a final event; see output.log"))
    return monitor.bar_html(run, status, pct, bits, "evaluation progress", done=done, total=total)


def metrics_frame(result: dict | None) -> pd.DataFrame:
    """One row per model: BLEU/ROUGE, eval loss, perplexity, speed; for preference pairs (prefscore.rows) the base
    and each run, with the columns any of them has."""
    cols = ["model", *SCORES, "eval_loss", "perplexity", "samples", "samples_per_second", "generated_tokens_per_second"]
    if (result or {}).get("pairs"):  # preference pairs: which answer each model prefers, each run's margins on the base
        cols = ["model", *(k for k in PAIR_KEYS if any(k in m for m in result["models"]))]
    rows = [[m.get("name") if c == "model" else m.get(c) for c in cols] for m in (result or {}).get("models", [])]
    return pd.DataFrame(rows, columns=cols)


def empty_note(result: dict | None) -> str:
    """What the Predictions section says when it has no rows: why, and for preference pairs what the metrics'
    columns mean (the generation settings do not apply to pairs)."""
    if not result:
        return "_No predictions: open an evaluation above, or start one._"
    if not result.get("pairs"):
        return "_No predictions were written by this evaluation._"
    shown = [k for k in PAIR_KEYS if any(k in m for m in result.get("models", []))]
    return ("_No predictions: preference pairs are scored, not answered. Each model's log-probability of the chosen and "
            "the rejected answer is compared; max new tokens, sampling, temperature, top-p/top-k and the batch size "
            "do not apply._\n\n**Metrics columns**\n" + "\n".join(f"- `{k}`: {PAIR_COLUMNS[k]}" for k in shown))


def read_predictions(run_dir: str | Path, model: str | None) -> list[dict]:
    result = predictions.load_results(run_dir) or {}
    entry = next((m for m in result.get("models", []) if m.get("name") == model), None) or (result.get("models") or [None])[0]
    if not entry or not entry.get("predictions"):
        return []
    path = Path(run_dir) / entry["predictions"]
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    rows = []
    for i, line in enumerate(lines):
        try:
            rows.append({"#": i, **json.loads(line)})
        except ValueError:
            continue
    return rows


def filter_rows(rows: list[dict], sort: str, text: str = "", lo: float | None = 0, hi: float | None = 100) -> list[dict]:
    """Rows whose query, prediction or reference contains `text` and whose sort score (rouge-l for dataset order)
    is in [lo, hi], sorted; the full range 0-100 keeps unscored rows too."""
    key = sort.split(" ")[0] if sort in SORTS and sort != "dataset order" else None
    text = (text or "").strip().lower()
    out = []
    for r in rows:
        if text and not any(text in str(r.get(k) or "").lower() for k in ("query", "predict", "label")):
            continue
        score = r.get(key or "rouge-l")
        if (lo or 0) > 0 or (100 if hi is None else hi) < 100:
            if score is None or score < (lo or 0) or score > (100 if hi is None else hi):
                continue
        out.append(r)
    if key:  # unscored rows (no reference) last
        scored = sorted((r for r in out if r.get(key) is not None), key=lambda r: r[key], reverse=sort.endswith("best first"))
        out = scored + [r for r in out if r.get(key) is None]
    return out


def predictions_frame(rows: list[dict]) -> pd.DataFrame:
    cols = ["#", *SCORES, "query", "predict", "label"]
    return pd.DataFrame([[r.get(c) for c in cols] for r in rows[:SHOWN]], columns=cols)


def extremes_md(rows: list[dict], n: int = 3, key: str = "rouge-l") -> str:
    scored = sorted((r for r in rows if r.get(key) is not None), key=lambda r: r[key])
    if not scored:
        return "_No scores: the data has no reference answers._" if rows else ""

    def card(r):
        q = html.escape(str(r.get("query") or ""))[:300]
        return (f"- **#{r['#']} · {key} {r[key]:.1f}** · {html.escape(str(r.get('dataset') or ''))}  \n"
                f"  **Q:** {q}  \n  **predicted:** {html.escape(r.get('predict') or '∅')[:400]}  \n"
                f"  **reference:** {html.escape(r.get('label') or '')[:400]}")

    worst = scored[:n]
    best = [r for r in scored[::-1][:n] if r not in worst]  # few samples: each shows once
    out = "#### Worst samples\n" + "\n".join(map(card, worst))
    return out + ("\n\n#### Best samples\n" + "\n".join(map(card, best)) if best else "")


def summary_md(result: dict | None, status: str, run: str | None, events: list[dict]) -> str:
    if not run or status not in ev.FINAL and status != "crashed":
        return ""
    name = Path(run).name
    if status == "done" and result:
        notes = [f"{m['name']}: {m['note']}" for m in result.get("models", []) if m.get("note")]
        return f"**{name}: done.** Predictions and metrics in `{run}`." + "".join(f"  \nℹ️ {html.escape(x)}" for x in notes)
    if status == "aborted":
        return f"**{name}: aborted.** Nothing was scored."
    end = ev.final(events) or {}
    return f"**{name}: failed.** {end.get('message') or 'the process ended without a final event (killed, or out of memory?)'}"


# --- the tab -------------------------------------------------------------------------------------------


def build(ctx) -> None:
    from studio.data import registry

    workdir, runs_root = ctx.workdir, ctx.runs_root
    data_names = registry.names(workdir / "data") if (workdir / "data").is_dir() else []
    special = {
        "data.eval_dataset": form.widget("data.eval_dataset", choices=data_names, render=False),
        "eval.compare": gr.Dropdown(choices=compare_choices(runs_root, workdir), value=[], multiselect=True, allow_custom_value=True,
                                    label="compare with", info=specmod.field_help("eval.compare"),
                                    elem_id=form.elem_id("eval.compare"), render=False),
        "output_dir": gr.Textbox(value="", label="output dir", placeholder="auto: runs/<time>-eval-<datasets>", max_lines=1,
                                 info=specmod.field_help("output_dir"), render=False),
    }
    special["eval.benchmarks"] = gr.Dropdown(choices=scores_view.benchmark_choices(), value=[], multiselect=True,
                                             allow_custom_value=True, label="benchmarks", info=specmod.field_help("eval.benchmarks"),
                                             render=False)
    groups = [*FIELDS, BENCH_FIELDS, *JUDGE_FIELDS]
    for name in (n for row in groups for n in row):  # ids of their own: the Train tab has widgets for the same fields
        comp = special.get(name) or form.widget(name, render=False)
        comp.elem_id = "ev-" + form.elem_id(name)[2:]
        special[name] = comp
    fields: dict = {}
    for row in FIELDS:
        with gr.Row(equal_height=False):
            fields.update(form.bind(row, special))
    with gr.Accordion("Benchmarks (lm-evaluation-harness): every model on the same tasks, deltas against the base", open=True,
                      elem_id="eval-bench-box"):
        with gr.Row(equal_height=False):
            fields.update(form.bind(BENCH_FIELDS, special))
    with gr.Accordion("Judge: which model answers the eval datasets' prompts better (each pair in both orders)", open=False,
                      elem_id="eval-judge-box"):
        for row in JUDGE_FIELDS:
            with gr.Row(equal_height=False):
                fields.update(form.bind(row, special))
    with gr.Row():
        start_btn = gr.Button("Start evaluation", variant="primary", elem_id="eval-start")
        abort_btn = gr.Button("Abort", variant="stop", elem_id="eval-abort")
        refresh_btn = gr.Button("↻ runs and datasets", elem_id="eval-refresh", size="sm")
    message = gr.Markdown(elem_id="eval-message")
    state = gr.State({"run": None, "offset": 0, "events": [], "status": None})
    progress = gr.HTML(progress_html([], "", None), elem_id="eval-progress")
    summary = gr.Markdown(elem_id="eval-summary")
    gr.Markdown("### Metrics")
    metrics_table = gr.Dataframe(metrics_frame(None), interactive=False, elem_id="eval-metrics", wrap=True)
    gr.Markdown("### Benchmarks")
    bench_html = gr.HTML(elem_id="eval-benchmarks")
    gr.Markdown("### Judge")
    judge_note = gr.Markdown(elem_id="eval-judge")
    judge_sort = gr.Dropdown(choices=scores_view.JUDGE_SORTS, value=scores_view.JUDGE_SORTS[0], label="judged pairs: sort by",
                             elem_id="eval-judge-sort")
    judged = gr.Dataframe(scores_view.judgements_frame([]), interactive=False, elem_id="eval-judgements", wrap=True,
                          max_height=500, label="judged pairs")
    gr.Markdown("### Predictions")
    with gr.Row():
        opened = gr.Dropdown(choices=eval_runs(runs_root), value=None, label="evaluation", allow_custom_value=True,
                             info="an eval run folder (the one started here is opened when it ends)", elem_id="eval-open", scale=2)
        model_pick = gr.Dropdown(choices=[], value=None, label="model", elem_id="eval-model")
        sort = gr.Dropdown(choices=SORTS, value=SORTS[0], label="sort by", elem_id="eval-sort")
        search = gr.Textbox(label="contains", placeholder="text in question, prediction or reference", max_lines=1,
                            elem_id="eval-search")
        lo = gr.Number(value=0, label="score from", elem_id="eval-lo")  # no bounds: gradio answers an out-of-range value with an error
        hi = gr.Number(value=100, label="score to", elem_id="eval-hi")  # filter_rows reads any number
    count = gr.Markdown(elem_id="eval-count")
    table = gr.Dataframe(predictions_frame([]), interactive=False, elem_id="eval-predictions", wrap=True, max_height=500,
                         column_widths=["4%", "7%", "7%", "7%", "7%", "20%", "24%", "24%"])
    extremes = gr.Markdown(elem_id="eval-extremes")

    # --- handlers ---------------------------------------------------------------------------------------
    def show(run, model, sort_by, text, a, b):
        if not run:
            return gr.update(), gr.update(), "", predictions_frame([]), ""
        result = predictions.load_results(run)
        models = [m["name"] for m in (result or {}).get("models", [])]
        model = model if model in models else (models[-1] if models else None)
        rows = read_predictions(run, model) if model else []
        shown = filter_rows(rows, sort_by, text, a, b)
        note = f"{len(shown)} of {len(rows)} predictions" + (f" (first {SHOWN} shown)" if len(shown) > SHOWN else "")
        return (metrics_frame(result), gr.update(choices=models, value=model), note if rows else empty_note(result),
                predictions_frame(shown), extremes_md(rows))

    def show_scores(run, order):
        """The benchmark table and the judge of an eval run: read when the run or the judged pairs' order changes."""
        if not run:
            return "", "", scores_view.judgements_frame([])
        summary, items = scores_view.read_judge(run)
        return (scores_view.benchmark_html(scorecard.read(run)), scores_view.judge_md(summary),
                scores_view.judgements_frame(items, order))

    view_outputs = [metrics_table, model_pick, count, table, extremes]
    view_inputs = [opened, model_pick, sort, search, lo, hi]
    score_outputs, score_inputs = [bench_html, judge_note, judged], [opened, judge_sort]
    for comp, event in ((model_pick, "input"), (sort, "input"), (search, "submit"), (lo, "submit"), (hi, "submit"), (opened, "input")):
        getattr(comp, event)(show, view_inputs, view_outputs)
    for comp in (opened, judge_sort):
        comp.input(show_scores, score_inputs, score_outputs)
    search.blur(show, view_inputs, view_outputs)

    def on_start(data):
        st, top, vals = data[state], form.by_name(data, ctx.top), form.by_name(data, fields)
        try:
            spec = make_spec(vals, top, runs_root, workdir)
            run_dir = jobs.start(spec, workdir, runs_root)
        except Exception as e:
            if not is_user_error(e):
                raise
            return st, f"Error: {e}"
        return monitor.follow(run_dir), f"Started `{spec.output_dir}`"

    started = start_btn.click(on_start, {*ctx.top.values(), *fields.values(), state}, [state, message])

    def on_abort(st):
        return "ℹ️ " + jobs.abort(st, "evaluation")

    abort_btn.click(on_abort, state, message)

    def redraw(st, status, finished):
        result = predictions.load_results(st["run"]) if status == "done" else None
        opened_update = gr.update(choices=eval_runs(runs_root), value=st["run"]) if status == "done" else gr.skip()
        return (progress_html(st["events"], status, st["run"]),
                summary_md(result, status, st["run"], st["events"]) if finished else "", opened_update)

    # the evaluation is followed until it ends; then its predictions are shown (the one that ended is opened)
    ended = watch.follow_job(started, state, [progress, summary, opened], redraw)
    ended.then(show, view_inputs, view_outputs)
    ended.then(show_scores, score_inputs, score_outputs)

    def on_refresh():
        found = registry.names(workdir / "data") if (workdir / "data").is_dir() else []
        return (gr.update(choices=compare_choices(runs_root, workdir)), gr.update(choices=found),
                gr.update(choices=eval_runs(runs_root)))

    refresh_btn.click(on_refresh, None, [fields["eval.compare"], fields["data.eval_dataset"], opened])

    gen = [fields[n] for n in GENERATION]

    def on_data(dataset_dir, names):  # preference pairs are scored, not generated from: their settings do not apply
        shown = not only_pairs(workdir, dataset_dir, names)
        return [gr.update(visible=shown) for _ in gen]

    gr.on([fields["data.eval_dataset"].change, fields["data.dataset_dir"].change], on_data,
          [fields["data.dataset_dir"], fields["data.eval_dataset"]], gen, show_progress="hidden")
    ctx.demo.load(on_refresh, None, [fields["eval.compare"], fields["data.eval_dataset"], opened])
    if ctx.pickers is not None:  # runs that end after the load are offered when a picker opens (ui/pickers.py)
        ctx.pickers.add(fields["eval.compare"], lambda: compare_choices(runs_root, workdir), on_load=False)
        ctx.pickers.add(opened, lambda: eval_runs(runs_root), on_load=False)
        ctx.pickers.add(fields["data.eval_dataset"], lambda folder: dataset_names(workdir, folder), on_load=False,
                        inputs=(fields["data.dataset_dir"],))
