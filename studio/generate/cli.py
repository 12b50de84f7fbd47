"""`studio generate SPEC [key=value ...]`: start a generate job (self_instruct or answer) and follow it.

    studio generate examples/generate_self_instruct.yaml
    studio generate task=generate generate.mode=answer generate.source=identity generate.output_dataset=identity_teacher \
        generate.generator=endpoint generate.base_url=http://127.0.0.1:8000/v1 generate.endpoint_model=qwen generate.api_key_env=OPENAI_API_KEY
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from studio import spec as specmod


def check(spec) -> None:
    """Cheap checks before the child starts: the run folder, the source dataset, the output name, the model."""
    from studio.data import registry
    from studio.data.encode import usable
    from studio.generate import store

    prev = Path(spec.output_dir) / "spec.yaml"
    if prev.exists():
        import yaml

        task = (yaml.safe_load(prev.read_text()) or {}).get("task") or "train"
        if task != "generate":
            raise specmod.SpecError(f"output_dir: {spec.output_dir} holds a {task} run; choose another output_dir, e.g. output_dir=runs/generate_1")
    usable(registry.entry(spec.data.dataset_dir, spec.generate.source), "sft")
    store.check_output(spec, spec.output_dir)
    if spec.generate.generator == "local":
        from studio import evaluate

        evaluate.resolve(spec.model.adapter or "base", spec)


def cmd_generate(args) -> int:
    from studio import events as ev
    from studio.cli import run_job
    from studio.runs import stamp

    path = None if not args.args or "=" in args.args[0] else args.args[0]
    overrides = args.args[1:] if path else args.args
    spec = specmod.load(path, overrides, base={"task": "generate", "output_dir": f"runs/generate-{stamp()}"})
    if spec.task != "generate":
        raise specmod.SpecError(f"{path}: task is `{spec.task}`; run it with `studio {spec.task}`")
    check(spec)
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


if __name__ == "__main__":
    sys.exit("use: studio generate SPEC [key=value ...]")
