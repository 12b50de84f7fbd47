"""The `studio` command: each verb is a few lines that call the core.

    studio train SPEC [key=value ...] [--dry-run] [--detach]
    studio data check [--dataset-dir DIR] [--stage sft|pt|dpo|kto|rm|grpo] [NAME ...]
    studio runs [--root runs]
"""
from __future__ import annotations

import argparse
import signal
import sys
from pathlib import Path


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def preflight(spec) -> None:
    """Cheap checks before a child starts: the datasets exist and suit the stage, the machine suits the method."""
    from studio import methods
    from studio.data import encode, registry

    if spec.task != "train":
        return
    info = registry.read_info(spec.data.dataset_dir)
    for name in list(spec.data.dataset) + list(spec.data.eval_dataset):
        encode.usable(registry.entry(spec.data.dataset_dir, name, info), spec.method.stage)
    methods.preflight(spec)  # packages and hardware the method and options need
    from studio import stages

    stages.preflight(spec)  # GRPO: the reward files exist and define their functions


def run_job(spec, dry_run: bool = False, detach: bool = False, studio_line: str | None = None) -> int:
    """Start a job (train, eval, export) as a child process and follow it to its end."""
    from studio import events as ev
    from studio import launch

    preflight(spec)
    if dry_run:
        launch.check(spec)
        print(launch.describe(spec, studio_line=studio_line))
        return 0
    run_dir = Path(spec.output_dir)
    offset = (run_dir / ev.FILE).stat().st_size if (run_dir / ev.FILE).exists() else 0
    proc = launch.start(spec)
    print(f"run folder: {run_dir}   (log: {run_dir / 'output.log'})", flush=True)
    if detach:
        print(f"started in the background (pid {proc.pid}); follow with: studio runs")
        return 0
    if spec.launch.node_rank > 0:  # node 0 writes the events; this node only runs its ranks
        print(f"node {spec.launch.node_rank} of {spec.launch.nnodes}: running its ranks (log: {run_dir}/output-node{spec.launch.node_rank}.log); "
              "node 0 shows the progress", flush=True)
        return _wait_node(run_dir, proc, offset)

    def forward(signum, frame):
        print("\nstopping: the job saves a checkpoint and ends (Ctrl-C again to kill it) ...", file=sys.stderr, flush=True)
        launch.stop(run_dir, wait=False)
        signal.signal(signal.SIGINT, lambda s, f: launch.stop(run_dir, grace=0))

    signal.signal(signal.SIGINT, forward)
    signal.signal(signal.SIGTERM, forward)
    last = _follow_from(run_dir, proc, offset)
    if last is None:
        print(f"error: the job ended without a final event; see {run_dir / 'output.log'}", file=sys.stderr)
        return 1
    if last["event"] == "error":
        print(f"job failed: {last.get('message')}\n(full log: {run_dir / 'output.log'})", file=sys.stderr)
        return 1
    return 0 if last["event"] == "done" else 130


NODE_GRACE = 60.0  # s a node's ranks may outlive node 0's final event before this node stops them


def _wait_node(run_dir, proc, offset, grace: float = NODE_GRACE) -> int:
    """Node 1, 2 ...: wait for this node's ranks. On a shared folder node 0's final event is seen here too: ranks still
    alive `grace` s after it wait on peers that are gone (torchrun would hold them up to its 15-minute rendezvous
    timeout), so they are stopped and the node says why."""
    import os
    import signal
    import subprocess
    import time

    from studio import events as ev
    from studio import launch

    ended = None
    while proc.poll() is None:
        time.sleep(1.0)
        if ended is None:
            events, offset = ev.read(run_dir, offset)
            last = ev.final(events)
            ended = (time.time(), last) if last else None
        elif time.time() - ended[0] > grace:
            print(f"node 0 ended ({ended[1]['event']}{': ' + ended[1]['message'] if ended[1].get('message') else ''}); "
                  "stopping this node's ranks", file=sys.stderr, flush=True)
            job = {"pid": proc.pid, "pgid": proc.pid}
            pids = launch.job_pids(job)
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                pass
            for p in pids | launch.job_pids(job):
                launch.kill_tree(p)
            proc.wait()
            return 1
    return proc.returncode


def _follow_from(run_dir, proc, offset):
    import time

    from studio import events as ev
    from studio import launch

    while True:
        events, offset = ev.read(run_dir, offset)
        for e in events:
            print(launch.format_event(e), flush=True)
            if e["event"] in ev.FINAL:
                try:
                    proc.wait(timeout=120)
                except Exception:
                    pass
                return e
        if proc.poll() is not None:
            time.sleep(0.3)
            events, offset = ev.read(run_dir, offset)
            for e in events:
                print(launch.format_event(e), flush=True)
            last = ev.final(events) or launch.finish(run_dir, proc.returncode, offset)
            if last and last not in events:
                print(launch.format_event(last), flush=True)
            return last
        time.sleep(0.5)


