"""Domain errors of the server; the error middleware turns each into a JSON body and a status.

Every error has a stable `code` (for programs) and a human `message` (for people). Codes are
listed in docs/protocol.md; do not rename one without saying so there.
"""

from __future__ import annotations


class ApiError(Exception):
    """An error answered to the client as `{"code", "message"}` with `status`."""

    status = 400
    code = "bad_request"

    def __init__(self, message: str, *, code: str | None = None, status: int | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if status is not None:
            self.status = status


class BadRequest(ApiError):
    """The request is malformed: junk JSON, wrong types, bad identifiers."""


class Unauthorized(ApiError):
    """No credential, or one that does not prove who the caller claims to be."""

    status = 401
    code = "unauthorized"


class Forbidden(ApiError):
    """The caller is known but not allowed (a revoked board)."""

    status = 403
    code = "forbidden"


class NotFound(ApiError):
    status = 404
    code = "not_found"


class Conflict(ApiError):
    """The request contradicts the stored state (sequence not greater, rollout not active...)."""

    status = 409
    code = "conflict"


class PayloadTooLarge(ApiError):
    status = 413
    code = "too_large"


class Unprocessable(ApiError):
    """Well-formed but refused on its content: a signature or rotation that does not verify."""

    status = 422
    code = "invalid"
