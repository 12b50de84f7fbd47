"""Sweeps: a spec with a `sweep:` section becomes one queued run per point, in one sweep folder.

    sweep:
      mode: grid                       # grid (every combination) or random (`samples` points, drawn with `seed`)
      samples: 4
      seed: 0
      train.learning_rate: [1.0e-4, 2.0e-4]        # any spec field: a list of values,
      method.lora.rank: [8, 16]
      train.warmup_ratio: {low: 0.0, high: 0.1}    # or, for random, a range (log: true for log-uniform)

    points = expand(section)           # [{field: value}, ...]
    rc = run_sweep(path, overrides)    # writes OUTPUT_DIR/sweep.yaml, queues OUTPUT_DIR/point-1 ... (studio train)
    compare(run_dirs)                  # rows: runs; columns: the fields that differ, final train loss, best eval loss, best
"""
from __future__ import annotations

import itertools
import json
import math
import random
import time
from pathlib import Path

import yaml

from studio import spec as specmod
from studio.run import events as ev
from studio.run import status as runs

OPTIONS = ("mode", "samples", "seed")


def has_sweep(path: str | Path | None) -> bool:
    return bool(path) and "sweep" in specmod.read_yaml(path)


def _fields(section: dict) -> dict:
    fields = {k: v for k, v in section.items() if k not in OPTIONS}
    if not fields:
        raise specmod.SpecError("sweep: name at least one spec field with its values, e.g. `train.learning_rate: [1.0e-4, 2.0e-4]`")
    for name, values in fields.items():
        try:
            specmod.field_info(name)
        except KeyError:
            raise specmod.SpecError(f"sweep: `{name}` is not a spec field (write it dotted, e.g. train.learning_rate)") from None
        if isinstance(values, dict):
            if set(values) - {"low", "high", "log"} or not {"low", "high"} <= set(values):
                raise specmod.SpecError(f"sweep: {name}: a range is {{low: A, high: B}} (and log: true for log-uniform)")
        elif not isinstance(values, list) or not values:
            raise specmod.SpecError(f"sweep: {name}: give a list of values, e.g. [1, 2]")
    return fields


def expand(section: dict) -> list[dict]:
    """The points of a sweep, each a {dotted field: value} dict."""
    if not isinstance(section, dict):
        raise specmod.SpecError("sweep: expected a mapping of fields to value lists (and mode, samples, seed)")
    mode = section.get("mode", "grid")
    fields = _fields(section)
    if mode == "grid":
        ranged = [k for k, v in fields.items() if isinstance(v, dict)]
        if ranged:
            raise specmod.SpecError(f"sweep: {ranged[0]}: a range needs mode: random (a grid takes a list of values)")
        keys = list(fields)
        return [dict(zip(keys, combo)) for combo in itertools.product(*(fields[k] for k in keys))]
    if mode != "random":
        raise specmod.SpecError(f"sweep.mode: `{mode}` is not allowed; choose grid or random")
    samples = section.get("samples")
    if not isinstance(samples, int) or samples < 1:
        raise specmod.SpecError("sweep.samples: give the number of random points (at least 1), e.g. samples: 4")
    rng = random.Random(section.get("seed", 0))

    def draw(v):
        if isinstance(v, list):
            return rng.choice(v)
        lo, hi = float(v["low"]), float(v["high"])
        if v.get("log"):
            return math.exp(rng.uniform(math.log(lo), math.log(hi)))
        return rng.uniform(lo, hi)

    return [{k: draw(v) for k, v in fields.items()} for _ in range(samples)]


def plan(path: str | Path, overrides: list[str]) -> tuple[Path, dict, list[tuple[dict, specmod.JobSpec]]]:
    """The sweep folder, the section, and each point with its spec (every point validated; errors name the point)."""
    data = specmod.read_yaml(path)
    mine = [o for o in overrides if o.startswith("sweep.")]  # sweep.mode=random, sweep.samples=8 ...
    overrides = [o for o in overrides if o not in mine]
    section = specmod.merge(data.pop("sweep") or {}, {k.split(".", 1)[1]: v for k, v in _parse(mine).items()})
    points = expand(section)
    folder = Path(specmod.load(None, overrides, base=data).output_dir)
    out, problems = [], []
    for i, point in enumerate(points, 1):
        over = [*overrides, *(f"{k}={json.dumps(v)}" for k, v in point.items()), f"output_dir={folder / f'point-{i}'}"]
        try:
            out.append((point, specmod.load(None, over, base=data)))
        except specmod.SpecError as e:
            problems.append(f"point-{i} ({_describe(point)}): {e}")
    if problems:
        raise specmod.SpecError(f"{path}: " + "\n".join(problems))
    return folder, section, out


def _parse(overrides: list[str]) -> dict:
    """`sweep.train.learning_rate=[1,2]` keeps its dotted field name (parse_overrides would nest it)."""
    out = {}
    for o in overrides:
        key, _, raw = o.partition("=")
        out[key] = yaml.safe_load(raw) if raw.strip() else None
    return out


