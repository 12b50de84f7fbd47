"""The page under bad input, without a browser: the tolerant registry reader, and stopping the server's helpers."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from studio.data import registry_scan
from studio.run import status as runs

ROOT = Path(__file__).resolve().parent.parent


def _broken(data_dir: Path, old: str, new: str) -> Path:
    path = data_dir / "dataset_info.json"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))
    return path


def test_scan_keeps_the_entries_around_a_stray_comma(data_dir):
    _broken(data_dir, '"identity.json"\n', '"identity.json",\n')
    entries, problems = registry_scan.scan(data_dir)
    assert "identity" not in entries and {"identity_eval", "alpaca_demo", "chat_demo"} <= set(entries)
    assert len(problems) == 1
    assert "dataset_info.json: line 4, column 3: invalid JSON" in problems[0] and "entry `identity`" in problems[0]


def test_scan_names_a_bad_entry_and_offers_the_others(data_dir):
    _broken(data_dir, '"alpaca_demo": {\n', '"alpaca_demo": {\n    "formatting": "weird",\n')
    entries, problems = registry_scan.scan(data_dir)
    assert "alpaca_demo" not in entries and "identity" in entries
    assert problems == [f"{data_dir / 'dataset_info.json'}: entry `alpaca_demo`: unknown formatting `weird`; use alpaca or sharegpt"]


def test_scan_of_a_good_a_one_line_and_a_missing_registry(tmp_path, data_dir):
    entries, problems = registry_scan.scan(data_dir)
    assert problems == [] and list(entries) == list(json.loads((data_dir / "dataset_info.json").read_text()))
    (tmp_path / "one").mkdir()
    (tmp_path / "one" / "dataset_info.json").write_text('{"a": {"file_name": "a.json"},, "b": {"file_name": "b.json"}}')
    entries, problems = registry_scan.scan(tmp_path / "one")
    assert list(entries) == ["a", "b"] and "line 1, column 31" in problems[0]
    entries, problems = registry_scan.scan(tmp_path / "none")
    assert entries == {} and "not found" in problems[0]
    (tmp_path / "list").mkdir()
    (tmp_path / "list" / "dataset_info.json").write_text("[1, 2]")
    assert registry_scan.scan(tmp_path / "list")[1] == [f"{tmp_path / 'list' / 'dataset_info.json'}: expected an object mapping dataset names to entries"]


def test_the_page_names_the_file_and_line_above_the_list(tmp_path, data_dir):
    from studio.ui import train_tab

    _broken(data_dir, '"identity.json"\n', '"identity.json",\n')
    found, note = train_tab.registry_view(tmp_path, "data")
    assert "identity" not in found and "alpaca_demo" in found
    assert note.startswith("**data/dataset_info.json:** these entries are offered: identity_eval, alpaca_demo")
    assert "- data/dataset_info.json: line 4, column 3: invalid JSON" in note
    found, note = train_tab.registry_view(tmp_path, "../elsewhere")
    assert found == [] and "outside the working folder" in note


SERVER_LIKE = """
import subprocess, sys, time
from studio.ui import webui as serve
serve.install_stop_handler()
helper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"])
job = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(300)"], start_new_session=True)
try:
    print(helper.pid, job.pid, flush=True)  # inside the try: the signal may land before print returns
    while True:
        time.sleep(0.1)
except KeyboardInterrupt:
    print("closed", flush=True)
"""


def test_sigterm_stops_the_helpers_not_the_jobs():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", SERVER_LIKE], stdout=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    helper, job = map(int, proc.stdout.readline().split())
    try:
        proc.send_signal(signal.SIGTERM)
        assert proc.stdout.readline().strip() == "closed"
        assert proc.wait(timeout=30) == 0
        deadline = time.time() + 10
        while runs.pid_alive(helper) and time.time() < deadline:
            time.sleep(0.1)
        assert not runs.pid_alive(helper), "the helper outlived the server"
        assert runs.pid_alive(job), "the job was stopped with the server"
    finally:
        for pid in (helper, job):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def test_a_field_refuses_nan_and_infinity_with_its_name():
    import pytest

    from studio import spec as specmod
    from studio.ui import form, train_tab

    base = train_tab.default_spec()
    for name, value in [("train.learning_rate", float("nan")), ("train.num_train_epochs", float("inf")),
                        ("method.lora.loraplus_lr_ratio", "nan"), ("train.neftune_alpha", "1e400")]:
        with pytest.raises(specmod.SpecError, match=f"^{name}: expected a finite number"):
            form.values_to_spec({name: value}, base)
