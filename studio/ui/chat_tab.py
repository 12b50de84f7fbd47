"""Chat tab: talk to the top bar's model (and adapter or run), or to two models side by side; edit an answer and
save the conversation, or the preferred answer and the other, to a dataset in the registry.

The models live in this server process (studio/chat/session.py; torch is imported when the first one loads), one
session per side, shared by every page of this server. Loading replaces what was loaded; answers stream
into the chat; Stop ends them at the next token. The status line says what each side has loaded, when it is busy,
and when the top bar names another model than A's (Load switches). A dataset saved here appears in the Train tab's
dataset list (↻ re-read dataset_info.json).
"""
from __future__ import annotations

import html
import os
import threading
import time
from dataclasses import fields
from pathlib import Path

import gradio as gr

from studio.chat.session import ChatSession, GenParams
from studio.data import collect, registry
from studio.errors import is_user_error
from studio.launch import queue
from studio.ui import app, form, jobs, serve_panel

TITLE = "Chat"
SESSIONS = {"a": ChatSession(), "b": ChatSession()}  # a: the top bar's model; b: the other side
LOADED_FROM = {"a": None, "b": None}  # the (model, adapter) each side was loaded from


def plain(history: list) -> list[dict]:
    """Chatbot messages (content as text parts, or text) -> [{role, content: str}]."""
    out = []
    for m in history or []:
        c = m.get("content")
        if isinstance(c, list):
            c = "".join(p.get("text", "") for p in c if isinstance(p, dict))
        out.append({"role": m["role"], "content": c if isinstance(c, str) else ""})
    return out


def status_html(note: str = "", kind: str = "info", busy: bool = False) -> str:
    """The status line, in words (the data attributes repeat it for scripts): what each side has loaded, whether it is
    busy, and `note`."""
    def side(key):
        s = SESSIONS[key]
        return (f"<b>{key.upper()}</b>: {html.escape(s.label)} <small>(template {s.template.name})</small>" if s.loaded
                else f"<b>{key.upper()}</b>: nothing loaded")
    loaded = " · ".join(side(k) for k in SESSIONS if SESSIONS[k].loaded or k == "a")
    color = "#dc2626" if kind == "error" else "inherit"
    note = note or ("working ..." if busy else "")
    note_html = f"<div class='st-meta' style='color:{color}'>{'error: ' if kind == 'error' else ''}{html.escape(note)}</div>" if note else ""
    return (f"<div class='st-line' role='status' aria-label='chat status' aria-busy='{str(busy).lower()}' "
            f"data-a='{int(SESSIONS['a'].loaded)}' data-b='{int(SESSIONS['b'].loaded)}' "
            f"data-kind='{kind}' data-busy='{int(busy)}'>{loaded}{note_html}</div>")


def top_bar_note(model: str | None, adapter: str | None) -> str:
    """What to say when the top bar names another model or adapter than the one A has loaded ("" when the same)."""
    if not SESSIONS["a"].loaded or LOADED_FROM["a"] is None or LOADED_FROM["a"] == ((model or "default"), (adapter or "")):
        return ""
    named = adapter or model or "default"
    return f"the top bar now names {named}; A still answers with {SESSIONS['a'].label}: press Load to switch"


def _problem(e: Exception) -> str:
    return str(e) if is_user_error(e) else f"{type(e).__name__}: {e}"


def stream_all(jobs_: list, system: str, params: GenParams):
    """Run one stream() per (session, history, message) at once; yield (texts so far, errors) until all end."""
    texts, errors, done = [""] * len(jobs_), [None] * len(jobs_), [False] * len(jobs_)

    def work(i, session, history, message):
        try:
            for piece in session.stream(history, message, system, params):
                texts[i] += piece
        except Exception as e:  # shown on the page
            errors[i] = e
        finally:
            done[i] = True

    for i, job in enumerate(jobs_):
        threading.Thread(target=work, args=(i, *job), daemon=True).start()
    try:
        shown = None
        while not all(done):
            time.sleep(0.2)
            if texts != shown:  # only changes go to the page
                shown = list(texts)
                yield shown, list(errors)
        yield list(texts), list(errors)
    finally:
        if not all(done):  # the page went away: end the generations
            for session, _, _ in jobs_:
                session.stop()


