"""The `studio` command: each verb is a few lines that call the core; a job's verb lives in its own package.

    studio train SPEC [key=value ...] [--dry-run] [--detach]      (a spec with a `sweep:` section: one run per point)
    studio train --resume RUN [key=value ...]
    studio eval SPEC [key=value ...]  |  studio eval score PREDICTIONS.jsonl
    studio export SPEC [key=value ...]
    studio generate SPEC [key=value ...]
    studio chat [--model M] [--adapter PATH]
    studio data check [--dataset-dir DIR] [--stage sft|pt|dpo|kto|rm|grpo] [NAME ...]
    studio runs [--root runs]
    studio queue [cancel RUN | move RUN --to N] [--root runs]
    studio serve [--model M] [--adapter NAME=PATH ...] [--host H] [--port P] [--api-key KEY]
    studio webui [--host H] [--port P] [--auth USER:PASS]
"""
from __future__ import annotations

import argparse
import sys


def _err(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2


def cmd_train(args) -> int:
    from studio import spec as specmod

    if args.resume:
        from studio.launch.follow import resume_spec, run_job

        overrides = ([args.spec] if args.spec else []) + args.overrides  # `studio train --resume RUN key=value ...`
        return run_job(resume_spec(args.resume, overrides), args.dry_run, args.detach)
    if not args.spec:
        return _err("studio train needs a SPEC file (or --resume RUN)")
    from studio.launch import sweep

    if sweep.has_sweep(args.spec):
        return sweep.run_sweep(args.spec, args.overrides, args.dry_run, args.detach)
    spec = specmod.load(args.spec, args.overrides)
    if spec.task != "train":
        return _err(f"{args.spec}: task is `{spec.task}`; run it with `studio {spec.task}`")
    import shlex

    per_node = ("launch.node_rank=", "launch.master_addr=", "launch.master_port=")  # describe() adds them per node
    line = shlex.join(["studio", "train", args.spec, *[o for o in args.overrides if not o.startswith(per_node)]])
    from studio.launch.follow import run_job

    return run_job(spec, args.dry_run, args.detach, studio_line=line)


def cmd_data_check(args) -> int:
    from studio.data import check

    template = None
    if not args.no_tokenize:
        from studio.model import models
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
    from studio.run import status as runs

    items = runs.list_runs(args.root)
    if not items:
        print(f"no runs in {args.root}/")
        return 0
    print(f"{'run':<28} {'status':<9} {'task':<6} {'method':<12} {'data':<20} {'step':>9} {'loss':>8}")
    for r in items:
        loss = f"{r.last_loss:.4f}" if r.last_loss is not None else ""
        steps = f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step or "")
        print(f"{r.name:<28} {r.status:<9} {r.task:<6} {r.method:<12} {r.datasets[:20]:<20} {steps:>9} {loss:>8}")
        if runs.resumable(r.path):
            print(f"{'':<28} can be resumed: studio train --resume {r.path}")
        if r.message:
            print(f"{'':<28} {r.message[:100]}")
        if r.last_eval:
            e = r.last_eval
            scores = "  ".join(f"{k} {e[k]:.2f}" for k in ("rouge-l", "bleu-4", "eval_loss") if e.get(k) is not None)
            print(f"{'':<28} eval: {scores} on {','.join(e.get('datasets', []))}  ({r.evals} evaluation(s), latest: {e.get('eval_run')})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="studio", description="Fine-tune language models: train, evaluate, chat, export, serve, generate data.")
    sub = p.add_subparsers(dest="verb", required=True)

    t = sub.add_parser("train", help="train from a spec file (key=value overrides, e.g. train.max_steps=10)")
    t.add_argument("spec", nargs="?", help="the spec file; one with a `sweep:` section queues one run per point")
    t.add_argument("overrides", nargs="*", help="key.sub=value overrides of the spec")
    t.add_argument("--dry-run", action="store_true", help="print the command that would run, and exit")
    t.add_argument("--detach", action="store_true", help="start the job in the background and return")
    t.add_argument("--resume", metavar="RUN", help="continue a crashed or aborted run from its last checkpoint, with its own spec")
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
    __import__("studio.chat.cli").chat.cli.add_cli(sub)
    __import__("studio.evaluate.cli").evaluate.cli.add_cli(sub)
    __import__("studio.export.cli").export.cli.add_cli(sub)
    __import__("studio.generate.cli").generate.cli.add_cli(sub)
    __import__("studio.ui.serve").ui.serve.add_cli(sub)
    __import__("studio.serve.cli").serve.cli.add_cli(sub)
    __import__("studio.launch.queue_cli").launch.queue_cli.add_cli(sub)
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
