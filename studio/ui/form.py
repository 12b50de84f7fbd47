"""Form fields made from the job spec: one widget per dotted field name, its help text from the spec.

    comps = {name: widget(name) for name in ["train.learning_rate", "train.max_steps"]}
    spec = values_to_spec(dict(zip(comps, values)))      # what a click handler receives -> JobSpec
    values = spec_to_values(spec, list(comps))            # JobSpec -> what the widgets show

The conversion functions are pure (no gradio), so the round trip form -> spec -> form is unit tested.
Lists show as comma-separated text, except MULTI fields (multi-select dropdowns); `None` shows as an
empty box (optional numbers are text boxes, so that empty stays empty), or `none` in a dropdown.
Ready-made components passed to bind() must be made with render=False; bind() places them.
"""
from __future__ import annotations

import math
import types
import typing
from typing import Union

from studio import spec as specmod

MULTI = {"data.dataset", "data.eval_dataset"}  # multi-select dropdowns (choices filled by the tab)
NONE = "none"


def field_type(dotted: str) -> tuple[type, bool]:
    """(base type, optional) of a spec field; Union[str, list] gives `list` text that may be a single word."""
    cls, tp = specmod.JobSpec, None
    for part in dotted.split("."):
        tp = specmod.type_hints(cls)[part]
        cls = tp
    optional = False
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        tp = list if (str in args and list in args) else args[0]
    if typing.get_origin(tp) is list:
        tp = list
    return tp, optional


def _show(choice) -> str:
    return NONE if choice is None else str(choice)


def label(dotted: str) -> str:
    return dotted.rsplit(".", 1)[-1].replace("_", " ")


def elem_id(dotted: str) -> str:
    return "f-" + dotted.replace(".", "-")


def to_widget(dotted: str, value):
    """A spec value as its widget shows it."""
    info = specmod.field_info(dotted)
    tp, optional = field_type(dotted)
    if info["choices"]:
        return _show(value)
    if dotted in MULTI:
        return list(value or [])
    if tp is list:
        return value if isinstance(value, str) else ", ".join(str(v) for v in value or [])
    if tp is str or (optional and tp in (int, float)):
        return "" if value is None else str(value)
    return value


def from_widget(dotted: str, value):
    """What a widget holds -> the spec value (raises SpecError naming the field when it cannot be read)."""
    info = specmod.field_info(dotted)
    tp, optional = field_type(dotted)
    if info["choices"]:
        for c in info["choices"]:
            if _show(c) == str(value):
                return c
        raise specmod.SpecError(f"{dotted}: `{value}` is not allowed; choose one of: {', '.join(map(_show, info['choices']))}")
    if isinstance(value, str):
        value = value.strip()
    if value in ("", None) or (isinstance(value, list) and not value and optional):
        if optional:
            return None
        if tp is list:
            return []
        if tp is str:
            return ""
        raise specmod.SpecError(f"{dotted}: needs a value ({specmod.field_help(dotted)})")
    if tp is list:
        if isinstance(value, list):
            return value
        parts = [v.strip() for v in value.split(",") if v.strip()]
        if dotted == "method.lora.layers":
            try:
                return [int(p) for p in parts]
            except ValueError:
                raise specmod.SpecError(f"{dotted}: expected layer numbers separated by commas, e.g. 0, 1, 2") from None
        original = specmod.field_info(dotted)["default"]
        return parts[0] if len(parts) == 1 and isinstance(original, str) else parts
    if tp in (int, float):
        try:
            number = float(value)
        except (TypeError, ValueError):
            raise specmod.SpecError(f"{dotted}: expected a number, got `{value}`") from None
        if not math.isfinite(number):
            raise specmod.SpecError(f"{dotted}: expected a finite number, got `{value}`")
        if tp is int and not number.is_integer():
            raise specmod.SpecError(f"{dotted}: expected a whole number, got {value}")
        return int(number) if tp is int else number
    if tp is bool:
        return bool(value)
    return value


def values_to_spec(values: dict, base: specmod.JobSpec | None = None) -> specmod.JobSpec:
    """{dotted: widget value} on top of `base` (defaults) -> a validated JobSpec."""
    data = specmod.to_dict(base or specmod.JobSpec())
    for dotted, value in values.items():
        node = data
        *path, last = dotted.split(".")
        for p in path:
            node = node[p]
        node[last] = from_widget(dotted, value)
    return specmod.from_dict(specmod.JobSpec, data)


def spec_to_values(spec: specmod.JobSpec, names: list[str]) -> list:
    return [to_widget(n, specmod.get(spec, n)) for n in names]


def widget(dotted: str, **kw):
    """The gradio component for a spec field (label, help text and default from the spec)."""
    import gradio as gr

    info = specmod.field_info(dotted)
    tp, optional = field_type(dotted)
    common = dict(label=kw.pop("label", label(dotted)), info=info["help"], elem_id=elem_id(dotted))
    value = to_widget(dotted, info["default"])
    if info["choices"]:
        return gr.Dropdown(choices=[_show(c) for c in info["choices"]], value=value, **common, **kw)
    if dotted in MULTI:
        return gr.Dropdown(choices=kw.pop("choices", value), value=value, multiselect=True, **common, **kw)
    if tp is bool:
        return gr.Checkbox(value=value, **common, **kw)
    if tp in (int, float) and not optional:
        return gr.Number(value=value, precision=0 if tp is int else None, **common, **kw)
    return gr.Textbox(value=value, placeholder="empty" if optional else None, max_lines=1, **common, **kw)


def bind(names: list[str], special: dict | None = None) -> dict:
    """{dotted: component} for `names`, in order; `special[dotted]` may be a ready-made component."""
    special = special or {}
    out = {}
    for n in names:
        out[n] = special[n].render() if n in special else widget(n)
    return out


def by_name(data: dict, components: dict) -> dict:
    """{dotted: value} from `data`, the {component: value} dict that gradio passes a handler whose inputs are a set.

    Handlers take their inputs as a set and read them by name, so that adding a field never shifts another's value."""
    return {name: data[comp] for name, comp in components.items()}
