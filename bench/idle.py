"""What the page costs at rest, and what it costs a run: CPU of the idle page, and a run's step time started from
the page (page open) against the same run from the CLI.

    .venv/bin/python bench/idle.py idle [--tree PATH] [--seconds 20]
    .venv/bin/python bench/idle.py steps [--tree PATH] [--model default] [--steps 8] [--rounds 1]
    .venv/bin/python bench/idle.py follow [--tree PATH] [--seconds 40]

`idle`: a `studio webui` in a scratch working folder, the page open in Debian's headless chromium, nothing
running; once the server's start-up helpers (data preview, GPU probe) are done, the CPU time (psutil
cpu_times, user + system) of the server process and of our chromium processes over `--seconds`, as % of one core.
`steps`: the same training spec run by `studio train`, then by Start on a fresh page (the page stays open on the
monitor until the run ends), then by `studio train` again, `--rounds` times (CLI, page, CLI, page, ..., CLI); the
step time is the mean time between `log` events; each page run is compared with the mean of the two CLI runs around
it (`page_over_cli`: each round's ratio, their median and mean), and the CPU time that the server process (not its
children) and chromium used while each page run ran is reported (`page_cpu_s`).
`follow`: what following a run costs, without a run's own noise: a run folder whose job is a sleeping placeholder
process and whose events (a `log` event a second) this script writes; the page, loaded, finds the running job and
follows it; the CPU of the server process, of the renderer and of all our chromium processes over `--seconds`, as %
of one core (the idle page's cost included).
`--tree` runs the studio from another checkout (e.g. the code before a change), for before/after numbers.
The load average is recorded: on a shared machine, compare numbers measured back to back.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--no-first-run"]


def cpu(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def ours_chromium() -> list[psutil.Process]:
    return [p for p in psutil.Process().children(recursive=True) if "chrom" in p.name().lower()]


def renderers(procs: list[psutil.Process]) -> list[psutil.Process]:
    out = []
    for p in procs:
        try:
            if "--type=renderer" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


class Server:
    def __init__(self, tree: Path, port: int):
        self.work = Path(tempfile.mkdtemp(prefix="studio-idle-bench-"))
        shutil.copytree(ROOT / "data", self.work / "data")
        self.url = f"http://127.0.0.1:{port}/"
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen([sys.executable, "-m", "studio", "webui", "--port", str(port)], cwd=self.work, env=env,
                                     stdout=open(self.work / "webui.log", "wb"), stderr=subprocess.STDOUT, start_new_session=True)
        t0 = time.time()
        while True:
            try:
                urllib.request.urlopen(self.url, timeout=2)
                break
            except OSError:
                if self.proc.poll() is not None or time.time() - t0 > 300:
                    raise SystemExit(f"server did not come up; see {self.work / 'webui.log'}")
                time.sleep(0.2)

    def helpers_done(self, timeout: float = 300) -> None:
        deadline = time.time() + timeout
        while psutil.Process(self.proc.pid).children() and time.time() < deadline:
            time.sleep(0.5)

    def close(self) -> None:
        from studio.launch import process
        from studio.run import status as runs

        self.proc.terminate()
        self.proc.wait(timeout=30)
        for r in runs.list_runs(self.work / "runs"):
            process.stop(r.path, grace=10)
        shutil.rmtree(self.work, ignore_errors=True)


def idle(args) -> dict:
    from playwright.sync_api import sync_playwright

    server = Server(Path(args.tree), args.port)
    try:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server.url)
            page.wait_for_selector("#start")
            server.helpers_done()
            time.sleep(5)  # the page's load events settle
            srv, chrome = psutil.Process(server.proc.pid), ours_chromium()
            rend = renderers(chrome)
            before = cpu([srv]), cpu(rend), cpu(chrome)
            t0 = time.time()
            time.sleep(args.seconds)
            after = cpu([srv]), cpu(rend), cpu(chrome)
            wall = time.time() - t0
            browser.close()
    finally:
        server.close()
    pct = [round(100 * (a - b) / wall, 2) for a, b in zip(after, before)]
    return {"tree": str(args.tree), "seconds": round(wall, 1), "server_pct_of_core": pct[0], "renderer_pct_of_core": pct[1],
            "chromium_all_pct_of_core": pct[2], "server_plus_renderer_pct": round(pct[0] + pct[1], 2)}


def follow(args) -> dict:
    from playwright.sync_api import sync_playwright

    from studio import spec as specmod

    server = Server(Path(args.tree), args.port)
    run = server.work / "runs" / "followed"
    run.mkdir(parents=True)
    specmod.dump(specmod.load(None, [f"output_dir={run}", *SPEC]), run / "spec.yaml")
    holder = subprocess.Popen(["sleep", "100000"], start_new_session=True)  # the job's process group, alive while followed
    (run / "job.json").write_text(json.dumps({"pid": holder.pid, "pgid": holder.pid, "argv": ["sleep"], "started": time.time()}))
    events = open(run / "events.jsonl", "a")

    def emit(**e) -> None:
        events.write(json.dumps({"t": time.time(), **e}) + "\n")
        events.flush()

    try:
        emit(event="start", task="train", total_steps=100_000)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(server.url)
            page.wait_for_selector("#progress [data-status='running']", timeout=120_000)
            server.helpers_done()
            time.sleep(5)
            srv, chrome = psutil.Process(server.proc.pid), ours_chromium()
            rend = renderers(chrome)
            before, t0, step = (cpu([srv]), cpu(rend), cpu(chrome)), time.time(), 0
            while time.time() - t0 < args.seconds:
                step += 1
                emit(event="log", step=step, total_steps=100_000, loss=2.0 - step / 1000, learning_rate=1e-4, epoch=step / 100,
                     tokens_per_second=1000.0, eta_s=1000)
                time.sleep(1)
            after, wall = (cpu([srv]), cpu(rend), cpu(chrome)), time.time() - t0
            points = page.locator("#progress [data-points]").get_attribute("data-points")
            browser.close()
    finally:
        holder.kill()
        events.close()
        server.close()
    pct = [round(100 * (a - b) / wall, 2) for a, b in zip(after, before)]
    return {"tree": str(args.tree), "seconds": round(wall, 1), "steps_written": step, "points_shown": int(points or 0),
            "server_pct_of_core": pct[0], "renderer_pct_of_core": pct[1], "chromium_all_pct_of_core": pct[2]}


def step_time(run_dir: Path) -> dict:
    events = [json.loads(x) for x in (run_dir / "events.jsonl").read_text().splitlines() if x.strip()]
    logs = [e for e in events if e["event"] == "log"]
    gaps = [(b["t"] - a["t"]) / (b["step"] - a["step"]) for a, b in zip(logs, logs[1:]) if b["step"] > a["step"]]
    return {"steps": logs[-1]["step"] if logs else 0, "step_s": round(sum(gaps) / len(gaps), 3) if gaps else None,
            "final": events[-1]["event"] if events else None}


SPEC = ["data.dataset=[identity]", "data.cutoff_len=256", "train.per_device_train_batch_size=2",
        "train.gradient_accumulation_steps=1", "train.logging_steps=1", "train.save_steps=1000"]


def page_run_once(browser, server: Server, args) -> tuple[Path, dict]:
    """Start the spec from a fresh page, keep the page open on the monitor until the run ends; (run folder, CPU-s of
    the server process and of chromium during the run)."""
    known = set((server.work / "runs").iterdir()) if (server.work / "runs").exists() else set()
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(server.url)
    page.wait_for_selector("#start")
    fill = {"f-train-max_steps": args.steps, "f-train-per_device_train_batch_size": 2, "f-train-gradient_accumulation_steps": 1,
            "f-train-logging_steps": 1, "f-train-save_steps": 1000}
    box = page.locator("#f-model-name_or_path input").first
    box.fill(args.model)
    box.press("Enter")
    page.keyboard.press("Escape")
    page.locator("#f-data-dataset .remove-all").click()
    page.locator("#f-data-dataset input").first.click()
    page.locator("[role=option][aria-label='identity']").first.click()
    page.keyboard.press("Escape")
    for elem, value in fill.items():
        b = page.locator(f"#{elem} input").first
        b.fill(str(value))
        b.press("Tab")
    srv = psutil.Process(server.proc.pid)
    before = cpu([srv]), cpu(ours_chromium())
    page.click("#start")
    page.wait_for_function("() => ['done', 'error', 'crashed'].includes(document.querySelector('#progress [data-status]')?.dataset.status)",
                           timeout=1_800_000, polling=1000)  # not the default: a check at every animation frame
    after = cpu([srv]), cpu(ours_chromium())
    page.close()
    run = next(p for p in (server.work / "runs").iterdir() if p.is_dir() and p not in known and not p.name.startswith("cli-"))
    return run, {"server": round(after[0] - before[0], 1), "chromium": round(after[1] - before[1], 1)}


def steps(args) -> dict:
    from playwright.sync_api import sync_playwright

    server = Server(Path(args.tree), args.port)
    env = {**os.environ, "PYTHONPATH": str(args.tree)}
    out = {"tree": str(args.tree), "model": args.model, "max_steps": args.steps}
    try:
        server.helpers_done()
        def cli(name: str) -> dict:
            subprocess.run([sys.executable, "-m", "studio", "train", str(ROOT / "examples" / "identity_lora.yaml"), f"output_dir=runs/{name}",
                            f"model.name_or_path={args.model}", f"train.max_steps={args.steps}", *SPEC], cwd=server.work, env=env,
                           stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, check=True, timeout=1800)
            return step_time(server.work / "runs" / name)

        rounds = []
        before = cli("cli-0")
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
            for n in range(1, args.rounds + 1):
                page_run, page_cpu = page_run_once(browser, server, args)
                after = cli(f"cli-{n}")  # each page run is bracketed by two CLI runs: the machine's load moves
                page_step = step_time(page_run)
                r = {"cli_before": before, "page": page_step, "cli_after": after, "page_cpu_s": page_cpu}
                if before["step_s"] and page_step["step_s"] and after["step_s"]:
                    r["page_over_cli"] = round(2 * page_step["step_s"] / (before["step_s"] + after["step_s"]), 3)
                rounds.append(r)
                before = after
            browser.close()
        out["rounds"] = rounds
        ratios = sorted(r["page_over_cli"] for r in rounds if "page_over_cli" in r)
        if ratios:
            out["page_over_cli"] = {"each": ratios, "median": round(statistics.median(ratios), 3),
                                    "mean": round(statistics.mean(ratios), 3)}
    finally:
        server.close()
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["idle", "steps", "follow"])
    p.add_argument("--tree", default=str(ROOT), help="the checkout whose studio is served")
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--model", default="default")
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=1, help="steps: page runs, each between two CLI runs")
    p.add_argument("--port", type=int, default=7897)
    args = p.parse_args()
    load = os.getloadavg()
    result = {"idle": idle, "steps": steps, "follow": follow}[args.what](args)
    result.update(load_average_before=load, load_average_after=os.getloadavg(), cpus=os.cpu_count())
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
