"""Types for what clients send as ids and tags: bounded length, no control characters.

An id with a NUL, a newline or an escape sequence would end up in Redis keys, logs and JSON
answers; refusing it at the edge (422 naming the field) is cheaper than escaping it everywhere.
"""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, Field, StringConstraints

MAX_ID_LENGTH = 200
MAX_TAG_QUERY_LENGTH = 1000  # one ?tags= value, which may hold several comma-separated tags
MAX_TAG_LENGTH = 100
MAX_LIST_PARAMS = 100  # repeated query parameters (?exclude=a&exclude=b ...)

# C0 and C1 control characters, DEL, and the Unicode line/paragraph separators.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


# The same rule for the OpenAPI documents, so a client (or schemathesis) knows what is refused.
NO_CONTROL_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029]*$"
_DOCUMENTED = Field(json_schema_extra={"pattern": NO_CONTROL_PATTERN})


def no_control_characters(value: str) -> str:
    match = _CONTROL.search(value)
    if match is not None:
        raise ValueError(f"must not contain control characters (found U+{ord(match.group()):04X} "
                         f"at position {match.start()})")
    return value


Identifier = Annotated[str, StringConstraints(min_length=1, max_length=MAX_ID_LENGTH),
                       AfterValidator(no_control_characters), _DOCUMENTED]
Tag = Annotated[str, StringConstraints(min_length=1, max_length=MAX_TAG_LENGTH),
                AfterValidator(no_control_characters), _DOCUMENTED]
TagQuery = Annotated[str, StringConstraints(max_length=MAX_TAG_QUERY_LENGTH),
                     AfterValidator(no_control_characters), _DOCUMENTED]
