"""The pipelines 03 builds, compiled to ONNX and scored through the server's path (issue 15)."""

import json
import subprocess
import sys

import numpy as np
import onnx
import pandas as pd
import pytest
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.dummy import DummyClassifier, DummyRegressor
from sklearn.ensemble import (
    HistGradientBoostingClassifier,
    HistGradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from crisp_ml import compiling
from crisp_ml.compiling import PROBABILITY_TOLERANCE, Compiled, compile_for_serving
from crisp_ml.serving import schema
from crisp_ml.serving.model import Column, ModelLoadError
from crisp_ml.serving.onnx_model import METADATA_KEY, ONNX_FILE, OnnxScorer

# --- toy data and the project's pipeline ----------------------------------------------------------

COLOURS = ["red", "green", "blue"]
RARE = ["teal", "ochre"]  # fewer than min_frequency=5 rows each: OneHotEncoder's infrequent bin


def numeric_table(n: int, seed: int) -> pd.DataFrame:
    """All-numeric, like the breast-cancer demo, with awkward names and a few missing values."""
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "Mean Radius (mm)": rng.normal(14, 3, n),
            "größe.2": rng.normal(50, 10, n),
            "texture": rng.gamma(2, 2, n),
        }
    )
    X.loc[rng.random(n) < 0.05, "texture"] = np.nan
    return X


def mixed_table(n: int, seed: int, unseen: bool = False) -> pd.DataFrame:
    """Floats, an integer column and text with missing values (None and NaN) and rare values;
    `unseen` puts categories no training row had into the rows."""
    rng = np.random.default_rng(seed)
    colour = rng.choice(COLOURS, n).astype(object)
    colour[rng.random(n) < 0.1] = None
    colour[rng.random(n) < 0.05] = np.nan
    shape = rng.choice(["round", "square"], n).astype(object)
    shape[: len(RARE) * 2] = RARE * 2  # two rows each: infrequent
    if unseen:
        colour[:3] = ["purple", "", "Red"]
        shape[3:5] = ["hexagon", None]
    X = pd.DataFrame(
        {
            "size (cm)": rng.normal(10, 2, n),
            "count": rng.integers(0, 20, n),
            "colour": colour,
            "shape": shape,
        }
    )
    X.loc[rng.random(n) < 0.05, "size (cm)"] = np.nan
    return X


def signal(X: pd.DataFrame) -> np.ndarray:
    """A target the models can learn, from the first numeric column and the colour."""
    first = X.iloc[:, 0].fillna(X.iloc[:, 0].mean()).to_numpy()
    bonus = (X["colour"] == "red").to_numpy() * 2.0 if "colour" in X else 0.0
    return (first - np.nanmean(first)) / np.nanstd(first) + bonus


def labels(X: pd.DataFrame, kind: str) -> np.ndarray:
    score = signal(X)
    if kind == "multiclass":
        return np.select([score < -0.5, score < 0.5], ["low", "mid"], "high")
    positive = score > 0
    return {"int": positive.astype(int), "str": np.where(positive, "yes", "no"), "bool": positive}[
        kind
    ]


def features():
    return ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
             make_column_selector(dtype_include="number")),
            ("categorical", make_pipeline(
                SimpleImputer(strategy="most_frequent"),
                OneHotEncoder(handle_unknown="infrequent_if_exist", min_frequency=5,
                              sparse_output=False)),
             make_column_selector(dtype_exclude="number")),
        ]
    )  # fmt: skip


CANDIDATES = {
    "dummy": (lambda: DummyClassifier(strategy="prior"), DummyRegressor),
    "linear": (lambda: LogisticRegression(max_iter=2000), Ridge),
    "forest": (
        lambda: RandomForestClassifier(n_estimators=20, max_leaf_nodes=32, random_state=0),
        lambda: RandomForestRegressor(n_estimators=20, max_leaf_nodes=32, random_state=0),
    ),
    "boosting": (
        lambda: HistGradientBoostingClassifier(max_iter=30, early_stopping="auto", random_state=0),
        lambda: HistGradientBoostingRegressor(max_iter=30, early_stopping="auto", random_state=0),
    ),
}
SERVED = ["linear", "forest", "boosting"]


def table(data: str, n: int = 240, seed: int = 0, unseen: bool = False) -> pd.DataFrame:
    return numeric_table(n, seed) if data == "numeric" else mixed_table(n, seed, unseen)


def fitted(candidate: str, task: str, data: str, label: str = "str"):
    """The project's pipeline fitted on a training table; the test rows (unseen categories too)."""
    X, X_test = table(data), table(data, n=80, seed=1, unseen=True)
    make = CANDIDATES[candidate][0 if task == "classification" else 1]
    model = Pipeline([("features", features()), ("model", make())])
    y = labels(X, label) if task == "classification" else 3 * signal(X) + 100
    return model.fit(X, y), X_test


def columns_of(X: pd.DataFrame) -> list[Column]:
    kinds = {"float64": "double", "int64": "long", "bool": "boolean"}
    return [Column(name, kinds.get(str(dtype), "string")) for name, dtype in X.dtypes.items()]


