"""The page's pickers of runs, models and datasets (the top bar's model and adapter, the Chat tab's B side, Evaluate's
runs, Export's run folder, the dataset lists of Train and Evaluate) offer what the runs and models folders and
dataset_info.json hold now, without a refresh click and without a timer (an idle page sends nothing):

- the page's load fills them (gradio builds the page once, when the server starts: without it a page loaded later
  offers the runs of that moment);
- a picker that is opened (its focus event) reads its choices again, when the folders changed since this page got
  them (`signature`: a few stat calls; the runs list itself, which reads every run's spec, only then) or the widgets
  its choices depend on (a dataset list: the stage and the dataset folder) hold other values;
- an event after which runs may have changed (the Train tab's runs list changing: a followed run that starts or ends,
  its ↻ refresh) reads again those that changed; the top bar's "↻ runs and models" button reads them all.

    ctx.pickers.add(dropdown, lambda: choices(...))   # in a tab's build; like=other_dropdown: the same choices
    ctx.pickers.add(datasets, fn, inputs=[stage])      # choices that depend on other widgets: fn(stage's value)
    ctx.pickers.refresh_on(listing.change)             # another event after which the folders may have changed
    ctx.pickers.wire(demo, button)                     # once, after every tab is built (app.build_app)
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from pathlib import Path

import gradio as gr

from studio.run import status as runs

SESSIONS = 2000  # pages whose last-sent signatures are kept (a page past them gets its pickers read again)


def _entry(path: str, st: os.stat_result) -> tuple:
    try:
        events = os.stat(os.path.join(path, "events.jsonl")).st_size
    except OSError:
        events = -1
    return st.st_mtime_ns, events


def signature(runs_root: Path, model_roots: tuple = ()) -> tuple:
    """What changes when a run folder comes or goes, writes an event (a start, an end) or a folder (adapter/,
    checkpoint-N/), a sweep gets a point, or a model folder comes or goes: the folders' modification times and the
    size of each run's events.jsonl. Cheap: two stat calls a run, no file read."""
    out: list = []
    for root in (runs_root, *model_roots):
        try:
            out.append((str(root), os.stat(root).st_mtime_ns))
        except OSError:
            out.append((str(root), None))
    try:
        entries = sorted(os.scandir(runs_root), key=lambda e: e.name)
    except OSError:
        return tuple(out)
    for e in entries:
        try:
            if not e.is_dir():
                continue
            out.append((e.name, *_entry(e.path, e.stat())))
            if os.path.isfile(os.path.join(e.path, runs.SWEEP)):
                for p in sorted(os.scandir(e.path), key=lambda q: q.name):
                    if p.is_dir():
                        out.append((e.name, p.name, *_entry(p.path, p.stat())))
        except OSError:
            continue
    return tuple(out)


class Pickers:
    """The pickers of a page, each with the function that lists its choices."""

    def __init__(self, runs_root: Path, model_roots: tuple = ()):
        """model_roots: the other folders and files whose modification time counts (models folders, the default
        dataset_info.json)."""
        self.runs_root, self.model_roots = Path(runs_root), tuple(model_roots)
        self.items: list[tuple] = []  # (component, choices function, refreshed by the page's load, its inputs)
        self.triggers: list = []
        self._seen: OrderedDict = OrderedDict()  # (session, index) -> (the signature its choices were read at, read no.)
        self._reads = 0  # reads begun: a read answers a picker only if no later read has answered it
        self._lock = threading.Lock()

    def add(self, comp, choices=None, like=None, on_load: bool = True, inputs: tuple = ()):
        """Keep `comp` current with `choices(*values of inputs)` (or the same function as the picker `like`).
        on_load=False: its tab already fills it at the page's load."""
        if choices is None:
            choices, inputs = next((fn, ins) for c, fn, _, ins in self.items if c is like)
        self.items.append((comp, choices, on_load, tuple(inputs)))
        return comp

    def refresh_on(self, trigger) -> None:
        """After `trigger` (e.g. listing.change), the pickers whose folders changed read their choices again."""
        self.triggers.append(trigger)

    def _read(self, session: str, wanted, force: bool, values: dict | None = None) -> list:
        """gr.update(choices=...) for each picker in `wanted` (indices) whose folders or inputs changed since `session`
        got it (all of them with `force`), gr.skip() for the others; each choices function is called once for the same
        inputs. `values`: the inputs' values, by component id."""
        with self._lock:  # the read's number and its signature in one order
            self._reads += 1
            ticket, sig = self._reads, signature(self.runs_root, self.model_roots)
        listed: dict = {}
        out = []
        for i, (comp, fn, _, ins) in enumerate(self.items):
            key, args = (session, i), tuple((values or {}).get(id(c)) for c in ins)
            with self._lock:
                fresh = not force and self._seen.get(key, (None, 0))[0] == (sig, args)
            if i not in wanted or fresh:
                out.append(gr.skip())
                continue
            if (fn, args) not in listed:
                listed[fn, args] = fn(*args)
            with self._lock:
                if self._seen.get(key, (None, 0))[1] > ticket:
                    # a later read (a picker opened while this one listed the runs) has sent newer choices already:
                    # these, answered after it, would overwrite them
                    out.append(gr.skip())
                    continue
                self._seen[key] = ((sig, args), ticket)
                self._seen.move_to_end(key)
                while len(self._seen) > SESSIONS * max(1, len(self.items)):
                    self._seen.popitem(last=False)
            out.append(gr.update(choices=listed[fn, args]))
        return out

    def wire(self, demo, button=None) -> None:
        """The events: the page's load, each picker's focus, the triggers, and `button` (reads them all)."""
        comps = [c for c, _, _, _ in self.items]
        every = set(range(len(self.items)))
        on_load = {i for i, (_, _, load, _) in enumerate(self.items) if load}
        if not comps:
            return
        inputs = list({id(c): c for _, _, _, ins in self.items for c in ins}.values())  # each once, in order

        def by_id(values) -> dict:
            return {id(c): v for c, v in zip(inputs, values)}

        def at_load(request: gr.Request, *values):
            return self._read(request.session_hash, on_load, True, by_id(values))

        def after(request: gr.Request, *values):
            return self._read(request.session_hash, every, False, by_id(values))

        def everything(request: gr.Request, *values):
            return self._read(request.session_hash, every, True, by_id(values))

        demo.load(at_load, inputs, comps, concurrency_limit=None)
        if button is not None:
            button.click(everything, inputs, comps, concurrency_limit=None)
        if self.triggers:
            gr.on(self.triggers, after, inputs, comps, show_progress="hidden", concurrency_limit=None)
        for i, (comp, _, _, ins) in enumerate(self.items):
            def opened(request: gr.Request, *values, i=i, ins=ins):
                return self._read(request.session_hash, {i}, False, {id(c): v for c, v in zip(ins, values)})[i]

            # outside the queue: the answer is here before a person's pointer reaches an option of the opened list
            comp.focus(opened, list(ins), comp, show_progress="hidden", queue=False)
