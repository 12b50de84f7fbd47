"""`studio data check`: read every record of registered datasets and report problems with their location."""
from __future__ import annotations

from studio.spec.stages import STAGES


def cmd_data_check(args) -> int:
    from studio.data import check

    template = None
    if not args.no_tokenize:
        from studio.model import models
        from studio.data.templates import Template

        template = Template(args.template, models.load_tokenizer(args.model))
    results = check.check(args.dataset_dir, args.names or None, args.stage, template, args.cutoff_len)
    bad = 0
    for r in results:
        mark = "ok " if r.ok else "BAD"
        stats = "  ".join(f"{k}={v}" for k, v in r.stats.items())
        print(f"{mark} {r.name:<28} {r.kind:<8} {r.records:>6} records  {stats}" + (f"  ({r.note})" if r.note else ""))
        for issue in r.issues[:20]:
            print(f"      {issue}")
        if len(r.issues) > 20:
            print(f"      ... and {len(r.issues) - 20} more")
        bad += not r.ok
    print(f"{len(results) - bad} ok, {bad} with problems")
    return 1 if bad else 0


def add_cli(sub) -> None:
    d = sub.add_parser("data", help="dataset tools")
    dsub = d.add_subparsers(dest="data_verb", required=True)
    c = dsub.add_parser("check", help="read every record and report problems with their location")
    c.add_argument("names", nargs="*", help="dataset names (default: every entry in dataset_info.json)")
    c.add_argument("--dataset-dir", default="data")
    c.add_argument("--stage", choices=STAGES, default=None, help="check the datasets for this stage")
    c.add_argument("--model", default="default", help="tokenizer used to count tokens")
    c.add_argument("--template", default="auto")
    c.add_argument("--cutoff-len", type=int, default=1024)
    c.add_argument("--no-tokenize", action="store_true", help="check structure only (no tokenizer)")
    c.set_defaults(fn=cmd_data_check)
