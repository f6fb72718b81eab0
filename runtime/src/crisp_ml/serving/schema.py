"""Requests checked against the model's signature, before anything reaches the model.

Accepted bodies, as `mlflow models serve` accepts them (so MLflow clients work unchanged):

    {"dataframe_split": {"columns": [...], "data": [[...], ...]}}
    {"dataframe_records": [{"col": value, ...}, ...]}
    {"instances": [{"col": value, ...}, ...]}          (or {"col": [values], ...})
    {"inputs": {"col": [values], ...}}                  (or records, or {"col": value} for one row)
    text/csv with a header row

plus an optional `"params": {"probabilities": true}`. Unlike MLflow, an unknown column is an error
naming it (MLflow drops it silently), and so is an unknown top-level key or parameter, and an
infinite number (JSON's `Infinity`, 1e309, CSV's `inf`: Python's parsers take them all); NaN and
null are missing values.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, create_model

from .model import Column

FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
PARAMS = {"probabilities": bool}
_NUMBER = {int, float}
_NONE = type(None)
# Python types a JSON value may have, per column type (bool is not a number here).
# An integral float (3.0) is an integer in JSON and JSON Schema, so integer columns take it.
# Integer columns take null too: an integer feature stays an integer in training (its schema and
# segments say "4", not "4.0"), and a value missing at prediction time is the imputer's to fill.
ACCEPTED = {
    "double": _NUMBER | {_NONE},
    "float": _NUMBER | {_NONE},
    "long": _NUMBER | {_NONE},
    "integer": _NUMBER | {_NONE},
    "boolean": {bool},
    "string": {str, _NONE},
    "datetime": {str, _NONE},
}
EXPECTED = {
    "double": "a finite number or null",
    "float": "a finite number or null",
    "long": "a 64-bit integer or null",
    "integer": "a 32-bit integer or null",
    "boolean": "true or false",
    "string": "a string or null",
    "datetime": "an ISO 8601 date-time string or null",
}
# The largest magnitude a value of each floating-point column type may have.
LARGEST = {"double": float(np.finfo(np.float64).max), "float": float(np.finfo(np.float32).max)}
INTEGERS = ("long", "integer")


class RequestError(Exception):
    """A request the server refuses; becomes a JSON error response with this status."""

    def __init__(self, status: int, code: str, message: str, **details: Any):
        super().__init__(message)
        self.status, self.code, self.message, self.details = status, code, message, details

    def body(self) -> dict:
        return {"error_code": self.code, "message": self.message, **self.details}


def malformed(message: str) -> RequestError:
    return RequestError(400, "MALFORMED_REQUEST", message)


@dataclass
class Batch:
    """Validated input: one NumPy array per signature column, and the values as sent."""

    arrays: dict[str, np.ndarray]
    values: dict[str, list]
    rows: int


# --- JSON -----------------------------------------------------------------------------------------


def parse_json(body: bytes, columns: list[Column]) -> tuple[Batch, dict[str, Any]]:
    """A scoring-protocol JSON body as a checked batch, and its `params`."""
    try:
        document = json.loads(body)
    except (ValueError, RecursionError) as error:  # JSONDecodeError and UnicodeDecodeError
        raise malformed(f"the body is not valid JSON: {error}") from None
    if not isinstance(document, dict):
        raise malformed(f"the body must be a JSON object with one of the keys {list(FORMATS)}")
    keys = [key for key in document if key in FORMATS]
    if unknown := [key for key in document if key not in FORMATS and key != "params"]:
        raise malformed(
            f"unknown key(s) {unknown}; use one of {list(FORMATS)} and optional 'params'"
        )
    if len(keys) != 1:
        raise malformed(
            f"the body must hold exactly one of {list(FORMATS)}, found {keys or 'none'}"
        )
    params = check_params(document.get("params"))
    key = keys[0]
    payload = document[key]
    if key == "dataframe_split":
        values = _from_split(payload)
    elif key == "inputs" and isinstance(payload, dict):
        values = _from_columns(payload, allow_scalars=True)
    elif key == "instances" and isinstance(payload, dict):
        values = _from_columns(payload, allow_scalars=False)
    else:
        values = _from_records(payload, key)
    return check(values, columns), params


def check_params(params: Any) -> dict[str, Any]:
    if params is None:
        return {}
    if not isinstance(params, dict):
        raise RequestError(400, "INVALID_PARAMETER", "'params' must be a JSON object")
    if unknown := sorted(set(params) - set(PARAMS)):
        raise RequestError(
            400, "INVALID_PARAMETER", f"unknown parameter(s) {unknown}; accepted: {sorted(PARAMS)}"
        )
    for name, kind in PARAMS.items():
        if name in params and not isinstance(params[name], kind):
            raise RequestError(
                400, "INVALID_PARAMETER", f"parameter '{name}' must be {kind.__name__}"
            )
    return params


def _from_split(payload: Any) -> dict[str, list]:
    if not isinstance(payload, dict) or not isinstance(payload.get("columns"), list):
        raise malformed(
            "'dataframe_split' must be an object with 'columns' (names) and 'data' (rows)"
        )
    if unknown := set(payload) - {"columns", "data", "index"}:
        raise malformed(f"unknown key(s) {sorted(unknown)} in 'dataframe_split'")
    if not isinstance(payload.get("index", []), list):
        raise malformed("'dataframe_split.index' must be a list (of row labels; it is ignored)")
    names, data = payload["columns"], payload.get("data")
    if not all(isinstance(name, str) for name in names):
        raise malformed("'dataframe_split.columns' must be a list of column names (strings)")
    if len(set(names)) != len(names):
        raise malformed("'dataframe_split.columns' names a column twice")
    if not isinstance(data, list) or not all(type(row) is list for row in data):
        raise malformed("'dataframe_split.data' must be a list of rows, each a list of values")
    width = len(names)
    bad = next((i for i, row in enumerate(data) if len(row) != width), None)
    if bad is not None:
        raise malformed(
            f"row {bad} of 'dataframe_split.data' has {len(data[bad])} values, not {width}"
        )
    if not data:
        return {name: [] for name in names}
    return dict(zip(names, map(list, zip(*data, strict=True)), strict=True))


def _from_records(payload: Any, key: str) -> dict[str, list]:
    if not isinstance(payload, list) or not all(type(row) is dict for row in payload):
        raise malformed(f"'{key}' must be a list of rows, each an object of column: value")
    if not payload:
        raise RequestError(400, "EMPTY_BATCH", "the request holds no rows to predict")
    names = list(payload[0])
    expected = set(names)
    for i, row in enumerate(payload):
        if row.keys() != expected:
            missing, extra = sorted(expected - row.keys()), sorted(row.keys() - expected)
            raise RequestError(
                400, "SCHEMA_MISMATCH",
                f"row {i} of '{key}' has other columns than row 0 (missing {missing}, extra {extra})",
                row=i, missing=missing, unknown=extra,
            )  # fmt: skip
    return {name: [row[name] for row in payload] for name in names}


def _from_columns(payload: dict, allow_scalars: bool) -> dict[str, list]:
    lists = [isinstance(v, list) for v in payload.values()]
    if all(lists):
        lengths = {len(v) for v in payload.values()}
        if len(lengths) > 1:
            raise malformed(f"columns of different lengths {sorted(lengths)}")
        return dict(payload)
    if allow_scalars and not any(lists):  # {"inputs": {"a": 1, "b": 2}}: one row
        return {name: [value] for name, value in payload.items()}
    raise malformed("give every column a list of values (or, in 'inputs', every column one value)")


# --- CSV ------------------------------------------------------------------------------------------


def parse_csv(body: bytes, columns: list[Column]) -> Batch:
    """A CSV body with a header row (as `DataFrame.to_csv(index=False)` writes it)."""
    try:
        text = body.decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text)))
    except (UnicodeDecodeError, csv.Error) as error:
        raise malformed(f"the body is not UTF-8 CSV: {error}") from None
    if not rows:
        raise malformed("the CSV body is empty: it needs a header row naming the columns")
    header, data = rows[0], [row for row in rows[1:] if row]
    if len(set(header)) != len(header):
        raise malformed("the CSV header names a column twice")
    bad = next((i for i, row in enumerate(data) if len(row) != len(header)), None)
    if bad is not None:
        raise malformed(f"CSV row {bad + 1} has {len(data[bad])} fields, not {len(header)}")
    raw: dict[str, list] = {name: [] for name in header}
    if data:
        raw = dict(zip(header, map(list, zip(*data, strict=True)), strict=True))
    check_names(list(raw), columns)
    kinds = {c.name: c.type for c in columns}
    return check(
        {name: _from_text(name, kinds[name], texts) for name, texts in raw.items()}, columns
    )


def _from_text(name: str, kind: str, texts: list[str]) -> list:
    """CSV fields to the JSON-like values the column type accepts; empty means missing."""
    out: list = []
    for row, text in enumerate(texts):
        try:
            if text == "":
                out.append(None)
            elif kind in ("double", "float"):
                out.append(float(text))
            elif kind in ("long", "integer"):
                out.append(int(text))
            elif kind == "boolean":
                out.append(
                    {"true": True, "1": True, "false": False, "0": False}[text.strip().lower()]
                )
            else:
                out.append(text)
        except (ValueError, KeyError):
            raise invalid_value(name, kind, row, text) from None
    return out


# --- the checks every format goes through ---------------------------------------------------------


def columns_named(names: list, shown: int = 5) -> str:
    """Column names quoted, the first few of a long list: "columns 'a', 'b' (and 29 more)"."""
    quoted = ", ".join(repr(str(name)) for name in names[:shown])
    more = f" (and {len(names) - shown} more)" if len(names) > shown else ""
    return f"column{'s' if len(names) > 1 else ''} {quoted}{more}"


def check_names(names: list[str], columns: list[Column]) -> None:
    """The request's columns against the signature: what it lacks and what the model does not
    take, each named (the details carry the full lists)."""
    known = {c.name for c in columns}
    missing = [c.name for c in columns if c.required and c.name not in names]
    unknown = [name for name in names if name not in known]
    if missing or unknown:
        parts = (
            [f"the request lacks {columns_named(missing)} that the model needs"] if missing else []
        )
        parts += (
            [f"it has {columns_named(unknown)} that the model does not take"] if unknown else []
        )
        taken = columns_named([c.name for c in columns], shown=10)
        raise RequestError(
            400, "SCHEMA_MISMATCH", f"{'; '.join(parts)} (the model takes {taken})",
            missing=missing, unknown=unknown,
        )  # fmt: skip


def invalid_value(name: str, kind: str, row: int, value: Any) -> RequestError:
    shown = repr(value) if len(repr(value)) <= 60 else repr(value)[:57] + "..."
    return RequestError(
        400, "INVALID_VALUE",
        f"column '{name}' expects {EXPECTED[kind]} ({kind}); row {row} has {shown}",
        column=name, row=row, expected=kind,
    )  # fmt: skip


def check(values: dict[str, list], columns: list[Column]) -> Batch:
    """Names, row count and every value's type against the signature; arrays in its dtypes."""
    check_names(list(values), columns)
    rows = len(next(iter(values.values()))) if values else 0
    if rows == 0:
        raise RequestError(400, "EMPTY_BATCH", "the request holds no rows to predict")
    arrays, kept = {}, {}
    for column in columns:
        # An optional column left out is all missing.
        values_ = values[column.name] if column.name in values else [None] * rows
        arrays[column.name] = _array(column, values_)
        kept[column.name] = values_
    return Batch(arrays, kept, rows)


