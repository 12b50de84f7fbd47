"""Which exceptions are a user's mistake (shown as a message, no traceback) rather than a bug.

The ground floor: this module imports nothing of studio. Every error a user can fix (a spec field, a dataset
record, a model name, a chat template) subclasses `UserError`."""
from __future__ import annotations


class UserError(ValueError):
    """A mistake the user can fix; its message says where and what to do."""


def is_user_error(e: BaseException) -> bool:
    return isinstance(e, UserError)


def describe(e: BaseException) -> tuple[str, str]:
    """(message, traceback): a user's mistake is its message alone; anything else carries its traceback."""
    import traceback

    if is_user_error(e):
        return str(e), ""
    return f"{type(e).__name__}: {e}", traceback.format_exc()
