"""A tolerant read of dataset_info.json for the page: the entries that can be used, and every problem found.

    entries, problems = scan("data")     # ({"identity": {...}, ...}, ["data/dataset_info.json: line 2, column 16: ..."])

`registry.read_info` refuses a broken file as a whole (right for a job, which must not guess). The page instead
offers what it can: a syntax error costs only the entry it is in (the entries before it, and those after it
that start at the indentation of the first entry, are kept), and an entry that `registry.entry` refuses is
left out and named.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

from studio.data.registry import DataError, entry, info_path

_KEY_AT_LINE_START = re.compile(r'^([ \t]*)"(?:[^"\\\n]|\\.)*"\s*:', re.M)


def _top_level_starts(text: str) -> list[int]:
    """Offsets of the lines that start a key at the indentation of the first key (none for a one-line file)."""
    keys = list(_KEY_AT_LINE_START.finditer(text))
    if not keys:
        return []
    indent = keys[0].group(1)
    return [m.start(1) + len(indent) for m in keys if m.group(1) == indent]


def _salvage(text: str) -> tuple[dict, str | None]:
    """The top-level entries that parse, reading on past a broken one; and the name of the first broken one."""
    dec = json.JSONDecoder()
    starts = _top_level_starts(text)
    out: dict = {}
    broken = None
    i = text.find("{") + 1
    if i == 0:
        return out, None
    n = len(text)
    while i < n:
        while i < n and text[i] in " \t\r\n,":
            i += 1
        if i >= n or text[i] == "}":
            break
        name = None
        try:
            name, i = dec.raw_decode(text, i)
            while i < n and text[i] in " \t\r\n":
                i += 1
            if not isinstance(name, str) or i >= n or text[i] != ":":
                raise ValueError("expected a key and a colon")
            i += 1
            while i < n and text[i] in " \t\r\n":
                i += 1
            value, i = dec.raw_decode(text, i)
            while i < n and text[i] in " \t\r\n":
                i += 1
            if i < n and text[i] not in ",}":
                raise ValueError("expected a comma")
            out[name] = value
        except ValueError:
            if broken is None and isinstance(name, str):
                broken = name
            out.pop(name, None) if isinstance(name, str) else None
            later = [s for s in starts if s > i]
            if not later:
                break
            i = later[0]
    return out, broken


def scan(dataset_dir: str | Path) -> tuple[dict, list[str]]:
    """({name: raw entry} that `registry.entry` accepts, [problems, each naming the file and where])."""
    path = info_path(dataset_dir)
    if not path.is_file():
        return {}, [f"{path}: not found. Make a dataset_info.json in {dataset_dir} (see README: Register a dataset)."]
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        return {}, [f"{path}: cannot be read ({e})"]
    problems = []
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        data, broken = _salvage(text)
        where = f" in entry `{broken}`" if broken else ""
        problems.append(f"{path}: line {e.lineno}, column {e.colno}: invalid JSON ({e.msg}){where}; fix it and re-read")
    if not isinstance(data, dict):
        return {}, problems or [f"{path}: expected an object mapping dataset names to entries"]
    good = {}
    for name, raw in data.items():
        try:
            entry(dataset_dir, name, data)
        except DataError as e:
            problems.append(str(e))
            continue
        good[name] = raw
    return good, problems
