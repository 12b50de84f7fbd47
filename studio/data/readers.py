"""Read dataset files into records, each with its location (file and line or record index) for error messages."""
from __future__ import annotations

import csv
import json
from pathlib import Path

from studio.data.registry import DataError, DatasetEntry

SUFFIXES = {".json", ".jsonl", ".csv", ".parquet", ".txt", ".arrow"}


def read_entry(e: DatasetEntry) -> tuple[list[tuple[str, dict]], list[str]]:
    """All records of an entry as (location, record) pairs, plus the issues met while reading."""
    if e.hf_hub_url and not e.file_name:
        return _read_hub(e), []
    path = e.path
    if not path.exists():
        raise DataError(f"dataset `{e.name}`: file {path} not found (file_name in {e.dataset_dir}/dataset_info.json)")
    files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES) if path.is_dir() else [path]
    if not files:
        raise DataError(f"dataset `{e.name}`: folder {path} holds no json, jsonl, csv, parquet or txt file")
    records, issues = [], []
    for f in files:
        r, i = read_file(f)
        records += r
        issues += i
    if not records and not issues:
        raise DataError(f"dataset `{e.name}`: {path} is empty")
    return records, issues


def read_file(path: Path) -> tuple[list[tuple[str, dict]], list[str]]:
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise DataError(f"{path}: unsupported file type `{suffix}`; use json, jsonl, csv, parquet or txt")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: the file is empty")
    if suffix == ".txt":
        lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
        return [(f"{path}:{i}", {"text": line}) for i, line in enumerate(lines, 1) if line.strip()], []
    if suffix == ".jsonl":
        return _read_jsonl(path)
    if suffix == ".json":
        text = path.read_text(encoding="utf-8", errors="replace")
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if text.lstrip().startswith("{") and "\n{" in text:  # JSON lines saved as .json
                return _read_jsonl(path)
            raise DataError(f"{path}: line {e.lineno}, column {e.colno}: invalid JSON ({e.msg}); fix the file and run `studio data check`") from None
        if isinstance(data, dict):
            data = [data]
        if not isinstance(data, list):
            raise DataError(f"{path}: expected a list of records (objects)")
        out, issues = [], []
        for i, rec in enumerate(data):
            if isinstance(rec, dict):
                out.append((f"{path} record {i}", rec))
            else:
                issues.append(f"{path} record {i}: expected an object, got {type(rec).__name__}")
        return out, issues
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            return [(f"{path}:{i}", dict(row)) for i, row in enumerate(csv.DictReader(f), 2)], []
    import datasets  # parquet / arrow

    ds = datasets.Dataset.from_parquet(str(path)) if suffix == ".parquet" else datasets.Dataset.from_file(str(path))
    return [(f"{path} row {i}", dict(row)) for i, row in enumerate(ds)], []


def _read_jsonl(path: Path):
    out, issues = [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                issues.append(f"{path}:{i}: invalid JSON line ({e.msg} at column {e.colno})")
                continue
            if not isinstance(rec, dict):
                issues.append(f"{path}:{i}: expected an object, got {type(rec).__name__}")
                continue
            out.append((f"{path}:{i}", rec))
    return out, issues


def _read_hub(e: DatasetEntry):
    import datasets

    try:
        ds = datasets.load_dataset(e.hf_hub_url, e.subset, split=e.split)
    except Exception as err:  # network or name problems
        raise DataError(f"dataset `{e.name}`: could not load `{e.hf_hub_url}` from the hub ({type(err).__name__}: {err}). "
                        "Offline? Download it and point file_name at the local copy.") from None
    return [(f"{e.hf_hub_url} row {i}", dict(row)) for i, row in enumerate(ds)]
