"""The usual file modes for what jobs write (run folders, adapters, exports).

safetensors (and anything else written through a temporary file) creates its files with mode 0600, so another
user (an inference service, Ollama, a container) cannot read the weights although every other file of the
folder is readable. `usual_modes(folder)` gives such files the mode a plain `open()` would have given them
(0666 minus the process umask, e.g. 0644), leaving every other mode as it is.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path

TEMPFILE_MODE = 0o600


def umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def usual_modes(root: str | Path) -> list[Path]:
    """Give files under `root` created with a temporary file's 0600 the umask-based mode; returns those changed."""
    root = Path(root)
    if not root.exists():
        return []
    want = 0o666 & ~umask()
    if want == TEMPFILE_MODE:
        return []
    changed = []
    for p in [root, *root.rglob("*")] if root.is_dir() else [root]:
        if p.is_symlink() or not p.is_file():
            continue
        if stat.S_IMODE(p.stat().st_mode) == TEMPFILE_MODE:
            p.chmod(want)
            changed.append(p)
    return changed