def _array(column: Column, values: list) -> np.ndarray:
    accepted = ACCEPTED[column.type]
    if _NONE in accepted and column.type not in LARGEST:  # floating-point columns keep NaN as NaN
        values = _nan_as_missing(values)
    kinds = set(map(type, values))
    if not kinds <= accepted:
        row = next(i for i, v in enumerate(values) if type(v) not in accepted)
        raise invalid_value(column.name, column.type, row, values[row])
    if column.type in LARGEST:
        return _floats(column, values)
    if column.type in INTEGERS:
        return _integers(column, values if float not in kinds else _integral(column, values))
    return _exact(column, values)


def _integers(column: Column, values: list) -> np.ndarray:
    """Integers in the column's dtype; with a value missing, float64 with NaN there, as pandas
    holds an integer column with a gap and as the model's imputer takes it."""
    if _NONE not in set(map(type, values)):
        return _exact(column, values)
    _exact(column, [0 if v is None else v for v in values])  # each present value within range
    return np.array([math.nan if v is None else v for v in values], dtype=np.float64)


def _exact(column: Column, values: list) -> np.ndarray:
    """The values in the column's dtype; one that does not fit is refused by its row."""
    try:
        return np.array(values, dtype=column.dtype)
    except (OverflowError, ValueError, TypeError):
        for row, value in enumerate(values):  # find the value to name
            try:
                np.array([value], dtype=column.dtype)
            except (OverflowError, ValueError, TypeError):
                raise invalid_value(column.name, column.type, row, value) from None
        raise


