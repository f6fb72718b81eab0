"""The chosen pipeline compiled to ONNX for serving, and proved to answer as scikit-learn does.

`compile_for_serving` converts the fitted pipeline, preprocessing included, with skl2onnx, then
scores every test row through the server's own path (`schema.check`, then `OnnxScorer`) and
compares with the pipeline's answers. A model that cannot be converted, or whose answers differ
beyond the tolerances below, is served by scikit-learn instead, and `Compiled.reason` says why;
nothing here raises for a model it cannot compile.

Double precision first: numeric columns enter the graph as float64, so the graph computes what
scikit-learn computes (differences near 1e-12 where float32 gives 1e-7, and the trees' thresholds
compare the same numbers). A model that fails in double is tried again in float32.
"""

from __future__ import annotations

import copy
import json
import re
import tempfile
import traceback
from dataclasses import dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.pipeline import FeatureUnion, Pipeline
from sklearn.preprocessing import OneHotEncoder

from .serving import schema
from .serving.model import Column, ModelLoadError
from .serving.onnx_model import METADATA_KEY, ONNX_FILE, OnnxScorer

# Largest |probability difference| (ONNX Runtime against scikit-learn) that still counts as the same
# answer. Double-precision graphs differ by ~1e-12 and float32 graphs by ~1e-7 (LR, forests); 1e-5
# keeps well above both, and well below any difference a decision or a reported figure could show.
PROBABILITY_TOLERANCE = 1e-5
# Regression: the same, relative to the scale of the predictions: atol = VALUE_TOLERANCE *
# max(1, max|y_sklearn|), since float32 rounds relative to the magnitude of the numbers.
VALUE_TOLERANCE = 1e-5
PRECISIONS = ("double", "float")
# The string the converted categorical imputer takes for a missing text value: OnnxScorer puts it
# where a request has None. It must be no category the model knows (checked), and unlikely to be
# sent: a request sending it gets the missing value's answer.
MISSING_STRING = "\x00missing"
NUMERIC_TYPES = ("double", "float", "long", "integer")
# How far each attempt got, to report the most informative failure of the two precisions.
STEPS = ("conversion", "loading", "parity")
REASON_LENGTH = 200


@dataclass(frozen=True)
class Compiled:
    """The ONNX model (or None, with the reason) and the figures that justify serving it."""

    onnx: bytes | None
    reason: str = ""
    parity: dict = field(default_factory=dict)
    versions: dict = field(default_factory=dict)

    @property
    def runtime(self) -> str:
        return "onnx" if self.onnx is not None else "scikit-learn"

    def metrics(self) -> dict[str, float]:
        """For mlflow.log_metrics: whether it converted and how close its answers are."""
        figures = {"onnx_converted": 1.0 if self.onnx is not None else 0.0}
        for key, value in self.parity.items():
            if key != "tolerance" and isinstance(value, int | float):
                figures[f"onnx_parity_{key}"] = float(value)
        return figures

    def tags(self) -> dict[str, str]:
        """For mlflow.set_tags: which runtime serves the model, why, and what made the graph."""
        tags = {"serving_runtime": self.runtime}
        if self.reason:
            tags["serving_runtime_reason"] = self.reason
        for key in ("skl2onnx", "onnx", "onnxruntime", "precision"):
            if key in self.versions:
                tags[f"onnx_{key}" if key != "skl2onnx" else "skl2onnx_version"] = str(
                    self.versions[key]
                )
        if "opset" in self.versions:
            tags["onnx_opset"] = json.dumps(self.versions["opset"], sort_keys=True)
        return tags

    def card_section(self) -> str:
        """The model card's "## Serving runtime" section."""
        lines = ["## Serving runtime", ""]
        if self.onnx is not None:
            lines.append(
                "Served by **ONNX Runtime** from `model.onnx` (the pipeline compiled with skl2onnx, "
                f"preprocessing included, in {self.versions.get('precision', '?')} precision): "
                "no scikit-learn in the image, and a row scored in a fraction of the time."
            )
        else:
            lines.append(f"Served by **scikit-learn**: {self.reason}")
        if self.parity:
            lines += ["", _parity_sentence(self.parity)]
        if self.versions:
            opsets = ", ".join(
                f"{domain or 'ai.onnx'} {number}" for domain, number in self.versions["opset"].items()
            ) if self.versions.get("opset") else "none"  # fmt: skip
            converter = (
                f"Converter: skl2onnx {self.versions.get('skl2onnx')}, onnx "
                f"{self.versions.get('onnx')}, onnxruntime {self.versions.get('onnxruntime')}; "
                f"opsets {opsets}."
            )
            lines += ["", converter]
        return "\n".join(lines) + "\n"