def cmd_train(args) -> int:
    from studio import spec as specmod

    spec = specmod.load(args.spec, args.overrides)
    if spec.task != "train":
        return _err(f"{args.spec}: task is `{spec.task}`; run it with `studio {spec.task}`")
    import shlex

    per_node = ("launch.node_rank=", "launch.master_addr=", "launch.master_port=")  # describe() adds them per node
    line = shlex.join(["studio", "train", args.spec, *[o for o in args.overrides if not o.startswith(per_node)]])
    return run_job(spec, args.dry_run, args.detach, studio_line=line)


def cmd_data_check(args) -> int:
    from studio.data import check

    template = None
    if not args.no_tokenize:
        from studio import models
        from studio.data.templates import Template

        template = Template(args.template, models.load_tokenizer(args.model))
    results = check.check(args.dataset_dir, args.names or None, args.stage, template, args.cutoff_len)
    bad = 0
    for r in results:
        mark = "ok " if r.ok else "BAD"
        stats = "  ".join(f"{k}={v}" for k, v in r.stats.items())
        print(f"{mark} {r.name:<28} {r.kind:<8} {r.records:>6} records  {stats}" + (f"  ({r.note})" if r.note else ""))
        for issue in r.issues[:20]:
            print(f"      {issue}")
        if len(r.issues) > 20:
            print(f"      ... and {len(r.issues) - 20} more")
        bad += not r.ok
    print(f"{len(results) - bad} ok, {bad} with problems")
    return 1 if bad else 0


def cmd_runs(args) -> int:
    from studio import runs

    items = runs.list_runs(args.root)
    if not items:
        print(f"no runs in {args.root}/")
        return 0
    print(f"{'run':<28} {'status':<9} {'task':<6} {'method':<12} {'data':<20} {'step':>9} {'loss':>8}")
    for r in items:
        loss = f"{r.last_loss:.4f}" if r.last_loss is not None else ""
        steps = f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step or "")
        print(f"{r.name:<28} {r.status:<9} {r.task:<6} {r.method:<12} {r.datasets[:20]:<20} {steps:>9} {loss:>8}")
        if r.message:
            print(f"{'':<28} {r.message[:100]}")
        if r.last_eval:
            e = r.last_eval
            scores = "  ".join(f"{k} {e[k]:.2f}" for k in ("rouge-l", "bleu-4", "eval_loss") if e.get(k) is not None)
            print(f"{'':<28} eval: {scores} on {','.join(e.get('datasets', []))}  ({r.evals} evaluation(s), latest: {e.get('eval_run')})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="studio", description="Fine-tune language models: train, evaluate, chat, export.")
    sub = p.add_subparsers(dest="verb", required=True)

    t = sub.add_parser("train", help="train from a spec file (key=value overrides, e.g. train.max_steps=10)")
    t.add_argument("spec")
    t.add_argument("overrides", nargs="*", help="key.sub=value overrides of the spec")
    t.add_argument("--dry-run", action="store_true", help="print the command that would run, and exit")
    t.add_argument("--detach", action="store_true", help="start the job in the background and return")
    t.set_defaults(fn=cmd_train)

    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_verb", required=True)
    c = dsub.add_parser("check", help="read every record and report problems with their location")
    c.add_argument("names", nargs="*", help="dataset names (default: every entry in dataset_info.json)")
    c.add_argument("--dataset-dir", default="data")
    c.add_argument("--stage", choices=["sft", "pt", "dpo", "kto", "rm", "grpo"], default=None, help="check the datasets for this stage")
    c.add_argument("--model", default="default", help="tokenizer used to count tokens")
    c.add_argument("--template", default="auto")
    c.add_argument("--cutoff-len", type=int, default=1024)
    c.add_argument("--no-tokenize", action="store_true", help="check structure only (no tokenizer)")
    c.set_defaults(fn=cmd_data_check)

    r = sub.add_parser("runs", help="list run folders with their status")
    r.add_argument("--root", default="runs")
    r.set_defaults(fn=cmd_runs)

    # verbs that live beside their module: each module's add_cli(sub) adds its subparser
    __import__("studio.chat").chat.add_cli(sub)
    __import__("studio.evaluate").evaluate.add_cli(sub)
    __import__("studio.export").export.add_cli(sub)
    __import__("studio.ui.serve").ui.serve.add_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    from studio.errors import is_user_error

    args = build_parser().parse_args(argv)
    try:
        return args.fn(args) or 0
    except KeyboardInterrupt:
        return 130
    except Exception as e:
        if is_user_error(e):
            print(f"error: {e}", file=sys.stderr)
            return 2
        raise
