"""`studio merge`: merge two or more LoRA adapters of one base into a new run folder's adapter."""
from __future__ import annotations

import sys
from pathlib import Path

from studio import spec as specmod
from studio.run import events as ev


def cmd_merge(args) -> int:
    from studio.launch.follow import run_job
    from studio.merge import with_defaults

    if args.spec and "=" in args.spec and not Path(args.spec).exists():  # no spec file: the first word is an override
        args.spec, args.overrides = None, [args.spec, *args.overrides]
    spec = specmod.load(args.spec, ["task=merge", *args.overrides] if not args.spec else args.overrides)
    if spec.task != "merge":
        print(f"error: {args.spec}: task is `{spec.task}`; run it with `studio {spec.task}`", file=sys.stderr)
        return 2
    rc = run_job(with_defaults(spec), args.dry_run, args.detach)
    end = ev.final(ev.read_all(spec.output_dir)) if not (args.dry_run or args.detach) else None
    if end and end.get("event") == "done":
        print(summary(end))
    return rc


def summary(end: dict) -> str:
    lines = [f"merged {len(end['adapters'])} adapters ({end['method']}, weights {end['weights']}, rank {end['rank']}) "
             f"into {end['path']}"]
    lines += [f"  {a['prompt']} -> {a['answer']}" for a in end.get("answers", [])]
    return "\n".join(lines)


def add_cli(sub) -> None:
    m = sub.add_parser("merge", help="merge LoRA adapters of one base (cat, linear, TIES, DARE, magnitude prune, SVD)")
    m.add_argument("spec", nargs="?", help="a spec with task: merge (or none: only the overrides, e.g. "
                                           "merge.adapters=[runs/a,runs/b] merge.method=ties output_dir=runs/merged)")
    m.add_argument("overrides", nargs="*", help="key.sub=value overrides of the spec")
    m.add_argument("--dry-run", action="store_true", help="print the command that would run, and exit")
    m.add_argument("--detach", action="store_true", help="start the job in the background and return")
    m.set_defaults(fn=cmd_merge)
