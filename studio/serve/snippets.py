"""How to call a model over the API: the `studio serve` line, curl and the Python `openai` client, filled in.

    text = snippets("default", "runs/identity_lora")     # markdown with three code blocks (the Chat tab shows it)
    text = snippets(model, adapter, port=9000, host="127.0.0.1", name="identity_lora")   # what a server serves
"""
from __future__ import annotations

import json
import re
import shlex
from pathlib import Path


def served_name(model: str | None, adapter: str | None) -> str:
    """The `model` a request names: the adapter's run (runs/identity_lora -> identity_lora), else the base's name."""
    if adapter:
        p = Path(adapter)
        if p.name == "adapter":
            p = p.parent
        name = f"{p.parent.name}-{p.name}" if p.name.startswith("checkpoint-") else p.name
        return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "adapter"
    model = model or "default"
    return model if model == "default" or not Path(model).expanduser().exists() else Path(model).name


def snippets(model: str | None, adapter: str | None, system: str = "", port: int = 8000, message: str = "Who are you?",
             host: str = "127.0.0.1", name: str | None = None) -> str:
    """The `studio serve` line for `model` and `adapter` on host:port, and a request to it by curl and by the openai
    client naming `name` (default: the name the server gives the adapter, else the base)."""
    adapter_name = served_name(model, adapter)
    name = name or adapter_name
    cmd = ["studio", "serve"] + (["--model", model] if model and (not adapter or model != "default") else [])
    cmd += ["--adapter", f"{adapter_name}={adapter}"] if adapter else []
    cmd += ["--host", host] if host != "127.0.0.1" else []
    cmd += ["--port", str(port)] if port != 8000 else []
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": message}]
    body = json.dumps({"model": name, "messages": messages, "max_tokens": 256})
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{'[' + shown + ']' if ':' in shown else shown}:{port}/v1"
    py = (f'from openai import OpenAI\n\nclient = OpenAI(base_url="{url}", api_key="none")  # the --api-key, if the server has one\n'
          f"answer = client.chat.completions.create(model={name!r}, messages={messages!r}, max_tokens=256)\n"
          "print(answer.choices[0].message.content)")
    return (f"Start the server (Ctrl-C stops it):\n\n```bash\n{shlex.join(cmd)}\n```\n\n"
            f"```bash\ncurl {url}/chat/completions -H 'Content-Type: application/json' \\\n  -d {shlex.quote(body)}\n```\n\n"
            f"```python\n{py}\n```")
