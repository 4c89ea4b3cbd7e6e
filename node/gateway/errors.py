"""The gateway's error answer: an HTTP status, a stable machine-readable code and a message for humans, sent
as the JSON body ``{"error": {"code", "message"}}`` (docs/gateway.md has the table of codes)."""

from __future__ import annotations

from aiohttp import web

__all__ = ["ApiError", "error_response"]


class ApiError(Exception):
    """An error answer: HTTP status, a stable machine-readable code and a message for humans."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers or {}

    def response(self) -> web.Response:
        return error_response(self.status, self.code, self.message, self.headers)


def error_response(status: int, code: str, message: str, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)