def _parity_sentence(parity: dict) -> str:
    rows = parity.get("rows", 0)
    if "max_probability_difference" in parity:
        return (
            f"Parity on {rows} test rows, through the server's input checks: "
            f"{parity.get('mismatched_classes', 0)} predicted classes differ from scikit-learn's; "
            f"largest probability difference {parity['max_probability_difference']:.3g} "
            f"(tolerance {parity.get('tolerance', 0):.3g})."
        )
    return (
        f"Parity on {rows} test rows, through the server's input checks: largest difference from "
        f"scikit-learn's prediction {parity.get('max_value_difference', 0):.3g} "
        f"(tolerance {parity.get('tolerance', 0):.3g})."
    )


class _Failure(Exception):
    """A step of one attempt failed; the sentence names it, the estimator and the message."""

    def __init__(self, step: str, sentence: str, parity: dict | None = None):
        super().__init__(sentence)
        self.step, self.sentence, self.parity = step, sentence, parity or {}


# --- the entry point ------------------------------------------------------------------------------


def compile_for_serving(
    model: Pipeline, X: pd.DataFrame, task: str, columns: list[Column]
) -> Compiled:
    """The fitted pipeline as ONNX, if ONNX Runtime answers as it does on every row of X.

    `columns` is the model's signature (`serving.model.signature_columns(mlmodel)`); X the test
    features. Tries double precision, then float32; never raises for a model it cannot compile.
    """
    if task not in ("classification", "regression"):
        raise ValueError(f"task must be 'classification' or 'regression', not {task!r}")
    failures: list[_Failure] = []
    for precision in PRECISIONS:
        try:
            onnx_bytes, parity, opset = _attempt(model, X, task, columns, precision)
        except _Failure as failure:
            failures.append(failure)
            continue
        return Compiled(onnx_bytes, "", parity, _versions(opset, precision))
    furthest = max(failures, key=lambda f: STEPS.index(f.step))  # first of equals: double's
    return Compiled(None, furthest.sentence, furthest.parity, _versions({}, ""))


def _attempt(
    model: Pipeline, X: pd.DataFrame, task: str, columns: list[Column], precision: str
) -> tuple[bytes, dict, dict]:
    onnx_model = _convert(model, task, columns, precision)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ONNX_FILE
        path.write_bytes(onnx_model.SerializeToString())
        try:
            scorer = OnnxScorer.load(path, columns)
        except ModelLoadError as error:
            raise _Failure("loading", f"loading ({precision}): {_first_line(error)}") from None
    try:
        parity = check_parity(model, scorer, X, task, columns)
    except schema.RequestError as error:
        raise _Failure(
            "parity", f"parity ({precision}): the test rows fail the server's checks: {error}"
        ) from None
    except Exception as error:  # noqa: BLE001 - ONNX Runtime's run errors are plain Exceptions
        raise _Failure(
            "parity", f"parity ({precision}): ONNX Runtime could not score the test rows: "
            f"{_first_line(error)}",
        ) from None  # fmt: skip
    if not parity["passed"]:
        raise _Failure("parity", _parity_failure(model, parity, precision), _public(parity))
    opset = {entry.domain: entry.version for entry in onnx_model.opset_import}
    return onnx_model.SerializeToString(), _public(parity), opset


