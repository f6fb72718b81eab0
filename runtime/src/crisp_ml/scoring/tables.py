"""The files of a batch: the input read in chunks and checked against the model's signature, the
output written under a hidden name and revealed only when complete, and their digests.

Inputs: a `.csv` file (header row), a `.parquet` file, or a folder of Parquet files (Spark's output
folders included: names starting with `_` or `.` are skipped). CSV columns the signature names are
read in the signature's types; the id column as text (an id is a name, not a number: `007` stays
`007`); other columns are not read at all.

Outputs: a `.parquet` or `.csv` file, or a folder (any other name) holding Parquet or CSV part files
and a `_SUCCESS` marker. Either is written under `.<name>.partial-<random>` beside it and renamed
when the last row is in: a failed or killed job never leaves a file or folder under the output's
name, and a `.partial-` leftover of a killed one says what it is.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from ..serving.integrity import sha256_file
from ..serving.model import Column

CSV_SUFFIXES = (".csv",)
PARQUET_SUFFIXES = (".parquet", ".pq")
SUCCESS = "_SUCCESS"  # as Spark and Hadoop mark a complete output folder
PREDICTION = "prediction"
MODEL_VERSION = "model_version"
ROW = "row"  # the input's row number, when no id column is given (local engine only)
PROBABILITY = "probability_"  # + the class label, one column per class
CSV_BLOCK_BYTES = 8 * 1024 * 1024
# The Arrow type each signature type is read and converted as (schema.py's dtypes, in Arrow).
ARROW_TYPES = {
    "double": pa.float64(),
    "float": pa.float32(),
    "long": pa.int64(),
    "integer": pa.int32(),
    "boolean": pa.bool_(),
    "string": pa.string(),
    "datetime": pa.timestamp("ns"),
}


class TableError(ValueError):
    """An input or output the job cannot use; the message names the file, the column and the fix."""


# --- the input ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Source:
    """An input file or folder, what it holds and how many rows (None for CSV: known once read)."""

    path: Path
    kind: str  # "csv" or "parquet"
    schema: pa.Schema
    rows: int | None
    files: tuple[Path, ...]

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files)


def open_source(path: Path) -> Source:
    """The input at `path`, its columns and (Parquet) its row count, read from headers only."""
    path = Path(path)
    if path.is_dir():
        files = tuple(sorted(p for p in path.rglob("*") if p.is_file() and _visible(p, path)))
        parquet = tuple(p for p in files if p.suffix.lower() in PARQUET_SUFFIXES)
        if not parquet:
            raise TableError(
                f"{path} is a folder without Parquet files (*.parquet): give a folder of Parquet "
                "files, or one CSV or Parquet file"
            )
        return _parquet_source(path, parquet)
    if not path.is_file():
        raise TableError(f"no input at {path}: give a CSV or Parquet file, or a folder of Parquet")
    suffix = path.suffix.lower()
    if suffix in PARQUET_SUFFIXES:
        return _parquet_source(path, (path,))
    if suffix in CSV_SUFFIXES:
        schema, empty = csv_header(path)
        return Source(path, "csv", schema, 0 if empty else None, (path,))
    raise TableError(f"{path.name}: a .csv or .parquet file is needed, or a folder of Parquet")


def _visible(file: Path, root: Path) -> bool:
    return not any(part.startswith(("_", ".")) for part in file.relative_to(root).parts)


def _parquet_source(path: Path, files: tuple[Path, ...]) -> Source:
    try:
        dataset = pads.dataset([str(f) for f in files], format="parquet")
        return Source(path, "parquet", dataset.schema, dataset.count_rows(), files)
    except (pa.ArrowException, OSError) as error:
        raise TableError(f"{path} is not readable Parquet: {error}") from None


def csv_header(path: Path) -> tuple[pa.Schema, bool]:
    """The CSV's column names (as text: the reader types them as the signature says)."""
    try:
        with pa.OSFile(str(path)) as file:
            reader = pacsv.open_csv(file, read_options=pacsv.ReadOptions(block_size=1 << 20))
            names = reader.schema.names
            empty = not any(batch.num_rows for batch in _first_batches(reader))
    except pa.ArrowInvalid as error:
        if "Empty CSV file" in str(error):
            raise TableError(f"{path} is empty, without even a header row") from None
        raise TableError(f"{path} is not readable CSV: {error}") from None
    if len(set(names)) != len(names):
        raise TableError(f"{path}: the header names a column twice")
    schema = pa.schema([pa.field(name, pa.string()) for name in names])
    return schema, empty