def server_arrays(X: pd.DataFrame, columns: list[Column]) -> dict[str, np.ndarray]:
    return schema.check({c.name: X[c.name].tolist() for c in columns}, columns).arrays


def scorer_for(compiled: Compiled, columns: list[Column], tmp_path) -> OnnxScorer:
    path = tmp_path / ONNX_FILE
    path.write_bytes(compiled.onnx)
    return OnnxScorer.load(path, columns)


# --- the candidates convert and answer as scikit-learn does ---------------------------------------


@pytest.mark.parametrize("data", ["numeric", "mixed"])
@pytest.mark.parametrize("candidate", SERVED)
def test_classifier_compiles_and_answers_as_sklearn(candidate, data, tmp_path):
    model, X = fitted(candidate, "classification", data)
    columns = columns_of(X)
    compiled = compile_for_serving(model, X, "classification", columns)
    assert compiled.runtime == "onnx", compiled.reason
    assert compiled.versions["precision"] == "double"
    assert compiled.parity["mismatched_classes"] == 0
    assert compiled.parity["rows"] == len(X)
    assert compiled.parity["max_probability_difference"] <= PROBABILITY_TOLERANCE

    scorer = scorer_for(compiled, columns, tmp_path)
    arrays = server_arrays(X, columns)
    assert scorer.predict(arrays).tolist() == model.predict(X).tolist()
    np.testing.assert_allclose(
        scorer.predict_proba(arrays), model.predict_proba(X), atol=PROBABILITY_TOLERANCE, rtol=0
    )
    assert scorer.classes_ == model.classes_.tolist()


@pytest.mark.parametrize("data", ["numeric", "mixed"])
@pytest.mark.parametrize("candidate", SERVED)
def test_regressor_compiles_and_answers_as_sklearn(candidate, data, tmp_path):
    model, X = fitted(candidate, "regression", data)
    columns = columns_of(X)
    compiled = compile_for_serving(model, X, "regression", columns)
    assert compiled.runtime == "onnx", compiled.reason
    assert compiled.versions["precision"] == "double"
    assert compiled.parity["max_value_difference"] <= compiled.parity["tolerance"]

    predictions = scorer_for(compiled, columns, tmp_path).predict(server_arrays(X, columns))
    assert predictions.dtype == np.float64
    np.testing.assert_allclose(predictions, model.predict(X), atol=compiled.parity["tolerance"])


def test_test_rows_hold_unseen_infrequent_and_missing_categories():
    model, X = fitted("linear", "classification", "mixed")
    encoder = model.named_steps["features"].named_transformers_["categorical"][-1]
    colour, shape = (set(categories) for categories in encoder.categories_)
    assert {"purple", "", "Red"} - colour == {"purple", "", "Red"}
    assert "hexagon" not in shape and set(RARE) <= shape
    assert encoder.infrequent_categories_[1] is not None  # the rare shapes share one column
    assert X["colour"].isna().any() and X["shape"].isna().any()


@pytest.mark.parametrize("label", ["int", "str", "bool", "multiclass"])
def test_labels_keep_their_python_types(label, tmp_path):
    model, X = fitted("forest", "classification", "mixed", label=label)
    columns = columns_of(X)
    compiled = compile_for_serving(model, X, "classification", columns)
    assert compiled.runtime == "onnx", compiled.reason

    predicted = scorer_for(compiled, columns, tmp_path).predict(server_arrays(X, columns)).tolist()
    expected = model.predict(X).tolist()
    assert predicted == expected
    assert [type(value) for value in predicted] == [type(value) for value in expected]
    if label == "multiclass":
        assert len(set(expected)) == 3


def test_one_row_scores_as_the_server_sends_it(tmp_path):
    model, X = fitted("boosting", "classification", "mixed")
    columns = columns_of(X)
    compiled = compile_for_serving(model, X, "classification", columns)
    row = {"size (cm)": [None], "count": [3], "colour": [None], "shape": ["hexagon"]}
    arrays = schema.check(row, columns).arrays
    frame = pd.DataFrame(
        {"size (cm)": [np.nan], "count": [3], "colour": [None], "shape": ["hexagon"]}
    )
    scorer = scorer_for(compiled, columns, tmp_path)
    assert scorer.predict(arrays).tolist() == model.predict(frame).tolist()


# --- what falls back to scikit-learn, and says why ------------------------------------------------


@pytest.mark.parametrize("task", ["classification", "regression"])
def test_dummy_models_fall_back_with_a_reason_or_convert(task):
    model, X = fitted("dummy", task, "mixed")
    compiled = compile_for_serving(model, X, task, columns_of(X))
    if compiled.onnx is None:
        assert type(model.named_steps["model"]).__name__ in compiled.reason
    else:
        assert compiled.reason == ""


class Doubler(BaseEstimator, TransformerMixin):
    """A team's own transformer: skl2onnx has no converter for it."""

    def fit(self, X, y=None):
        return self

    def transform(self, X):
        return np.asarray(X) * 2


