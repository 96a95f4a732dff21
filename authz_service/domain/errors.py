"""The one error tree of the service.

Domain and store code raise these; the gRPC layer maps each class to exactly
one status code (``authz_service.api.rpc.STATUS``). Nothing a caller can cause
ends up as INTERNAL.
"""

from __future__ import annotations


class AuthzError(Exception):
    """Base class. ``message`` is safe to show to the caller: never a secret."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgument(AuthzError):
    """A request field is malformed. ``field`` names it."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class NotFound(AuthzError):
    """The object does not exist in the caller's tenant."""


class AlreadyExists(AuthzError):
    """Creating an object whose id is taken."""


class FailedPrecondition(AuthzError):
    """The object is in the wrong state, e.g. an approval that already expired."""


class Conflict(AuthzError):
    """A concurrent change won; the caller may retry (ABORTED)."""


class Unauthenticated(AuthzError):
    """No credential, or one that does not verify."""


class PermissionDenied(AuthzError):
    """The credential or actor is valid but not allowed to do this."""


class ResourceExhausted(AuthzError):
    """A limit is reached, e.g. too many failed pairing code attempts; the
    message says when to try again (RESOURCE_EXHAUSTED)."""


class Unavailable(AuthzError):
    """The store cannot be reached. Callers must treat this as deny."""