CHAT_HOLDER = f"chat-{os.getpid()}"


def _hold_gpu(runs_root) -> str:
    """A chat model on a GPU counts as using it: queued jobs on that GPU wait until Unload (launch/queue.py)."""
    on_gpu = any(s.loaded and next(s.model.parameters()).device.type == "cuda" for s in SESSIONS.values())
    if not on_gpu:
        queue.release(runs_root, CHAT_HOLDER)
        return ""
    devices = os.environ.get("CUDA_VISIBLE_DEVICES") or None
    queue.hold(runs_root, CHAT_HOLDER, devices, "the page's chat model")
    return f" · holds GPU {devices or 'all'}: queued jobs on it wait until you Unload"


def build(ctx) -> None:
    workdir = ctx.workdir
    top = ctx.top
    with gr.Row(equal_height=True):
        side = gr.Checkbox(label="side by side", value=False, elem_id="chat-side", scale=0, min_width=140,
                           info="Send each message to a second model too.")
        model_b = gr.Dropdown(choices=app.model_choices(workdir), value="default", allow_custom_value=True, label="B: model",
                              elem_id="chat-model-b", visible=False, scale=2)
        adapter_b = gr.Dropdown(choices=app.adapter_choices(ctx.runs_root, workdir), value="", allow_custom_value=True,
                                label="B: adapter / run", elem_id="chat-adapter-b", visible=False, scale=2)
        load = gr.Button("Load", variant="primary", elem_id="chat-load", scale=0, min_width=90)
        unload = gr.Button("Unload", elem_id="chat-unload", scale=0, min_width=90)
    status = gr.HTML(status_html("Choose a model (and an adapter or run) in the top bar, then Load."), elem_id="chat-status")
    system = gr.Textbox(label="system prompt", lines=1, max_lines=4, elem_id="chat-system")
    with gr.Accordion("generation", open=False, elem_id="chat-gen"):
        with gr.Row():
            gen = {}
            for f in fields(GenParams):
                gen[f.name] = gr.Number(value={"max_new_tokens": 256, "seed": -1}.get(f.name, f.default), label=f.name.replace("_", " "), info=f.metadata["help"],
                                        precision=0 if f.name in ("top_k", "max_new_tokens", "seed") else None,
                                        elem_id=f"chat-{f.name.replace('_', '-')}", min_width=120)
    with gr.Accordion("call it over the API (studio serve)", open=False, elem_id="chat-api"):
        serve_panel.build(ctx, system)
    with gr.Row():
        chat_a = gr.Chatbot(label="A", editable="all", elem_id="chat-a", height=420)
        chat_b = gr.Chatbot(label="B", editable="all", elem_id="chat-b", height=420, visible=False)
    with gr.Row(equal_height=True):
        message = gr.Textbox(label="message", show_label=False, placeholder="Type a message, press Enter", lines=1, max_lines=6,
                             elem_id="chat-msg", scale=5)
        send = gr.Button("Send", variant="primary", elem_id="chat-send", scale=0, min_width=90)
        stop = gr.Button("Stop", variant="stop", elem_id="chat-stop", scale=0, min_width=90)
        clear = gr.Button("Clear all", elem_id="chat-clear", scale=0, min_width=100)
    with gr.Accordion("save to a dataset", open=True):
        gr.Markdown("Edit an answer in the chat (✎) until it is right, then save the conversation as training data. "
                    "Side by side, save the better last answer and the other one as a preference pair.")
        with gr.Row(equal_height=True):
            folder = gr.Textbox(value="data", label="dataset folder", max_lines=1, elem_id="chat-dataset-dir", scale=1)
            name = gr.Dropdown(choices=registry.names(workdir / "data"), value=None, allow_custom_value=True,
                               label="dataset (pick one, or type a new name)", elem_id="chat-dataset", scale=2)
            fmt = gr.Radio(["sharegpt", "alpaca"], value="sharegpt", label="format of a new dataset", elem_id="chat-format", scale=1)
        with gr.Row():
            save_a = gr.Button("Save conversation A", elem_id="chat-save-a")
            save_b = gr.Button("Save conversation B", elem_id="chat-save-b", visible=False)
            prefer_a = gr.Button("A is better: save pair", elem_id="chat-prefer-a", visible=False)
            prefer_b = gr.Button("B is better: save pair", elem_id="chat-prefer-b", visible=False)
        saved = gr.Markdown(elem_id="chat-save-msg")

    # --- handlers ---------------------------------------------------------------------------------------
    def on_side(on):
        if not on and SESSIONS["b"].loaded:
            SESSIONS["b"].unload()
        shown = gr.update(visible=on)
        return [shown] * 6 + [status_html()]

    side.change(on_side, side, [model_b, adapter_b, chat_b, save_b, prefer_a, prefer_b, status])

    def on_load(model, adapter, template, on, mb, ab):
        wanted = [("a", model, adapter)] + ([("b", mb, ab)] if on else [])
        if not on:
            SESSIONS["b"].unload()  # a single model: the pair is released
            LOADED_FROM["b"] = None
        notes = []
        for key, m, a in wanted:
            yield status_html(f"loading {key.upper()}: {a or m} ...", busy=True)
            try:
                notes.append(f"{key.upper()}: " + SESSIONS[key].load(m or None, a or None, None if template in (None, "", "auto") else template))
                LOADED_FROM[key] = (m or "default", a or "")
            except Exception as e:
                yield status_html(f"{key.upper()} not loaded: {_problem(e)}", "error")
                return
        gpu = _hold_gpu(ctx.runs_root)
        yield status_html(" · ".join(n.split("\n", 1)[-1] for n in notes if "\n" in n) + gpu)

    def on_top_bar(model, adapter):
        note = top_bar_note(model, adapter)
        return status_html(note) if note or LOADED_FROM["a"] is not None else gr.skip()

    for comp in (top["model.name_or_path"], top["model.adapter"]):  # A keeps its model until Load: the status says so
        comp.change(on_top_bar, [top["model.name_or_path"], top["model.adapter"]], status, show_progress="hidden")

    load.click(on_load, [top["model.name_or_path"], top["model.adapter"], top["model.template"], side, model_b, adapter_b], status)

    def on_unload():
        for s in SESSIONS.values():
            s.unload()
        LOADED_FROM.update(a=None, b=None)
        queue.release(ctx.runs_root, CHAT_HOLDER)
        return status_html("unloaded")

    unload.click(on_unload, None, status)

    def on_send(data):
        hist_a, hist_b, on, sys_prompt = plain(data[chat_a]), plain(data[chat_b]), data[side], data[system]
        text = (data[message] or "").strip()
        keys = ["a", "b"] if on else ["a"]
        missing = [k.upper() for k in keys if not SESSIONS[k].loaded]
        if not text or missing:
            note = "the message is empty; type something to send" if not text else f"load a model first ({', '.join(missing)} not loaded)"
            yield gr.update(), hist_a, hist_b, status_html(note, "error")
            return
        try:
            params = GenParams(**form.by_name(data, gen)).check()
        except Exception as e:
            yield gr.update(), hist_a, hist_b, status_html(_problem(e), "error")
            return
        hists = {"a": hist_a, "b": hist_b}
        work = [(SESSIONS[k], hists[k], text) for k in keys]
        for k in keys:
            hists[k] = hists[k] + [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]
        yield "", hists["a"], hists["b"], status_html(busy=True)
        errors = []
        for texts, errors in stream_all(work, sys_prompt or "", params):
            for k, t in zip(keys, texts):
                hists[k][-1] = {"role": "assistant", "content": t.strip()}
            yield "", hists["a"], hists["b"], gr.update()
        bad = [f"{k.upper()}: {_problem(e)}" for k, e in zip(keys, errors) if e is not None]
        for k, e in zip(keys, errors):
            if e is not None:
                hists[k] = hists[k][:-2]  # nothing was answered: take the turn back
        yield (text if bad else ""), hists["a"], hists["b"], status_html("; ".join(bad), "error" if bad else "info")

    send_inputs = {message, chat_a, chat_b, side, system, *gen.values()}
    send.click(on_send, send_inputs, [message, chat_a, chat_b, status])
    message.submit(on_send, send_inputs, [message, chat_a, chat_b, status])

    def on_stop():
        for s in SESSIONS.values():
            s.stop()

    stop.click(on_stop, None, None)
    clear.click(lambda: ([], [], status_html()), None, [chat_a, chat_b, status])

    def on_edit(history, evt: gr.EditData):
        history = plain(history)
        i = evt.index if isinstance(evt.index, int) else evt.index[0]
        value = evt.value if isinstance(evt.value, str) else "".join(p.get("text", "") if isinstance(p, dict) else str(p) for p in evt.value)
        if 0 <= i < len(history):
            history[i] = {"role": history[i]["role"], "content": value}
        return history

    chat_a.edit(on_edit, chat_a, chat_a)
    chat_b.edit(on_edit, chat_b, chat_b)

    def _dataset_dir(d):
        return jobs.inside(workdir, (d or "data").strip(), "dataset folder")

    def done(out, d):
        verb = "created" if out["created"] else "added to"
        note = f"{verb} dataset `{out['name']}` ({Path(out['path']).name}, {out['records']} record(s)); train on it in the Train tab"
        return note, gr.update(choices=registry.names(_dataset_dir(d)), value=out["name"])

    def on_save(which, d, ds, form, hist_a, hist_b, sys_prompt):
        try:
            msgs = plain(hist_a if which == "a" else hist_b)
            out = collect.save_conversation(_dataset_dir(d), (ds or "").strip(), ([{"role": "system", "content": sys_prompt}] if sys_prompt else []) + msgs, form)
            return done(out, d)
        except Exception as e:
            return f"**error:** {_problem(e)}", gr.update()

    def on_prefer(which, d, ds, hist_a, hist_b, sys_prompt):
        try:
            good, other = (plain(hist_a), plain(hist_b)) if which == "a" else (plain(hist_b), plain(hist_a))
            if len(good) < 2 or len(other) < 2 or good[-1]["role"] != "assistant" or other[-1]["role"] != "assistant":
                raise registry.DataError("both sides need an answer to the last message before a pair can be saved")
            prompt = ([{"role": "system", "content": sys_prompt}] if sys_prompt else []) + good[:-1]
            out = collect.save_pair(_dataset_dir(d), (ds or "").strip(), prompt, good[-1]["content"], other[-1]["content"])
            return done(out, d)
        except Exception as e:
            return f"**error:** {_problem(e)}", gr.update()

    for btn, which in ((save_a, "a"), (save_b, "b")):
        btn.click(lambda *v, w=which: on_save(w, *v), [folder, name, fmt, chat_a, chat_b, system], [saved, name])
    for btn, which in ((prefer_a, "a"), (prefer_b, "b")):
        btn.click(lambda *v, w=which: on_prefer(w, *v), [folder, name, chat_a, chat_b, system], [saved, name])
    def on_folder(d):
        try:
            return gr.update(choices=registry.names(_dataset_dir(d))), ""
        except Exception as e:
            return gr.update(), f"**error:** {_problem(e)}"

    folder.submit(on_folder, folder, [name, saved])
    if ctx.pickers is not None:  # B's pickers offer what the top bar's do, kept current the same way
        ctx.pickers.add(model_b, like=top["model.name_or_path"])
        ctx.pickers.add(adapter_b, like=top["model.adapter"])
    ctx.demo.load(lambda: (status_html(), gr.update(choices=registry.names(workdir / "data"))), None, [status, name])
