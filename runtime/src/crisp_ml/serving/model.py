"""The model as the server sees it: signature from MLmodel, estimator from model.onnx or model.skops.

Two runtimes serve a model folder. When 05_deployment compiled the model to ONNX and the compiled
model answered as scikit-learn does on the whole test set, the folder holds `model.onnx` (under the
version's integrity record like every other file) and ONNX Runtime serves it: no scikit-learn,
SciPy or pandas is needed, and the image installs none. Otherwise scikit-learn serves
`model.skops`. SERVING_RUNTIME=scikit-learn (or onnx) overrides the choice.

MLflow's sklearn flavour writes `model.skops` and records in MLmodel the types skops must trust to
load it (`skops_trusted_types`), beyond the scikit-learn estimators and containers skops trusts by
itself. MLmodel travels with the model, so a crafted one could ask skops to trust `builtins.exec`
or `pandas.read_pickle`, which skops would then call while loading. So we load only when every type
MLmodel asks to trust is one of TRUSTED_TYPES: exactly the types this project's own pipelines hold
(tests/test_integrity.py proves every candidate fits), never a prefix, never pickle. Every path that
loads a model goes through `load` (the server, evaluation, the registry and monitoring).
"""

from __future__ import annotations

import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

ONNX_FILE = "model.onnx"  # 05_deployment writes it; onnx_model.py reads it
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
# The types, beyond skops' own trusted set, that a fitted pipeline of this project holds: the column
# selectors' dtypes, and the trees of the forest and the gradient-boosting candidates.
TRUSTED_TYPES = frozenset(
    {
        "numpy.dtype",
        "sklearn.compose._column_transformer.make_column_selector",
        "sklearn.tree._tree.Tree",
        "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    }
)
# A team's own estimator or transformer class, by its exact name: "mylib.models.MyRegressor,...".
EXTRA_TRUSTED_ENV = "SERVING_EXTRA_TRUSTED_TYPES"
# Libraries the model runtime ships: their members include loaders that run code or read files
# (numpy.load, pandas.read_pickle, scipy.io.loadmat, sklearn.datasets.load_svmlight_file), so a name
# in them, or in the standard library, is never an extra trusted type: a team's own classes live in
# its own package.
RUNTIME_LIBRARIES = frozenset(
    {"numpy", "pandas", "scipy", "sklearn", "skops", "joblib", "cloudpickle", "dill", "yaml",
     "mlflow", "threadpoolctl", "pyarrow", "fastapi", "uvicorn", "starlette", "pydantic"}
)  # fmt: skip


ONNX, SKLEARN = "onnx", "scikit-learn"
RUNTIME_ENV = "SERVING_RUNTIME"
RUNTIMES = ("auto", ONNX, SKLEARN)


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

    estimator: Any  # a scikit-learn estimator, or an OnnxScorer taking the arrays themselves
    columns: list[Column]
    task: str  # "classification" or "regression"
    mlmodel: dict
    classes: list = field(default_factory=list)
    input_example: dict | None = None  # {"columns": [...], "data": [[...]]}
    runtime: str = SKLEARN

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]

    def inputs(self, arrays: dict[str, np.ndarray]) -> Any:
        """What the estimator takes: the checked arrays themselves (ONNX), or a DataFrame."""
        return arrays if self.runtime == ONNX else self.frame(arrays)

    def frame(self, arrays: dict[str, np.ndarray]) -> Any:
        """A DataFrame in the signature's column order, as the pipeline was trained on."""
        import pandas as pd  # here: an ONNX-served image has no pandas

        names = self.column_names
        if self._all_float64:  # one 2-D block: the cheapest DataFrame pandas can make
            return pd.DataFrame(np.column_stack([arrays[n] for n in names]), columns=names)
        return pd.DataFrame({name: arrays[name] for name in names}, columns=names)

    @property
    def _all_float64(self) -> bool:
        return all(column.type == "double" for column in self.columns)

    def predict(self, inputs: Any) -> list:
        return jsonable(self.estimator.predict(inputs))

    def predict_proba(self, inputs: Any) -> list[dict[str, float]]:
        """Per-class probabilities, keyed by the class label as a string (JSON keys are strings)."""
        probabilities = self.estimator.predict_proba(inputs)
        labels = [str(label) for label in self.classes]
        return [dict(zip(labels, map(_finite, row), strict=True)) for row in probabilities.tolist()]


def _finite(value: Any) -> Any:
    """NaN and infinity are not JSON: they become null."""
    return value if not isinstance(value, float) or math.isfinite(value) else None


def jsonable(values: Any) -> list:
    """Predictions as plain Python values, in MLflow's `predictions` shape."""
    if hasattr(values, "to_numpy"):  # a pandas Series or DataFrame
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


def extra_trusted_types(env: dict[str, str] | None = None) -> frozenset[str]:
    """The exact class names EXTRA_TRUSTED_ENV adds; a name in a forbidden module is refused."""
    raw = (os.environ if env is None else env).get(EXTRA_TRUSTED_ENV, "")
    names = frozenset(name.strip() for name in raw.split(",") if name.strip())
    forbidden = sorted(n for n in names if _in_forbidden_module(n))
    if forbidden:
        raise ModelLoadError(
            f"{EXTRA_TRUSTED_ENV} names {forbidden}: only classes of your own package can be added "
            "(the standard library and the runtime's libraries hold members that run code or read "
            "files while a model loads)"
        )
    return names


