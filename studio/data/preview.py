"""Dataset preview: examples rendered through the template, with the tokens that carry loss marked, and counts.

    python -m studio.data.preview runs/x/spec.yaml --out preview.json [--limit 100] [--info extra_info.json]

The web UI runs this as a short child process (it keeps torch and transformers out of the UI process).
`--info` adds or replaces dataset_info.json entries (a dataset being registered, before it is saved).
The JSON holds `stats` (examples, tokens, trained_tokens, truncated, dropped), `examples` (the first
`limit`, each a list of [text, trained] pieces), `issues` (bad records), and `reason` when nothing would
train; or `error` alone when the data cannot be read.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from studio.data import registry
from studio.data.encode import IGNORE, encode, encode_chat, read_examples
from studio.spec.stages import PREFERENCE_STAGES


def _pieces(tokenizer, ids, labels) -> list:
    """Consecutive tokens with the same trained flag, decoded together: [[text, trained], ...]."""
    out, run, flag = [], [], None
    for i, lab in zip(ids, labels):
        f = lab != IGNORE
        if flag is not None and f != flag:
            out.append([tokenizer.decode(run), flag])
            run = []
        run.append(i)
        flag = f
    if run:
        out.append([tokenizer.decode(run), flag])
    return out


def preview(spec, limit: int = 100, info: dict | None = None) -> dict:
    """Render the first `limit` training examples of `spec` and count tokens over all of them."""
    from studio.model import models
    from studio.data.templates import Template

    d, stage = spec.data, spec.method.stage
    from studio.data import preference

    if stage in PREFERENCE_STAGES:  # dpo, kto, rm, grpo: pairs, labelled answers, prompts
        return preference.preview(spec, limit, info)
    tokenizer = models.load_tokenizer(spec.model.name_or_path, spec.model.trust_remote_code)
    template = Template(spec.model.template, tokenizer)
    full_info = {**registry.read_info(d.dataset_dir), **(info or {})}
    examples, issues, names = [], [], []
    for name in spec.data.dataset:
        ex, iss = read_examples(d.dataset_dir, name, stage, d.max_samples, full_info)
        examples += [(loc, x, name) for loc, x in ex]
        issues += iss
    _, rep = encode([(loc, x) for loc, x, _ in examples], template, stage, d.cutoff_len, d.train_on_prompt, d.mask_history)
    shown = []
    for loc, x, name in examples[:limit]:
        if stage == "pt":
            ids = tokenizer.encode(x, add_special_tokens=False)[: d.cutoff_len]
            labels, cut = ids, len(ids) >= d.cutoff_len
        else:
            ids, labels, cut = encode_chat(x, template, d.cutoff_len, d.train_on_prompt, d.mask_history)
        trained = sum(1 for x in labels if x != IGNORE)
        shown.append({"loc": loc, "dataset": name, "tokens": len(ids), "trained": trained, "truncated": bool(cut),
                      "pieces": _pieces(tokenizer, ids, labels)})
    out = {"stats": {"records": len(examples), "examples": rep.examples, "tokens": rep.tokens, "trained_tokens": rep.trained_tokens,
                     "truncated": rep.truncated, "dropped": rep.dropped},
           "examples": shown, "issues": issues[:50], "num_issues": len(issues), "template": template.name}
    if issues:
        out["reason"] = f"{len(issues)} bad record(s): fix them (first: {issues[0]})"
    elif rep.trained_tokens == 0:
        out["reason"] = (f"no trainable tokens in {', '.join(spec.data.dataset)}: {rep.dropped} of {len(examples)} example(s) have no "
                         f"answer tokens left after templating and truncation ({rep.truncated} cut by data.cutoff_len={d.cutoff_len}). "
                         "Raise data.cutoff_len or shorten the prompts.")
    return out


def main(argv: list[str] | None = None) -> int:
    from studio import spec as specmod
    from studio.errors import is_user_error

    p = argparse.ArgumentParser(prog="python -m studio.data.preview", description=__doc__.splitlines()[0])
    p.add_argument("spec")
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, default=100)
    p.add_argument("--info", default=None, help="JSON file of extra dataset_info entries")
    args = p.parse_args(argv)
    try:
        extra = json.loads(Path(args.info).read_text()) if args.info else None
        result = preview(specmod.load(args.spec), args.limit, extra)
    except Exception as e:
        if not is_user_error(e):
            raise
        result = {"error": str(e)}
    Path(args.out).write_text(json.dumps(result, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
