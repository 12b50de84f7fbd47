"""The queue: a job whose devices are busy waits its turn instead of being refused. No server: the state lives in the
working folder and a tiny waiter process per queued job starts it when its turn comes.

    proc, note = submit(spec)          # start now, or queue (RUN_DIR/queued.json + a waiter); the CLI and the page
    entries(root)                      # the waiting jobs in order (position 1 first)
    cancel(run_dir); move(run_dir, n)  # `studio queue cancel RUN`, `studio queue move RUN --to N`
    python -m studio.launch.queue RUN_DIR    # the waiter: polls every second under the lock, starts the job, exits

Rules. Order is global FIFO (queued.json's `order`, the time it was queued unless moved); a job waits for every
running job and every job ahead of it whose devices overlap its own (launch.devices; empty means all), so a job
needing A and B waits for both and jobs on other devices start at once. Every decision to start is taken holding
an exclusive fcntl lock on ROOT/.queue.lock, ROOT being the folder that holds the run folders (runs/, also for the
points of a sweep in runs/NAME/point-N), so two starters (terminals, the page, waiters) never start together on the
same devices. A waiter that died (machine restart, kill -9) is started again by the next `studio queue` or submit.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from studio import spec as specmod
from studio.launch import process
from studio.run import events as ev
from studio.run import status as runs

QUEUED = runs.QUEUED  # RUN_DIR/queued.json: {queued, order, devices, waiter}
LOCK = ".queue.lock"
POLL_S = 1.0


@dataclass
class QueueEntry:
    path: Path
    position: int
    order: float
    queued: float
    devices: str | None
    waits_for: str = ""  # why it waits: a running job or a queued one ahead

    @property
    def name(self) -> str:
        return runs.display_name(self.path)


def _device_set(devices: str | None) -> set | None:
    """None: every GPU (or the CPU when there is none)."""
    if not devices:
        return None
    return {d.strip() for d in devices.split(",") if d.strip()}


def devices_overlap(a: str | None, b: str | None) -> bool:
    sa, sb = _device_set(a), _device_set(b)
    if sa is None or sb is None:
        return True
    return bool(sa & sb)


def busy_with(spec: specmod.JobSpec, runs_root: str | Path | None = None) -> runs.RunInfo | None:
    """A running job (beside the output folder, or under runs_root) that uses any of `spec`'s devices."""
    out = Path(spec.output_dir).resolve()
    roots = {runs.root_of(out)} | ({Path(runs_root).resolve()} if runs_root else set())
    for root in roots:
        for r in runs.list_runs(root):
            if r.status != "running" or r.path.resolve() == out:
                continue
            try:
                other = specmod.load(r.path / "spec.yaml").launch.devices
            except specmod.SpecError:
                other = None
            if devices_overlap(spec.launch.devices, other):
                return r
    return None


@contextlib.contextmanager
def locked(root: str | Path):
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _devices_of(run_dir: Path) -> str | None:
    try:
        return specmod.load(run_dir / "spec.yaml").launch.devices
    except specmod.SpecError:
        return None


