"""GRPO reward functions: the built-ins and the user's own (`path/to/file.py:function` in method.grpo.reward_funcs).

A reward function follows TRL's contract: it is called with the batch as keyword arguments, `prompts`,
`completions` (for chat data each completion is a list with one assistant message: `c[0]["content"]`),
`completion_ids` and every dataset column (here `reference`, the reference answer), and returns one number per
completion (or None where it does not apply).

    def short_answer(completions, **kw):
        return [1.0 if len(c[0]["content"]) < 40 else 0.0 for c in completions]

Every function is wrapped: one that raises, returns the wrong number of values or a non-number stops the job with a
message naming the function and the sample, at the first batch.
"""
from __future__ import annotations

import ast
import importlib.util
import math
import numbers
import re
from pathlib import Path

from studio.spec import SpecError
from studio.spec.stages import BUILTIN_REWARDS


class RewardError(SpecError):
    """A reward function failed or returned something that is not one number per completion."""


def text_of(completion) -> str:
    """The answer text of a completion, conversational (a list of messages) or plain."""
    if isinstance(completion, list):
        return "".join(str(m.get("content", "")) for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return str(completion.get("content", ""))
    return str(completion)


NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


def _norm(s: str) -> str:
    return re.sub(r"\s+", " ", str(s)).strip().strip(".").lower()


def _need_reference(reference, name: str):
    if reference is None:
        raise RewardError(f"built-in reward `{name}` compares answers with a reference answer, but the dataset has none: "
                          "register the dataset with `columns.reference` (or use chat data whose last answer is the reference)")


def builtin(name: str, g):
    """The built-in reward `name`, configured by the spec's method.grpo section `g`."""
    if name == "format":
        rx = re.compile(g.format_regex)

        def format(completions, **kw):
            return [1.0 if rx.search(text_of(c)) else 0.0 for c in completions]
        return format
    if name == "exact":
        def exact(completions, reference=None, **kw):
            _need_reference(reference, "exact")
            return [1.0 if _norm(text_of(c)) == _norm(r) else 0.0 for c, r in zip(completions, reference)]
        return exact
    if name == "numeric":
        def numeric(completions, reference=None, **kw):
            _need_reference(reference, "numeric")
            out = []
            for c, r in zip(completions, reference):
                want, got = NUMBER.findall(str(r)), NUMBER.findall(text_of(c))
                out.append(1.0 if want and got and abs(float(got[-1]) - float(want[-1])) < 1e-6 else 0.0)
            return out
        return numeric
    if name == "length":
        target = g.length_target

        def length(completions, **kw):
            return [max(0.0, min(1.0, 2.0 - len(text_of(c)) / target)) for c in completions]
        return length
    raise SpecError(f"method.grpo.reward_funcs: unknown built-in `{name}`; choose from {', '.join(BUILTIN_REWARDS)}")


def _split(ref: str) -> tuple[Path, str]:
    path, func = ref.rsplit(":", 1)
    return Path(path), func


def check_file(ref: str) -> None:
    """Before the job starts, without running the user's code: the file exists and defines the function."""
    path, func = _split(ref)
    where = f"method.grpo.reward_funcs: `{ref}`"
    if not path.is_file():
        raise SpecError(f"{where}: file {path} not found (paths are relative to the folder the job starts in)")
    try:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    except SyntaxError as e:
        raise SpecError(f"{where}: {path} line {e.lineno}: {e.msg}") from None
    names = [n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    names += [t.id for n in tree.body if isinstance(n, ast.Assign) for t in n.targets if isinstance(t, ast.Name)]
    if func not in names:
        raise SpecError(f"{where}: {path} defines no function `{func}`" + (f"; it defines: {', '.join(names)}" if names else ""))


def load_file(ref: str):
    check_file(ref)
    path, func = _split(ref)
    mod_spec = importlib.util.spec_from_file_location(f"studio_user_rewards_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    try:
        mod_spec.loader.exec_module(module)
    except Exception as e:
        raise RewardError(f"method.grpo.reward_funcs: `{ref}`: importing {path} failed: {type(e).__name__}: {e}") from None
    fn = getattr(module, func)
    if not callable(fn):
        raise SpecError(f"method.grpo.reward_funcs: `{ref}` is not a function")
    return fn


def _sample(kw: dict, i: int) -> str:
    prompt = kw.get("prompts", [None] * (i + 1))[i]
    if isinstance(prompt, list):
        prompt = next((m.get("content") for m in reversed(prompt) if m.get("role") == "user"), prompt)
    return f"prompt {str(prompt)[:200]!r}, completion {text_of(kw['completions'][i])[:200]!r}"


def guard(name: str, fn):
    """Wrap a reward function so that a failure names the function and the sample."""
    def wrapped(**kw):
        n = len(kw["completions"])
        try:
            out = fn(**kw)
        except RewardError:
            raise
        except Exception as e:
            i = _failing_sample(fn, kw, n)
            at = f" on sample {i} ({_sample(kw, i)})" if i is not None else ""
            raise RewardError(f"reward function `{name}` raised {type(e).__name__}: {e}{at}") from None
        if hasattr(out, "tolist"):
            out = out.tolist()
        if not isinstance(out, (list, tuple)):
            raise RewardError(f"reward function `{name}` returned {type(out).__name__}; it must return a list with one number "
                              f"per completion ({n})")
        if len(out) != n:
            raise RewardError(f"reward function `{name}` returned {len(out)} value(s) for {n} completions; return one number "
                              "per completion (None where it does not apply)")
        for i, v in enumerate(out):
            ok = v is None or (isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isnan(float(v)))
            if not ok:
                raise RewardError(f"reward function `{name}` returned {v!r} for sample {i} ({_sample(kw, i)}); "
                                  "a reward must be a number (or None)")
        return [None if v is None else float(v) for v in out]

    wrapped.__name__ = name  # TRL logs rewards/<name>/mean
    return wrapped


def _failing_sample(fn, kw: dict, n: int):
    """The first sample on which `fn`, called with that sample alone, raises (None if none does alone)."""
    for i in range(n):
        one = {k: ([v[i]] if isinstance(v, list) and len(v) == n else v) for k, v in kw.items()}
        try:
            fn(**one)
        except Exception:
            return i
    return None


def load(g) -> list:
    """The spec's reward functions (method.grpo.reward_funcs), each wrapped by `guard`."""
    out = []
    for ref in g.reward_funcs:
        ref = str(ref)
        if ref in BUILTIN_REWARDS:
            out.append(guard(ref, builtin(ref, g)))
        else:
            out.append(guard(_split(ref)[1], load_file(ref)))
    return out
