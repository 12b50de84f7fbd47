"""Run folders: layout, status and listing.

    RUN_DIR/spec.yaml        the resolved spec the child reads
    RUN_DIR/events.jsonl     the event stream (see events.py)
    RUN_DIR/output.log       everything the child printed
    RUN_DIR/job.json         {pid, pgid, argv, started, host} of the running child (written by launch.py)
    RUN_DIR/queued.json      {queued, order, devices, waiter} while the job waits its turn (launch/queue.py)
    ROOT/NAME/sweep.yaml     a sweep folder: its points are run folders ROOT/NAME/point-N (launch/sweep.py)
    RUN_DIR/adapter/ model/ checkpoint-N/ predictions.jsonl metrics.json export/

Status is derived, never stored: a final event decides it; otherwise the child's process group is
alive (running), or it died without a word (crashed). A queued.json newer than the last final event: queued.
"""
from __future__ import annotations

import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from studio import spec as specmod
from studio.run import events as ev

JOB = "job.json"
QUEUED = "queued.json"
SWEEP = "sweep.yaml"


@dataclass
class RunInfo:
    path: Path
    status: str
    task: str = "train"
    model: str = ""
    datasets: str = ""
    method: str = ""
    started: float | None = None
    step: int = 0
    total_steps: int = 0
    last_loss: float | None = None
    message: str = ""
    last_eval: dict | None = None  # the latest line of RUN/evals.jsonl (written by studio eval)
    evals: int = 0

    @property
    def name(self) -> str:
        return display_name(self.path)


def display_name(run_dir: str | Path) -> str:
    """NAME, or SWEEP/point-N for a point of a sweep (the path relative to the runs folder)."""
    p = Path(run_dir)
    return f"{p.parent.name}/{p.name}" if (p.parent / SWEEP).is_file() else p.name


def root_of(run_dir: str | Path) -> Path:
    """The folder that holds the run folders (runs/), also for a sweep's points (runs/NAME/point-N)."""
    parent = Path(run_dir).resolve().parent
    return parent.parent if (parent / SWEEP).is_file() else parent


def pid_alive(pid: int) -> bool:
    """A live process (a zombie is not alive)."""
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def group_alive(pgid: int) -> bool:
    """Any live member in the process group (killpg succeeds while only zombies remain). The group's leader alive, or
    no member at all, is answered without reading every process of the machine."""
    try:
        if pid_alive(pgid) and os.getpgid(pgid) == pgid:
            return True
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    for p in psutil.process_iter(["status"]):
        try:
            if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                return True
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return False


def job_info(run_dir: str | Path) -> dict | None:
    try:
        return json.loads((Path(run_dir) / JOB).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def is_running(run_dir: str | Path) -> bool:
    info = job_info(run_dir)
    return bool(info) and group_alive(info["pgid"])


def status(run_dir: str | Path, events: list[dict] | None = None) -> str:
    run_dir = Path(run_dir)
    events = ev.read_all(run_dir) if events is None else events
    last = ev.final(events)
    try:
        queued = json.loads((run_dir / QUEUED).read_text()).get("queued", 0)
    except (OSError, json.JSONDecodeError):
        queued = None
    if queued is not None and (not last or last.get("t", 0) < queued) and not is_running(run_dir):
        return "queued"
    if last:
        return last["event"]
    if is_running(run_dir):
        return "running"
    if job_info(run_dir):
        return "crashed"
    return "new"


SPEC_FILES = ("training_spec.yaml", "spec.yaml")  # an export keeps its run's spec as training_spec.yaml


def spec_file(folder: str | Path) -> Path | None:
    """The spec saved in a folder or beside it: a run folder, its adapter/, model/ or checkpoint-N/, or an export."""
    folder = Path(folder)
    cands = [folder / n for n in SPEC_FILES] + [folder.parent / "spec.yaml"]
    return next((f for f in cands if f.is_file()), None)


def read_spec(folder: str | Path):
    """The typed spec saved in (or beside) `folder`, through spec.load; None when there is none. SpecError names the
    file when it cannot be read."""
    f = spec_file(folder)
    return specmod.load(f) if f else None


def info(run_dir: str | Path) -> RunInfo:
    run_dir = Path(run_dir)
    events = ev.read_all(run_dir)
    r = RunInfo(path=run_dir, status=status(run_dir, events))
    try:
        spec = specmod.load(run_dir / "spec.yaml")
    except (OSError, specmod.SpecError):
        spec = None
    if spec is not None:
        r.task, r.model = spec.task, spec.model.name_or_path
        r.datasets = ",".join((r.task == "eval" and spec.data.eval_dataset) or spec.data.dataset)
        r.method = f"{spec.method.stage}/{spec.method.finetuning_type}"
        if r.task == "serve":  # a server has no data or method: show what it serves
            r.method = "api"
            r.datasets = ",".join(str(a).split("=", 1)[0] for a in spec.serve.adapters) or "(base)"
        elif r.task == "generate":
            r.method, r.datasets = spec.generate.mode, spec.generate.output_dataset
    for e in events:
        if e["event"] == "start":
            r.started = e["t"]
            r.total_steps = e.get("total_steps") or 0
        elif e["event"] == "log":
            r.step = e.get("step", r.step)
            if e.get("loss") is not None:
                r.last_loss = e["loss"]
        elif e["event"] == "progress":  # eval and export jobs count samples, not steps
            r.step = e.get("done", r.step)
        elif e["event"] == "error":
            r.message = e.get("message", "")
    hist = _read_lines(run_dir / "evals.jsonl")
    r.evals, r.last_eval = len(hist), (hist[-1] if hist else None)
    if r.started is None:
        job = job_info(run_dir)
        r.started = job.get("started") if job else None
    return r


def _read_lines(path: Path) -> list[dict]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return []
    out = []
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def is_run_dir(path: Path) -> bool:
    return (path / "spec.yaml").is_file()


def run_dirs(root: str | Path = "runs") -> list[Path]:
    """The run folders in `root`, and the points of each sweep folder in it."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = []
    for p in sorted(root.iterdir()):
        if p.is_dir() and is_run_dir(p):
            found.append(p)
        elif p.is_dir() and (p / SWEEP).is_file():
            found += [q for q in sorted(p.iterdir()) if q.is_dir() and is_run_dir(q)]
    return found


def list_runs(root: str | Path = "runs") -> list[RunInfo]:
    runs = [info(p) for p in run_dirs(root)]
    runs.sort(key=lambda r: r.started or 0, reverse=True)
    return runs


def last_checkpoint(run_dir: str | Path) -> Path | None:
    """The newest complete checkpoint: a job killed while saving leaves a folder without trainer_state.json."""
    cks = []
    for p in Path(run_dir).glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and p.is_dir() and (p / "trainer_state.json").is_file():
            cks.append((int(m.group(1)), p))
    return max(cks)[1] if cks else None


def resumable(run_dir: str | Path) -> bool:
    """A training run that ended early (crashed, aborted, error) and left a checkpoint to continue from."""
    run_dir = Path(run_dir)
    if status(run_dir) not in ("crashed", "aborted", "error") or last_checkpoint(run_dir) is None:
        return False
    try:
        import yaml

        return (yaml.safe_load((run_dir / "spec.yaml").read_text()) or {}).get("task", "train") == "train"
    except Exception:
        return False


def unique_dir(root: str | Path, name: str) -> Path:
    """runs/NAME, or runs/NAME-2, -3 ... if taken."""
    root = Path(root)
    p = root / name
    i = 2
    while p.exists():
        p = root / f"{name}-{i}"
        i += 1
    return p


def stamp() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