def _read(run_dir: Path) -> dict | None:
    try:
        return json.loads((run_dir / QUEUED).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def entries(root: str | Path) -> list[QueueEntry]:
    """The queued jobs under `root`, first in line first, each with what it waits for."""

    root = Path(root)
    found = []
    for p in runs.run_dirs(root):
        q = _read(p)
        if q is not None and runs.status(p) == "queued":
            found.append(QueueEntry(p, 0, q.get("order", q.get("queued", 0)), q.get("queued", 0), q.get("devices")))
    found.sort(key=lambda e: e.order)
    running = [(r.path, _devices_of(r.path)) for r in runs.list_runs(root) if r.status == "running"]
    for i, e in enumerate(found):
        e.position = i + 1
        ahead = [(x.path, x.devices) for x in found[:i]]
        block = next((p for p, d in running + ahead if devices_overlap(e.devices, d)), None)
        if block is not None:
            verb = "is running" if runs.status(block) == "running" else "is queued ahead"
            e.waits_for = f"{runs.display_name(block)} {verb} on the same devices"
    return found


HOLDERS = ".holders"  # ROOT/.holders/KEY.json {pid, devices, what}: a process outside the jobs using GPUs (the page's chat)


def hold(root: str | Path, key: str, devices: str | None, what: str) -> None:
    """Say that this process uses `devices` (None: all): queued jobs on them wait until release() or its end."""
    d = Path(root) / HOLDERS
    d.mkdir(parents=True, exist_ok=True)
    (d / f"{key}.json").write_text(json.dumps({"pid": os.getpid(), "devices": devices, "what": what}))


def release(root: str | Path, key: str) -> None:
    (Path(root) / HOLDERS / f"{key}.json").unlink(missing_ok=True)


def holders(root: str | Path) -> list[dict]:
    """The live holders (a holder whose process is gone counts no more)."""
    found = []
    for f in sorted((Path(root) / HOLDERS).glob("*.json")):
        try:
            h = json.loads(f.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if runs.pid_alive(h.get("pid", -1)):
            found.append(h)
    return found


def blocker(spec: specmod.JobSpec, root: str | Path) -> str | None:
    """Why `spec` cannot start now (one sentence, the same for the CLI and the page), or None."""

    other = busy_with(spec, root)
    if other is not None:
        steps = f" (step {other.step}/{other.total_steps})" if other.total_steps else ""
        return f"{runs.display_name(other.path)} is running on the same devices{steps}"
    for h in holders(root):
        if devices_overlap(spec.launch.devices, h.get("devices")):
            return f"{h.get('what', 'another process')} holds the same devices"
    me = Path(spec.output_dir).resolve()
    for e in entries(root):  # those ahead of it: all, for a job not yet in the queue
        if e.path.resolve() == me:
            return None
        if devices_overlap(spec.launch.devices, e.devices):
            return f"{e.name} is queued ahead on the same devices"
    return None


def submit(spec: specmod.JobSpec, root: str | Path | None = None, force_queue: bool = False):
    """Start the job now if its devices are free and nobody waits ahead for them; else queue it.

    Returns (Popen, note) when started, (None, note) when queued; `note` says why it waits and its position."""
    from studio.launch import command

    root = Path(root) if root else runs.root_of(spec.output_dir)
    with locked(root):
        why = blocker(spec, root)
        if why is None and not force_queue:
            return command.start(spec), ""
        run_dir = command.prepare(spec)
        now = time.time()
        (run_dir / QUEUED).write_text(json.dumps({"queued": now, "order": now, "devices": spec.launch.devices}))
        _spawn(run_dir)
        pos = next((e.position for e in entries(root) if e.path.resolve() == run_dir.resolve()), "?")
    return None, f"queued at position {pos}: {why or 'sweep point'}; it starts when its devices are free (studio queue shows the line)"


def _spawn(run_dir: Path) -> int:
    """The waiter: detached in its own session, so that it outlives the terminal and the page."""
    log = open(run_dir / "queue.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "studio.launch.queue", str(run_dir)], stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    process.reap_on_exit(proc)  # the waiter ends once its job has started (or is cancelled): no zombie of it here
    log.close()
    q = _read(run_dir) or {}
    (run_dir / QUEUED).write_text(json.dumps({**q, "waiter": proc.pid}))
    return proc.pid


def revive(root: str | Path) -> int:
    """Start a waiter for every queued job whose waiter is gone (after a reboot or a kill). Returns how many."""
    n = 0
    with locked(root):
        for e in entries(root):
            pid = (_read(e.path) or {}).get("waiter")
            if not pid or not runs.pid_alive(pid):
                _spawn(e.path)
                n += 1
    return n


def _find(root: Path, run: str | Path) -> Path:
    want = Path(run)
    for e in entries(root):
        if e.path.resolve() in ((root / want).resolve(), want.resolve()):
            return e.path
    raise specmod.SpecError(f"{run} is not in the queue of {root}/ (studio queue lists the waiting jobs)")


def cancel(run: str | Path, root: str | Path = "runs") -> Path:
    """The run never starts: queued.json goes, the run ends with `aborted` (its waiter sees it and exits)."""
    root = Path(root)
    with locked(root):
        path = _find(root, run)
        (path / QUEUED).unlink()
        ev.EventWriter(path, enabled=True).write("aborted", step=0, message="cancelled before it started")
    return path


def move(run: str | Path, to: int, root: str | Path = "runs") -> list[QueueEntry]:
    """Put a queued job at position `to` (1 = next in line)."""
    root = Path(root)
    with locked(root):
        path = _find(root, run)
        line = entries(root)
        if not 1 <= to <= len(line):
            raise specmod.SpecError(f"--to {to}: the queue has {len(line)} job(s); give a position from 1 to {len(line)}")
        me = next(e for e in line if e.path == path)
        line.remove(me)
        line.insert(to - 1, me)
        base = time.time()
        for i, e in enumerate(line):
            q = _read(e.path) or {}
            (e.path / QUEUED).write_text(json.dumps({**q, "order": base + i * 1e-3}))
        return entries(root)


def wait_turn(run_dir: Path) -> None:
    """The waiter's loop: start the job when it is first in line for its devices and they are free."""
    from studio.launch import command

    root = runs.root_of(run_dir)
    while True:
        with locked(root):
            q = _read(run_dir)
            if q is None or runs.status(run_dir) != "queued":
                return  # cancelled, or started by someone else
            spec = specmod.load(run_dir / "spec.yaml")
            if blocker(spec, root) is None:
                try:
                    command.start(spec)  # then queued.json goes: the status never passes through `new`
                except Exception as e:  # the run says why it never started
                    ev.EventWriter(run_dir, enabled=True).write("error", message=f"the queued job could not start: {e}", traceback="")
                (run_dir / QUEUED).unlink(missing_ok=True)
                return
        time.sleep(POLL_S)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    wait_turn(Path(argv[0]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