def _public(parity: dict) -> dict:
    return {key: value for key, value in parity.items() if key != "passed"}


def _versions(opset: dict, precision: str) -> dict:
    versions: dict[str, Any] = {name: version(name) for name in ("skl2onnx", "onnx", "onnxruntime")}
    versions["opset"] = opset
    versions["precision"] = precision
    return versions


# --- parity through the server's path -------------------------------------------------------------


def check_parity(
    model: Any, scorer: OnnxScorer, X: pd.DataFrame, task: str, columns: list[Column]
) -> dict:
    """Every row of X scored by both, the ONNX side fed exactly what the server would feed it."""
    arrays = schema.check({c.name: X[c.name].tolist() for c in columns}, columns).arrays
    if task == "classification":
        expected, expected_proba = model.predict(X).tolist(), model.predict_proba(X)
        got, got_proba = scorer.predict(arrays).tolist(), scorer.predict_proba(arrays)
        mismatched = sum(
            a != b or type(a) is not type(b) for a, b in zip(expected, got, strict=True)
        )
        difference = _max_difference(expected_proba, got_proba)
        return {
            "rows": len(X),
            "mismatched_classes": mismatched,
            "max_probability_difference": difference,
            "tolerance": PROBABILITY_TOLERANCE,
            "passed": mismatched == 0 and difference <= PROBABILITY_TOLERANCE,
        }
    expected_values = np.asarray(model.predict(X), dtype=np.float64)
    difference = _max_difference(expected_values, scorer.predict(arrays))
    tolerance = VALUE_TOLERANCE * max(1.0, float(np.max(np.abs(expected_values), initial=0.0)))
    return {
        "rows": len(X),
        "max_value_difference": difference,
        "tolerance": tolerance,
        "passed": difference <= tolerance,
    }


def _max_difference(expected: np.ndarray, got: np.ndarray) -> float:
    if np.shape(expected) != np.shape(got):
        return float("inf")
    difference = np.abs(np.asarray(expected, dtype=np.float64) - got)
    return float(np.nanmax(difference, initial=0.0)) if not np.isnan(difference).all() else 0.0


def _parity_failure(model: Any, parity: dict, precision: str) -> str:
    estimator = type(_final_estimator(model)).__name__
    if "mismatched_classes" in parity:
        found = (
            f"{parity['mismatched_classes']} of {parity['rows']} predicted classes differ, largest "
            f"probability difference {parity['max_probability_difference']:.3g}"
        )
    else:
        found = f"largest difference {parity['max_value_difference']:.3g}"
    return (
        f"parity ({precision}): ONNX Runtime's answers for {estimator} differ from "
        f"scikit-learn's on the test rows ({found}; tolerance {parity['tolerance']:.3g})"
    )


# --- conversion -----------------------------------------------------------------------------------


def _convert(model: Pipeline, task: str, columns: list[Column], precision: str) -> Any:
    """The ONNX ModelProto of a servable copy of the pipeline, with its metadata; or _Failure."""
    from skl2onnx import convert_sklearn  # heavy, and only needed here

    names = input_names([c.name for c in columns])
    try:
        initial_types = _initial_types(columns, names, precision)
        servable = servable_copy(model, names, task, precision)
        _register_converters()
        onnx_model = convert_sklearn(
            servable,
            initial_types=initial_types,
            options=_options(servable, task),
            target_opset=None,
        )
    except Exception as error:  # noqa: BLE001 - skl2onnx raises anything, TypeError to RuntimeError
        raise _Failure("conversion", _conversion_failure(error, model, precision)) from None
    metadata = {
        "task": task,
        "classes": _final_estimator(model).classes_.tolist() if task == "classification" else [],
        "inputs": names,
        "missing_string": MISSING_STRING,
        "precision": precision,
    }
    entry = onnx_model.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(metadata)
    return onnx_model


