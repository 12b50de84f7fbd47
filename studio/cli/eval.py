"""`studio eval`: start an evaluation job (or score a predictions file without a model)."""
from __future__ import annotations

import json
import sys

from studio import spec as specmod
from studio.evaluate.predictions import score_file
from studio.run.status import stamp


def cmd_eval(args) -> int:
    from studio.launch.follow import run_job

    if args.args and args.args[0] == "score":
        if len(args.args) != 2:
            print("usage: studio eval score PREDICTIONS.jsonl", file=sys.stderr)
            return 2
        print(json.dumps(score_file(args.args[1]), indent=2, ensure_ascii=False))
        return 0
    path = None if not args.args or "=" in args.args[0] else args.args[0]
    overrides = args.args[1:] if path else args.args
    spec = specmod.load(path, overrides, base={"task": "eval", "output_dir": f"runs/eval-{stamp()}"})
    if spec.task != "eval":
        raise specmod.SpecError(f"{path}: task is `{spec.task}`; run it with `studio {spec.task}`")
    return run_job(spec, args.dry_run, args.detach)


def add_cli(sub) -> None:
    e = sub.add_parser("eval", help="evaluate a model, adapter or run folder: predictions on datasets (BLEU-4, ROUGE, eval loss), "
                                    "benchmarks through lm-evaluation-harness (eval.benchmarks=[studio_pack]), a judge (eval.judge=pairwise); "
                                    "`studio eval score FILE` scores an existing predictions.jsonl",
                       description="studio eval SPEC [key=value ...]   |   studio eval key=value ...   |   studio eval score PREDICTIONS.jsonl")
    e.add_argument("args", nargs="*", metavar="SPEC [key=value ...]", help="a spec file and/or key.sub=value overrides, or: score FILE")
    e.add_argument("--dry-run", action="store_true", help="print the command that would run, and exit")
    e.add_argument("--detach", action="store_true", help="start the job in the background and return")
    e.set_defaults(fn=cmd_eval)


