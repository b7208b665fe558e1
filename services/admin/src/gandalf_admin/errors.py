"""Admin API errors: OpenAI-shaped bodies (``gandalf_common.errors.error_body``)
with the field at fault in ``param``. Database errors are mapped here so no
asyncpg text ever reaches a client."""

from __future__ import annotations

import logging

import asyncpg

from gandalf_common.errors import error_body

log = logging.getLogger("gandalf.admin")


class ApiError(Exception):
    def __init__(self, status: int, message: str, *, code: str | None = None,
                 param: str | None = None, headers: list[tuple[str, str]] | None = None
                 ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.code = code
        self.param = param
        self.headers = headers or []

    def body(self) -> bytes:
        return error_body(self.status, self.message, code=self.code, param=self.param)


def bad_request(message: str, param: str | None = None, *,
                code: str = "invalid_request") -> ApiError:
    return ApiError(400, message, code=code, param=param)


def forbidden(message: str = "insufficient permissions", param: str | None = None
              ) -> ApiError:
    return ApiError(403, message, code="insufficient_permissions", param=param)


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, f"{what} not found", code="not_found")


def conflict(message: str, param: str | None = None) -> ApiError:
    return ApiError(409, message, code="conflict", param=param)


#: Constraint name -> the request field it is about.
_CONSTRAINT_PARAMS = {
    "routes_model_alias_key": "model_alias",
    "api_keys_key_hash_key": "key",
    "api_keys_team_id_fkey": "team_id",
    "api_keys_org_id_fkey": "org_id",
    "teams_org_id_fkey": "org_id",
}


def from_db_error(exc: BaseException) -> ApiError:
    """A database error as the client sees it: 409, 400 or a bare 500."""
    if isinstance(exc, asyncpg.UniqueViolationError):
        param = _CONSTRAINT_PARAMS.get(exc.constraint_name or "") or "id"
        return conflict(f"a resource with this {param} already exists", param)
    if isinstance(exc, asyncpg.ForeignKeyViolationError):
        ref = _CONSTRAINT_PARAMS.get(exc.constraint_name or "")
        return bad_request(f"{ref or 'a referenced resource'} does not exist", ref)
    if isinstance(exc, asyncpg.DataError):
        # e.g. a NUL character, which PostgreSQL text cannot hold.
        return bad_request("a value in the request cannot be stored (invalid characters?)")
    return internal()


def internal() -> ApiError:
    return ApiError(500, "internal error", code="internal_error")
