"""The queue and a sweep on the page, in a real headless browser; then `kill -9` of the page server changes nothing:
the queued run still starts when its devices free up."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml

from conftest import ROOT, tiny_spec
from studio import spec as specmod
from studio.launch import queue
from studio.run import status as runs
from test_ui_browser import CHROMIUM, choose, page, server  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.browser, pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium (apt-get install -y chromium)")]


def test_page_shows_the_queue_and_a_sweep_and_a_killed_page_changes_nothing(server, page, tiny_model, tmp_path):
    pg, workdir = page, server["workdir"]
    root = workdir / "runs"
    busy = root / "busy"
    specmod.dump(specmod.load(None, [f"output_dir={busy}"]), busy / "spec.yaml")
    sleeper = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        (busy / "job.json").write_text(json.dumps({"pid": sleeper.pid, "pgid": sleeper.pid, "argv": ["sleep"], "started": time.time()}))
        data = specmod.read_yaml(ROOT / "examples" / "identity_lora.yaml")
        data["sweep"] = {"train.learning_rate": [1.0e-2, 1.0e-3]}
        (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(data))
        over = tiny_spec(tiny_model, tmp_path, data_dir=workdir / "data", output_dir="runs/lr", **{"train.max_steps": 2})
        res = subprocess.run([sys.executable, "-m", "studio", "train", str(tmp_path / "sweep.yaml"), *over, "--detach"],
                             cwd=workdir, capture_output=True, text=True, timeout=120)
        assert res.returncode == 0 and res.stdout.count("queued at position") == 2, res.stdout + res.stderr

        pg.goto(server["url"])
        pg.wait_for_function("() => document.querySelector('#queue-table')?.innerText.includes('lr/point-2')", timeout=60_000)
        text = pg.inner_text("#queue-table")
        assert text.index("lr/point-1") < text.index("lr/point-2") and "busy is running on the same devices" in text, text
        pg.locator("#queue-run textarea, #queue-run input").first.fill("lr/point-2")
        pg.click("#queue-cancel")
        pg.wait_for_function("() => document.querySelector('#queue-note')?.innerText.includes('cancelled lr/point-2')")
        pg.wait_for_function("() => !document.querySelector('#queue-table')?.innerText.includes('lr/point-2')")
        assert runs.status(root / "lr" / "point-2") == "aborted"

        choose_single = pg.locator("#sweep-pick input").first
        choose_single.click()
        pg.locator("#sweep-pick [role=option][aria-label='lr']").click()
        pg.wait_for_function("() => document.querySelector('#sweep-compare')?.innerText.includes('lr/point-2')", timeout=30_000)
        cmp = pg.inner_text("#sweep-compare")
        assert "train.learning_rate" in cmp and "best eval loss" in cmp and cmp.index("lr/point-1") < cmp.index("lr/point-2"), cmp
        assert "queued" in cmp and "aborted" in cmp and "0.001" in cmp, cmp

        # the page dies without a word: the waiter alone starts point-1 once the devices are free
        os.killpg(server["proc"].pid, signal.SIGKILL)
        server["proc"].wait(timeout=30)
        assert runs.status(root / "lr" / "point-1") == "queued"
    finally:
        sleeper.kill()
        sleeper.wait()
    deadline = time.time() + 400
    while runs.status(root / "lr" / "point-1") not in ("done", "error", "crashed") and time.time() < deadline:
        time.sleep(0.5)
    assert runs.status(root / "lr" / "point-1") == "done" and not queue.entries(root)


@pytest.mark.slow
def test_the_sweep_of_the_identity_example_is_compared_on_the_page(server, page, tiny_model):
    """The shipped sweep on the tiny model, cut to its two learning rates and 3 steps a point: two runs, compared, the
    best marked."""
    pg, workdir = page, server["workdir"]
    res = subprocess.run([sys.executable, "-m", "studio", "train", str(ROOT / "examples" / "sweep_identity.yaml"), "train.max_steps=3",
                          "train.save_steps=3", "sweep.method.lora.rank=[8]", f"model.name_or_path={tiny_model}"], cwd=workdir, capture_output=True, text=True, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    folder = workdir / "runs" / "sweep_identity"
    assert all(runs.status(folder / f"point-{i}") == "done" for i in range(1, 3)) and not (folder / "point-3").exists()
    pg.goto(server["url"])
    pg.wait_for_selector("#sweep-pick")
    pg.click("#refresh-runs")
    pg.locator("#sweep-pick input").first.click()
    pg.locator("#sweep-pick [role=option][aria-label='sweep_identity']").click()
    pg.wait_for_function("() => document.querySelector('#sweep-compare')?.innerText.includes('sweep_identity/point-2')", timeout=60_000)
    text = pg.inner_text("#sweep-compare")
    assert "train.learning_rate" in text and "method.lora.rank" not in text and "best eval loss" in text, text  # one rank: no column
    assert all(f"sweep_identity/point-{i}" in text for i in range(1, 3)) and text.count("best") == 3, text  # two headers and one row
