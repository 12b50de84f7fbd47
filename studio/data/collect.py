"""Turn chat conversations into training data: append them to a dataset in the registry (made if new).

    save_conversation("data", "my_chats", messages)                 # sharegpt (or formatting="alpaca")
    save_pair("data", "my_pairs", prompt_messages, chosen, rejected)  # ranking, like LLaMA-Factory's dpo_en_demo

A new dataset is written as DATASET_DIR/NAME.jsonl and registered in dataset_info.json; an existing one is
appended to in its own format (its columns and tags), json or jsonl. Each record is converted back the way
training reads it before it is written, so what is saved passes `studio data check`.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from studio.data import convert, registry
from studio.data.registry import DataError

NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _clean(messages: list[dict]) -> list[dict]:
    out = [{"role": m["role"], "content": str(m.get("content") or "").strip()} for m in messages]
    system = [m for m in out if m["role"] == "system"]
    turns = [m for m in out if m["role"] != "system"]
    if len(system) > 1 or (system and out[0]["role"] != "system"):
        raise DataError("a conversation may have one system prompt, at the start")
    for i, m in enumerate(turns):
        want = "user" if i % 2 == 0 else "assistant"
        if m["role"] != want:
            raise DataError(f"turn {i}: expected a {want} turn, got {m['role']} (turns alternate, starting with the user)")
        if not m["content"]:
            raise DataError(f"turn {i} ({m['role']}) is empty; write something or remove the turn")
    return system + turns


def _entry(dataset_dir, name: str, raw_new: dict, want: str) -> tuple[registry.DatasetEntry, bool]:
    """The registry entry to append to (checked for the kind `want`), or a new one (not yet registered)."""
    if not NAME.match(name or ""):
        raise DataError(f"dataset name `{name}`: use letters, digits, _ . - (e.g. my_chats)")
    dataset_dir = Path(dataset_dir)
    info = registry.read_info(dataset_dir) if registry.info_path(dataset_dir).exists() else {}
    if name not in info:
        file_name = f"{name}.jsonl"
        i = 2
        while (dataset_dir / file_name).exists():
            file_name, i = f"{name}-{i}.jsonl", i + 1
        raw = {"file_name": file_name, **raw_new}
        return registry.entry(dataset_dir, name, {name: raw}), True
    e = registry.entry(dataset_dir, name, info)
    if e.kind != want:
        what = {"ranking": "preference pairs", "text": "plain text", "kto": "labelled answers", "chat": "conversations"}[e.kind]
        raise DataError(f"dataset `{name}` holds {what}; choose another name (or a {want} dataset) to save {want} data")
    if not e.path or e.path.suffix not in (".json", ".jsonl") or e.path.is_dir():
        raise DataError(f"dataset `{name}` is {e.file_name or e.hf_hub_url}; only a .json or .jsonl file can be appended to")
    return e, False


def _append(e: registry.DatasetEntry, record: dict) -> int:
    """Append one record to the entry's file; returns the number of records now in it."""
    path = e.path
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".jsonl" or (path.exists() and path.read_text(encoding="utf-8").lstrip()[:1] == "{"):
        with open(path, "a", encoding="utf-8") as f:
            if path.stat().st_size and not path.read_text(encoding="utf-8").endswith("\n"):
                f.write("\n")
            f.write(json.dumps(record, ensure_ascii=False) + "\n")
        return sum(1 for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    data = json.loads(path.read_text(encoding="utf-8")) if path.exists() and path.stat().st_size else []
    if not isinstance(data, list):
        raise DataError(f"{path}: expected a list of records; cannot append")
    data.append(record)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return len(data)


def _sharegpt_turns(e: registry.DatasetEntry, messages: list[dict]) -> list[dict]:
    rt, ct = e.tag("role_tag"), e.tag("content_tag")
    tags = {"system": e.tag("system_tag"), "user": e.tag("user_tag"), "assistant": e.tag("assistant_tag")}
    return [{rt: tags[m["role"]], ct: m["content"]} for m in messages]


def _record(e: registry.DatasetEntry, messages: list[dict]) -> dict:
    if e.formatting == "sharegpt":
        return {e.column("messages"): _sharegpt_turns(e, messages)}
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    turns = messages[1:] if system else messages
    history = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns) - 2, 2)]
    rec = {e.column("prompt"): turns[-2]["content"], e.column("response"): turns[-1]["content"]}
    if e.column("query"):
        rec[e.column("query")] = ""
    for key, value in (("system", system), ("history", history)):
        if value:
            if not e.column(key):
                raise DataError(f"dataset `{e.name}` has no {key} column (columns.{key} in dataset_info.json); "
                                f"save this conversation to a sharegpt dataset or a new one")
            rec[e.column(key)] = value
    return rec


