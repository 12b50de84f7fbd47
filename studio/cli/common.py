"""What the verbs share: a usage error's message and exit status."""
from __future__ import annotations

import sys


def usage(msg: str) -> int:
    print(f"error: {msg}", file=sys.stderr)
    return 2
