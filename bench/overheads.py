"""Studio overheads: time to a served page, to the first training step and loss point, and data preprocessing.

    .venv/bin/python bench/overheads.py [--out bench/results/overheads.json]

- `studio webui`: seconds from launch until the page answers HTTP 200.
- `studio train examples/identity_lora.yaml`: seconds from launch to the `start` event (first step under way) and
  to the first `log` event (first loss point in the run folder), with the default model already cached.
- preprocessing: seconds per 1,000 examples of alpaca_en_demo (template + tokenization + masks), cold, and
  a second run that loads the cache.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DATA = ROOT.parent / "shared" / "data" / "llamafactory"

from studio.launch.command import free_port  # noqa: E402


def webui_ready(timeout: float = 120) -> float:
    port = free_port()
    with tempfile.TemporaryDirectory() as work:
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "studio", "webui", "--port", str(port)], cwd=work,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            while time.time() - t0 < timeout:
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as r:
                        if r.status == 200:
                            return time.time() - t0
                except OSError:
                    time.sleep(0.05)
            raise SystemExit("the web UI did not answer")
        finally:
            os.killpg(proc.pid, 15)
            proc.wait()


def first_loss() -> dict:
    from studio.run import events as ev

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        t0 = time.time()
        proc = subprocess.Popen([sys.executable, "-m", "studio", "train", str(ROOT / "examples" / "identity_lora.yaml"),
                                 f"output_dir={out}", f"data.dataset_dir={ROOT / 'data'}", "train.max_steps=2"],
                                cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen = {}
        while proc.poll() is None or not seen.get("log"):
            for e in ev.read_all(out):
                seen.setdefault(e["event"], e["t"] - t0)
            if proc.poll() is not None and not seen.get("log"):
                break
            time.sleep(0.05)
        proc.wait()
        return {"to_start_event_s": seen.get("start"), "to_first_loss_s": seen.get("log")}


def preprocessing() -> dict:
    from studio.model import models
    from studio import spec as specmod
    from studio.data import encode
    from studio.data.templates import Template

    data_dir, name = (DATA, "alpaca_en_demo") if DATA.exists() else (ROOT / "data", "alpaca_demo")
    tok = models.load_tokenizer("default")
    tpl = Template("auto", tok)
    with tempfile.TemporaryDirectory() as cache:
        os.environ["STUDIO_CACHE"] = cache
        spec = specmod.load(None, [f"data.dataset_dir={data_dir}", f"data.dataset=[{name}]"])
        t0 = time.perf_counter()
        ds, rep = encode.encode_names(spec, [name], tok, tpl, use_cache=False)
        cold = time.perf_counter() - t0
        encode.encode_names(spec, [name], tok, tpl)  # writes the cache
        t0 = time.perf_counter()
        ds2, _ = encode.encode_names(spec, [name], tok, tpl)
        warm = time.perf_counter() - t0
        del os.environ["STUDIO_CACHE"]
    n = len(ds)
    return {"dataset": name, "examples": n, "cold_s_per_1000": cold / n * 1000, "cached_s_per_1000": warm / n * 1000,
            "cache_hit_same_data": ds2["input_ids"] == ds["input_ids"]}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", default=str(ROOT / "bench" / "results" / "overheads.json"))
    a = p.parse_args()
    res = {"webui_page_served_s": webui_ready(), **first_loss(), "preprocessing": preprocessing()}
    print(json.dumps(res, indent=2))
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