def input_names(columns: list[str]) -> dict[str, str]:
    """A safe, unique graph input name for each column ("Mean Radius (mm)" -> "c0_Mean_Radius_mm")."""
    return {
        name: f"c{i}_" + (re.sub(r"[^0-9A-Za-z]+", "_", name).strip("_") or "column")
        for i, name in enumerate(columns)
    }


def _initial_types(columns: list[Column], names: dict[str, str], precision: str) -> list:
    from skl2onnx.common.data_types import (
        BooleanTensorType,
        DoubleTensorType,
        FloatTensorType,
        StringTensorType,
    )

    numeric = DoubleTensorType if precision == "double" else FloatTensorType
    by_type = {"string": StringTensorType, "boolean": BooleanTensorType}
    types = []
    for column in columns:
        kind = numeric if column.type in NUMERIC_TYPES else by_type.get(column.type)
        if kind is None:
            raise ValueError(f"column '{column.name}' is {column.type}, which is not converted")
        types.append((names[column.name], kind([None, 1])))
    return types


def servable_copy(model: Pipeline, names: dict[str, str], task: str, precision: str) -> Pipeline:
    """A copy of the fitted pipeline the converter takes, answering the same:

    - the column transformers select the graph's input names instead of the column names;
    - an imputer of text columns recognises MISSING_STRING, its fitted statistics unchanged
      (skl2onnx converts a text imputer only when the missing value is a string);
    - numeric imputers and text one-hot encoders become this module's subclasses, same fitted
      state, which convert in `precision` and with infrequent categories;
    - a classifier's classes are 0..k-1: the graph returns probabilities, OnnxScorer the labels
      (the converter takes int64 or string labels only, not bool or float).
    """
    servable = copy.deepcopy(model)
    for estimator in _estimators(servable):
        if isinstance(estimator, ColumnTransformer):
            _rename_columns(estimator, names)
        elif type(estimator) is SimpleImputer and _imputes_text(estimator):
            if MISSING_STRING in set(estimator.statistics_.tolist()):
                raise ValueError("the missing-text marker is one of the imputer's values")
            estimator.missing_values = MISSING_STRING
        elif type(estimator) is SimpleImputer:
            estimator.__class__ = OnnxNumericImputer
            estimator.onnx_precision = precision
        elif type(estimator) is OneHotEncoder:
            estimator.__class__ = OnnxOneHotEncoder
            estimator.onnx_precision = precision
    final = _final_estimator(servable)
    if task == "classification":
        final.classes_ = np.arange(len(final.classes_), dtype=np.int64)
    return servable


def _imputes_text(imputer: SimpleImputer) -> bool:
    statistics = getattr(imputer, "statistics_", None)
    return statistics is not None and statistics.dtype == object


def _rename_columns(transformer: ColumnTransformer, names: dict[str, str]) -> None:
    known = list(getattr(transformer, "feature_names_in_", []))

    def renamed(selection: Any) -> Any:
        if isinstance(selection, str):
            return names[selection]
        if isinstance(selection, int | np.integer) and known:
            return names[known[int(selection)]]
        if isinstance(selection, list | tuple | np.ndarray):
            return [renamed(item) for item in selection]
        return selection

    transformer.transformers_ = [
        (name, step, renamed(selection)) for name, step, selection in transformer.transformers_
    ]


def _estimators(estimator: Any):
    """The estimator and every estimator inside it (pipelines, column transformers, unions)."""
    yield estimator
    if isinstance(estimator, Pipeline):
        children = [step for _, step in estimator.steps]
    elif isinstance(estimator, ColumnTransformer):
        children = [step for _, step, _ in getattr(estimator, "transformers_", [])]
    elif isinstance(estimator, FeatureUnion):
        children = [step for _, step in estimator.transformer_list]
    else:
        children = []
    for child in children:
        if not isinstance(child, str):  # "drop", "passthrough"
            yield from _estimators(child)


def _final_estimator(model: Any) -> Any:
    return model.steps[-1][1] if isinstance(model, Pipeline) else model