def _describe(point: dict) -> str:
    return " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in point.items())


def run_sweep(path: str | Path, overrides: list[str], dry_run: bool = False, detach: bool = False) -> int:
    from studio.launch import preflight, queue

    folder, section, points = plan(path, overrides)
    if dry_run:
        print(f"sweep folder: {folder}   ({len(points)} points, {section.get('mode', 'grid')})")
        for i, (point, _) in enumerate(points, 1):
            print(f"point-{i}  {_describe(point)}")
        return 0
    if folder.exists():
        raise specmod.SpecError(f"output_dir: {folder} already exists; give the sweep a new folder, e.g. output_dir={folder}-2")
    preflight.preflight(points[0][1])  # the data and the method, once (the points differ only in the swept fields)
    folder.mkdir(parents=True)
    (folder / runs.SWEEP).write_text(yaml.safe_dump({"sweep": section, "points": [p for p, _ in points]}, sort_keys=False))
    for i, (point, spec) in enumerate(points, 1):
        proc, note = queue.submit(spec)
        print(f"point-{i}  {_describe(point)}: {'started' if proc else note}", flush=True)
    if detach:
        print(f"sweep folder: {folder}; follow with: studio queue, studio runs")
        return 0
    dirs = [Path(s.output_dir) for _, s in points]
    last = time.time()
    while not all(runs.status(d) in ev.FINAL for d in dirs):
        time.sleep(1.0)
        if time.time() - last > 30:  # a waiter killed meanwhile starts again
            queue.revive(runs.root_of(dirs[0]))
            last = time.time()
    print(format_table(compare(dirs)))
    return 0 if all(runs.status(d) == "done" for d in dirs) else 1


def _losses(run_dir: Path) -> tuple[float | None, float | None]:
    """(final train loss, best eval loss) of a run, from its events."""
    events = ev.read_all(run_dir)
    train = [e["loss"] for e in events if e["event"] == "log" and e.get("loss") is not None]
    evals = [e["eval_loss"] for e in events if e["event"] == "eval" and e.get("eval_loss") is not None]
    done = ev.final(events) or {}
    if done.get("eval_loss") is not None:
        evals.append(done["eval_loss"])
    return (train[-1] if train else None), (min(evals) if evals else None)


def compare(run_dirs: list[Path]) -> dict:
    """{columns, rows}: one row per run with the spec fields that differ, status, final train loss, best eval loss, the
    scores of train.benchmarks (a column per task), and
    `best` marked on the run with the lowest best eval loss (else the lowest final train loss)."""
    import yaml as _yaml

    flat = []
    for d in run_dirs:
        try:
            flat.append(specmod.flatten(_yaml.safe_load((d / "spec.yaml").read_text()) or {}))
        except (OSError, _yaml.YAMLError):
            flat.append({})
    keys = sorted(k for k in {k for f in flat for k in f} - {"output_dir"} if len({str(f.get(k)) for f in flat}) > 1)
    losses = [_losses(d) for d in run_dirs]
    score = [e if e is not None else t for t, e in losses]
    ok = [i for i, s in enumerate(score) if s is not None and math.isfinite(s)]
    best = min(ok, key=lambda i: score[i]) if ok else None
    bench = [_bench(d) for d in run_dirs]
    tasks = list(dict.fromkeys(t for b in bench for t in b))
    rows = []
    for i, d in enumerate(run_dirs):
        t, e = losses[i]
        rows.append([runs.display_name(d), runs.status(d), *[flat[i].get(k) for k in keys], t, e,
                     *[bench[i].get(task) for task in tasks], "best" if i == best else ""])
    return {"columns": ["run", "status", *keys, "final train loss", "best eval loss", *tasks, "best"], "rows": rows}


def _bench(run_dir: Path) -> dict:
    """train.benchmarks' scores of a run (RUN/benchmarks.json): {"<task>": the run's value (lm-eval's 0-1 scale)}."""
    from studio.evaluate import scorecard

    bench = scorecard.read(run_dir) or {"models": {}}
    mine = bench["models"].get(run_dir.name) or {}
    return {task: e.get("value") for task, e in mine.items()}


def format_table(table: dict) -> str:
    def cell(v):
        return f"{v:.4g}" if isinstance(v, float) else ("" if v is None else str(v))

    cells = [table["columns"]] + [[cell(v) for v in r] for r in table["rows"]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) for r in cells)


def sweep_folders(root: str | Path) -> list[Path]:
    root = Path(root)
    return sorted(p for p in root.iterdir() if (p / runs.SWEEP).is_file()) if root.is_dir() else []


def points_of(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    found = [p for p in folder.iterdir() if p.is_dir() and runs.is_run_dir(p) and p.name.startswith("point-")]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]) if p.name.split("-")[1].isdigit() else 0)