def _floats(column: Column, values: list) -> np.ndarray:
    """Numbers within the column type's range; infinity is no measurement (JSON's `Infinity`,
    1e309, CSV's `inf`), while NaN and null stay what they are everywhere else: a missing value."""
    try:
        wide = np.array(values, dtype=np.float64)  # None becomes NaN
    except OverflowError:  # an integer beyond any double, such as 10**400
        wide = np.array([_float_or_inf(v) for v in values], dtype=np.float64)
    beyond = np.flatnonzero(np.abs(wide) > LARGEST[column.type])  # NaN compares False
    if beyond.size:
        row = int(beyond[0])
        raise invalid_value(column.name, column.type, row, values[row])
    return wide.astype(column.dtype, copy=False)


def _float_or_inf(value: Any) -> float:
    try:
        return math.nan if value is None else float(value)
    except OverflowError:
        return math.inf


def _nan_as_missing(values: list) -> list:
    """NaN is how pandas and MLflow's input examples write a missing value, text columns too."""
    return [None if type(v) is float and math.isnan(v) else v for v in values]


def _integral(column: Column, values: list) -> list:
    """Integral floats (3.0) as ints; any other float in an integer column is refused."""
    for row, value in enumerate(values):
        if type(value) is float and not value.is_integer():
            raise invalid_value(column.name, column.type, row, value)
    return [None if v is None else int(v) for v in values]


