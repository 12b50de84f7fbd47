"""What the page does before and when it starts a job: name the run folder, keep paths inside the working
folder, the rules every job start obeys (launch.preflight), the data (through the preview child), start, stop.
No gradio here; the tabs call these and show the SpecError / DataError messages.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from studio.launch import preflight, process, queue
from studio.run import status as runs
from studio import spec as specmod
from studio.data import preview_cache
from studio.data.registry import DataError

_children: list[subprocess.Popen] = []  # started by this server, each waited for by a thread (process.reap_on_exit)


def inside(workdir: Path, path: str | Path, what: str) -> Path:
    """`path` resolved against the working folder; SpecError if it leaves it."""
    root = Path(workdir).resolve()
    p = (root / path).resolve()
    if p != root and root not in p.parents:
        raise specmod.SpecError(f"{what}: {path} is outside the working folder {root}; use a folder inside it (e.g. runs/my_run)")
    return p


def shown(path: Path, workdir: Path) -> str:
    """`path` relative to the working folder (as the page's pickers and specs name folders), else as it is."""
    try:
        return str(Path(path).resolve().relative_to(Path(workdir).resolve()))
    except ValueError:
        return str(path)


def auto_output_dir(runs_root: Path, spec: specmod.JobSpec, workdir: Path) -> str:
    """runs/<time>-<method>-<datasets>, unique; relative to the working folder."""
    data = "+".join(spec.data.dataset)[:40] or spec.task
    return shown(runs.unique_dir(runs_root, f"{runs.stamp()}-{spec.method.finetuning_type}-{data}"), workdir)


def reap() -> None:
    """Forget the children that have ended (each was reaped by its thread the moment it ended)."""
    _children[:] = [p for p in _children if p.poll() is None]


def start(spec: specmod.JobSpec, workdir: Path, runs_root: Path, check_data=None) -> Path:
    """Refuse what cannot run (paths, then every rule of launch.preflight, then the data as the preview encodes it),
    then start the child detached, or queue it when its devices are busy (`notes[run folder]` says why). Returns the
    run folder."""
    reap()
    out = inside(workdir, spec.output_dir, "output_dir")
    preflight.preflight(spec, runs_root)
    if spec.task == "train" and check_data is not None:
        result = check_data(spec)  # a preview that crashed refuses nothing: the job reports its own errors
        if result.get("error") and not result.get("crashed"):
            raise DataError(result["error"])
        if result.get("reason"):
            raise DataError(f"the data cannot train: {result['reason']} (see Dataset preview)")
    proc, note = queue.submit(spec, runs_root)
    if proc is not None:
        _children.append(process.reap_on_exit(proc))
    notes[str(out)] = note
    return out


notes: dict[str, str] = {}  # run folder -> why it was queued ("" when it started at once)


def stop(run_dir: str | Path) -> bool:
    """SIGTERM now (the job saves and writes `aborted`); a thread kills the group if it lingers."""
    if not runs.is_running(run_dir):
        return False
    process.stop(run_dir, wait=False)
    threading.Thread(target=process.stop, args=(run_dir,), kwargs={"grace": 30.0}, daemon=True).start()
    return True


def abort(st: dict, noun: str, after: str = "") -> str:
    """A tab's Abort: stop the run it follows (st["run"], a monitor.follow state). Returns the line to show: that it
    stops (then `after`: what the job does as it ends), or that no running `noun` is followed here."""
    run = st.get("run")
    if not run or not stop(run):
        return f"no running {noun} is followed here"
    return f"stopping {Path(run).name}" + (f": {after}" if after else "")


# --- data preview through a child process (no torch in the page's process) -----------------------------

_cache: dict[str, dict] = {}
_inflight: dict[str, threading.Lock] = {}
_lock = threading.Lock()


def preview(spec: specmod.JobSpec, extra_info: dict | None = None, limit: int = 100, timeout: float = 600) -> dict:
    """The JSON of `python -m studio.data.preview` for this spec, cached by content (in memory, and on disk when
    every file it reads is local: data.preview_cache)."""
    key, keep = preview_cache.key(spec, extra_info, limit)
    with _lock:
        key_lock = _inflight.setdefault(key, threading.Lock())
    with key_lock:  # a second caller for the same data waits for the first one's child
        if key in _cache:
            return _cache[key]
        result = (preview_cache.read(key) if keep else None) or _run_preview(spec, extra_info, limit, timeout)
        if not result.get("crashed"):
            _cache[key] = result
            if keep:
                preview_cache.write(key, result)
        return result


def _run_preview(spec, extra_info, limit, timeout) -> dict:
    with tempfile.TemporaryDirectory(prefix="studio-preview-") as tmp:
        spec_file = specmod.dump(spec, Path(tmp) / "spec.yaml")
        argv = [sys.executable, "-m", "studio.data.preview", str(spec_file), "--out", f"{tmp}/out.json", "--limit", str(limit)]
        if extra_info:
            Path(tmp, "info.json").write_text(json.dumps(extra_info))
            argv += ["--info", f"{tmp}/info.json"]
        env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
        res = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
        out = Path(tmp, "out.json")
        if res.returncode != 0 or not out.exists():
            return {"error": f"the preview failed: {(res.stderr or res.stdout).strip()[-1500:]}", "crashed": True}
        return json.loads(out.read_text())
