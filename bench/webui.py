"""Web UI timings, as a user meets them: `studio webui` launch until the page is served, and Start (the page's
defaults: the default model on the identity example) until the first loss point is on the page.

    .venv/bin/python bench/webui.py [--out bench/results/webui.json]

Runs the real server in a scratch working folder and clicks Start in Debian's headless chromium. The run is
aborted after its first point. The load average is recorded beside the numbers: on a shared machine they move.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]


def main() -> int:
    from playwright.sync_api import sync_playwright

    from studio.launch import process
    from studio.run import status as runs

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "webui.json"))
    p.add_argument("--port", type=int, default=7899)
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="studio-webui-bench-"))
    shutil.copytree(ROOT / "data", work / "data")
    url = f"http://127.0.0.1:{args.port}/"
    t0 = time.time()
    server = subprocess.Popen([sys.executable, "-m", "studio", "webui", "--port", str(args.port)], cwd=work,
                              stdout=open(work / "webui.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    result = {"load_average_before": os.getloadavg(), "cpus": os.cpu_count()}
    try:
        while True:
            try:
                urllib.request.urlopen(url, timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() - t0 > 300:
                    raise SystemExit(f"server did not come up; see {work / 'webui.log'}")
                time.sleep(0.1)
        result["launch_to_served_s"] = round(time.time() - t0, 2)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            t1 = time.time()
            page.goto(url)
            page.wait_for_selector("#start")
            result["page_load_s"] = round(time.time() - t1, 2)
            time.sleep(20)  # a user reads the form; the default data check finishes in the background meanwhile
            t2 = time.time()
            page.click("#start")
            page.wait_for_selector("#progress [data-status='running']", timeout=300_000)
            result["start_to_running_s"] = round(time.time() - t2, 2)
            page.wait_for_function("() => +(document.querySelector('#progress [data-points]')?.dataset.points || 0) > 0",
                                   timeout=900_000)
            result["start_to_first_loss_point_s"] = round(time.time() - t2, 2)
            browser.close()
        for r in runs.list_runs(work / "runs"):
            first = next(e for e in runs.ev.read_all(r.path) if e["event"] == "log")
            start = next(e for e in runs.ev.read_all(r.path) if e["event"] == "start")
            job = runs.job_info(r.path)
            result["child_start_to_train_begin_s"] = round(start["t"] - job["started"], 2)
            result["first_step_s"] = round(first["t"] - start["t"], 2)
            process.stop(r.path, grace=10)
    finally:
        server.terminate()
        server.wait(timeout=30)
    result["load_average_after"] = os.getloadavg()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
