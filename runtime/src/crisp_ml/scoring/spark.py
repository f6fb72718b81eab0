"""The Spark engine: the same job through `mlflow.pyfunc.spark_udf`, on `local[*]` or a cluster.

Needs pyspark (`crisp-ml-runtime[spark]`) and Java 17 or later. Executors run `PYSPARK_PYTHON`,
set to this interpreter unless it is set already: on a cluster each worker needs the project's
environment at the same path (or set PYSPARK_PYTHON to where the workers have it), and the input
and output must be paths every worker and this machine see alike (a shared mount).

`spark_udf` is given the model folder whose files were checked against the version's integrity
record, never the registry URI: executors load exactly those files (MLflow copies the folder to
them; its MLmodel trusts only this project's skops types, checked in export.download_verified).
Probabilities come from a second UDF on a copy of that folder whose MLmodel asks the pyfunc
wrapper for `predict_proba` (`predict_fn`, one of the methods MLflow's sklearn wrapper exposes);
the model file itself is the checked one.

Spark writes part files in parallel into a hidden staging folder; a folder output keeps them and
Spark's `_SUCCESS`, a single-file output is joined from them on this machine, in bounded memory.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import warnings
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import yaml

from . import ScoringError, tables

PROBABILITIES = "_probabilities"  # the predict_proba UDF's array, before it becomes columns
SPARK_TYPES = {
    "double": "double",
    "float": "float",
    "long": "bigint",
    "integer": "int",
    "boolean": "boolean",
    "string": "string",
    "datetime": "timestamp",
}


class SparkUnavailable(ScoringError):
    """pyspark or Java is missing; the message says how to install them."""


def session(master: str | None, conf: dict[str, str], app_name: str):
    """A Spark session on `master` (default local[*]) that runs Python workers of this
    environment; Arrow moves the rows between the JVM and Python."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise SparkUnavailable(
            "the Spark engine needs pyspark: depend on `crisp-ml-runtime[spark]` in pyproject.toml "
            "(or `uv pip install pyspark`), and Java 17+ (`apt-get install default-jre-headless`)"
        ) from None
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        raise SparkUnavailable(
            "the Spark engine needs Java 17 or later: `apt-get install default-jre-headless` "
            "(Debian, Ubuntu), or set JAVA_HOME"
        )
    # pyspark 4.3 warns that pandas 3 is not fully supported; the engine's own tests are the check
    warnings.filterwarnings("ignore", message="PySpark does not yet fully support pandas")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    os.environ.setdefault("PYSPARK_DRIVER_PYTHON", sys.executable)
    master = master or "local[*]"
    builder = SparkSession.builder.master(master).appName(app_name)
    settings = {
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.executorEnv.PYSPARK_PYTHON": os.environ["PYSPARK_PYTHON"],
        "spark.ui.showConsoleProgress": "true",  # Spark's own progress bar on the terminal
    }
    if master.startswith("local"):
        settings["spark.driver.host"] = "127.0.0.1"
        settings["spark.ui.enabled"] = "false"
    for key, value in {**settings, **conf}.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def score(request, source: tables.Source, model, stage: Path, fmt: str, single: bool, echo) -> int:
    """Score `source` on Spark into `stage`; returns the number of rows written."""
    from pyspark.sql import functions as F

    parts = stage.with_name(stage.name + ".parts") if single else stage
    spark = session(
        request.spark_master, request.spark_conf, f"score {model.name} v{model.version}"
    )
    try:
        echo(f"  Spark {spark.version} on {spark.sparkContext.master}")
        frame = _read(spark, source, model.served.columns, request.id_column)
        inputs = F.struct(*[F.col(f"`{c.name}`") for c in model.served.columns])
        with tempfile.TemporaryDirectory(prefix="score-proba-") as scratch:
            predict = _udf(spark, model.folder, _result_type(model))
            key = F.col(f"`{request.id_column}`")
            scored = frame.select(key, predict(inputs).alias(tables.PREDICTION))
            columns = [key, F.col(tables.PREDICTION)]
            if model.classes:  # one column of arrays, then one column per class
                proba_folder = _predict_proba_copy(model.folder, Path(scratch) / "model")
                proba = _udf(spark, proba_folder, "array<double>")(inputs)
                scored = frame.select(
                    key, predict(inputs).alias(tables.PREDICTION), proba.alias(PROBABILITIES)
                )
                columns += [
                    F.col(PROBABILITIES)[k].alias(tables.probability_column(label))
                    for k, label in enumerate(model.classes)
                ]
            columns.append(F.lit(model.version).alias(tables.MODEL_VERSION))
            writer = scored.select(*columns).write.mode("errorifexists")
            if fmt == "csv":
                writer.option("header", True).csv(str(parts))
            else:
                writer.parquet(str(parts))
    except BaseException as error:
        tables.remove(parts)
        if isinstance(error, ScoringError) or not _from_spark(error):
            raise
        raise ScoringError(f"the Spark job failed: {_spark_message(error)}") from error
    else:
        if single:
            rows = _join(parts, stage, fmt)
            tables.remove(parts)
        elif fmt == "parquet":
            rows = sum(pq.ParquetFile(f).metadata.num_rows for f in _parts(stage, "parquet"))
        else:
            rows = _count_csv(stage)
        echo(f"  scored {rows:,} rows on Spark")
        return rows
    finally:
        spark.stop()


