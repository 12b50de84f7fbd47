"""Data previews kept on disk, so that a restarted server, or a second one on the same data, shows a preview at once.

A preview (`python -m studio.data.preview`) tokenizes every example of the chosen datasets: seconds on the demo
data, minutes on a large one. Its result depends only on what the key below holds: the model's files (name, size,
modification time), the spec's data fields, each data file's name, size and modification time and its registry
entry, and the code and library versions that render it. One JSON file per key under the studio's cache folder
(`STUDIO_CACHE`, default ~/.cache/studio) in `previews/`; the newest KEEP are kept. No torch here.
"""
from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from importlib import metadata
from pathlib import Path

from studio.data import registry
from studio.data.registry import DataError
from studio.model import models

KEEP = 200


def folder() -> Path:
    return models.cache_root() / "previews"


def _files(path: Path) -> list:
    """[name, size, mtime] of the file or of each file in the folder; names relative, so that a copy of the same
    files (modification times kept) in another working folder has the same key."""
    return [[str(f.relative_to(path)) if path.is_dir() else f.name, size, mtime] for f, size, mtime in registry.file_stats(path)]


@functools.lru_cache(maxsize=1)
def _code() -> str:
    """The preview's own code and the libraries that tokenize: a new version renders afresh."""
    h = hashlib.sha256()
    for f in sorted(Path(registry.__file__).parent.glob("*.py")) + [Path(models.__file__)]:
        h.update(f.read_bytes())
    for dist in ("transformers", "tokenizers"):
        try:
            h.update(metadata.version(dist).encode())
        except metadata.PackageNotFoundError:
            pass
    return h.hexdigest()


def key(spec, extra: dict | None, limit: int) -> tuple[str, bool]:
    """(the key of this preview, whether its result may be kept on disk: every file it reads is on this machine)."""
    d, m = spec.data, spec.model
    model_dir = models.cache_root() / "models" / models.DEFAULT_NAME if m.name_or_path == models.DEFAULT else Path(m.name_or_path)
    local = model_dir.is_dir()
    parts = [_code(), m.name_or_path, m.template, m.trust_remote_code, _files(model_dir) if local else None, spec.method.stage,
             d.dataset_dir, list(d.dataset), d.cutoff_len, d.max_samples, d.train_on_prompt, d.mask_history, extra, limit]
    try:
        info = registry.read_info(d.dataset_dir)
    except DataError:
        info, local = {}, False
    known = {**info, **(extra or {})}  # the registry's entries, and the ones the page is about to add
    for n in d.dataset:
        try:
            path = registry.entry(d.dataset_dir, n, known).path
        except DataError:
            path = None
        found = path is not None and path.exists()
        local = local and found
        parts.append([n, known.get(n), _files(path) if found else None])
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest(), local


def read(k: str) -> dict | None:
    try:
        return json.loads((folder() / f"{k}.json").read_text())
    except (OSError, ValueError):
        return None


def write(k: str, result: dict) -> None:
    """Written whole (a temporary file renamed), then the oldest beyond KEEP removed. A cache that cannot be
    written is skipped: the preview was shown anyway."""
    try:
        folder().mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder(), suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(result, f)
        os.replace(tmp, folder() / f"{k}.json")
        kept = sorted(folder().glob("*.json"), key=lambda p: p.stat().st_mtime, reverse=True)
        for old in kept[KEEP:]:
            old.unlink(missing_ok=True)
    except OSError:
        pass
