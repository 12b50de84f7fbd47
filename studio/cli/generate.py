"""`studio generate SPEC [key=value ...]`: start a generate job (self_instruct or answer) and follow it.

    studio generate examples/generate_self_instruct.yaml
    studio generate task=generate generate.mode=answer generate.source=identity generate.output_dataset=identity_teacher \
        generate.generator=endpoint generate.base_url=http://127.0.0.1:8000/v1 generate.endpoint_model=qwen generate.api_key_env=OPENAI_API_KEY
"""
from __future__ import annotations

import json

from studio import spec as specmod


def cmd_generate(args) -> int:
    from studio.run import events as ev
    from studio.launch.follow import run_job
    from studio.run.status import stamp

    path = None if not args.args or "=" in args.args[0] else args.args[0]
    overrides = args.args[1:] if path else args.args
    spec = specmod.load(path, overrides, base={"task": "generate", "output_dir": f"runs/generate-{stamp()}"})
    if spec.task != "generate":
        raise specmod.SpecError(f"{path}: task is `{spec.task}`; run it with `studio {spec.task}`")
    rc = run_job(spec, args.dry_run, args.detach)
    end = ev.final(ev.read_all(spec.output_dir)) if not (args.dry_run or args.detach) else None
    if end and end["event"] == "done":
        print(f"{end['records']} record(s) in {end['file']}, registered as `{end['dataset']}`; "
              f"dropped {json.dumps(end.get('dropped') or {}, ensure_ascii=False)}; report: {end['report']}")
    return rc


def add_cli(sub) -> None:
    e = sub.add_parser("generate", help="grow a dataset: self-instruct from seed tasks, or answers from a teacher model",
                       description="studio generate SPEC [key=value ...]   |   studio generate key=value ...")
    e.add_argument("args", nargs="*", metavar="SPEC [key=value ...]", help="a spec file and/or key.sub=value overrides")
    e.add_argument("--dry-run", action="store_true", help="print the command that would run, and exit")
    e.add_argument("--detach", action="store_true", help="start the job in the background and return")
    e.set_defaults(fn=cmd_generate)