def _first_batches(reader: pacsv.CSVStreamingReader) -> Iterator[pa.RecordBatch]:
    """The reader's first batch (header-only files have none)."""
    try:
        yield reader.read_next_batch()
    except StopIteration:
        return


# --- the checks before any row is scored ----------------------------------------------------------


def _fits(arrow_type: pa.DataType, kind: str) -> bool:
    """Whether a column of `arrow_type` can hold the signature's `kind` of value."""
    t = pa.types
    if t.is_null(arrow_type):  # a column with no value at all: every row missing
        return kind != "boolean"
    if t.is_dictionary(arrow_type):
        arrow_type = arrow_type.value_type
    if kind in ("double", "float", "long", "integer"):
        # Integral floats are integers (checked row by row as they are read), as the server does.
        return t.is_integer(arrow_type) or t.is_floating(arrow_type) or t.is_decimal(arrow_type)
    if kind == "boolean":
        return t.is_boolean(arrow_type)
    if kind == "string":
        return t.is_string(arrow_type) or t.is_large_string(arrow_type)
    return t.is_timestamp(arrow_type) or t.is_date(arrow_type) or t.is_string(arrow_type)


def problems(source: Source, columns: list[Column], id_column: str) -> list[str]:
    """Everything about the input's columns that keeps it from being scored, each with its fix."""
    names = source.schema.names
    found: list[str] = []
    if id_column and id_column not in names:
        found.append(
            f"no id column {id_column!r} (data.id_column, or --id-column): the input has "
            f"{_listed(names)}; pass --id-column with one of them"
        )
    missing = [c.name for c in columns if c.required and c.name not in names]
    if missing:
        found.append(
            f"the input lacks {_listed(missing)} that the model needs; add them (the model takes "
            f"{_listed([c.name for c in columns], 10)})"
        )
    if source.kind == "parquet":
        for column in columns:
            if column.name in names:
                arrow_type = source.schema.field(column.name).type
                if not _fits(arrow_type, column.type):
                    found.append(
                        f"column {column.name!r} holds {arrow_type} values, and the model takes "
                        f"{column.type}: write it as {ARROW_TYPES[column.type]}"
                    )
    if source.rows == 0:
        found.append(f"{source.path} holds no rows: there is nothing to score")
    return found


def _listed(names: list[str], shown: int = 5) -> str:
    quoted = ", ".join(repr(str(n)) for n in names[:shown])
    more = f" (and {len(names) - shown} more)" if len(names) > shown else ""
    return f"column{'s' if len(names) != 1 else ''} {quoted}{more}"


# --- reading in chunks ----------------------------------------------------------------------------


class Progress:
    """Bytes read so far, and the input's SHA-256 as it streams by (CSV is read once, in order)."""

    def __init__(self) -> None:
        self.bytes_read = 0
        self.sha256 = hashlib.sha256()


class _Counting:
    """A binary file that hashes and counts what is read from it."""

    def __init__(self, raw: BinaryIO, progress: Progress):
        self.raw, self.progress = raw, progress
        self.closed = False

    def read(self, size: int = -1) -> bytes:
        data = self.raw.read(size)
        self.progress.bytes_read += len(data)
        self.progress.sha256.update(data)
        return data

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def close(self) -> None:
        self.closed = True
        self.raw.close()


