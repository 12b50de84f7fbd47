"""Reading and writing specs: YAML files, `key.sub=value` overrides, typed coercion with errors naming the field."""
from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import types
import typing
from pathlib import Path
from typing import Any, Union

import yaml

from studio.spec.fields import SpecError
from studio.spec.sections import JobSpec


def _is_section(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@functools.lru_cache(maxsize=None)
def type_hints(cls) -> dict:
    """The section's field types (evaluated once per class: evaluating the annotations was half of a spec load)."""
    return typing.get_type_hints(cls)


def _coerce(value, tp, name: str):
    """Check `value` against the annotation `tp`; convert what is unambiguous (int -> float, str -> list)."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, name)
            except SpecError as e:
                errors.append(str(e))
        raise SpecError(errors[0] if errors else f"{name}: bad value {value!r}")
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise SpecError(f"{name}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise SpecError(f"{name}: expected a whole number, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
        raise SpecError(f"{name}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise SpecError(f"{name}: expected text, got {value!r}")
    if tp is list or origin is list:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            return list(value)
        raise SpecError(f"{name}: expected a list, got {value!r}")
    if tp is dict or origin is dict:
        if isinstance(value, dict):
            return value
        raise SpecError(f"{name}: expected a mapping, got {value!r}")
    return value


def from_dict(cls, data: dict | None, prefix: str = ""):
    """Build section `cls` from a nested dict; unknown keys and bad values raise SpecError naming the field."""
    data = data or {}
    if not isinstance(data, dict):
        raise SpecError(f"{prefix.rstrip('.') or 'spec'}: expected a mapping of fields, got {data!r}")
    hints = type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        full = prefix + str(key)
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=3)
            hint = f" Did you mean: {', '.join(prefix + c for c in close)}?" if close else f" Known fields: {', '.join(names)}."
            raise SpecError(f"unknown key `{full}`.{hint}")
        tp = hints[key]
        if _is_section(tp):
            kwargs[key] = from_dict(tp, value, full + ".")
        else:
            kwargs[key] = _coerce(value, tp, full)
    return cls(**kwargs)


def to_dict(spec) -> dict:
    return dataclasses.asdict(spec)


def parse_overrides(overrides: list[str]) -> dict:
    """`["train.max_steps=10", "data.dataset=[a,b]"]` -> nested dict (values parsed as YAML)."""
    out: dict = {}
    for item in overrides or []:
        if "=" not in item:
            raise SpecError(f"override `{item}`: expected key.sub=value, e.g. train.max_steps=10")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise SpecError(f"override `{item}`: `{p}` is not a section")
        node[parts[-1]] = value
    return out


def merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


# libyaml's parser under PyYAML's safe constructor (~10x faster than the pure-Python one: a run folder's spec.yaml
# is read for every row of the runs list), where PyYAML was built with it
SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise SpecError(f"spec file not found: {p}")
    try:
        data = yaml.load(p.read_text(encoding="utf-8"), Loader=SAFE_LOADER) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise SpecError(f"{p}:{where} is not valid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(data, dict):
        raise SpecError(f"{p}: expected a mapping of sections (task, model, data, ...) at the top")
    return data


def load(path: str | Path | None = None, overrides: list[str] | None = None, base: dict | None = None) -> JobSpec:
    """Read a spec file (or start from defaults) and apply `key.sub=value` overrides."""
    data = read_yaml(path) if path else {}
    if base:
        data = merge(base, data)
    data = merge(data, parse_overrides(overrides or []))
    try:
        return from_dict(JobSpec, data)
    except SpecError as e:
        if path:
            raise SpecError(f"{path}: {e}") from None
        raise


def dumps(spec: JobSpec) -> str:
    return yaml.safe_dump(to_dict(spec), sort_keys=False, allow_unicode=True)


def dump(spec: JobSpec, path: str | Path) -> Path:
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")  # one per writer: nodes of a job may share the folder
    tmp.write_text(dumps(spec), encoding="utf-8")
    tmp.replace(p)
    return p


def field_help(dotted: str) -> str:
    """The help text of a field, e.g. field_help('train.learning_rate')."""
    return field_info(dotted)["help"]


def field_info(dotted: str) -> dict:
    cls, f = JobSpec, None
    for part in dotted.split("."):
        f = next((x for x in dataclasses.fields(cls) if x.name == part), None)
        if f is None:
            raise KeyError(dotted)
        cls = type_hints(cls)[part]
    return {"help": f.metadata.get("help", ""), "choices": f.metadata.get("choices"), "default": _default_of(dotted)}


def _default_of(dotted: str):
    obj = JobSpec()
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def get(spec: JobSpec, dotted: str):
    obj = spec
    for part in dotted.split("."):
        obj = getattr(obj, part)
    return obj


def flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


