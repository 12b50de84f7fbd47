"""The dataset registry: DATASET_DIR/dataset_info.json, in the format LLaMA-Factory users already keep.

    {"identity": {"file_name": "identity.json"},
     "chat": {"file_name": "chat.jsonl", "formatting": "sharegpt",
              "columns": {"messages": "conversations"}, "tags": {"role_tag": "from", ...}},
     "corpus": {"file_name": "corpus.txt", "columns": {"prompt": "text"}},
     "pairs": {"file_name": "pairs.json", "ranking": true, "formatting": "sharegpt",
               "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}}

`file_name` is a file or folder inside the dataset folder (json, jsonl, csv, parquet, txt); `hf_hub_url`
names a hub dataset instead (needs network access).
"""
from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path

from studio.errors import UserError

INFO = "dataset_info.json"
FORMATS = ("alpaca", "sharegpt")
ALPACA_COLUMNS = {"prompt": "instruction", "query": "input", "response": "output", "history": None, "system": None, "tools": None}
SHAREGPT_COLUMNS = {"messages": "conversations", "system": None, "tools": None}
SHAREGPT_TAGS = {
    "role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt",
    "observation_tag": "observation", "function_tag": "function_call", "system_tag": "system",
}
KNOWN_KEYS = {"file_name", "hf_hub_url", "ms_hub_url", "om_hub_url", "script_url", "cloud_file_name", "formatting",
              "ranking", "subset", "split", "folder", "num_samples", "columns", "tags", "load_from"}


class DataError(UserError):
    """A problem with a user's data; `issues` lists every bad record found, with its location."""

    def __init__(self, message: str, issues: list[str] | None = None):
        self.issues = list(issues or [])
        full = message if not self.issues else message + "\n" + "\n".join(f"  - {i}" for i in self.issues[:50])
        if len(self.issues) > 50:
            full += f"\n  ... and {len(self.issues) - 50} more"
        super().__init__(full)


@dataclass
class DatasetEntry:
    name: str
    dataset_dir: Path
    file_name: str | None = None
    hf_hub_url: str | None = None
    formatting: str = "alpaca"
    ranking: bool = False
    split: str = "train"
    subset: str | None = None
    num_samples: int | None = None
    columns: dict = field(default_factory=dict)
    tags: dict = field(default_factory=dict)

    @property
    def path(self) -> Path | None:
        return self.dataset_dir / self.file_name if self.file_name else None

    @property
    def kind(self) -> str:
        """What the entry holds: chat (sft), text (pt), ranking (chosen/rejected), kto (labelled answers) or prompt
        (prompts with an optional reference answer, `columns.reference`: grpo)."""
        if self.ranking:
            return "ranking"
        if "kto_tag" in self.columns:
            return "kto"
        if "reference" in self.columns:
            return "prompt"
        if self.formatting == "alpaca" and set(self.columns) <= {"prompt"}:
            if self.columns.get("prompt") == "text" or (not self.columns and str(self.file_name).endswith(".txt")):
                return "text"
        return "chat"

    def column(self, key: str) -> str | None:
        if self.kind == "text" and key == "prompt":
            return self.columns.get("prompt", "text")
        defaults = ALPACA_COLUMNS if self.formatting == "alpaca" else SHAREGPT_COLUMNS
        return self.columns.get(key, defaults.get(key))

    def tag(self, key: str) -> str:
        return self.tags.get(key, SHAREGPT_TAGS[key])


def file_stats(path: Path) -> list[tuple[Path, int, int]]:
    """(file, size, modification time in ns) of a data file, or of every file under a data folder, sorted: what a
    cache of anything read from the data is keyed by."""
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    return [(f, (st := f.stat()).st_size, st.st_mtime_ns) for f in files]


def info_path(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / INFO


def read_info(dataset_dir: str | Path) -> dict:
    path = info_path(dataset_dir)
    if not path.is_file():
        raise DataError(f"{path}: not found. Make a dataset_info.json in {dataset_dir} (see README: Register a dataset).")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(f"{path}: line {e.lineno}, column {e.colno}: invalid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: expected an object mapping dataset names to entries")
    return data


def names(dataset_dir: str | Path) -> list[str]:
    try:
        return list(read_info(dataset_dir))
    except DataError:
        return []


def entry(dataset_dir: str | Path, name: str, info: dict | None = None) -> DatasetEntry:
    dataset_dir = Path(dataset_dir)
    info = read_info(dataset_dir) if info is None else info
    where = f"{info_path(dataset_dir)}: entry `{name}`"
    if name not in info:
        close = difflib.get_close_matches(name, list(info), n=3, cutoff=0.5)
        hint = f" Did you mean: {', '.join(close)}?" if close else f" Registered: {', '.join(info) or 'none'}."
        raise DataError(f"unknown dataset `{name}` in {info_path(dataset_dir)}.{hint}")
    raw = info[name]
    if not isinstance(raw, dict):
        raise DataError(f"{where}: expected an object with file_name, formatting, columns")
    unknown = set(raw) - KNOWN_KEYS
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(KNOWN_KEYS))}")
    formatting = raw.get("formatting", "alpaca")
    if formatting not in FORMATS:
        raise DataError(f"{where}: unknown formatting `{formatting}`; use alpaca or sharegpt")
    if not raw.get("file_name") and not raw.get("hf_hub_url"):
        raise DataError(f"{where}: needs file_name (a file or folder in {dataset_dir}) or hf_hub_url")
    e = DatasetEntry(
        name=name, dataset_dir=dataset_dir, file_name=raw.get("file_name"), hf_hub_url=raw.get("hf_hub_url"),
        formatting=formatting, ranking=bool(raw.get("ranking", False)), split=raw.get("split", "train"),
        subset=raw.get("subset"), num_samples=raw.get("num_samples"),
        columns=dict(raw.get("columns") or {}), tags=dict(raw.get("tags") or {}),
    )
    if e.file_name:
        root = dataset_dir.resolve()
        target = (dataset_dir / e.file_name).resolve()
        if root != target and root not in target.parents:
            raise DataError(f"{where}: file_name `{e.file_name}` points outside the dataset folder {dataset_dir}; move the file inside it")
    bad_tags = set(e.tags) - set(SHAREGPT_TAGS)
    if bad_tags:
        raise DataError(f"{where}: unknown tag key(s) {', '.join(sorted(bad_tags))}; known: {', '.join(SHAREGPT_TAGS)}")
    return e


def register(dataset_dir: str | Path, name: str, raw: dict, overwrite: bool = False) -> Path:
    """Add (or replace) an entry in dataset_info.json, keeping the others as they are."""
    path = info_path(dataset_dir)
    data = read_info(dataset_dir) if path.exists() else {}
    if name in data and not overwrite:
        raise DataError(f"{path}: a dataset named `{name}` already exists; choose another name")
    data[name] = raw
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