def _finish(e: registry.DatasetEntry, new: bool, raw_new: dict, record: dict) -> dict:
    count = _append(e, record)
    if new:
        registry.register(e.dataset_dir, e.name, {"file_name": e.file_name, **raw_new})
    return {"name": e.name, "path": str(e.path), "records": count, "created": new}


def save_conversation(dataset_dir, name: str, messages: list[dict], formatting: str = "sharegpt") -> dict:
    """Append a conversation (ending with the assistant's answer, as the user corrected it) to dataset `name`."""
    if formatting not in registry.FORMATS:
        raise DataError(f"formatting `{formatting}`: use sharegpt or alpaca")
    messages = _clean(messages)
    if not messages or messages[-1]["role"] != "assistant":
        raise DataError("the conversation must end with an answer to save")
    raw_new = ({"formatting": "sharegpt", "columns": {"messages": "conversations"}} if formatting == "sharegpt"
               else {"columns": {"prompt": "instruction", "query": "input", "response": "output", "system": "system", "history": "history"}})
    e, new = _entry(dataset_dir, name, raw_new, "chat")
    record = _record(e, messages)
    try:
        convert.to_messages(record, e)  # read back exactly as training will
    except convert.RecordError as err:
        raise DataError(f"dataset `{name}`: the conversation does not fit this dataset: {err}") from None
    return _finish(e, new, raw_new, record)


def save_pair(dataset_dir, name: str, messages: list[dict], chosen: str, rejected: str) -> dict:
    """Append a preference pair: the conversation up to the last user turn, the preferred answer and the other."""
    messages = _clean(messages)
    chosen, rejected = (chosen or "").strip(), (rejected or "").strip()
    if not messages or messages[-1]["role"] != "user":
        raise DataError("a preference pair needs a conversation that ends with the user's message")
    if not chosen or not rejected:
        raise DataError("a preference pair needs two answers (the preferred one and the other); one is empty")
    if chosen == rejected:
        raise DataError("the two answers are the same; a preference pair needs two different answers")
    raw_new = {"formatting": "sharegpt", "ranking": True,
               "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"}}
    e, new = _entry(dataset_dir, name, raw_new, "ranking")
    ccol, rcol = e.columns.get("chosen", "chosen"), e.columns.get("rejected", "rejected")
    if e.formatting == "sharegpt":
        answer = {"role": "assistant"}
        record = {e.column("messages"): _sharegpt_turns(e, messages),
                  ccol: _sharegpt_turns(e, [{**answer, "content": chosen}])[0],
                  rcol: _sharegpt_turns(e, [{**answer, "content": rejected}])[0]}
    else:
        record = _record(e, messages + [{"role": "assistant", "content": ""}])
        record.pop(e.column("response"), None)
        record.update({ccol: chosen, rcol: rejected})
    try:
        convert.to_pair(record, e)
    except convert.RecordError as err:
        raise DataError(f"dataset `{name}`: the pair does not fit this dataset: {err}") from None
    return _finish(e, new, raw_new, record)
