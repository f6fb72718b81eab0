"""The model as the server sees it: signature from MLmodel, estimator from model.skops.

MLflow's sklearn flavour writes `model.skops` and records in MLmodel the types skops must trust to
load it (`skops_trusted_types`). We load with exactly those, never with pickle, and only when every
trusted type lives in a namespace we accept (scikit-learn, NumPy, SciPy, pandas, this package):
MLmodel travels with the model, so a crafted one could otherwise whitelist anything.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml

# Column types of MLflow's ColSpec that this server accepts, with the NumPy dtype each becomes.
COLUMN_DTYPES = {
    "double": np.float64,
    "float": np.float32,
    "long": np.int64,
    "integer": np.int32,
    "boolean": np.bool_,
    "string": object,
    "datetime": "datetime64[ns]",
}
TRUSTED_PREFIXES = ("sklearn.", "numpy.", "scipy.", "pandas.", "builtins.", "collections.")
EXTRA_TRUSTED_ENV = "SERVING_TRUSTED_TYPE_PREFIXES"  # comma-separated, e.g. "mylib.,otherlib."


class ModelLoadError(RuntimeError):
    """The model folder cannot be served; the message says why."""


@dataclass(frozen=True)
class Column:
    name: str
    type: str
    required: bool = True

    @property
    def dtype(self) -> Any:
        return COLUMN_DTYPES[self.type]


@dataclass
class ServedModel:
    """A loaded estimator with what the server needs to check requests and shape answers."""

    estimator: Any
    columns: list[Column]
    task: str  # "classification" or "regression"
    mlmodel: dict
    classes: list = field(default_factory=list)
    input_example: dict | None = None  # {"columns": [...], "data": [[...]]}

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]

    def frame(self, arrays: dict[str, np.ndarray]) -> pd.DataFrame:
        """A DataFrame in the signature's column order, as the pipeline was trained on."""
        names = self.column_names
        if self._all_float64:  # one 2-D block: the cheapest DataFrame pandas can make
            return pd.DataFrame(np.column_stack([arrays[n] for n in names]), columns=names)
        return pd.DataFrame({name: arrays[name] for name in names}, columns=names)

    @property
    def _all_float64(self) -> bool:
        return all(column.type == "double" for column in self.columns)

    def predict(self, frame: pd.DataFrame) -> list:
        return jsonable(self.estimator.predict(frame))

    def predict_proba(self, frame: pd.DataFrame) -> list[dict[str, float]]:
        """Per-class probabilities, keyed by the class label as a string (JSON keys are strings)."""
        probabilities = self.estimator.predict_proba(frame)
        labels = [str(label) for label in self.classes]
        return [dict(zip(labels, map(_finite, row), strict=True)) for row in probabilities.tolist()]


def _finite(value: Any) -> Any:
    """NaN and infinity are not JSON: they become null."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def jsonable(values: Any) -> list:
    """Predictions as plain Python values, in MLflow's `predictions` shape."""
    if isinstance(values, pd.DataFrame | pd.Series):
        values = values.to_numpy()
    listed = np.asarray(values).tolist()
    if listed and isinstance(listed[0], float):
        return [_finite(v) for v in listed]
    return listed


def read_mlmodel(model_dir: Path) -> dict:
    path = Path(model_dir) / "MLmodel"
    try:
        return yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError:
        raise ModelLoadError(f"{path} is missing: not an MLflow model folder") from None
    except yaml.YAMLError as error:
        raise ModelLoadError(f"{path} is not valid YAML: {error}") from None


def signature_columns(mlmodel: dict) -> list[Column]:
    """The named input columns of the model's signature; tensor signatures are not served here."""
    raw = (mlmodel.get("signature") or {}).get("inputs")
    if not raw:
        raise ModelLoadError("MLmodel has no input signature: log the model with `signature=`")
    specs = json.loads(raw) if isinstance(raw, str) else raw
    columns = []
    for spec in specs:
        kind, name = spec.get("type"), spec.get("name")
        if kind not in COLUMN_DTYPES or not name:
            raise ModelLoadError(
                f"signature input {spec} is not a named column of a supported type "
                f"({', '.join(COLUMN_DTYPES)}); this server serves tabular models"
            )
        columns.append(Column(name, kind, bool(spec.get("required", True))))
    if len({c.name for c in columns}) != len(columns):
        raise ModelLoadError("the signature names a column twice")
    return columns


def trusted_types(mlmodel: dict) -> list[str]:
    """The skops trusted types MLmodel records, refused unless all are in accepted namespaces."""
    flavor = (mlmodel.get("flavors") or {}).get("sklearn") or {}
    if flavor.get("serialization_format") != "skops":
        raise ModelLoadError(
            f"the model is saved as {flavor.get('serialization_format')!r}; this server loads only "
            "the safe 'skops' format (MLflow's default for scikit-learn), never pickle"
        )
    types = list(flavor.get("skops_trusted_types") or [])
    extra = tuple(p.strip() for p in os.environ.get(EXTRA_TRUSTED_ENV, "").split(",") if p.strip())
    accepted = TRUSTED_PREFIXES + extra + (f"{__package__.split('.')[0]}.",)
    if refused := [t for t in types if not t.startswith(accepted)]:
        raise ModelLoadError(
            f"MLmodel asks skops to trust {refused}, outside {list(accepted)}; if these are yours, "
            f"add their module prefix to {EXTRA_TRUSTED_ENV}"
        )
    return types


def load(model_dir: Path) -> ServedModel:
    """Load a model folder exported from the registry (MLmodel + model.skops + input example)."""
    import skops.io  # here, not at import time: the app module stays cheap to import

    model_dir = Path(model_dir)
    mlmodel = read_mlmodel(model_dir)
    columns = signature_columns(mlmodel)
    flavor = (mlmodel.get("flavors") or {}).get("sklearn") or {}
    skops_file = model_dir / flavor.get("pickled_model", "model.skops")
    try:
        estimator = skops.io.load(skops_file, trusted=trusted_types(mlmodel))
    except ModelLoadError:
        raise
    except Exception as error:  # skops raises several types; each means "cannot serve this"
        raise ModelLoadError(f"skops could not load {skops_file}: {error}") from error
    classes = list(getattr(estimator, "classes_", []))
    declared = (mlmodel.get("metadata") or {}).get("task")
    task = declared or ("classification" if hasattr(estimator, "predict_proba") else "regression")
    return ServedModel(
        estimator=estimator,
        columns=columns,
        task=task,
        mlmodel=mlmodel,
        classes=[c.item() if isinstance(c, np.generic) else c for c in classes],
        input_example=_input_example(model_dir, mlmodel),
    )


def _input_example(model_dir: Path, mlmodel: dict) -> dict | None:
    """The logged input example in `dataframe_split` form, when MLflow saved one."""
    info = mlmodel.get("saved_input_example_info") or {}
    path = model_dir / info.get("artifact_path", "input_example.json")
    try:
        example = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(example, dict) and "columns" in example and "data" in example:
        return {"columns": example["columns"], "data": example["data"]}
    if isinstance(example, list) and example and isinstance(example[0], dict):  # records
        names = list(example[0])
        return {"columns": names, "data": [[row.get(n) for n in names] for row in example]}
    return None