def chunks(
    source: Source, columns: list[Column], id_column: str, chunk_rows: int, progress: Progress
) -> Iterator[pa.RecordBatch]:
    """The input's id and model columns, a chunk at a time: memory holds one chunk, not the file."""
    wanted = [c.name for c in columns if c.name in source.schema.names]
    if id_column:
        wanted = [id_column, *(name for name in wanted if name != id_column)]
    if source.kind == "parquet":
        dataset = pads.dataset([str(f) for f in source.files], format="parquet")
        # Little read-ahead: by default the scanner buffers 16 batches of 4 files, most of a file
        batches = dataset.to_batches(
            columns=wanted, batch_size=chunk_rows, batch_readahead=1, fragment_readahead=1
        )
        for batch in batches:
            progress.bytes_read = 0  # Parquet: progress counts rows (the total is known)
            if batch.num_rows:
                yield batch
        return
    types = {c.name: ARROW_TYPES[c.type] for c in columns if c.type != "datetime"}
    if id_column:
        types[id_column] = pa.string()
    convert = pacsv.ConvertOptions(
        column_types=types, include_columns=wanted, strings_can_be_null=True,
        quoted_strings_can_be_null=False,
    )  # fmt: skip
    with source.path.open("rb") as raw:
        stream = pa.PythonFile(_Counting(raw, progress), mode="r")
        try:  # the first block is read here already
            reader = pacsv.open_csv(
                stream, read_options=pacsv.ReadOptions(block_size=CSV_BLOCK_BYTES),
                convert_options=convert,
            )  # fmt: skip
        except pa.ArrowInvalid as error:
            raise TableError(f"{source.path}: {_csv_problem(error, source)}") from None
        while True:
            try:
                batch = reader.read_next_batch()
            except StopIteration:
                return
            except pa.ArrowInvalid as error:
                raise TableError(f"{source.path}: {_csv_problem(error, source)}") from None
            for start in range(0, batch.num_rows, chunk_rows):
                yield batch.slice(start, chunk_rows)


def _csv_problem(error: pa.ArrowInvalid, source: Source) -> str:
    """Arrow's message, with the column named: it counts columns from 0."""
    text = str(error)
    names = source.schema.names
    found = re.search(r"CSV column #(\d+)", text)
    if found and int(found.group(1)) < len(names):
        text = text.replace(found.group(0), f"CSV column {names[int(found.group(1))]!r}")
    if "conversion error" in text:
        return f"{text}; fix the value (an empty field is a missing value) and score again"
    return text


def to_arrays(batch: pa.RecordBatch, columns: list[Column], offset: int) -> dict[str, np.ndarray]:
    """The model columns of a chunk as NumPy arrays in the signature's dtypes, as the server makes
    them (schema.check): missing values as NaN (numbers) or None (text), an integer column with a
    gap as float64, infinity and values beyond the type refused with the row that holds them."""
    arrays = {}
    names = batch.schema.names
    for column in columns:
        if column.name not in names:  # an optional column left out: every row missing
            values = pa.nulls(batch.num_rows, ARROW_TYPES[column.type])
        else:
            values = batch.column(names.index(column.name))
        arrays[column.name] = _array(column, values, offset)
    return arrays


def _array(column: Column, values: pa.Array, offset: int) -> np.ndarray:
    kind = column.type
    target = ARROW_TYPES[kind]
    if kind in ("long", "integer") and values.null_count:
        target = pa.float64()  # as pandas holds an integer column with a gap
        _cast(column, values, ARROW_TYPES[kind], offset)  # each present value within range
    if kind == "boolean" and values.null_count:
        row = _first(values.is_null())
        raise TableError(f"column {column.name!r} (boolean) has no value in row {offset + row}")
    converted = _cast(column, values, target, offset)
    if kind in ("double", "float"):
        infinite = pc.is_inf(converted)
        if pc.any(infinite).as_py():
            row = _first(infinite)
            raise TableError(
                f"column {column.name!r} holds {converted[row].as_py()} in row {offset + row}: "
                "infinity is no measurement; write a number, or leave it empty (missing)"
            )
    if kind == "datetime":
        return converted.to_pandas().to_numpy()
    return converted.to_numpy(zero_copy_only=False)


