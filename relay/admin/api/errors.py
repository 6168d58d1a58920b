"""Errors as the API's clients see them: one JSON shape, the right 4xx.

::

    {"error": {"code": "not_found", "message": "account 'x' does not exist", "field": null}}

Our exception tree (``relay.core.errors``) maps onto statuses in one table:
``Invalid`` 422 (with the field), ``NotFound`` 404 (also for what the token
may not see), ``Conflict`` 409, ``OperatorOnly`` 403. FastAPI's own request
validation becomes 422 in the same shape. Anything else is a bug: 500,
logged with its traceback, and the client learns nothing of it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from starlette.exceptions import HTTPException as StarletteHTTPException

from relay.core.errors import Conflict, Invalid, NotFound, OperatorOnly, RelayError

log = logging.getLogger("relay.api")


class ErrorDetail(BaseModel):
    code: str
    message: str
    field: str | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class ApiError(Exception):
    """An answer decided by the API layer itself (401, 429)."""

    def __init__(
        self, status: int, code: str, message: str, headers: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.headers = dict(headers or {})


_STATUS: tuple[tuple[type[RelayError], int, str], ...] = (
    (Invalid, 422, "invalid"),
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (OperatorOnly, 403, "forbidden"),
)

_DESCRIPTIONS = {
    401: "No token, or not a valid one",
    403: "Only an operator token may do this",
    404: "No such thing, or not one this token may see",
    409: "It exists already, or a limit forbids it",
    422: "Malformed request or invalid value; `field` names it",
    429: "Too many failed token checks from this address",
    503: "Not ready",
}


def responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI ``responses`` entries of these error statuses."""
    out: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        entry: dict[str, Any] = {"model": ErrorBody, "description": _DESCRIPTIONS[status]}
        if status == 429:
            entry["headers"] = {
                "Retry-After": {"description": "Seconds to wait", "schema": {"type": "string"}}
            }
        out[status] = entry
    return out


def body(status: int, code: str, message: str, field: str | None = None, **kw: Any) -> JSONResponse:
    detail = ErrorDetail(code=code, message=message, field=field)
    return JSONResponse(ErrorBody(error=detail).model_dump(), status_code=status, **kw)


async def _relay_error(_: Request, exc: Exception) -> JSONResponse:
    for kind, status, code in _STATUS:
        if isinstance(exc, kind):
            field = getattr(exc, "field", None)
            # Service fields may be command-line options ("--from"): the API names the field.
            return body(status, code, str(exc), field.lstrip("-") if field else None)
    return await _unexpected(_, exc)


async def _api_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return body(exc.status, exc.code, exc.message, headers=exc.headers)


async def _validation(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    field, message = _first_problem(exc.errors())
    return body(422, "invalid", message, field)


def _first_problem(errors: Sequence[Any]) -> tuple[str | None, str]:
    """The field and a plain message for the first of pydantic's errors."""
    if not errors:
        return None, "malformed request"
    error = errors[0]
    names = [str(p) for p in error.get("loc", ()) if p not in ("body", "query", "path", "header")]
    field = names[-1] if names else None
    if error.get("type") == "string_pattern_mismatch":
        return field, f"{field} must not contain control characters"
    if error.get("type") == "json_invalid":
        return None, "the request body is not valid JSON"
    message = str(error.get("msg", "invalid value"))
    return field, f"{field}: {message}" if field else message


async def _http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 400:
        # FastAPI's answer to a body it cannot decode (not UTF-8): malformed, so 422.
        return body(422, "invalid", "the request body is not valid JSON")
    phrase = HTTPStatus(exc.status_code).phrase
    code = phrase.lower().replace(" ", "_").replace("-", "_")
    return body(exc.status_code, code, str(exc.detail or phrase), headers=exc.headers)


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "admin API: %s %s failed", request.method, request.url.path, exc_info=exc, stack_info=False
    )
    return body(500, "internal", "internal error; the relay's log has the details")


def install(app: FastAPI) -> None:
    app.add_exception_handler(RelayError, _relay_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)