def _json_integer(value: Any) -> Any:
    return int(value) if type(value) is float and value.is_integer() else value


# --- the typed /predict request, generated from the signature -------------------------------------

_PYDANTIC = {
    "double": float,
    "float": float,
    "long": int,
    "integer": int,
    "boolean": bool,
    "string": str,
    "datetime": datetime,
}
# /predict documents and enforces 64-bit integer columns within ±(2**53 - 1), the integers every
# JSON parser keeps exact (RFC 7493); /invocations, like MLflow, takes the full int64 range, and its
# rows (InvocationsRow) say so.
PREDICT_BOUNDS = {"long": (-(2**53 - 1), 2**53 - 1), "integer": (-(2**31), 2**31 - 1)}
INVOCATIONS_BOUNDS = PREDICT_BOUNDS | {"long": (-(2**63), 2**63 - 1)}


def row_model(
    columns: list[Column], name: str = "Row", bounds: dict = PREDICT_BOUNDS
) -> type[BaseModel]:
    """One row of the signature as a pydantic model: JSON names are the column names (aliases)."""
    fields: dict[str, Any] = {}
    for i, column in enumerate(columns):
        annotation: Any = _PYDANTIC[column.type]
        if column.type in bounds:
            # The bounds belong to the integer itself, so that beside null (an integer column's
            # missing value) the schema still publishes them as its minimum and maximum.
            low, high = bounds[column.type]
            annotation = Annotated[
                annotation, Field(ge=low, le=high), BeforeValidator(_json_integer)
            ]
        if _NONE in ACCEPTED[column.type]:
            annotation = annotation | None
        fields[f"c{i}"] = (
            annotation,
            Field(
                ... if column.required else None,
                alias=column.name,
                description=f"{column.type}{'' if column.required else ', optional'}",
                strict=column.type != "datetime",  # ISO strings become datetimes
                json_schema_extra=_float_range(column),
            ),
        )
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


