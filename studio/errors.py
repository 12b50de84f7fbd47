"""Which exceptions are a user's mistake (shown as a message, no traceback) rather than a bug."""
from __future__ import annotations


def user_error_types() -> tuple:
    from studio.data.registry import DataError
    from studio.data.templates import TemplateError
    from studio.models import ModelError
    from studio.spec import SpecError

    return (SpecError, DataError, ModelError, TemplateError)


def is_user_error(e: BaseException) -> bool:
    return isinstance(e, user_error_types())
