"""`studio export`: start an export job and print what it wrote."""
from __future__ import annotations

import sys

from studio import spec as specmod
from studio.export import quant as export_quant
from studio.model.source import defaults_from_run
from studio.run import events as ev


def cmd_export(args) -> int:
    from studio.launch.follow import run_job

    spec = specmod.load(args.spec, args.overrides)
    if spec.task != "export":
        print(f"error: {args.spec}: task is `{spec.task}`; run it with `studio {spec.task}`", file=sys.stderr)
        return 2
    raw = specmod.merge(specmod.read_yaml(args.spec), specmod.parse_overrides(args.overrides))
    defaults_from_run(spec, set(specmod.flatten(raw)))
    rc = run_job(spec, args.dry_run, args.detach)
    end = ev.final(ev.read_all(spec.output_dir)) if not (args.dry_run or args.detach) else None
    if end and end.get("files"):
        print(summary(end))
    return rc


def summary(end: dict) -> str:
    """A few lines for people: where, how big, the checks, a sample answer, the Ollama command."""
    files = end.get("files") or {}
    lines = [f"exported to {end['export_dir']} ({end.get('total_bytes', 0) / 1e6:.0f} MB): {', '.join(files)}"]
    v = end.get("verify")
    if v:
        lines.append(f"verification: {v['summary']} (top-1 agreement {v['top1_agreement']:.3f})")
        lines += [f"llama.cpp {n}: {'ok' if g['ok'] else 'FAILED'}, next-token agreement {g['top1_agreement']:.3f}, "
                  f"same tokens {g['same_tokens_as_tokenizer']}" + (f", first {g['first_tokens_same']}/{g['first_tokens']} greedy tokens "
                  "as transformers" if "first_tokens" in g else "") for n, g in (v.get("gguf") or {}).items()]
        lines.append(f"sample: {v['sample']['prompt']} -> {v['sample']['answer']}")
    lines += [export_quant.summary(n, r) for n, r in (end.get("gguf_quant") or {}).items()]
    for key in ("why_not_merged", "gguf_skipped"):
        if end.get(key):
            lines.append(end[key])
    if end.get("ollama_command"):
        lines.append(f"ollama: {end['ollama_command']}")
    return "\n".join(lines)


def add_cli(sub) -> None:
    e = sub.add_parser("export", help="merge a trained adapter into its base model, verify it, write GGUF + Modelfile")
    e.add_argument("spec")
    e.add_argument("overrides", nargs="*", help="key.sub=value overrides of the spec, e.g. model.adapter=runs/x")
    e.add_argument("--dry-run", action="store_true", help="print the command that would run, and exit")
    e.add_argument("--detach", action="store_true", help="start the job in the background and return")
    e.set_defaults(fn=cmd_export)


