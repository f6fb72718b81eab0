"""A small table and the pipeline 03 would fit on it, shared by the serving and scoring tests,
and the serving bundle the export makes of it."""

from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.compose import ColumnTransformer, make_column_selector
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler


def training_data(n: int = 120, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "size": rng.normal(10, 2, n),
            "weight": rng.normal(50, 10, n),
            "count": rng.integers(0, 20, n),
            "colour": rng.choice(["red", "green", "blue"], n),
        }
    )
    score = X["size"] - 10 + (X["colour"] == "red") + rng.normal(0, 0.5, n)
    return X, np.where(score > 0, "yes", "no"), (3 * X["size"] + X["count"]).to_numpy()


def pipeline(task: str):
    features = ColumnTransformer(
        [
            ("numeric", make_pipeline(SimpleImputer(strategy="median"), StandardScaler()),
             make_column_selector(dtype_include="number")),
            ("categorical", make_pipeline(SimpleImputer(strategy="most_frequent"),
                                          OneHotEncoder(handle_unknown="ignore", sparse_output=False)),
             make_column_selector(dtype_exclude="number")),
        ]
    )  # fmt: skip
    return make_pipeline(features, LogisticRegression() if task == "classification" else Ridge())


PROVENANCE = {
    "name": "test-model",
    "version": "7",
    "run_id": "run-1",
    "git_commit": "abc123",
    "data_digest": "d1g",
}


def save_bundle(
    bundle: Path,
    model,
    X: pd.DataFrame,
    task: str,
    onnx: bytes | None = None,
    provenance: dict | None = None,
) -> Path:
    """The model saved as MLflow saves it (skops), `model.onnx` beside it when given, and a
    manifest holding the record of every file (and `provenance`, else PROVENANCE)."""
    import mlflow
    import skops.io
    from mlflow.models import infer_signature

    from crisp_ml.serving import bundle as bundle_files
    from crisp_ml.serving.integrity import Record
    from crisp_ml.serving.model import ONNX_FILE

    model_dir = bundle / bundle_files.MODEL_DIR
    mlflow.sklearn.save_model(
        model, path=str(model_dir),
        signature=infer_signature(X.head(5), model.predict(X.head(5))),
        input_example=X.head(3), pip_requirements=["scikit-learn"], metadata={"task": task},
        skops_trusted_types=skops.io.get_untrusted_types(data=skops.io.dumps(model)),
    )  # fmt: skip
    if onnx is not None:
        (model_dir / ONNX_FILE).write_bytes(onnx)
    provenance = provenance or PROVENANCE
    record = Record.of(model_dir, provenance["name"])
    bundle_files.write_manifest(bundle, provenance, record, "# Test model\nFor tests only.")
    return bundle
