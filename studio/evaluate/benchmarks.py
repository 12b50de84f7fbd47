"""Benchmark scores through lm-evaluation-harness (lm-eval) on its tasks, the pack in data/benchmarks/ and a user's
task folders: the base model and its adapters on the same tasks in one call, the base loaded once. For example
`check_tasks(["studio_pack"], [])` ([] when fine), then `score("default", {"identity": "runs/identity_lora"},
["studio_pack"], [], apply_chat_template=True)`.

lm-eval hands a task's `dataset_kwargs.data_files` to datasets.load_dataset as written: a relative path is read from
the working folder. Here it is relative to the task's YAML file: task_manager() indexes a generated copy of each task
folder (in the studio cache) whose YAML files each `include` the original and name its data files by absolute path.
Prompts, metrics and stderr are lm-eval's; a group is scored as its tasks (no group aggregate)."""
from __future__ import annotations

import difflib
import glob
import hashlib
import json
import math
import os
import shutil
import time
from contextlib import nullcontext
from pathlib import Path

import yaml

from studio.errors import UserError
from studio.model import models
from studio.model.source import check_base

CACHE_FILE = "benchmark_scores.json"
_MANAGERS: dict = {}  # the last TaskManager, by its folders' YAML files and mtimes (lm-eval's index takes seconds)


class BenchmarkError(UserError):
    pass


def pack_dir() -> Path:
    """The shipped pack: data/benchmarks of the source tree, else of the working folder (an installed copy)."""
    src = Path(__file__).resolve().parents[2] / "data" / "benchmarks"
    return src if src.is_dir() else Path("data") / "benchmarks"


def _folders(task_dirs) -> list[Path]:
    return [p for p in [pack_dir(), *map(Path, task_dirs or [])] if p.is_dir()]


def _yaml_problem(f: Path) -> str | None:
    try:
        yaml.compose(f.read_text(encoding="utf-8"), Loader=yaml.SafeLoader)  # the syntax only: tags such as !function pass
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f", line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        return f"{f}{where}: {e.problem or e.context} (the file is not valid YAML; lm-eval skips it)"
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        return f"{f}: {e}"
    return None


def _files(files, fn):
    """data_files (a path, a list, or a dict of either) with fn applied to each local path (not a URL)."""
    if isinstance(files, dict):
        return {k: _files(v, fn) for k, v in files.items()}
    if isinstance(files, list):
        return [_files(v, fn) for v in files]
    return fn(files) if isinstance(files, str) and "://" not in files else files


def _data_files(cfg: dict) -> list[str]:
    found: list[str] = []
    _files((cfg.get("dataset_kwargs") or {}).get("data_files"), found.append)
    return found


def _wrapper(src: Path) -> str:
    """The generated YAML of one task file: an include of it, and its dataset_kwargs with absolute data files."""
    from lm_eval.tasks._yaml_loader import load_yaml

    text = f"include: {json.dumps(str(src))}\n"
    try:
        kwargs = load_yaml(src, resolve_func=False).get("dataset_kwargs")  # its includes merged in
    except Exception:  # not valid: check_tasks names it, lm-eval's index skips it
        return text
    if isinstance(kwargs, dict) and "data_files" in kwargs:
        files = _files(kwargs["data_files"], lambda f: str(src.parent / Path(f).expanduser()))  # an absolute one stays
        text += f"dataset_kwargs: {json.dumps({**kwargs, 'data_files': files})}\n"
    return text