def test_model_without_converter_falls_back_naming_it():
    X = numeric_table(120, 0).fillna(0)
    model = make_pipeline(Doubler(), LogisticRegression()).fit(X, labels(X, "int"))
    compiled = compile_for_serving(model, X, "classification", columns_of(X))
    assert compiled.onnx is None
    assert compiled.runtime == "scikit-learn"
    assert compiled.reason.startswith("conversion")
    assert "Doubler" in compiled.reason
    assert compiled.tags()["serving_runtime"] == "scikit-learn"
    assert compiled.metrics()["onnx_converted"] == 0.0
    assert "Doubler" in compiled.card_section()


def test_parity_failure_falls_back_naming_parity(monkeypatch):
    model, X = fitted("linear", "classification", "numeric")
    monkeypatch.setattr(compiling, "PROBABILITY_TOLERANCE", -1.0)
    compiled = compile_for_serving(model, X, "classification", columns_of(X))
    assert compiled.onnx is None
    assert compiled.reason.startswith("parity")
    assert "LogisticRegression" in compiled.reason
    assert compiled.parity["rows"] == len(X)


def test_graph_of_another_pipeline_fails_parity(tmp_path):
    model, X = fitted("linear", "regression", "numeric")
    other, _ = fitted("forest", "regression", "numeric")
    columns = columns_of(X)
    scorer = scorer_for(compile_for_serving(other, X, "regression", columns), columns, tmp_path)
    parity = compiling.check_parity(model, scorer, X, "regression", columns)
    assert not parity["passed"]


# --- what the run records --------------------------------------------------------------------------


def test_compiled_records_metrics_tags_and_a_card_section():
    model, X = fitted("linear", "classification", "mixed")
    compiled = compile_for_serving(model, X, "classification", columns_of(X))
    metrics = compiled.metrics()
    assert metrics["onnx_converted"] == 1.0
    assert metrics["onnx_parity_mismatched_classes"] == 0.0
    assert metrics["onnx_parity_max_probability_difference"] <= PROBABILITY_TOLERANCE
    assert all(isinstance(value, float) for value in metrics.values())
    tags = compiled.tags()
    assert tags["serving_runtime"] == "onnx" and "serving_runtime_reason" not in tags
    assert json.loads(tags["onnx_opset"])["ai.onnx.ml"] >= 1
    assert tags["skl2onnx_version"] == compiled.versions["skl2onnx"]
    card = compiled.card_section()
    assert card.startswith("## Serving runtime") and "ONNX Runtime" in card
    assert "tolerance" in card and compiled.versions["skl2onnx"] in card


def test_input_names_are_safe_and_unique():
    names = compiling.input_names(["Mean Radius (mm)", "größe.2", "a b", "a-b", "!!"])
    assert list(names.values()) == [
        "c0_Mean_Radius_mm",
        "c1_gr_e_2",
        "c2_a_b",
        "c3_a_b",
        "c4_column",
    ]


# --- OnnxScorer refuses what it cannot serve ------------------------------------------------------


@pytest.fixture(scope="module")
def compiled_mixed():
    model, X = fitted("linear", "classification", "mixed")
    columns = columns_of(X)
    return compile_for_serving(model, X, "classification", columns), columns


def test_scorer_refuses_columns_other_than_the_signature(compiled_mixed, tmp_path):
    compiled, columns = compiled_mixed
    (tmp_path / ONNX_FILE).write_bytes(compiled.onnx)
    with pytest.raises(ModelLoadError, match=r"other columns.*'weight'"):
        OnnxScorer.load(tmp_path / ONNX_FILE, [*columns[:-1], Column("weight", "double")])
    with pytest.raises(ModelLoadError, match=r"wants tensor\(string\)"):
        OnnxScorer.load(tmp_path / ONNX_FILE, [*columns[:-1], Column("shape", "double")])


def test_scorer_refuses_a_file_without_metadata_or_unreadable(compiled_mixed, tmp_path):
    compiled, columns = compiled_mixed
    graph = onnx.load_from_string(compiled.onnx)
    del graph.metadata_props[:]
    (tmp_path / ONNX_FILE).write_bytes(graph.SerializeToString())
    with pytest.raises(ModelLoadError, match=f"no '{METADATA_KEY}' metadata"):
        OnnxScorer.load(tmp_path / ONNX_FILE, columns)
    (tmp_path / ONNX_FILE).write_bytes(b"not a model")
    with pytest.raises(ModelLoadError, match="ONNX Runtime cannot load"):
        OnnxScorer.load(tmp_path / ONNX_FILE, columns)
    with pytest.raises(ModelLoadError, match="cannot load"):
        OnnxScorer.load(tmp_path / "missing.onnx", columns)


# --- the image-side module stays lean -------------------------------------------------------------

HEAVY = ("pandas", "sklearn", "scipy", "mlflow", "skl2onnx", "onnx")


def loaded_heavy_modules(module: str) -> set[str]:
    code = (
        f"import sys, json, {module}\n"
        f"print(json.dumps(sorted(m for m in {HEAVY!r} if m in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    return set(json.loads(result.stdout))


def test_onnx_model_imports_no_pandas_sklearn_or_scipy():
    """The ONNX image holds none of them."""
    assert loaded_heavy_modules("crisp_ml.serving.onnx_model") == set()