def _options(servable: Pipeline, task: str) -> dict:
    # A probability matrix rather than a list of {class: probability} maps (ZipMap): what
    # predict_proba returns, and the only form a double-precision tree classifier converts to.
    if task != "classification":
        return {}
    return {id(_final_estimator(servable)): {"zipmap": False}}


def _conversion_failure(error: Exception, model: Any, precision: str) -> str:
    estimator = _estimator_converting(error) or _unsupported(model) or _final_estimator(model)
    return (
        f"conversion ({precision}): skl2onnx could not convert {type(estimator).__name__}: "
        f"{_first_line(error)}"
    )


def _estimator_converting(error: Exception) -> Any:
    """The estimator whose converter or parser raised, found in the traceback's frames."""
    found = None
    for frame, _ in traceback.walk_tb(error.__traceback__):
        local = frame.f_locals
        operator = local.get("operator")
        candidate = getattr(operator, "raw_operator", None) or local.get("model")
        if candidate is not None and hasattr(candidate, "fit"):
            found = candidate  # the innermost one wins
    return found


def _unsupported(model: Any) -> Any:
    """The first estimator in the pipeline skl2onnx has no converter for."""
    from skl2onnx._supported_operators import sklearn_operator_name_map

    for estimator in _estimators(model):
        if type(estimator) not in sklearn_operator_name_map:
            return estimator
    return None


def _first_line(error: Exception) -> str:
    text = str(error).strip()
    line = text.splitlines()[0].strip() if text else type(error).__name__
    return line if len(line) <= REASON_LENGTH else line[: REASON_LENGTH - 3] + "..."


# --- converters skl2onnx 1.20 lacks or gets wrong for these pipelines -----------------------------
#
# The servable copy swaps two fitted estimators for the subclasses below (same fitted state), whose
# converters this module registers: the text one-hot encoder with infrequent and unknown categories,
# and a numeric imputer that keeps double precision. The tree converters are wrapped in place.


class OnnxOneHotEncoder(OneHotEncoder):
    """A fitted OneHotEncoder of text columns, converted by `_convert_one_hot` (skl2onnx refuses
    infrequent categories once the columns are merged, as an imputer before the encoder does)."""

    onnx_precision = "double"


class OnnxNumericImputer(SimpleImputer):
    """A fitted SimpleImputer of numeric columns, converted by `_convert_numeric_imputer` (ONNX
    Runtime's Imputer takes float32 only, and skl2onnx rounds the statistics to float32)."""

    onnx_precision = "double"


def _tensor_type(precision: str):
    from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType

    return DoubleTensorType if precision == "double" else FloatTensorType


def _onnx_dtype(precision: str) -> int:
    from onnx import TensorProto

    return TensorProto.DOUBLE if precision == "double" else TensorProto.FLOAT


def _one_hot_layout(encoder: OneHotEncoder) -> list[tuple[dict[str, int], int, int]]:
    """Per column: category -> output index, the index of an unknown category (-1: all zeros),
    and the number of output columns, as `transform` lays them out (infrequent ones last)."""
    if getattr(encoder, "drop_idx_", None) is not None:
        raise NotImplementedError("OneHotEncoder with drop is not converted here")
    infrequent_all = getattr(encoder, "infrequent_categories_", None) or [None] * len(
        encoder.categories_
    )
    layout = []
    for categories, infrequent in zip(encoder.categories_, infrequent_all, strict=True):
        if not all(isinstance(c, str) for c in categories):
            raise NotImplementedError("OneHotEncoder of non-text categories is not converted here")
        rare = set() if infrequent is None else set(infrequent.tolist())
        frequent = [c for c in categories if c not in rare]
        index = {c: i for i, c in enumerate(frequent)} | dict.fromkeys(rare, len(frequent))
        bins = len(frequent) + (1 if rare else 0)
        to_infrequent = rare and encoder.handle_unknown in ("infrequent_if_exist", "warn")
        layout.append((index, len(frequent) if to_infrequent else -1, bins))
    return layout


