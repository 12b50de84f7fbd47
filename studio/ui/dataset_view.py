"""Dataset preview (examples through the template, loss tokens highlighted, counts) and registering an upload.

The preview runs `python -m studio.data.preview` in a child process (see jobs.preview), so the page's
process never loads torch. A registered upload is copied into the dataset folder and written into its
dataset_info.json, which stays the source of truth.
"""
from __future__ import annotations

import html
import json
import shutil
from pathlib import Path

import gradio as gr

from studio import spec as specmod
from studio.data import readers, registry
from studio.data.registry import DataError
from studio.ui import form, jobs

PAGE = 5
ALPACA_KEYS = ["prompt", "query", "response", "system", "history"]
UPLOAD_TYPES = [".json", ".jsonl", ".csv", ".parquet"]


def counts_md(result: dict) -> str:
    if result.get("error"):
        return f"**error:** {result['error']}"
    s = result["stats"]
    share = f" ({100 * s['trained_tokens'] / s['tokens']:.0f}%)" if s["tokens"] else ""
    line = (f"**{s['examples']}** examples · **{s['tokens']}** tokens · **{s['trained_tokens']}** trained tokens{share} · "
            f"**{s['truncated']}** cut by cutoff_len · **{s['dropped']}** dropped (no trained token left) · template `{result['template']}`")
    if result.get("reason"):
        line = f"**This data cannot train:** {html.escape(result['reason'])}\n\n" + line
    return line


