"""A small table and the pipeline 03 would fit on it, shared by the serving and scoring tests."""

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
