"""`studio train`: start a training job from a spec (a sweep: one run per point), or resume a run."""
from __future__ import annotations

from studio.cli.common import usage


def cmd_train(args) -> int:
    from studio import spec as specmod

    if args.resume:
        from studio.launch.follow import resume_spec, run_job

        overrides = ([args.spec] if args.spec else []) + args.overrides  # `studio train --resume RUN key=value ...`
        return run_job(resume_spec(args.resume, overrides), args.dry_run, args.detach)
    if not args.spec:
        return usage("studio train needs a SPEC file (or --resume RUN)")
    from studio.launch import sweep

    if sweep.has_sweep(args.spec):
        return sweep.run_sweep(args.spec, args.overrides, args.dry_run, args.detach)
    spec = specmod.load(args.spec, args.overrides)
    if spec.task != "train":
        return usage(f"{args.spec}: task is `{spec.task}`; run it with `studio {spec.task}`")
    import shlex

    per_node = ("launch.node_rank=", "launch.master_addr=", "launch.master_port=")  # describe() adds them per node
    line = shlex.join(["studio", "train", args.spec, *[o for o in args.overrides if not o.startswith(per_node)]])
    from studio.launch.follow import run_job

    return run_job(spec, args.dry_run, args.detach, studio_line=line)


def add_cli(sub) -> None:
    t = sub.add_parser("train", help="train from a spec file (key=value overrides, e.g. train.max_steps=10)")
    t.add_argument("spec", nargs="?", help="the spec file; one with a `sweep:` section queues one run per point")
    t.add_argument("overrides", nargs="*", help="key.sub=value overrides of the spec")
    t.add_argument("--dry-run", action="store_true", help="print the command that would run, and exit")
    t.add_argument("--detach", action="store_true", help="start the job in the background and return")
    t.add_argument("--resume", metavar="RUN", help="continue a crashed or aborted run from its last checkpoint, with its own spec")
    t.set_defaults(fn=cmd_train)