def _in_forbidden_module(name: str) -> bool:
    top = name.partition(".")[0]
    return "." not in name or top in sys.stdlib_module_names or top in RUNTIME_LIBRARIES


def trusted_types(mlmodel: dict) -> list[str]:
    """The skops trusted types MLmodel records, refused unless each is exactly a known type."""
    flavor = (mlmodel.get("flavors") or {}).get("sklearn") or {}
    if flavor.get("serialization_format") != "skops":
        raise ModelLoadError(
            f"the model is saved as {flavor.get('serialization_format')!r}; this project loads only "
            "the safe 'skops' format (MLflow's default for scikit-learn), never pickle"
        )
    types = flavor.get("skops_trusted_types") or []
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise ModelLoadError("MLmodel's skops_trusted_types is not a list of type names")
    if refused := sorted(set(types) - TRUSTED_TYPES - extra_trusted_types()):
        raise ModelLoadError(
            f"MLmodel asks skops to trust {refused}, which no pipeline of this project holds; "
            "refusing to load it (a crafted MLmodel could run code this way). If it is a class of "
            f"your own, name it exactly in {EXTRA_TRUSTED_ENV}"
        )
    return list(types)


def load_estimator(model_dir: Path) -> tuple[Any, dict]:
    """The estimator in model.skops, and MLmodel; only types this project's pipelines hold."""
    import skops.io  # here, not at import time: the app module stays cheap to import

    model_dir = Path(model_dir)
    mlmodel = read_mlmodel(model_dir)
    flavor = (mlmodel.get("flavors") or {}).get("sklearn") or {}
    skops_file = inside(model_dir, flavor.get("pickled_model", "model.skops"))
    trusted = trusted_types(mlmodel)  # before any byte of model.skops is read
    try:
        return skops.io.load(skops_file, trusted=trusted), mlmodel
    except Exception as error:  # skops raises several types; each means "cannot load this"
        raise ModelLoadError(f"skops could not load {skops_file}: {error}") from error


def chosen_runtime(model_dir: Path, wanted: str | None = None) -> str:
    """ONNX when the folder holds a compiled model, else scikit-learn; SERVING_RUNTIME overrides.
    `make serve`, the image and its build all decide here, so they always agree."""
    wanted = (wanted or os.environ.get(RUNTIME_ENV) or "auto").strip().lower()
    if wanted not in RUNTIMES:
        raise ModelLoadError(f"{RUNTIME_ENV}={wanted!r}: use one of {', '.join(RUNTIMES)}")
    compiled = (Path(model_dir) / ONNX_FILE).is_file()
    if wanted == ONNX and not compiled:
        raise ModelLoadError(
            f"{RUNTIME_ENV}=onnx, but {model_dir} holds no {ONNX_FILE}: 05_deployment compiles "
            "the model only when the ONNX model answers as scikit-learn does (its model card says "
            "why not); unset it to serve with scikit-learn"
        )
    return wanted if wanted != "auto" else (ONNX if compiled else SKLEARN)


def load(model_dir: Path, runtime: str | None = None) -> ServedModel:
    """Load a model folder exported from the registry (MLmodel, model.skops, model.onnx when
    compiled, input example) with the runtime `chosen_runtime` picks."""
    model_dir = Path(model_dir)
    runtime = chosen_runtime(model_dir, runtime)
    mlmodel = read_mlmodel(model_dir)
    columns = signature_columns(mlmodel)
    if runtime == ONNX:
        from .onnx_model import OnnxScorer

        estimator: Any = OnnxScorer.load(model_dir / ONNX_FILE, columns)
    else:
        estimator = _sklearn_estimator(model_dir)
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
        runtime=runtime,
    )


def _sklearn_estimator(model_dir: Path) -> Any:
    try:
        return load_estimator(model_dir)[0]
    except ModuleNotFoundError as error:  # an ONNX image, told to serve with scikit-learn
        raise ModelLoadError(
            f"{error.name} is not installed here, so scikit-learn cannot serve this model; "
            f"unset {RUNTIME_ENV} to serve its compiled {ONNX_FILE}"
        ) from None


def inside(model_dir: Path, name: Any) -> Path:
    """A file MLmodel names, refused unless it lies inside the model folder."""
    path = (model_dir / str(name)).resolve()
    if not path.is_relative_to(model_dir.resolve()):
        raise ModelLoadError(f"MLmodel names {name!r}, outside the model folder")
    return path


def _input_example(model_dir: Path, mlmodel: dict) -> dict | None:
    """The logged input example in `dataframe_split` form, when MLflow saved one."""
    info = mlmodel.get("saved_input_example_info") or {}
    try:
        path = inside(model_dir, info.get("artifact_path", "input_example.json"))
        example = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if isinstance(example, dict) and "columns" in example and "data" in example:
        return {"columns": example["columns"], "data": example["data"]}
    if isinstance(example, list) and example and isinstance(example[0], dict):  # records
        names = list(example[0])
        return {"columns": names, "data": [[row.get(n) for n in names] for row in example]}
    return None
