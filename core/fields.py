"""Serializer fields shared by the apps' input shapes."""

from __future__ import annotations

from typing import Any

from django.core.validators import RegexValidator
from rest_framework import serializers

#: "Not only whitespace", as the schema's ``pattern`` (JSON Schema patterns are unanchored):
#: one character outside what ``str.strip()`` (DRF's trimming) removes, which is exactly
#: ``str.isspace()``. Spelled out, because ``\S`` means something else in the JSON Schema
#: (ECMAScript) dialect: there U+001C-U+001F and U+0085 are not whitespace, so ``"\x1c"``
#: would be schema-valid and yet trimmed to nothing here (found by the schema fuzzer).
NOT_BLANK_PATTERN = (
    r"[^\t\n\x0b\x0c\r\x1c-\x20\x85\xa0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
)
_NOT_BLANK = RegexValidator(NOT_BLANK_PATTERN, message="This field may not be blank.")


class StrictCharField(serializers.CharField):
    """A CharField that refuses what is not a JSON string.

    DRF's CharField turns ``0``, ``1.5`` or ``true`` into ``"0"``, ``"1.5"``, ``"True"``;
    the schema says ``string``, so anything else answers 400 naming the field. The length
    limit holds for the text as sent, before surrounding whitespace is trimmed, as the
    schema's ``maxLength`` says. A field that may not be blank (the default) carries the
    pattern :data:`NOT_BLANK_PATTERN` in the schema: text made only of whitespace is
    trimmed to nothing and refused, so the schema must not call it valid.
    """

    default_error_messages = {"not_a_string": "Not a valid string."}

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if not self.allow_blank and self.trim_whitespace:
            self.validators.append(_NOT_BLANK)

    def run_validation(self, data: Any = serializers.empty) -> Any:
        # Before DRF's shortcut that turns whitespace-only text into "" for fields that
        # may be blank, skipping to_internal_value and so the checks below.
        if isinstance(data, str):
            self._check_length(data)
        return super().run_validation(data)

    def _check_length(self, data: str) -> None:
        if self.max_length is not None and len(data) > self.max_length:
            self.fail("max_length", max_length=self.max_length)

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("not_a_string")
        self._check_length(data)
        return super().to_internal_value(data)
