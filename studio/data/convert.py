"""Records -> chat messages ([{"role": "system"|"user"|"assistant"|"tool", "content": str}]) or plain text.

alpaca:   instruction (+ "\\n" + input) is the user turn, output the assistant turn; `history` holds
          earlier [user, assistant] pairs; `system` a system prompt.
sharegpt: a list of turns tagged by role (from/value or role/content); after an optional system turn,
          user/observation turns and assistant/function_call turns alternate, starting with the user.
"""
from __future__ import annotations

from studio.data.registry import DatasetEntry

TOOLS_PROMPT = "You have access to the following tools:\n{tools}"


class RecordError(ValueError):
    pass


def _text(value, what: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        import json

        return json.dumps(value, ensure_ascii=False)
    if not isinstance(value, str):
        return str(value)
    return value


def _system(rec: dict, e: DatasetEntry, system: str = "") -> list[dict]:
    col = e.column("system")
    system = system or (_text(rec.get(col), "system") if col else "")
    tcol = e.column("tools")
    tools = _text(rec.get(tcol), "tools") if tcol else ""
    if tools:
        system = (system + "\n\n" if system else "") + TOOLS_PROMPT.format(tools=tools)
    return [{"role": "system", "content": system}] if system else []


def to_text(rec: dict, e: DatasetEntry) -> str:
    col = e.column("prompt") or "text"
    if col not in rec:
        raise RecordError(f"missing column `{col}` (columns.prompt in dataset_info.json); the record has: {', '.join(rec)}")
    return _text(rec[col], col)


def to_messages(rec: dict, e: DatasetEntry) -> list[dict]:
    return _alpaca(rec, e) if e.formatting == "alpaca" else _sharegpt(rec, e, e.column("messages"))


def _alpaca(rec: dict, e: DatasetEntry) -> list[dict]:
    pcol, qcol, rcol, hcol = e.column("prompt"), e.column("query"), e.column("response"), e.column("history")
    if pcol not in rec:
        raise RecordError(f"missing column `{pcol}` (the prompt; set columns.prompt in dataset_info.json); the record has: {', '.join(rec)}")
    if not rcol or rcol not in rec:
        raise RecordError(f"missing column `{rcol}` (the answer; set columns.response); a record with no answer has nothing to train on")
    prompt = _text(rec.get(pcol), pcol)
    query = _text(rec.get(qcol), qcol) if qcol else ""
    user = f"{prompt}\n{query}" if prompt and query else (prompt or query)
    answer = _text(rec.get(rcol), rcol)
    if isinstance(rec.get(rcol), list):  # ranking-style list of answers
        raise RecordError(f"column `{rcol}` holds a list of answers: this is preference data; register it with `ranking: true`")
    if not user.strip():
        raise RecordError(f"empty prompt in column `{pcol}`")
    messages = _system(rec, e)
    if hcol and rec.get(hcol):
        hist = rec[hcol]
        if not isinstance(hist, list) or not all(isinstance(h, (list, tuple)) and len(h) == 2 for h in hist):
            raise RecordError(f"column `{hcol}` must be a list of [user, assistant] pairs")
        for q, a in hist:
            messages += [{"role": "user", "content": _text(q, hcol)}, {"role": "assistant", "content": _text(a, hcol)}]
    messages += [{"role": "user", "content": user}, {"role": "assistant", "content": answer}]
    return messages


def _sharegpt(rec: dict, e: DatasetEntry, col: str) -> list[dict]:
    if col not in rec:
        raise RecordError(f"missing column `{col}` (columns.messages in dataset_info.json); the record has: {', '.join(rec)}")
    turns = rec[col]
    if not isinstance(turns, list) or not turns:
        raise RecordError(f"column `{col}` must be a non-empty list of turns")
    rt, ct = e.tag("role_tag"), e.tag("content_tag")
    roles = {
        e.tag("user_tag"): "user", e.tag("observation_tag"): "tool",
        e.tag("assistant_tag"): "assistant", e.tag("function_tag"): "assistant",
        e.tag("system_tag"): "system",
    }
    messages, system = [], ""
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or rt not in turn or ct not in turn:
            raise RecordError(f"turn {i}: expected an object with `{rt}` and `{ct}` (set tags.role_tag / tags.content_tag)")
        tag = turn[rt]
        if tag not in roles:
            raise RecordError(f"turn {i}: unknown role `{tag}`; expected one of {', '.join(roles)} (or set tags in dataset_info.json)")
        role = roles[tag]
        if role == "system":
            if i != 0:
                raise RecordError(f"turn {i}: a system turn may only come first")
            system = _text(turn[ct], "system")
            continue
        want_user = len(messages) % 2 == 0
        if want_user != (role in ("user", "tool")):
            expected = "a user or observation turn" if want_user else "an assistant or function_call turn"
            raise RecordError(f"turn {i}: wrong role order: expected {expected}, got `{tag}` (turns must alternate, starting with the user)")
        messages.append({"role": role, "content": _text(turn[ct], ct)})
    if not messages or messages[-1]["role"] != "assistant":
        raise RecordError("the conversation must end with an assistant turn")
    return _system(rec, e, system) + messages


def to_pair(rec: dict, e: DatasetEntry) -> tuple[list[dict], str, str]:
    """A ranking record: (prompt messages, chosen answer, rejected answer)."""
    ccol, rcol = e.columns.get("chosen", "chosen"), e.columns.get("rejected", "rejected")
    for c in (ccol, rcol):
        if c not in rec:
            raise RecordError(f"missing column `{c}` (columns.chosen / columns.rejected)")
    if e.formatting == "sharegpt":
        col = e.column("messages")
        turns = rec.get(col)
        if not isinstance(turns, list) or not turns:
            raise RecordError(f"column `{col}` must be a non-empty list of turns")
        ct = e.tag("content_tag")
        fake = dict(rec)
        fake[col] = list(turns) + [{e.tag("role_tag"): e.tag("assistant_tag"), ct: ""}]
        prompt = _sharegpt(fake, e, col)[:-1]
        chosen, rejected = rec[ccol], rec[rcol]
        chosen = chosen.get(ct, "") if isinstance(chosen, dict) else _text(chosen, ccol)
        rejected = rejected.get(ct, "") if isinstance(rejected, dict) else _text(rejected, rcol)
        return prompt, chosen, rejected
    msgs = _alpaca({**rec, e.column("response"): ""}, e)[:-1]
    return msgs, _text(rec[ccol], ccol), _text(rec[rcol], rcol)