def _one_hot_shape(operator) -> None:
    encoder = operator.raw_operator
    width = sum(bins for _, _, bins in _one_hot_layout(encoder))
    rows = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = _tensor_type(encoder.onnx_precision)([rows, width])


def _convert_one_hot(scope, operator, container) -> None:
    """Each column: its category's output index (LabelEncoder), compared with 0..bins-1."""
    from onnx import TensorProto

    encoder = operator.raw_operator
    columns = _input_columns(scope, operator, container)
    parts = []
    for column, (index, unknown, bins) in zip(columns, _one_hot_layout(encoder), strict=True):
        codes = scope.get_unique_variable_name("category_index")
        container.add_node(
            "LabelEncoder", column, codes, op_domain="ai.onnx.ml", op_version=2,
            name=scope.get_unique_operator_name("LabelEncoder"),
            keys_strings=list(index), values_int64s=list(index.values()), default_int64=unknown,
        )  # fmt: skip
        positions = scope.get_unique_variable_name("positions")
        container.add_initializer(positions, TensorProto.INT64, [bins], list(range(bins)))
        hot, part = scope.get_unique_variable_name("hot"), scope.get_unique_variable_name("onehot")
        container.add_node("Equal", [codes, positions], hot)
        container.add_node("Cast", hot, part, to=_onnx_dtype(encoder.onnx_precision))
        parts.append(part)
    container.add_node("Concat", parts, operator.outputs[0].full_name, axis=1)


def _input_columns(scope, operator, container) -> list[str]:
    """One (n, 1) variable per input column, sliced out of merged inputs where needed."""
    from onnx import TensorProto

    columns = []
    for variable in operator.inputs:
        width = variable.type.shape[1]
        if width == 1:
            columns.append(variable.full_name)
            continue
        for j in range(width):
            bounds = [scope.get_unique_variable_name(n) for n in ("start", "end", "axis")]
            for name, value in zip(bounds, (j, j + 1, 1), strict=True):
                container.add_initializer(name, TensorProto.INT64, [1], [value])
            column = scope.get_unique_variable_name("column")
            container.add_node("Slice", [variable.full_name, *bounds], column)
            columns.append(column)
    return columns


def _numeric_imputer_shape(operator) -> None:
    imputer = operator.raw_operator
    rows = operator.inputs[0].get_first_dimension()
    width = len(imputer.statistics_)
    operator.outputs[0].type = _tensor_type(imputer.onnx_precision)([rows, width])


def _convert_numeric_imputer(scope, operator, container) -> None:
    """Where(IsNaN(x), statistics, x), in the graph's precision."""
    imputer = operator.raw_operator
    missing = imputer.missing_values
    if not (isinstance(missing, float) and np.isnan(missing)) or imputer.add_indicator:
        raise NotImplementedError("only a numeric imputer of NaN, without indicator, is converted")
    if np.isnan(imputer.statistics_).any():
        raise NotImplementedError("an imputer that drops all-missing columns is not converted")
    dtype = np.float64 if imputer.onnx_precision == "double" else np.float32
    columns = _input_columns(scope, operator, container)
    merged = scope.get_unique_variable_name("numeric")
    cast = [scope.get_unique_variable_name("numeric_column") for _ in columns]
    for column, name in zip(columns, cast, strict=True):  # an int64 input joins as a number
        container.add_node("Cast", column, name, to=_onnx_dtype(imputer.onnx_precision))
    container.add_node("Concat", cast, merged, axis=1)
    statistics = scope.get_unique_variable_name("statistics")
    values = imputer.statistics_.astype(dtype)
    container.add_initializer(
        statistics, _onnx_dtype(imputer.onnx_precision), [1, len(values)], values.tolist()
    )
    is_missing = scope.get_unique_variable_name("is_missing")
    container.add_node("IsNaN", merged, is_missing)
    container.add_node("Where", [is_missing, statistics, merged], operator.outputs[0].full_name)