def examples_html(result: dict, page: int) -> str:
    if result.get("error") or not result.get("examples"):
        return ""
    exs = result["examples"]
    pages = max(1, -(-len(exs) // PAGE))
    page = min(max(1, int(page)), pages) if isinstance(page, (int, float)) and abs(page) < 1e9 else 1
    parts = [f"<div class='st-meta'>page {page} of {pages} (first {len(exs)} examples); "
             "<span class='st-tok' style='padding:0 4px;border:0'><span class='t'>highlighted</span></span> tokens carry the loss</div>"]
    for ex in exs[(page - 1) * PAGE: page * PAGE]:
        body = "".join(f"<span class='t'>{html.escape(t)}</span>" if on else html.escape(t) for t, on in ex["pieces"])
        cut = " · <span class='cut'>cut at cutoff_len</span>" if ex["truncated"] else ""
        parts.append(f"<div class='st-meta'>{html.escape(ex['loc'])} · {ex['tokens']} tokens, {ex['trained']} trained{cut}</div>"
                     f"<div class='st-tok st-example'>{body}</div>")
    return "".join(parts)


def sniff(path: Path) -> tuple[list[str], dict]:
    """Column names and the first record of a data file (parquet read by pyarrow: no torch here)."""
    if path.suffix.lower() == ".parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path).slice(0, 1).to_pylist()
        return list(pq.read_schema(path).names), (table[0] if table else {})
    records, issues = readers.read_file(path)
    if not records:
        raise DataError(f"{path.name}: no records found" + (f" ({issues[0]})" if issues else ""))
    cols = list(dict.fromkeys(k for _, r in records[:50] for k in r))
    return cols, records[0][1]


def guess(cols: list[str], first: dict) -> tuple[str, dict]:
    """(formatting, column mapping) that most likely fits the file."""
    for c in ("conversations", "messages"):
        if isinstance(first.get(c), list):
            return "sharegpt", {"messages": c, "system": "system" if "system" in cols else ""}
    if set(cols) <= {"text", "content"} and cols:
        return "text", {"prompt": cols[0]}
    pick = lambda *names: next((n for n in names if n in cols), "")  # noqa: E731
    return "alpaca", {"prompt": pick("instruction", "prompt", "question"), "query": pick("input", "query"),
                      "response": pick("output", "response", "answer"), "system": pick("system"), "history": pick("history")}


def entry_for(file_name: str, formatting: str, mapping: dict, first: dict) -> dict:
    raw = {"file_name": file_name}
    cols = {k: v for k, v in mapping.items() if v}
    if formatting == "text":
        return {**raw, "columns": {"prompt": cols.get("prompt", "text")}}
    if formatting == "sharegpt":
        raw.update(formatting="sharegpt", columns={k: cols[k] for k in ("messages", "system") if k in cols})
        turns = first.get(cols.get("messages", "conversations")) or [{}]
        if isinstance(turns[0], dict) and "role" in turns[0] and "content" in turns[0]:
            raw["tags"] = {"role_tag": "role", "content_tag": "content", "user_tag": "user", "assistant_tag": "assistant",
                           "system_tag": "system", "observation_tag": "tool"}
        return raw
    raw["columns"] = {k: cols[k] for k in ALPACA_KEYS if k in cols}
    return raw


def build(ctx, spec_from, form_inputs: set, fields) -> None:
    """`spec_from(data, auto_dir)` makes the Train form's spec from the {component: value} dict of `form_inputs`."""
    workdir = ctx.workdir
    with gr.Accordion("Dataset preview", open=False, elem_id="data-preview"):
        with gr.Row():
            show = gr.Button("Preview data", elem_id="preview-data", scale=0, min_width=160)
            page = gr.Number(value=1, precision=0, label="page", scale=0, min_width=100)
        counts = gr.Markdown(elem_id="preview-counts")
        body = gr.HTML(elem_id="preview-body")
    result = gr.State({})

    def on_show(data):
        try:
            spec = spec_from(data, auto_dir=False)
        except specmod.SpecError as e:
            return {"error": str(e)}, f"**error:** {e}", "", 1
        res = jobs.preview(spec)
        return res, counts_md(res), examples_html(res, 1), 1

    show.click(on_show, form_inputs, [result, counts, body, page])
    page.change(lambda res, p: examples_html(res, p), [result, page], body, show_progress="hidden")

    with gr.Accordion("Add a dataset from a file", open=False, elem_id="add-dataset"):
        upload = gr.File(file_types=UPLOAD_TYPES, label="json, jsonl, csv or parquet file", elem_id="upload")
        with gr.Row():
            name = gr.Textbox(label="dataset name", elem_id="new-name")
            formatting = gr.Radio(["alpaca", "sharegpt", "text"], value="alpaca", label="formatting",
                                  info="alpaca: instruction/input/output columns; sharegpt: a list of turns; text: plain text (stage pt)")
        with gr.Row():
            maps = {k: gr.Dropdown(choices=[""], value="", label=f"column: {k}", allow_custom_value=True)
                    for k in ["prompt", "query", "response", "system", "history", "messages"]}
        with gr.Row():
            check = gr.Button("Preview", elem_id="new-preview")
            save = gr.Button("Save to dataset_info.json", variant="primary", elem_id="new-save")
        new_msg = gr.Markdown()
        new_body = gr.HTML()
    upload_state = gr.State({})

    def on_upload(file, folder):
        if not file:
            return [{}] + [gr.update()] * (len(maps) + 2) + [""]
        try:
            ddir = jobs.inside(workdir, folder or "data", "data.dataset_dir")
            src = Path(file)
            target = ddir / src.name
            i = 2
            while target.exists() and target.read_bytes() != src.read_bytes():
                target = ddir / f"{src.stem}-{i}{src.suffix}"
                i += 1
            shutil.copyfile(src, target)
            cols, first = sniff(target)
        except (DataError, specmod.SpecError, OSError, json.JSONDecodeError) as e:
            return [{}] + [gr.update()] * (len(maps) + 2) + [f"**error:** {e}"]
        fmt, mapping = guess(cols, first)
        ups = [gr.update(choices=[""] + cols, value=mapping.get(k, "")) for k in maps]
        state = {"file_name": target.name, "dir": str(ddir.relative_to(workdir.resolve())), "first": first}
        return [state, target.stem.replace("-", "_"), fmt] + ups + [f"copied to `{state['dir']}/{target.name}`; columns: {', '.join(cols)}"]

    upload.upload(on_upload, [upload, fields["data.dataset_dir"]], [upload_state, name, formatting, *maps.values(), new_msg])

    def current_entry(st, fmt, mapping):
        if not st:
            raise DataError("upload a file first")
        return entry_for(st["file_name"], fmt, mapping, st.get("first") or {})

    def on_check(data):
        st, nm, fmt = data[upload_state], data[name], data[formatting]
        try:
            raw = current_entry(st, fmt, form.by_name(data, maps))
            spec = spec_from(data, auto_dir=False)
            spec.data.dataset_dir, spec.data.dataset = st["dir"], [nm or "new"]
            spec.method.stage = "pt" if fmt == "text" else "sft"
        except (DataError, specmod.SpecError) as e:
            return f"**error:** {e}", ""
        res = jobs.preview(spec, extra_info={nm or "new": raw})
        return counts_md(res), examples_html(res, 1)

    check.click(on_check, form_inputs | {upload_state, name, formatting, *maps.values()}, [new_msg, new_body])

    def on_save(data):
        st, nm, fmt = data[upload_state], data[name], data[formatting]
        try:
            if not (nm or "").strip():
                raise DataError("give the dataset a name")
            raw = current_entry(st, fmt, form.by_name(data, maps))
            path = registry.register(workdir / st["dir"], nm.strip(), raw)
            registry.entry(workdir / st["dir"], nm.strip())
        except DataError as e:
            return f"**error:** {e}", gr.update()
        found = registry.names(workdir / st["dir"])
        return f"`{nm}` saved in `{path.relative_to(workdir.resolve())}`", gr.update(choices=found)

    save.click(on_save, {upload_state, name, formatting, *maps.values()}, [new_msg, fields["data.dataset"]])
