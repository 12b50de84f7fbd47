"""`studio serve`: the OpenAI-compatible API for a base model and several adapters, in the foreground.

    studio serve --adapter pico=runs/identity_lora                      # http://127.0.0.1:8000/v1
    studio serve --model default --adapter a=runs/a --adapter b=runs/b --port 9000
    studio serve --host 0.0.0.0 --api-key s3cret                       # reachable from other machines: a key is required
    studio serve SPEC [key=value ...]                                   # the same as a spec (task: serve)

The server runs as a job (run folder, events) like training; Ctrl-C stops it.
"""
from __future__ import annotations

import os
from pathlib import Path

from studio import spec as specmod


def add_cli(sub) -> None:
    s = sub.add_parser("serve", help="serve the base model and adapters over the OpenAI API (/v1/chat/completions, /v1/models)",
                       description="studio serve [SPEC] [key=value ...] [--model M] [--adapter NAME=PATH ...] [--host H] [--port P] "
                                   "[--api-key KEY] [--quantization-bit 4|8]")
    s.add_argument("args", nargs="*", metavar="SPEC [key=value ...]", help="a spec file (task: serve) and/or key.sub=value overrides")
    s.add_argument("--model", default=None, help=specmod.field_help("model.name_or_path") + " Default: the adapters' base.")
    s.add_argument("--adapter", action="append", default=[], metavar="NAME=PATH", help=specmod.field_help("serve.adapters"))
    s.add_argument("--host", default=None, help=specmod.field_help("serve.host"))
    s.add_argument("--port", type=int, default=None, help=specmod.field_help("serve.port"))
    s.add_argument("--api-key", default=None, help="require `Authorization: Bearer KEY` on every request (needed for a non-loopback "
                                                   "--host); passed to the server through its environment, never written to disk")
    s.add_argument("--quantization-bit", type=int, choices=[4, 8], default=None, help=specmod.field_help("model.quantization_bit"))
    s.add_argument("--max-batch-size", type=int, default=None, help=specmod.field_help("serve.max_batch_size"))
    s.add_argument("--output-dir", default=None, help="the run folder (default: runs/serve-TIMESTAMP)")
    s.add_argument("--dry-run", action="store_true", help="print the command that would run, and exit")
    s.set_defaults(fn=cmd_serve)


def build_spec(args) -> specmod.JobSpec:
    from studio.model import models
    from studio.run.status import stamp
    from studio.serve.job import parse_adapters

    path = None if not args.args or "=" in args.args[0] else args.args[0]
    overrides = list(args.args[1:] if path else args.args)
    flags = {"model.name_or_path": args.model, "serve.host": args.host, "serve.port": args.port,
             "model.quantization_bit": args.quantization_bit, "serve.max_batch_size": args.max_batch_size, "output_dir": args.output_dir}
    overrides += [f"{k}={v}" for k, v in flags.items() if v is not None]
    base = {"task": "serve", "output_dir": f"runs/serve-{stamp()}"}
    spec = specmod.load(path, overrides, base=base)
    if args.adapter:
        spec.serve.adapters = list(spec.serve.adapters) + list(args.adapter)
    if spec.task != "serve":
        raise specmod.SpecError(f"{path}: task is `{spec.task}`; run it with `studio {spec.task}`")
    adapters = parse_adapters(spec.serve.adapters)
    if args.model is None and adapters and not (path or any(o.startswith("model.name_or_path=") for o in overrides)):
        first = next(iter(adapters.values()))  # the base the first adapter was trained on
        from studio.chat.session import resolve

        try:
            spec.model.name_or_path = resolve(None, first).model
        except models.ModelError as e:
            raise models.ModelError(f"--adapter {next(iter(adapters))}={first}: {e}") from None
    for name, where in adapters.items():  # resolve every adapter now: a wrong path fails before anything starts
        if not Path(where).expanduser().exists():
            raise models.ModelError(f"--adapter {name}={where}: {where} not found; give a run folder, adapter, checkpoint or export")
    models.check_quantization(spec.model.quantization_bit)
    return spec


def cmd_serve(args) -> int:
    from studio.launch.follow import run_job
    from studio.serve.job import KEY_ENV, check_bind

    spec = build_spec(args)
    key = args.api_key or os.environ.get(KEY_ENV) or None
    check_bind(spec.serve.host, spec.serve.port, key)
    if key and not args.dry_run:
        os.environ[KEY_ENV] = key  # the child reads it from its environment
    return run_job(spec, args.dry_run)  # Ctrl-C stops the server: it ends `done`
