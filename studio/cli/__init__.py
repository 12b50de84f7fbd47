"""The `studio` command: one module per verb in this package (studio/cli/<verb>.py), each a few lines that call the core.

    studio train SPEC [key=value ...] [--dry-run] [--detach]      (a spec with a `sweep:` section: one run per point)
    studio train --resume RUN [key=value ...]
    studio eval SPEC [key=value ...]  |  studio eval score PREDICTIONS.jsonl
    studio export SPEC [key=value ...]
    studio merge [SPEC] [key=value ...]                          (merge.adapters=[runs/a,runs/b] merge.method=ties)
    studio generate SPEC [key=value ...]
    studio chat [--model M] [--adapter PATH]
    studio data check [--dataset-dir DIR] [--stage STAGE] [NAME ...]
    studio runs [--root runs]
    studio queue [cancel RUN | move RUN --to N] [--root runs]
    studio serve [--model M] [--adapter NAME=PATH ...] [--host H] [--port P] [--api-key KEY]
    studio webui [--host H] [--port P] [--auth USER:PASS]
"""
from __future__ import annotations

import argparse
import importlib
import sys

VERBS = ["train", "data", "runs", "chat", "eval", "export", "merge", "generate", "webui", "serve", "queue"]  # studio/cli/<verb>.py, in the order of `studio --help`


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="studio", description="Fine-tune language models: train, evaluate, chat, export, serve, generate data.")
    sub = p.add_subparsers(dest="verb", required=True)
    for verb in VERBS:
        importlib.import_module(f"studio.cli.{verb}").add_cli(sub)
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