def _from_spark(error: Exception) -> bool:
    return type(error).__module__.split(".")[0] in ("py4j", "pyspark")


def _spark_message(error: Exception) -> str:
    """The first lines of a Spark error, where the cause is named (not the JVM's stack)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("at ", "...", "JVM stacktrace"))]
    return " | ".join(useful[:6])[:2000]


def _read(spark, source: tables.Source, columns, id_column: str):
    """The input as a Spark DataFrame, model columns in the signature's types; CSV read with a
    schema (no inference pass) and FAILFAST, so a value that is not of its type stops the job."""
    from pyspark.sql import functions as F
    from pyspark.sql import types as T

    if source.kind == "csv":
        kinds = {c.name: SPARK_TYPES[c.type] for c in columns}
        schema = T.StructType(
            [T.StructField(name, T._parse_datatype_string(kinds.get(name, "string")), True)
             for name in source.schema.names]
        )  # fmt: skip
        frame = (
            spark.read.option("header", True).option("mode", "FAILFAST")
            .option("enforceSchema", False).schema(schema).csv(str(source.path))
        )  # fmt: skip
    else:
        frame = spark.read.parquet(*[str(f) for f in source.files])
    present = set(frame.columns)
    selected = [F.col(f"`{id_column}`")]
    for column in columns:
        kind = SPARK_TYPES[column.type]
        if column.name in present:
            selected.append(F.col(f"`{column.name}`").cast(kind).alias(column.name))
        else:  # an optional column left out: every row missing
            selected.append(F.lit(None).cast(kind).alias(column.name))
    return frame.select(*selected)


def _udf(spark, folder: Path, result_type: str):
    import mlflow.pyfunc

    return mlflow.pyfunc.spark_udf(spark, str(folder), result_type=result_type, env_manager="local")


def _result_type(model) -> str:
    kind = tables.prediction_type(model.classes, model.served.task)
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    if pa.types.is_boolean(kind):
        return "boolean"
    if pa.types.is_integer(kind):
        return "long"
    return "double"


def _predict_proba_copy(folder: Path, dest: Path) -> Path:
    """The checked model folder, with MLmodel's pyfunc flavour calling predict_proba."""
    shutil.copytree(folder, dest)
    mlmodel = yaml.safe_load((dest / "MLmodel").read_text())
    mlmodel["flavors"]["python_function"]["predict_fn"] = "predict_proba"
    (dest / "MLmodel").write_text(yaml.safe_dump(mlmodel, sort_keys=False))
    return dest


def _parts(folder: Path, fmt: str) -> list[Path]:
    suffix = ".csv" if fmt == "csv" else ".parquet"
    return sorted(p for p in tables.output_files(folder) if p.name.endswith(suffix))


def _join(parts: Path, dest: Path, fmt: str) -> int:
    """Spark's part files as one file, a row group at a time; returns the row count."""
    files, rows = _parts(parts, fmt), 0
    if fmt == "parquet":
        schema = pq.read_schema(files[0])
        with pq.ParquetWriter(str(dest), schema, compression="snappy") as writer:
            for file in files:
                reader = pq.ParquetFile(file)
                for i in range(reader.num_row_groups):
                    table = reader.read_row_group(i).cast(schema)
                    writer.write_table(table)
                    rows += table.num_rows
        return rows
    with dest.open("wb") as out:
        header_written = False
        for file in files:
            with file.open("rb") as part:
                header = part.readline()
                if not header_written:
                    out.write(header)
                    header_written = True
                shutil.copyfileobj(part, out, 8 * 1024 * 1024)
    return _count_csv(dest)


def _count_csv(path: Path) -> int:
    files = [path] if path.is_file() else _parts(path, "csv")
    rows = 0
    for file in files:
        reader = pacsv.open_csv(str(file), convert_options=pacsv.ConvertOptions(include_columns=[]))
        rows += sum(batch.num_rows for batch in reader)
    return rows
