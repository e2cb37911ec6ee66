"""Request parsers of our own."""

from __future__ import annotations

from typing import Any

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser


class SafeJSONParser(JSONParser):
    """DRF's JSONParser, answering 400 for JSON nested too deeply to decode.

    The stdlib decoder raises ``RecursionError`` (not ``ValueError``) for e.g. 100,000
    nested ``[``; DRF only catches ``ValueError``, so such a body was a 500.
    """

    def parse(self, stream: Any, media_type: str | None = None, parser_context: Any = None) -> Any:
        try:
            return super().parse(stream, media_type, parser_context)
        except RecursionError as exc:
            raise ParseError("JSON parse error - the body is nested too deeply.") from exc