def _generated_copy(folder: Path) -> Path:
    """A task folder's generated copy, written anew (lm-eval skips the wrapper of a removed file); deleted folders' copies go."""
    folder, root = folder.resolve(), models.cache_root() / "benchmarks" / "tasks"
    out = root / f"{folder.name}-{hashlib.sha1(str(folder).encode()).hexdigest()[:10]}"
    for other in root.glob("*/.source"):
        if not Path(other.read_text()).is_dir():
            shutil.rmtree(other.parent, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    (out / ".source").write_text(str(folder))
    for src in sorted(folder.rglob("*.yaml")):
        (dst := out / src.relative_to(folder)).parent.mkdir(parents=True, exist_ok=True)
        (tmp := dst.with_name(f".{dst.name}.{os.getpid()}.tmp")).write_text(_wrapper(src))
        os.replace(tmp, dst)  # another process may be reading it
    return out


def task_manager(task_dirs=(), include_defaults: bool = True):
    """An lm_eval TaskManager over lm-eval's own tasks (include_defaults), the shipped pack and the folders
    `task_dirs`; kept for the next call, and built again when a YAML file of those folders changes."""
    from lm_eval.tasks import TaskManager

    folders = _folders(task_dirs)
    key = (include_defaults, *((str(f.resolve()), *((str(y), y.stat().st_mtime_ns) for y in sorted(f.rglob("*.yaml"))))
                               for f in folders))
    if key not in _MANAGERS:
        for old in [k for k in _MANAGERS if k[0] == include_defaults]:
            del _MANAGERS[old]  # one of each kind: with lm-eval's own tasks, and without
        _MANAGERS[key] = TaskManager(include_path=[_generated_copy(f) for f in folders], include_defaults=include_defaults)
    return _MANAGERS[key]


def manager_for(names, task_dirs=()):
    """The index of the pack and `task_dirs` alone when it holds every name and every task under them (it takes a
    fraction of a second); else the full one with lm-eval's ~15,000 tasks (5-7 s to build, kept for the next call)."""
    small = task_manager(task_dirs, include_defaults=False)
    return small if names and all(_complete(small, n) for n in names) else task_manager(task_dirs)


def _kids(tm, entry) -> list[str]:
    """The names a group or tag of the index stands for (inline tasks are left out)."""
    from lm_eval.tasks._index import Kind

    kids = sorted(entry.tags) if entry.kind == Kind.TAG else entry.cfg.get("task") or []
    kids = [k if isinstance(k, str) else k.get("task") or k.get("group") for k in (kids if isinstance(kids, list) else [kids])]
    return [k for k in kids if isinstance(k, str)]


def _leaves(tm, name: str, depth: int = 0) -> list[str]:
    """The task names under a name of the index: itself, a group's tasks or a tag's (inline tasks are left out)."""
    from lm_eval.tasks._index import Kind

    entry = tm.task_index.get(name)
    if entry is None or depth > 8 or entry.kind not in (Kind.TAG, Kind.GROUP):
        return [name] if entry is not None else []
    return [t for k in _kids(tm, entry) for t in _leaves(tm, k, depth + 1)]


def _complete(tm, name: str, depth: int = 0) -> bool:
    """Whether the index holds `name` and everything under it."""
    from lm_eval.tasks._index import Kind

    entry = tm.task_index.get(name)
    if entry is None or depth > 8:
        return False
    if entry.kind not in (Kind.TAG, Kind.GROUP):
        return True
    kids = _kids(tm, entry)
    return bool(kids) and all(_complete(tm, k, depth + 1) for k in kids)


def _missing_data(tm, task: str) -> list[str]:
    """The data files named in a task's YAML file (a generated copy's: absolute paths) that do not exist."""
    from lm_eval.tasks._yaml_loader import load_yaml

    path = tm.task_index[task].yaml_path  # None: a task defined in Python
    try:
        cfg = load_yaml(path, resolve_func=False, recursive=False) if path else {}
    except Exception as e:
        return [f"task `{task}`: {path} cannot be read ({e})"]
    source = cfg["include"] if Path(str(cfg.get("include", ""))).is_absolute() else path  # a generated copy's original
    gone = [f for f in _data_files(cfg) if not (glob.glob(f) if any(c in f for c in "*?[") else Path(f).exists())]
    return [f"task `{task}`: data file {f} not found (dataset_kwargs.data_files in {source})" for f in gone]


def check_tasks(names: list[str], task_dirs=()) -> list[str]:
    """What would stop `score` on these names, as messages ([] when nothing): a missing task folder, a YAML file that
    does not parse (file, line), an unknown name (with close names), a missing local data file. Reads YAML files (and
    writes the generated copies), loads no model and no data set: a hub data set missing from the cache goes unnoticed."""
    problems = [f"task folder {d} not found" for d in map(Path, task_dirs or []) if not d.is_dir()]
    broken = {f: p for folder in _folders(task_dirs) for f in sorted(folder.rglob("*.yaml")) if (p := _yaml_problem(f))}
    problems += broken.values()
    tm = manager_for(names, task_dirs)
    for name in names:
        if name not in tm.task_index:
            close = difflib.get_close_matches(name, tm.all_tasks, n=4)
            hint = f"did you mean {', '.join(close)}?" if close else "`python -m lm_eval ls tasks` lists the known names"
            inside = [str(f) for f in broken if name in f.read_text(errors="replace")]
            also = f" (it is named in {', '.join(inside)}, which does not parse)" if inside else ""
            problems.append(f"unknown task `{name}`{also}; {hint}")
        else:
            problems += [p for task in dict.fromkeys(_leaves(tm, name)) for p in _missing_data(tm, task)]
    return problems


def _adapter_folders(model_path: str, adapters: dict) -> dict[str, Path]:
    """name -> adapter folder (of a run folder, or an adapter folder); refuses one trained on another base model."""
    out = {}
    for name, path in adapters.items():
        if name == "base":
            raise BenchmarkError("adapter name `base` is taken by the base model; choose another name")
        folder = models.find_adapter(path)  # ModelError (a UserError) names the path
        check_base(f"adapter `{name}` ({folder})", models.adapter_base(folder), model_path)
        out[name] = folder
    return out


def _cache_key(model_dir: str, task, settings: dict) -> str:
    """The model folder's files (sizes, mtimes; a hub id: its name), the task (name, version, config, data files' sizes
    and mtimes) and the settings (num_fewshot, limit, apply_chat_template, dtype, device, lm-eval's version)."""
    p, cfg = Path(model_dir), task.dump_config()
    stat = lambda f: [str(f), f.stat().st_size, f.stat().st_mtime_ns]  # noqa: E731
    suffixes = (".json", ".safetensors", ".bin", ".model", ".jinja")
    src = {"model": sorted(stat(f) for f in p.iterdir() if f.is_file() and f.suffix in suffixes) if p.is_dir() else model_dir,
           "task": task.task_name, "version": (cfg.get("metadata") or {}).get("version"), "config": cfg,
           "data": [stat(Path(f)) for f in _data_files(cfg) if Path(f).is_file()], **settings}
    return hashlib.sha256(json.dumps(src, sort_keys=True, default=str).encode()).hexdigest()


def _cache(f: Path, key: str | None = None, entry: dict | None = None) -> dict:
    """The cache file's entries; with key and entry, that entry added first (of two writers at once, one may be lost)."""
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError):
        data = {}
    if key is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        (tmp := f.with_name(f"{f.name}.{os.getpid()}.tmp")).write_text(json.dumps({**data, key: entry}, indent=1))
        os.replace(tmp, f)
    return data


