"""The one job skeleton: every child (train, eval, export, ...) is `python -m studio.<job>.job RUN_DIR`.

    def body(spec, run_dir, writer) -> ("done" | "aborted" | "error", fields)
    raise SystemExit(job.main(body, __doc__))

main() reads RUN_DIR/spec.yaml, installs the stop signals, runs the body and turns its result, an `Aborted`, or any
exception into exactly one final event (done, aborted, error) and the exit status (0, 130, 1). Only rank 0 writes
events; with several processes a failing rank leaves RUN_DIR/error-rank{N}.json and rank 0 reports the first failure.
"""
from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

from studio import spec as specmod
from studio.run import events as ev

ERROR_FILE = "error-rank{rank}.json"  # what a failing rank leaves behind (only rank 0 writes events)
EXIT = {"done": 0, "aborted": 130, "error": 1}


class Aborted(Exception):
    """Stop requested (SIGTERM / SIGINT) before the job could stop on its own terms; `fields` go into `aborted`."""

    def __init__(self, **fields):
        super().__init__("stopped")
        self.fields = fields


def raise_aborted(signum, frame):
    raise Aborted()


def main(body, doc: str = "", argv: list[str] | None = None, on_signal=raise_aborted, step_from_progress: bool = False) -> int:
    """`step_from_progress`: a job that counts `progress` events (eval, generate) reports, when stopped, the last
    count as the `aborted` event's step."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print(doc)
        return 2
    run_dir = Path(argv[0])
    writer = ev.EventWriter(run_dir)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        spec = specmod.load(run_dir / "spec.yaml")
        leave_out_unused_packages(spec)
        event, fields = body(spec, run_dir, writer)
    except Aborted as a:
        done = [e.get("done", 0) for e in ev.read_all(run_dir) if e["event"] == "progress"] if step_from_progress else []
        event, fields = "aborted", {"step": done[-1] if done else 0, **a.fields}
    except Exception as e:  # every failure ends the job with an `error` event
        return fail(writer, run_dir, e)
    if event == "aborted" and _other_rank_failed(writer, run_dir):
        return EXIT["error"]
    writer.write(event, **fields)
    return EXIT[event]


def leave_out_unused_packages(spec) -> None:
    """Run a job that needs neither bitsandbytes nor DeepSpeed as if they were not installed: peft imports
    bitsandbytes whenever it is there, and bitsandbytes compiles kernels as it loads (about 2 s of CPU at the start of
    every job; docs/benchmarks.md, a job's start); transformers reaches for DeepSpeed the same way."""
    from studio.model.models import needs_bitsandbytes

    if not needs_bitsandbytes(spec):
        sys.modules.setdefault("bitsandbytes", None)  # import fails as if absent; find_spec says absent
    if not spec.launch.deepspeed:
        sys.modules.setdefault("deepspeed", None)


def fail(writer: ev.EventWriter, run_dir: Path, e: BaseException) -> int:
    """One `error` event for an exception (a user's mistake as its message, a bug with its traceback); with several
    ranks, every failing rank also leaves its error file and rank 0 reports the first failure of any rank (a crashed
    rank breaks the others' collectives: it is the cause)."""
    from studio.errors import describe

    message, tb = describe(e)
    record = {"t": time.time(), "rank": ev.rank(), "message": message, "traceback": tb}
    if ev.world_size() > 1:
        (run_dir / ERROR_FILE.format(rank=record["rank"])).write_text(json.dumps(record))
        first = rank_errors(run_dir) if writer.enabled else []
        record = first[0] if first else record
        record = {**record, "message": f"rank {record['rank']}: {record['message']}"}
    writer.write("error", message=record["message"], traceback=record["traceback"], rank=record["rank"])
    print(tb or f"error: {message}", file=sys.stderr, flush=True)
    return EXIT["error"]


def _other_rank_failed(writer: ev.EventWriter, run_dir: Path) -> bool:
    """On rank 0, stopped by torchrun: if another rank failed first, report its error instead of `aborted`."""
    errors = rank_errors(run_dir) if writer.enabled and ev.world_size() > 1 else []
    if errors:
        e = errors[0]
        writer.write("error", message=f"rank {e['rank']}: {e['message']}", traceback=e["traceback"], rank=e["rank"])
    return bool(errors)


def rank_errors(run_dir: str | Path) -> list[dict]:
    """The errors that ranks left in RUN_DIR/error-rank{N}.json, the first failure first."""
    found = []
    for p in Path(run_dir).glob(ERROR_FILE.format(rank="*")):
        try:
            found.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return sorted(found, key=lambda e: e.get("t", 0))