def _cast(column: Column, values: pa.Array, target: pa.DataType, offset: int) -> pa.Array:
    if values.type == target:
        return values
    try:
        return pc.cast(values, target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        row = _bad_row(values, target)
        where = f" in row {offset + row} ({values[row].as_py()!r})" if row is not None else ""
        raise TableError(
            f"column {column.name!r} cannot be read as {column.type}{where}: {error}"
        ) from None


def _bad_row(values: pa.Array, target: pa.DataType) -> int | None:
    for row in range(len(values)):  # only on the error path: find the value to name
        try:
            pc.cast(values.slice(row, 1), target, safe=True)
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            return row
    return None


def _first(mask: pa.Array) -> int:
    return int(np.flatnonzero(mask.to_numpy(zero_copy_only=False))[0])


# --- the output -----------------------------------------------------------------------------------


def output_kind(path: Path, fmt: str | None) -> tuple[str, bool]:
    """("parquet" or "csv", whether `path` is one file) from its name and an explicit format."""
    suffix = Path(path).suffix.lower()
    single = suffix in CSV_SUFFIXES + PARQUET_SUFFIXES
    named = "csv" if suffix in CSV_SUFFIXES else "parquet" if single else None
    if fmt and named and fmt != named:
        raise TableError(f"--format {fmt} does not fit the output's name {Path(path).name}")
    return fmt or named or "parquet", single


def probability_column(label: Any) -> str:
    return f"{PROBABILITY}{label}"


def prediction_type(classes: list, task: str) -> pa.DataType:
    """The Arrow type of a prediction: the classes' own type, or float64 for a regressor."""
    if task == "classification" and classes:
        return pa.array(classes).type
    return pa.float64()


class Writer:
    """Rows to a staged output: one file, or a folder with one part file and `_SUCCESS`."""

    def __init__(self, stage: Path, fmt: str, single: bool, schema: pa.Schema):
        self.fmt, self.single, self.schema, self.stage = fmt, single, schema, stage
        if not single:
            stage.mkdir()
        target = stage if single else stage / f"part-00000.{'csv' if fmt == 'csv' else 'parquet'}"
        if fmt == "csv":
            self._writer: Any = pacsv.CSVWriter(str(target), schema)
        else:
            self._writer = pq.ParquetWriter(str(target), schema, compression="snappy")
        self.rows = 0

    def write(self, table: pa.Table) -> None:
        self._writer.write_table(table.cast(self.schema))
        self.rows += table.num_rows

    def close(self) -> None:
        self._writer.close()
        if not self.single:
            (self.stage / SUCCESS).touch()


def staging_path(output: Path) -> Path:
    """Where an output is written before it is complete: hidden, beside it, marked partial."""
    output = Path(output).absolute()
    output.parent.mkdir(parents=True, exist_ok=True)
    return output.parent / f".{output.name}.partial-{uuid.uuid4().hex[:12]}"


def check_output(output: Path, overwrite: bool) -> None:
    if Path(output).exists() and not overwrite:
        raise TableError(
            f"{output} exists: pass --overwrite to replace it, or choose another --output"
        )


def reveal(stage: Path, output: Path, overwrite: bool) -> None:
    """Put the complete output in place: a rename in one folder, so it is whole or absent."""
    output = Path(output).absolute()
    if output.exists():
        if not overwrite:
            raise TableError(f"{output} appeared while scoring; the result stays in {stage}")
        old = output.parent / f".{output.name}.replaced-{uuid.uuid4().hex[:12]}"
        output.replace(old)
        stage.replace(output)
        remove(old)
        return
    stage.replace(output)


def remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists():
        path.unlink()


def output_files(path: Path) -> list[Path]:
    """The data files of an output: the file itself, or a folder's part files."""
    path = Path(path)
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and _visible(p, path))


def digest(files: list[Path], root: Path | None = None) -> str:
    """SHA-256 of the files' bytes (with their names below `root` when there are several)."""
    total = hashlib.sha256()
    if len(files) == 1:
        return sha256_file(files[0])
    for file in files:
        name = str(file.relative_to(root)) if root else file.name
        total.update(f"{name}\0{sha256_file(file)}\n".encode())
    return total.hexdigest()
