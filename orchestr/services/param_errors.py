"""A request parameter a client got wrong, named so the API answers 400 with ``param`` set."""

from __future__ import annotations


class ParamError(ValueError):
    def __init__(self, message: str, param: str | None = None, code: str = "invalid_value") -> None:
        super().__init__(message)
        self.param = param
        self.code = code
