"""Web UI logic without a browser: form <-> spec, the monitor's reading of events, the access rule, job refusals."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import busy_run
from studio import spec as specmod
from studio.ui import chart, form, jobs, monitor
from studio.ui.webui import check_access
from studio.run import status as runs

ROOT = Path(__file__).resolve().parent.parent


def _form_names():
    from studio.ui import app, train_tab

    names = list(app.TOP)
    for group in train_tab.GROUPS:
        names += group
    for _, _, group in train_tab.METHOD_GROUPS:
        names += [n for n in group if n not in names]
    return names + train_tab.MORE


def test_ui_process_does_not_import_torch():
    code = "import sys, studio.ui.app, studio.ui.train_tab; print(sorted(m for m in ('torch', 'transformers', 'trl', 'peft') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_every_form_field_has_help_from_the_spec():
    for name in _form_names():
        assert specmod.field_info(name)["help"], name


def test_form_spec_round_trip():
    names = _form_names()
    spec = specmod.load(None, ["output_dir=runs/x", "data.dataset=[identity,alpaca_demo]", "data.max_samples=50",
                               "model.quantization_bit=4", "method.lora.target=[q_proj,v_proj]", "train.learning_rate=0.0005",
                               "train.eval_steps=5", "launch.devices=0,1", "model.adapter=runs/old", "train.compute_dtype=fp32"])
    values = form.spec_to_values(spec, names)
    shown = dict(zip(names, values))
    assert shown["model.quantization_bit"] == "4" and shown["data.max_samples"] == "50"
    assert shown["method.lora.target"] == "q_proj, v_proj" and shown["data.dataset"] == ["identity", "alpaca_demo"]
    back = form.values_to_spec(shown)
    for n in names:
        assert specmod.get(back, n) == specmod.get(spec, n), n
    assert form.spec_to_values(back, names) == values
    # defaults survive the trip too, None included
    default = specmod.JobSpec()
    again = form.values_to_spec(dict(zip(names, form.spec_to_values(default, names))))
    assert specmod.to_dict(again) == specmod.to_dict(default)


def test_form_values_that_are_wrong_name_the_field():
    with pytest.raises(specmod.SpecError, match="data.max_samples"):
        form.values_to_spec({"data.max_samples": "many"})
    with pytest.raises(specmod.SpecError, match="train.max_steps"):
        form.values_to_spec({"train.max_steps": 2.5})
    with pytest.raises(specmod.SpecError, match="learning_rate"):
        form.values_to_spec({"train.learning_rate": 0})
    assert form.values_to_spec({"data.max_samples": "", "model.quantization_bit": "none"}).data.max_samples is None


def test_monitor_reads_partial_lines(tmp_path):
    path = tmp_path / "events.jsonl"
    state = monitor.follow(tmp_path)
    path.write_text(json.dumps({"event": "start", "t": 1.0, "total_steps": 4}) + "\n" + '{"event": "log", "t": 2.0, "st')
    state, new = monitor.advance(state)
    assert [e["event"] for e in new] == ["start"]
    with open(path, "a") as f:
        f.write('ep": 1, "loss": 2.5, "learning_rate": 0.001, "total_steps": 4}\n{"event": "eval", "t": 3, "step": 1, "eval_loss": 2.0}\n')
    state, new = monitor.advance(state)
    assert [e["event"] for e in new] == ["log", "eval"]
    state, new = monitor.advance(state)
    assert new == [] and len(state["events"]) == 3
    df = monitor.curves(state["events"])
    assert df.to_dict("records") == [{"step": 1, "value": 2.5, "series": "loss"}, {"step": 1, "value": 2.0, "series": "eval_loss"}]
    assert monitor.lr_curve(state["events"])["learning_rate"].tolist() == [0.001]
    html = monitor.progress_html(state["events"], "running", str(tmp_path))
    assert "step 1/4" in html and "loss 2.5000" in html and "width:25.0%" in html


def test_chart_draws_each_series_on_round_ticks_and_leaves_out_non_finite_values():
    assert chart.ticks(0.0, 1.0) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert chart.ticks(1, 3, min_step=1) == [1, 2, 3]  # steps are whole numbers
    assert chart.ticks(9e-5, 1.01e-3) == [0.0002, 0.0004, 0.0006, 0.0008, 0.001]
    evs = [{"event": "log", "step": i, "loss": loss} for i, loss in ((1, 2.5), (2, float("nan")), (3, 1.5))]
    evs.append({"event": "eval", "step": 3, "eval_loss": 1.75})
    svg = chart.svg(monitor.curves(evs), "step", "value", "series", "loss <b>", "loss")
    assert "data-points='3'" in svg and "loss &lt;b&gt;" in svg  # the NaN is left out; text is escaped
    assert svg.count("<polyline") == 2 and "data-series='eval_loss'" in svg and "loss: 1.5 at step 3" in svg
    ys = [float(t.split("'")[0]) for t in svg.split("<circle cx='")[1:] for t in [t.split("cy='")[1]]]
    assert ys[0] < ys[1]  # the higher loss is drawn higher up: y grows downwards in SVG
    empty = chart.svg(None, "step", "value", title="loss")
    assert "data-points='0'" in empty and "no points yet" in empty


def test_monitor_final_messages(tmp_path):
    (tmp_path / "output.log").write_text("loading\nTraceback ...\nValueError: boom\n")
    evs = [{"event": "error", "t": 1, "message": "ValueError: boom"}]
    text = monitor.final_message(evs, "error", tmp_path)
    assert "failed" in text and "ValueError: boom" in text and "Traceback" in text
    done = [{"event": "done", "t": 1, "step": 3, "train_loss": 1.25, "path": "runs/x/adapter"}]
    assert "train loss 1.2500" in monitor.final_message(done, "done", tmp_path)
    best = [{**done[0], "best_step": 2, "best_metric": 1.5, "metric_for_best_model": "eval_loss", "weights_from_step": 2, "early_stopped": True}]
    assert "best eval_loss 1.5000 at step 2, weights from step 2; early stopping ended it" in monitor.final_message(best, "done", tmp_path)
    cancelled = [{"event": "aborted", "t": 1, "step": 0, "message": "cancelled before it started"}]
    assert "aborted:** cancelled before it started" in monitor.final_message(cancelled, "aborted", tmp_path)


def test_access_rule():
    assert check_access("127.0.0.1", None, False) is None
    assert check_access("localhost", None, False) is None
    assert check_access("::1", None, False) is None
    with pytest.raises(specmod.SpecError, match="--auth USER:PASS"):
        check_access("0.0.0.0", None, False)
    with pytest.raises(specmod.SpecError, match="--allow-open"):
        check_access("192.168.1.5", None, False)
    assert check_access("0.0.0.0", None, True) is None
    assert check_access("0.0.0.0", "ann:pw:x", False) == ("ann", "pw:x")
    with pytest.raises(specmod.SpecError, match="USER:PASS"):
        check_access("0.0.0.0", "ann", False)


def test_webui_refuses_open_host_from_the_cli():
    res = subprocess.run([sys.executable, "-m", "studio", "webui", "--host", "0.0.0.0", "--port", "1"], capture_output=True,
                         text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 2 and "error: --host 0.0.0.0" in res.stderr and "Traceback" not in res.stderr


def test_paths_stay_inside_the_working_folder(tmp_path):
    assert jobs.inside(tmp_path, "runs/a", "output_dir") == (tmp_path / "runs" / "a").resolve()
    for bad in ("../elsewhere", "/etc", "runs/../../x"):
        with pytest.raises(specmod.SpecError, match="outside the working folder"):
            jobs.inside(tmp_path, bad, "output_dir")
    spec = specmod.load(None, ["output_dir=../escape"])
    with pytest.raises(specmod.SpecError, match="outside the working folder"):
        jobs.start(spec, tmp_path, tmp_path / "runs")


def test_devices_overlap():
    from studio.launch import queue

    assert queue.devices_overlap(None, "0")
    assert queue.devices_overlap("0,1", "1")
    assert not queue.devices_overlap("0", "1")
    assert queue.devices_overlap("cpu", "cpu")


def test_the_page_starts_with_the_identity_example():
    """Start on a fresh page trains what examples/identity_lora.yaml trains."""
    from studio.ui import train_tab

    example = specmod.to_dict(specmod.load(ROOT / "examples" / "identity_lora.yaml"))
    page = specmod.to_dict(train_tab.default_spec())
    for part in ("model", "data", "method", "train"):
        assert page[part] == example[part], part


def test_auto_output_dirs_are_unique(tmp_path):
    spec = specmod.load(None, ["output_dir=x"])
    a = jobs.auto_output_dir(tmp_path / "runs", spec, tmp_path)
    assert a.startswith("runs/") and a.endswith("-lora-identity")
    (tmp_path / a).mkdir(parents=True)
    assert jobs.auto_output_dir(tmp_path / "runs", spec, tmp_path) == a + "-2"


def _names_with_launch():
    from studio.ui import launch_fields

    return _form_names() + [n for n in launch_fields.NAMES if n not in _form_names()]


def test_round_trip_covers_the_launch_fields():
    names = _names_with_launch()
    spec = specmod.load(None, ["output_dir=runs/x", "launch.devices=0,1", "launch.nproc_per_node=2", "launch.deepspeed=z2"])
    back = form.values_to_spec(dict(zip(names, form.spec_to_values(spec, names))))
    assert specmod.to_dict(back) == specmod.to_dict(spec)


def test_preview_marks_trained_tokens_and_refuses_masked_data(tiny_model, tmp_path):
    ok = specmod.load(None, [f"model.name_or_path={tiny_model}", f"data.dataset_dir={ROOT / 'data'}", "data.cutoff_len=256",
                             "output_dir=runs/x"])
    res = jobs.preview(ok, limit=3)
    s = res["stats"]
    assert s["examples"] == s["records"] > 0 and 0 < s["trained_tokens"] < s["tokens"] and "reason" not in res
    ex = res["examples"][0]
    assert len(res["examples"]) == 3 and ex["tokens"] > ex["trained"] > 0
    trained = "".join(t for t, on in ex["pieces"] if on)
    untrained = "".join(t for t, on in ex["pieces"] if not on)
    assert "Pico" in trained and "Pico" not in untrained and "user" in untrained  # the answer carries the loss, the prompt not
    # a cutoff shorter than the prompts leaves nothing to train: the preview says why, and Start refuses with that reason
    masked = specmod.load(None, [f"model.name_or_path={tiny_model}", f"data.dataset_dir={ROOT / 'data'}", "data.cutoff_len=8",
                                 f"output_dir={tmp_path / 'runs' / 'm'}"])
    res = jobs.preview(masked)  # Start's own check below reads this preview from the cache: one child for both
    assert res["stats"]["trained_tokens"] == 0 and "no trainable tokens" in res["reason"] and "cutoff_len" in res["reason"]
    with pytest.raises(Exception, match="no trainable tokens") as err:
        jobs.start(masked, tmp_path, tmp_path / "runs", check_data=jobs.preview)
    assert type(err.value).__name__ == "DataError"
    assert not (tmp_path / "runs" / "m" / "job.json").exists()


def test_a_preview_is_kept_on_disk_until_its_data_changes(tiny_model, data_dir, tmp_path, monkeypatch):
    """A second server (an empty memory cache) shows the same preview without a child; new data, a new preview."""
    monkeypatch.setenv("STUDIO_CACHE", str(tmp_path / "cache"))
    children = []
    monkeypatch.setattr(jobs, "_run_preview", lambda spec, extra, limit, timeout: children.append(limit) or {"n": len(children)})
    monkeypatch.setattr(jobs, "_cache", {})
    spec = specmod.load(None, [f"model.name_or_path={tiny_model}", f"data.dataset_dir={data_dir}", "output_dir=runs/x"])
    assert jobs.preview(spec) == {"n": 1}
    jobs._cache.clear()
    assert jobs.preview(spec) == {"n": 1} and children == [100]
    assert jobs.preview(spec, limit=3) == {"n": 2}
    data = data_dir / "identity.json"
    data.write_text(data.read_text() + "\n")
    jobs._cache.clear()
    assert jobs.preview(spec) == {"n": 3} and len(list((tmp_path / "cache" / "previews").glob("*.json"))) == 3
    # a dataset whose file is missing is previewed each time (its error is not kept)
    gone = specmod.load(None, [f"model.name_or_path={tiny_model}", f"data.dataset_dir={data_dir}", "data.dataset=[nowhere]",
                               "output_dir=runs/x"])
    jobs.preview(gone)
    jobs._cache.clear()
    jobs.preview(gone)
    assert len(children) == 5


def test_second_start_on_the_same_devices_is_queued(tmp_path):
    runs_root = tmp_path / "runs"
    busy = runs_root / "busy"
    with busy_run(busy):
        second = specmod.load(None, [f"output_dir={runs_root / 'second'}"])
        out = jobs.start(second, tmp_path, runs_root)
        assert "busy is running on the same devices" in jobs.notes[str(out)] and runs.status(out) == "queued"
        from studio.launch import preflight, queue

        queue.cancel("second", runs_root)

        other_gpu = specmod.load(None, [f"output_dir={runs_root / 'second'}", "launch.devices=1"])
        specmod.dump(specmod.load(None, [f"output_dir={busy}", "launch.devices=0"]), busy / "spec.yaml")
        assert queue.busy_with(other_gpu, runs_root) is None


def test_register_an_upload(tmp_path):
    from studio.data import registry
    from studio.ui import dataset_view

    rows = [{"question": "Who are you?", "answer": "Pico.", "system": "Be brief."}]
    f = tmp_path / "qa.jsonl"
    f.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    cols, first = dataset_view.sniff(f)
    fmt, mapping = dataset_view.guess(cols, first)
    assert fmt == "alpaca" and mapping["prompt"] == "question" and mapping["response"] == "answer" and mapping["system"] == "system"
    raw = dataset_view.entry_for("qa.jsonl", fmt, mapping, first)
    (tmp_path / "dataset_info.json").write_text("{}")
    registry.register(tmp_path, "qa", raw)
    e = registry.entry(tmp_path, "qa")
    from studio.data import convert, readers

    (loc, rec), = readers.read_entry(e)[0]
    assert convert.to_messages(rec, e) == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who are you?"},
                                           {"role": "assistant", "content": "Pico."}]
    chat = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
    fmt, mapping = dataset_view.guess(["messages"], chat)
    raw = dataset_view.entry_for("c.json", fmt, mapping, chat)
    assert fmt == "sharegpt" and raw["columns"] == {"messages": "messages"} and raw["tags"]["role_tag"] == "role"


def test_auth_guards_the_server(tmp_path):
    import socket
    import urllib.error
    import urllib.parse
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "dataset_info.json").write_text("{}")
    proc = subprocess.Popen([sys.executable, "-m", "studio", "webui", "--port", str(port), "--auth", "ann:pw"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"

    def status(path, data=None):
        try:
            return urllib.request.urlopen(url + path, data=data, timeout=5).status
        except urllib.error.HTTPError as e:
            return e.code

    try:
        import time

        deadline = time.time() + 180
        while True:
            try:
                urllib.request.urlopen(url + "/", timeout=2)
                break
            except urllib.error.HTTPError:
                break
            except OSError:
                assert proc.poll() is None and time.time() < deadline, "server did not start"
                time.sleep(0.3)
        assert status("/config") == 401  # nothing of the app without a login
        assert status("/login", urllib.parse.urlencode({"username": "ann", "password": "no"}).encode()) == 400
        assert status("/login", urllib.parse.urlencode({"username": "ann", "password": "pw"}).encode()) == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_runs_compare_shows_only_differing_fields(tmp_path):
    from studio.ui import runs_view

    dirs = []
    for name, lr in (("a", "0.001"), ("b", "0.0005")):
        d = tmp_path / name
        specmod.dump(specmod.load(None, [f"output_dir=runs/{name}", f"train.learning_rate={lr}"]), d / "spec.yaml")
        (d / "events.jsonl").write_text("".join(json.dumps({"event": "log", "t": i, "step": i, "loss": 3.0 - i / 10}) + "\n"
                                                for i in (1, 2)))
        dirs.append(d)
    diff = runs_view.differing(dirs)
    assert diff.values.tolist() == [["train.learning_rate", "0.001", "0.0005"]]
    curves = runs_view.overlay(dirs)
    assert sorted(set(curves["series"])) == ["a: loss", "b: loss"] and len(curves) == 4
    table = runs_view.table(tmp_path)
    assert set(table["run"]) == {"a", "b"} and set(table["last loss"]) == {"2.8000"}


def test_the_chat_status_says_when_the_top_bar_names_another_model_than_a(monkeypatch):
    from types import SimpleNamespace

    from studio.ui import chat_tab

    a = chat_tab.SESSIONS["a"]
    monkeypatch.setattr(a, "model", object())  # loaded, without loading weights
    monkeypatch.setattr(a, "source", SimpleNamespace(label="default"))
    monkeypatch.setattr(a, "template", SimpleNamespace(name="qwen"))
    monkeypatch.setitem(chat_tab.LOADED_FROM, "a", ("default", ""))
    assert chat_tab.top_bar_note("default", "") == ""
    note = chat_tab.top_bar_note("default", "runs/dpo_run")
    assert "runs/dpo_run" in note and "press Load" in note
    shown = chat_tab.status_html(note)
    assert "role='status'" in shown and "A</b>: default" in shown and "press Load" in shown
    assert "working ..." in chat_tab.status_html(busy=True) and "aria-busy='true'" in chat_tab.status_html(busy=True)


def test_the_pickers_signature_changes_with_the_runs_and_only_then(tmp_path):
    from studio.ui import pickers

    root = tmp_path / "runs"
    assert pickers.signature(root) == pickers.signature(root)
    before = pickers.signature(root)
    (root / "a").mkdir(parents=True)
    after_new = pickers.signature(root)
    assert after_new != before and after_new == pickers.signature(root)
    (root / "a" / "events.jsonl").write_text('{"event": "start"}\n')
    with_events = pickers.signature(root)
    assert with_events != after_new
    (root / "a" / "adapter").mkdir()
    assert pickers.signature(root) != with_events


def test_a_picker_read_that_ends_after_a_later_one_sends_nothing(tmp_path):
    """A read that lists the runs slowly (the page's load, a followed run's end) and ends after a picker opened and
    got newer choices must not overwrite them: its answer comes last in the page."""
    import threading

    from studio.ui import pickers

    root = tmp_path / "runs"
    root.mkdir()
    listing, release = threading.Event(), threading.Event()
    names = ["old"]

    def choices():
        seen = list(names)
        if threading.current_thread().name == "slow":
            listing.set()
            release.wait(10)
        return seen

    box = pickers.Pickers(root)
    box.add(object(), choices)
    slow: list = []
    t = threading.Thread(target=lambda: slow.extend(box._read("s", {0}, force=True)), name="slow")
    t.start()
    assert listing.wait(10)
    names.append("new")
    (root / "new").mkdir()
    opened = box._read("s", {0}, force=False)[0]  # the picker opened meanwhile
    release.set()
    t.join(10)
    assert opened["choices"] == ["old", "new"]
    assert slow[0] == pickers.gr.skip()  # the slow read's older list is not sent
    assert box._read("s", {0}, force=False)[0] == pickers.gr.skip()  # nothing changed since the newer one
