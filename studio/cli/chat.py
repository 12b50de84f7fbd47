"""`studio chat`: a conversation in the terminal, or one answer per line read from a pipe."""
from __future__ import annotations

import sys
from dataclasses import fields

from studio.chat.session import ChatError, ChatSession, GenParams


def add_cli(sub) -> None:
    c = sub.add_parser("chat", help="chat with a model, an adapter or a run folder (reads lines from a pipe too)")
    c.add_argument("--model", default=None, help="base model: `default`, a model folder or a merged export (default: the adapter's base)")
    c.add_argument("--adapter", default=None, help="an adapter folder or a run folder (brings its base model and template)")
    c.add_argument("--template", default=None, help="prompt template (default: the run's, else auto)")
    c.add_argument("--system", default="", help="system prompt")
    c.add_argument("--quantization-bit", type=int, choices=[4, 8], default=None,
                   help="load the base model in 4 or 8 bits with bitsandbytes (less memory; on a CPU, slower)")
    for f in fields(GenParams):
        c.add_argument("--" + f.name.replace("_", "-"), type=int if f.name in ("top_k", "max_new_tokens", "seed") else float,
                       default=f.default, help=f.metadata["help"])
    c.set_defaults(fn=cmd_chat)


def _quiet() -> None:
    """Keep the terminal for the conversation: no progress bars or library warnings."""
    import logging
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


def cmd_chat(args) -> int:
    _quiet()
    session = ChatSession()
    print("loading ...", file=sys.stderr, flush=True)
    print(session.load(args.model, args.adapter, args.template, args.quantization_bit), file=sys.stderr, flush=True)
    params = GenParams(args.temperature, args.top_p, args.top_k, args.max_new_tokens, args.repetition_penalty, args.seed).check()
    history: list[dict] = []
    failed = 0
    interactive = sys.stdin.isatty()
    if interactive:
        print("type a message; /clear starts over, /exit or Ctrl-D quits, Ctrl-C stops an answer", file=sys.stderr)
    while True:
        try:
            line = input("you> " if interactive else "")
        except EOFError:
            return failed
        except KeyboardInterrupt:
            print(file=sys.stderr)
            return 0
        message = line.strip()
        if not message:
            continue
        if interactive and message in ("/exit", "/quit"):
            return 0
        if interactive and message == "/clear":
            history = []
            print("(history cleared)", file=sys.stderr)
            continue
        answer = ""
        try:
            if interactive:
                print("bot> ", end="", flush=True)
            for piece in session.stream(history, message, args.system, params):
                answer += piece
                if interactive:
                    print(piece, end="", flush=True)
        except KeyboardInterrupt:
            session.stop()
            print(" [stopped]", end="")
        except ChatError as e:  # this turn is lost, the conversation goes on
            print(("\n" if interactive else "") + f"error: {e}", file=sys.stderr, flush=True)
            failed = 1
            continue
        answer = answer.strip()
        print(answer if not interactive else "", flush=True)
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": answer}]
