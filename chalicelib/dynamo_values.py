"""Values in and out of DynamoDB, in one place (the ledger, the watch state and the reports read them).

boto3's TypeSerializer refuses floats and datetimes, and its TypeDeserializer answers every number as
a Decimal, which json cannot write: ``to_dynamo`` and ``from_dynamo`` are the two directions. Integral
Decimals come back as int, others as float.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from chalicelib.clock import isoformat


def to_dynamo(value: Any, path: str = "value") -> Any:
    """Plain Python -> what TypeSerializer accepts (floats as Decimal, datetimes as ISO strings)."""
    if value is None or isinstance(value, str | bool | int | Decimal | bytes):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise TypeError(f"{path}: {value} cannot be stored in DynamoDB; store a finite number")
        return Decimal(repr(value))
    if isinstance(value, datetime):
        return isoformat(value)
    if isinstance(value, Mapping):
        return {str(k): to_dynamo(v, f"{path}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_dynamo(v, f"{path}[{i}]") for i, v in enumerate(value)]
    raise TypeError(
        f"{path}: {type(value).__name__} cannot be stored in the ledger; return str, number, bool, "
        "list, dict, datetime or None from steps"
    )


def from_dynamo(value: Any) -> Any:
    """Decimal -> int/float, recursively (sets of numbers or strings come back sorted)."""
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, Mapping):
        return {str(k): from_dynamo(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [from_dynamo(v) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(from_dynamo(v) for v in value)
    return value
