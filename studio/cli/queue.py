"""`studio queue`: the jobs waiting for their devices, and the actions on them.

    studio queue [--root runs]                  the waiting jobs, position 1 next in line, and what each waits for
    studio queue cancel RUN [--root runs]       take it out: it never starts and ends `aborted` (cancelled before it started)
    studio queue move RUN --to N [--root runs]  put it at position N
"""
from __future__ import annotations

import time


def show(root: str) -> int:
    from studio.launch import queue

    revived = queue.revive(root)
    line = queue.entries(root)
    if not line:
        print(f"no jobs waiting in {root}/")
        return 0
    print(f"{'pos':>3}  {'run':<32} {'devices':<8} {'queued':<9} waits for")
    for e in line:
        print(f"{e.position:>3}  {e.name:<32} {e.devices or 'all':<8} {time.strftime('%H:%M:%S', time.localtime(e.queued)):<9} "
              f"{e.waits_for or 'its devices are free: starting'}")
    if revived:
        print(f"({revived} waiter(s) were gone and started again)")
    return 0


def cmd_queue(args) -> int:
    from studio.launch import queue

    if args.action is None:
        return show(args.root)
    if not args.run:
        print(f"error: studio queue {args.action} needs a RUN (a name from `studio queue`)")
        return 2
    if args.action == "cancel":
        path = queue.cancel(args.run, args.root)
        print(f"cancelled {path}: it will not start")
        return 0
    if args.to is None:
        print("error: studio queue move RUN needs --to N (1 = next in line)")
        return 2
    queue.move(args.run, args.to, args.root)
    return show(args.root)


def add_cli(sub) -> None:
    q = sub.add_parser("queue", help="jobs waiting for busy devices: list, cancel, move")
    q.add_argument("action", nargs="?", choices=["cancel", "move"], help="cancel RUN, or move RUN --to N; nothing: list the queue")
    q.add_argument("run", nargs="?", help="a waiting run (its name under --root, or its path)")
    q.add_argument("--to", type=int, help="move: the new position (1 = next in line)")
    q.add_argument("--root", default="runs", help="the folder that holds the run folders")
    q.set_defaults(fn=cmd_queue)
