"""`studio runs`: the run folders with their status, last loss and latest evaluation."""
from __future__ import annotations


def cmd_runs(args) -> int:
    from studio.run import status as runs

    items = runs.list_runs(args.root)
    if not items:
        print(f"no runs in {args.root}/")
        return 0
    print(f"{'run':<28} {'status':<9} {'task':<6} {'method':<12} {'data':<20} {'step':>9} {'loss':>8}")
    for r in items:
        loss = f"{r.last_loss:.4f}" if r.last_loss is not None else ""
        steps = f"{r.step}/{r.total_steps}" if r.total_steps else str(r.step or "")
        print(f"{r.name:<28} {r.status:<9} {r.task:<6} {r.method:<12} {r.datasets[:20]:<20} {steps:>9} {loss:>8}")
        if runs.resumable(r.path):
            print(f"{'':<28} can be resumed: studio train --resume {r.path}")
        if r.message:
            print(f"{'':<28} {r.message[:100]}")
        if r.last_eval:
            e = r.last_eval
            scores = "  ".join(f"{k} {e[k]:.2f}" for k in ("rouge-l", "bleu-4", "eval_loss") if e.get(k) is not None)
            print(f"{'':<28} eval: {scores} on {','.join(e.get('datasets', []))}  ({r.evals} evaluation(s), latest: {e.get('eval_run')})")
    return 0


def add_cli(sub) -> None:
    r = sub.add_parser("runs", help="list run folders with their status")
    r.add_argument("--root", default="runs")
    r.set_defaults(fn=cmd_runs)