def _entry(res: dict, task) -> dict:
    """A task's scores in simple_evaluate's result: each metric (`acc`; `exact_match,strip` under a filter other than
    `none`) with its stderr (None where lm-eval has none); `metric`: the first of the task's metric_list and filters."""
    name, row, metrics = task.task_name, res["results"][task.task_name], {}
    for k, v in row.items():
        if "," in k and "_stderr," not in k and isinstance(v, (int, float)):
            m, filt = k.split(",", 1)
            se = row.get(f"{m}_stderr,{filt}")
            metrics[m if filt == "none" else k] = {"value": float(v), "stderr": float(se) if isinstance(se, (int, float)) else None}
    if not metrics:
        raise BenchmarkError(f"task `{name}`: lm-eval reported no metric")
    filt = (task.config.filter_list or [{}])[0].get("name", "none")
    main = f"{(task.config.metric_list or [{}])[0].get('metric')}" + ("" if filt == "none" else f",{filt}")
    main = main if main in metrics else next(iter(metrics))
    return {"metric": main, **metrics[main], "n": res["n-samples"][name]["effective"], "version": res["versions"].get(name),
            "num_fewshot": res.get("n-shot", {}).get(name), "metrics": metrics}


def _load(model_path: str, folders: dict[str, Path], device: str, dtype: str):
    """Tokenizer and model through studio's loader; the adapters loaded as a0, a1, ... (peft's names allow no dot)."""
    from peft import PeftModel

    from studio.spec import ModelSpec

    tok = models.load_tokenizer(model_path)
    model = models.load_model(ModelSpec(name_or_path=model_path), dtype).to(device)
    for i, (name, folder) in enumerate(folders.items()):
        try:
            if i == 0:
                model = PeftModel.from_pretrained(model, str(folder), adapter_name=f"a{i}")
            else:
                model.load_adapter(str(folder), adapter_name=f"a{i}")
        except Exception as e:  # weights of another shape, a damaged file, an adapter type that cannot share the model
            raise BenchmarkError(f"adapter `{name}` ({folder}): cannot load it on `{model_path}`: {e}") from None
    return model.eval(), tok


def compare(entry: dict, base: dict) -> None:
    """A run's entry against the base's on the same task: "delta" (run - base, of the main metric and of each metric),
    "delta_stderr" (the standard error of the difference, sqrt(se_run^2 + se_base^2)) and "lost" (it fell by more)."""
    same = entry["metric"] == base["metric"]
    entry["delta"] = entry["value"] - base["value"] if same else None
    for m, v in entry["metrics"].items():
        v["delta"] = v["value"] - base["metrics"][m]["value"] if m in base["metrics"] else None
    se = [x for x in (entry.get("stderr"), base.get("stderr")) if isinstance(x, (int, float)) and math.isfinite(x)]
    entry["delta_stderr"] = math.sqrt(sum(x * x for x in se)) if same and len(se) == 2 else None
    entry["lost"] = bool(same and entry["delta"] < 0 and entry["delta_stderr"] is not None and -entry["delta"] > entry["delta_stderr"])


