"""`studio serve`: an OpenAI-compatible API for a base model and several adapters (see docs/serve.md)."""
from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """An address only this machine reaches (`studio webui` and `studio serve` refuse others without a key)."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
