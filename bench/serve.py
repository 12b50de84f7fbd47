"""Throughput and latency of `studio serve` with 1, 4 and 16 concurrent clients, and the first token on an idle server.

    .venv/bin/python bench/serve.py [--model default] [--clients 1,4,16] [--requests 2] [--max-tokens 64]
                                    [--out bench/results/serve.json]

Starts `studio serve --model MODEL` as a user would, then: five streamed requests one after another on the idle
server (time to the first piece of the answer); for each number of clients, that many clients each send
`--requests` streamed chat requests one after another (prompts from data/alpaca_demo.json, greedy,
max_tokens, every answer max_tokens long unless --natural). Reported: generated tokens/s over all clients (from each stream's usage), request latency p50 and
p95, first-token latency p50. Writes one JSON record.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORE_EOS = True  # every answer is max_tokens long (as vLLM's benchmarks do), so that each level does the same work


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def one_request(client, model: str, prompt: str, max_tokens: int) -> dict:
    t0 = time.perf_counter()
    first, tokens = None, 0
    stream = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens,
                                            temperature=0, stream=True, stream_options={"include_usage": True},
                                            extra_body={"ignore_eos": True} if IGNORE_EOS else None)
    for chunk in stream:
        if first is None and chunk.choices and chunk.choices[0].delta.content:
            first = time.perf_counter() - t0
        if chunk.usage:
            tokens = chunk.usage.completion_tokens
    return {"latency": time.perf_counter() - t0, "first": first if first is not None else float("nan"), "tokens": tokens}


def level(client, model: str, prompts: list[str], clients: int, requests: int, max_tokens: int) -> dict:
    def worker(c: int) -> list[dict]:
        return [one_request(client, model, prompts[(c * requests + r) % len(prompts)], max_tokens) for r in range(requests)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        rows = [r for rs in pool.map(worker, range(clients)) for r in rs]
    wall = time.perf_counter() - t0
    tokens = sum(r["tokens"] for r in rows)
    lat = [r["latency"] for r in rows]
    return {"clients": clients, "requests": len(rows), "seconds": round(wall, 2), "generated_tokens": tokens,
            "tokens_per_second": round(tokens / wall, 2), "latency_p50_s": round(_pct(lat, 0.5), 2), "latency_p95_s": round(_pct(lat, 0.95), 2),
            "first_token_p50_s": round(_pct([r["first"] for r in rows], 0.5), 3)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--requests", type=int, default=2, help="requests per client, one after another")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--natural", action="store_true", help="stop answers at the end of turn (lengths then vary by prompt)")
    ap.add_argument("--threads", type=int, default=None, help="serve.num_threads (torch CPU threads of the server)")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "serve.json"))
    args = ap.parse_args()
    global IGNORE_EOS
    IGNORE_EOS = not args.natural

    import httpx
    from openai import OpenAI

    from studio.launch.command import free_port

    prompts = [r["instruction"] + ("\n" + r["input"] if r.get("input") else "")
               for r in json.loads((ROOT / "data" / "alpaca_demo.json").read_text())][:64]
    port = free_port()
    run_dir = Path(tempfile.mkdtemp(prefix="bench-serve-")) / "run"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "studio", "serve", "--model", args.model, "--port", str(port), "--output-dir", str(run_dir),
                             "--max-batch-size", "16", *([f"serve.num_threads={args.threads}"] if args.threads else [])], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 600
        while True:
            try:
                health = httpx.get(url + "/health", timeout=2).json()
                break
            except httpx.HTTPError:
                if proc.poll() is not None or time.time() > deadline:
                    raise SystemExit(f"the server did not start; see {run_dir}/output.log")
                time.sleep(0.5)
        model = health["models"][0]
        client = OpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=600)
        one_request(client, model, prompts[0], 4)  # warm-up
        idle = [one_request(client, model, p, 8)["first"] for p in prompts[1:6]]
        first = {"first_token_idle_p50_s": round(statistics.median(idle), 3), "first_token_idle_max_s": round(max(idle), 3)}
        print(json.dumps(first), flush=True)
        rows = []
        for c in [int(x) for x in args.clients.split(",")]:
            rows.append(level(client, model, prompts, c, args.requests, args.max_tokens))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
    one = rows[0]["tokens_per_second"] if rows and rows[0]["clients"] == 1 else None
    record = {"bench": "serve", "model": args.model, "threads": args.threads, "ignore_eos": IGNORE_EOS, "max_tokens": args.max_tokens, "requests_per_client": args.requests, **first,
              "levels": rows, "speedup_vs_1_client": {r["clients"]: round(r["tokens_per_second"] / one, 2) for r in rows} if one else None,
              "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "load_average": os.getloadavg()},
              "t": time.strftime("%Y-%m-%d %H:%M:%S")}
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record["speedup_vs_1_client"]), f"-> {out}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
