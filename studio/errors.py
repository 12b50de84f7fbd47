"""Which exceptions are a user's mistake (shown as a message, no traceback) rather than a bug."""
from __future__ import annotations


def user_error_types() -> tuple:
    from studio.data.registry import DataError
    from studio.data.templates import TemplateError
    from studio.model.models import ModelError
    from studio.spec import SpecError

    return (SpecError, DataError, ModelError, TemplateError)


def is_user_error(e: BaseException) -> bool:
    return isinstance(e, user_error_types())


def describe(e: BaseException) -> tuple[str, str]:
    """(message, traceback): a user's mistake is its message alone; anything else carries its traceback."""
    import traceback

    if is_user_error(e):
        return str(e), ""
    return f"{type(e).__name__}: {e}", traceback.format_exc()


def fail(writer, e: BaseException) -> int:
    """End a job on an exception: one `error` event, the message (or traceback) on stderr, exit status 1."""
    import sys

    message, tb = describe(e)
    writer.write("error", message=message, traceback=tb)
    print(tb or f"error: {message}", file=sys.stderr, flush=True)
    return 1