def score(model_path: str, adapters: dict | None, tasks: list[str], task_dirs=(), num_fewshot: int | None = None,
          limit: int | float | None = None, batch_size: int = 8, apply_chat_template: bool | str = False,
          device: str = "cpu", dtype: str = "auto", cache_dir: str | Path | None = None, on_progress=None) -> dict:
    """The base model (`default`, a folder, a hub id) and each adapter (name -> run or adapter folder) scored on
    `tasks` (task, group or tag names): one lm_eval.simple_evaluate per model and task on an HFLM around the one loaded
    model (the base: adapters disabled). dtype: auto, fp32, bf16, fp16. BenchmarkError, before a model loads, on what
    check_tasks finds or an adapter of another base. on_progress(done, total, message): before each (model, task) and
    at the end. The base's entries are cached in CACHE_DIR/benchmark_scores.json (default STUDIO_CACHE/benchmarks) by
    _cache_key: one read from there has `cached: True` (all cached and no adapter: no model is loaded).

    Returns {"models": {"base": {task: entry}, name: {task: entry}}, "tasks": [...], "settings": {...}}, an entry
    {"metric", "value", "stderr", "n", "version", "num_fewshot", "metrics": {name: {"value", "stderr"}}, "cached",
    "seconds"} on lm-eval's scale (0-1); an adapter's entry also holds what `compare` adds."""
    import lm_eval

    folders = _adapter_folders(model_path, adapters or {})
    if problems := check_tasks(list(tasks), task_dirs):
        raise BenchmarkError("\n".join(problems))
    tm = manager_for(tasks, task_dirs)
    try:
        loaded = tm.load(list(tasks))["tasks"]
    except Exception as e:  # a data set that is neither local nor in the datasets cache (offline), a bad config
        raise BenchmarkError(f"cannot load the tasks {', '.join(tasks)}: {type(e).__name__}: {e}") from None
    settings = {"num_fewshot": num_fewshot, "limit": limit, "apply_chat_template": apply_chat_template, "device": device,
                "dtype": str(models.compute_dtype(dtype)).removeprefix("torch."), "lm_eval": lm_eval.__version__}
    cache = Path(cache_dir or models.cache_root() / "benchmarks") / CACHE_FILE
    keys = {t: _cache_key(models.resolve(model_path), loaded[t], settings) for t in loaded}
    stored = _cache(cache)
    out = {"base": {t: {**stored[k], "cached": True} for t, k in keys.items() if k in stored}, **{a: {} for a in folders}}
    todo = [("base", t) for t in loaded if t not in out["base"]] + [(a, t) for a in folders for t in loaded]
    total, done, load_s = len(loaded) * (1 + len(folders)), len(out["base"]), None
    say = on_progress or (lambda *a: None)
    if todo:
        from lm_eval.models.huggingface import HFLM

        say(done, total, f"loading {model_path}" + (f" with {len(folders)} adapter(s)" if folders else ""))
        t0 = time.time()
        model, tok = _load(model_path, folders, device, dtype)
        load_s = round(time.time() - t0, 2)
        lm = HFLM(pretrained=model, tokenizer=tok, batch_size=batch_size)
        for who, task in todo:
            say(done, total, f"{who}: {task}")
            if who != "base":
                model.set_adapter(f"a{list(folders).index(who)}")
            t0 = time.time()
            with model.disable_adapter() if who == "base" and folders else nullcontext():
                res = lm_eval.simple_evaluate(model=lm, tasks=[loaded[task]], task_manager=tm, num_fewshot=num_fewshot,
                                              limit=limit, apply_chat_template=apply_chat_template, log_samples=False)
            entry = {**_entry(res, loaded[task]), "seconds": round(time.time() - t0, 2)}
            if who == "base":
                _cache(cache, keys[task], entry)
            out[who][task] = {**entry, "cached": False}
            done += 1
    for who in folders:
        for task, e in out[who].items():
            compare(e, out["base"][task])
    say(total, total, "done")
    return {"models": out, "tasks": list(loaded), "settings": {"model": model_path, "batch_size": batch_size,
            "adapters": {a: str(f) for a, f in folders.items()}, "load_seconds": load_s, **settings}}