def _float_range(column: Column) -> dict | None:
    """A float32 column's range, published; `check` refuses what lies beyond with a 400 naming
    the column, as it refuses infinity in any floating-point column."""
    if column.type != "float":
        return None
    return {"minimum": -LARGEST["float"], "maximum": LARGEST["float"]}


def request_model(row: type[BaseModel]) -> type[BaseModel]:
    return create_model(
        "PredictRequest",
        __config__=ConfigDict(extra="forbid"),
        rows=(list[row], Field(min_length=1, description="the rows to predict, one object each")),
    )


# --- /invocations: MLflow's protocol as far as JSON Schema can say it ----------------------------


def invocations_openapi(
    columns: list[Column], row_ref: str, example: dict | None, classification: bool
) -> dict:
    """The request body and query parameter /invocations publishes: every format the parser takes.

    JSON Schema cannot say everything `parse_json` checks: that a `dataframe_split` row holds the
    values of the columns named at the same positions, that column lists have equal lengths, or
    what CSV text holds. Those are refused with a 400 naming the problem. `row_ref` points at the
    component holding `row_model(columns, bounds=INVOCATIONS_BOUNDS)`.
    """
    row = {"$ref": row_ref}
    rows = {"type": "array", "items": row, "minItems": 1}
    by_column = _column_lists(columns)
    probabilities: dict = {"type": "boolean"} if classification else {"enum": [False]}
    body = {
        "type": "object",
        "description": "Exactly one of the four formats of MLflow's scoring protocol.",
        "properties": {
            "dataframe_split": _split(columns),
            "dataframe_records": rows,
            "instances": {"anyOf": [rows, by_column]},
            "inputs": {"anyOf": [rows, by_column, row]},
            "params": {
                "type": ["object", "null"],  # null: none, as when the key is left out
                "properties": {"probabilities": probabilities},
                "additionalProperties": False,
            },
        },
        "oneOf": [{"required": [key]} for key in FORMATS],
        "additionalProperties": False,
    }
    json_content: dict[str, Any] = {"schema": body}
    if example:
        json_content["example"] = {"dataframe_split": example}
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": json_content,
                "text/csv": {"schema": {"type": "string"}, "description": "a header row first"},
            },
        },
        "parameters": [
            {
                "name": "probabilities",
                "in": "query",
                "required": False,
                "schema": probabilities,
                "description": "classifiers: add per-class probabilities to the answer",
            }
        ],
    }


def _split(columns: list[Column]) -> dict:
    names = [c.name for c in columns]
    return {
        "type": "object",
        "properties": {
            "columns": {"type": "array", "items": {"enum": names}, "uniqueItems": True},
            "data": {
                "type": "array",
                "items": {"type": "array", "maxItems": len(names)},
                "minItems": 1,
            },
            "index": {"type": "array"},
        },
        "required": ["columns", "data"],
        "additionalProperties": False,
    }


def _column_lists(columns: list[Column]) -> dict:
    """{"column": [values], ...}: one list per column, all of one length."""
    values = row_model(columns, bounds=INVOCATIONS_BOUNDS).model_json_schema()["properties"]
    for value in values.values():
        value.pop("default", None)
        value.pop("title", None)
    return {
        "type": "object",
        "properties": {
            c.name: {"type": "array", "items": values[c.name], "minItems": 1} for c in columns
        },
        "required": [c.name for c in columns if c.required],
        "additionalProperties": False,
    }


class InvocationsResponse(BaseModel):
    predictions: list[str | int | float | bool | None]
    probabilities: list[dict[str, float | None]] | None = Field(
        None, description="per-class probabilities, when asked for (classifiers only)"
    )


class Prediction(BaseModel):
    prediction: str | int | float | bool | None
    probabilities: dict[str, float | None] | None = Field(
        None, description="per-class probability (classifiers only)"
    )


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model_name: str
    model_version: str


class ErrorBody(BaseModel):
    """Every error the server answers: a code, a sentence, and details such as column names."""

    model_config = ConfigDict(extra="allow")
    error_code: str
    message: str
