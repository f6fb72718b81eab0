"""The model compiled to ONNX, scored with ONNX Runtime: what the image serves without scikit-learn.

`crisp_ml.compiling` converts the fitted pipeline (preprocessing included) to `model.onnx` and
stores in its metadata what scoring needs beyond the graph (`METADATA_KEY`, JSON): the task, the
classes with their Python types, which graph input each signature column feeds, and the string that
stands for a missing text value. `OnnxScorer` reads it back and answers like the scikit-learn
estimator (`predict`, `predict_proba`, `classes_`) for the arrays `schema.check` makes.

This module runs in the serving image: it imports the standard library, NumPy and ONNX Runtime,
never pandas, scikit-learn, SciPy, MLflow, skl2onnx or onnx.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime

from .model import ONNX_FILE, Column, ModelLoadError

__all__ = ["METADATA_KEY", "ONNX_FILE", "OnnxScorer"]
METADATA_KEY = "crisp_ml"
TASKS = ("classification", "regression")
# Graph outputs, named by the converter: a classifier's probability matrix, a regressor's values.
PROBABILITIES_OUTPUT = "probabilities"
VALUES_OUTPUT = "variable"
# Element types of graph inputs, as ONNX Runtime names them, and the arrays they take.
NUMERIC_INPUTS = {
    "tensor(double)": np.float64,
    "tensor(float)": np.float32,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
}
STRING_INPUT = "tensor(string)"
BOOL_INPUT = "tensor(bool)"
NUMBER_COLUMNS = frozenset({"double", "float", "long", "integer"})
ACCEPTED_COLUMNS = {
    **dict.fromkeys(NUMERIC_INPUTS, NUMBER_COLUMNS),
    STRING_INPUT: frozenset({"string"}),
    BOOL_INPUT: frozenset({"boolean"}),
}


@dataclass(frozen=True)
class _Input:
    """One graph input: the signature column it takes and the array type it wants."""

    column: str
    name: str
    kind: str  # an ONNX Runtime element type such as "tensor(double)"


class OnnxScorer:
    """A classifier's or regressor's ONNX graph, answering like the scikit-learn pipeline.

    Takes the server's input, `schema.check(values, columns).arrays`: one 1-D array per column.
    """

    def __init__(self, session: onnxruntime.InferenceSession, metadata: dict, inputs: list[_Input]):
        self._session = session
        self._inputs = inputs
        self.task: str = metadata["task"]
        self.classes_: list = list(metadata.get("classes", []))
        self.missing_string: str = metadata.get("missing_string", "")
        self.precision: str = metadata.get("precision", "")
        self._labels = _label_array(self.classes_)
        self._output = PROBABILITIES_OUTPUT if self.task == "classification" else VALUES_OUTPUT

    @classmethod
    def load(cls, path: Path, columns: list[Column], threads: int = 1) -> OnnxScorer:
        """The scorer for `path` (model.onnx), checked against the signature's columns."""
        session = _session(Path(path), threads)
        metadata = _metadata(session, path)
        inputs = _inputs(session, metadata, columns, path)
        outputs = {output.name for output in session.get_outputs()}
        wanted = PROBABILITIES_OUTPUT if metadata["task"] == "classification" else VALUES_OUTPUT
        if wanted not in outputs:
            raise ModelLoadError(f"{path} has no output '{wanted}' (it has {sorted(outputs)})")
        return cls(session, metadata, inputs)

    def predict_proba(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Probabilities, float64 (n, k), columns in `classes_` order."""
        if self.task != "classification":
            raise AttributeError("a regressor has no predict_proba")
        return self._run(arrays).astype(np.float64, copy=False)

    def predict(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """Labels (the class of highest probability, as scikit-learn picks it) or float64 values."""
        result = self._run(arrays)
        if self.task == "classification":
            return self._labels[np.argmax(result, axis=1)]
        return result.reshape(-1).astype(np.float64, copy=False)

    def _run(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        feeds = {spec.name: self._feed(spec, arrays[spec.column]) for spec in self._inputs}
        return self._session.run([self._output], feeds)[0]

    def _feed(self, spec: _Input, values: np.ndarray) -> np.ndarray:
        """One column as the graph input wants it: a (n, 1) array of its element type."""
        values = np.asarray(values)
        if spec.kind == STRING_INPUT:
            # The converted imputer recognises missing text by this marker, not by None.
            values = values.astype(object, copy=True)
            values[np.equal(values, None)] = self.missing_string
        elif spec.kind == BOOL_INPUT:
            values = values.astype(np.bool_, copy=False)
        else:
            values = values.astype(NUMERIC_INPUTS[spec.kind], copy=False)
        return values.reshape(-1, 1)


def _label_array(classes: list) -> np.ndarray:
    """Labels as one NumPy array whose `tolist()` gives back the classes' own Python values."""
    kinds = {type(label) for label in classes}
    if len(kinds) == 1 and kinds <= {int, float, bool, str}:
        return np.asarray(classes)
    return np.array(classes, dtype=object)


def _session(path: Path, threads: int) -> onnxruntime.InferenceSession:
    options = onnxruntime.SessionOptions()
    # The server chooses how many cores one request may use; one keeps concurrent requests apart.
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3  # errors only: the converter's graphs warn about unused inputs
    try:
        return onnxruntime.InferenceSession(
            str(path), sess_options=options, providers=["CPUExecutionProvider"]
        )
    except Exception as error:  # noqa: BLE001 - ONNX Runtime raises its own (pybind) error types
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else type(error).__name__
        raise ModelLoadError(f"ONNX Runtime cannot load {path}: {first_line}") from None


def _metadata(session: onnxruntime.InferenceSession, path: Path) -> dict:
    raw = session.get_modelmeta().custom_metadata_map.get(METADATA_KEY)
    if raw is None:
        raise ModelLoadError(
            f"{path} has no '{METADATA_KEY}' metadata (task, classes, inputs): compile it with "
            "crisp_ml.compiling.compile_for_serving"
        )
    try:
        metadata = json.loads(raw)
    except ValueError as error:
        raise ModelLoadError(
            f"{path}: its '{METADATA_KEY}' metadata is not JSON ({error})"
        ) from None
    problem = _metadata_problem(metadata)
    if problem:
        raise ModelLoadError(f"{path}: its '{METADATA_KEY}' metadata {problem}")
    return metadata


def _metadata_problem(metadata: Any) -> str:
    if not isinstance(metadata, dict):
        return "is not a JSON object"
    if metadata.get("task") not in TASKS:
        return f"has task {metadata.get('task')!r}, not one of {list(TASKS)}"
    if metadata["task"] == "classification" and not metadata.get("classes"):
        return "lists no classes for a classifier"
    inputs = metadata.get("inputs")
    if not isinstance(inputs, dict) or not all(isinstance(v, str) for v in inputs.values()):
        return "has no 'inputs' mapping of column names to graph input names"
    if not isinstance(metadata.get("missing_string", ""), str):
        return "has a 'missing_string' that is not a string"
    return ""


def _inputs(
    session: onnxruntime.InferenceSession, metadata: dict, columns: list[Column], path: Path
) -> list[_Input]:
    """Each graph input with the signature column that feeds it; any mismatch refuses the model."""
    mapping: dict[str, str] = metadata["inputs"]
    kinds = {column.name: column.type for column in columns}
    if set(mapping) != set(kinds):
        missing, extra = sorted(set(kinds) - set(mapping)), sorted(set(mapping) - set(kinds))
        raise ModelLoadError(
            f"{path} was compiled for other columns than the signature's (signature columns it "
            f"lacks: {missing}; columns it has that the signature lacks: {extra})"
        )
    column_of = {name: column for column, name in mapping.items()}
    inputs = []
    for graph_input in session.get_inputs():
        column = column_of.get(graph_input.name)
        if column is None:
            raise ModelLoadError(f"{path} has an input '{graph_input.name}' no column feeds")
        if kinds[column] not in ACCEPTED_COLUMNS.get(graph_input.type, set()):
            raise ModelLoadError(
                f"{path}: input '{graph_input.name}' wants {graph_input.type}, but column "
                f"'{column}' is {kinds[column]}"
            )
        inputs.append(_Input(column, graph_input.name, graph_input.type))
    return inputs