def _register_converters() -> None:
    """Registers this module's converters once, and wraps skl2onnx's tree converters."""
    from skl2onnx import update_registered_converter

    if getattr(_register_converters, "done", False):
        return
    update_registered_converter(
        OnnxOneHotEncoder, "CrispMlOneHotEncoder", _one_hot_shape, _convert_one_hot
    )
    update_registered_converter(
        OnnxNumericImputer, "CrispMlNumericImputer", _numeric_imputer_shape,
        _convert_numeric_imputer,
    )  # fmt: skip
    _wrap_tree_converters()
    _register_converters.done = True


TREE_ESTIMATORS = (
    RandomForestClassifier,
    RandomForestRegressor,
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
)


def _wrap_tree_converters() -> None:
    """skl2onnx's tree converters, fixed for these pipelines in two ways:

    - HistGradientBoosting: skl2onnx 1.20 builds `nodes_missing_value_tracks_true` from scikit-learn
      1.9's trees as a mix of bools and numpy.uint8, which onnx refuses ("Expected an int, got a
      boolean"), hence "Unable to create node 'TreeEnsembleClassifier'": lists become plain ints.
    - double precision: the converters emit ai.onnx.ml TreeEnsemble* version 1 (float32 thresholds)
      unless asked for version 3, which compares in double but still outputs float32; ONNX Runtime
      then refuses the double output skl2onnx declares. So version 3, and a Cast to double after.
    """
    from skl2onnx import update_registered_converter
    from skl2onnx._supported_operators import sklearn_operator_name_map
    from skl2onnx.common._registration import (
        get_converter,
        get_shape_calculator,
    )

    for estimator in TREE_ESTIMATORS:
        alias = sklearn_operator_name_map[estimator]
        converter = get_converter(alias)
        update_registered_converter(
            estimator,
            alias,
            get_shape_calculator(alias),
            _fixed_tree_converter(converter._fct),
            options=converter.get_allowed_options(),
            overwrite=True,
        )


def _fixed_tree_converter(convert):
    def fixed(scope, operator, container):
        from skl2onnx.common.data_types import DoubleTensorType

        double = isinstance(operator.inputs[0].type, DoubleTensorType)
        add_node = container.add_node

        def add_tree_node(op_type, inputs, outputs, *args, **attributes):
            attributes = {key: _plain(value) for key, value in attributes.items()}
            if double and op_type.startswith("TreeEnsemble"):
                outputs = _cast_float_outputs(scope, operator, container, outputs)
            return add_node(op_type, inputs, outputs, *args, **attributes)

        container.add_node = add_tree_node  # this container only, while this converter runs
        try:
            return convert(scope, operator, container, op_version=3 if double else 1)
        finally:
            del container.add_node

    return fixed


def _cast_float_outputs(scope, operator, container, outputs) -> list[str]:
    """The tree node's float32 outputs that skl2onnx declared double: computed under fresh names,
    then cast to the declared ones (labels stay int64, and a float32 declaration stays as it is)."""
    from onnx import TensorProto
    from skl2onnx.common.data_types import DoubleTensorType

    declared_double = {
        variable.full_name
        for variable in operator.outputs
        if isinstance(variable.type, DoubleTensorType)
    }
    outputs = [outputs] if isinstance(outputs, str) else list(outputs)
    for i, name in enumerate(outputs):
        if name in declared_double:
            float_name = scope.get_unique_variable_name(name + "_float")
            container.add_node("Cast", float_name, name, to=TensorProto.DOUBLE)
            outputs[i] = float_name
    return outputs


def _plain(value: Any) -> Any:
    """A list mixing bools and NumPy integers as plain ints; anything else unchanged."""
    mixed = isinstance(value, list) and any(isinstance(v, np.integer) for v in value)
    if mixed and all(isinstance(v, bool | np.bool_ | np.integer) for v in value):
        return [int(v) for v in value]
    return value
