"""This project's preprocessing and candidates (notebooks/03_modelling.ipynb exports them)."""

import numpy as np
import pandas as pd
import pytest

from {{ cookiecutter.package_name }}.modelling import build_preprocessor, make_pipeline_for


def mixed_frame(rows: int = 120, seed: int = 0) -> tuple[pd.DataFrame, pd.Series]:
    rng = np.random.default_rng(seed)
    X = pd.DataFrame(
        {
            "income": rng.normal(50, 10, rows),
            "colour": rng.choice(["red", "green", "blue"], rows),
        }
    )
    X.loc[::7, "income"] = np.nan
    X.loc[::11, "colour"] = None
    y = pd.Series(np.where(X["income"].fillna(50) > 50, "high", "low"), name="y")
    return X, y


def test_preprocessor_imputes_scales_and_encodes_by_column_type():
    X, _ = mixed_frame()
    features = build_preprocessor().fit_transform(X)
    assert not np.isnan(features).any()
    assert features.shape[1] == 1 + 3  # income, plus one column per colour


def test_unseen_category_at_prediction_time_does_not_fail():
    X, y = mixed_frame()
    model = make_pipeline_for("linear", "classification", seed=0).fit(X, y)
    unseen = X.head(2).assign(colour="purple")
    assert len(model.predict(unseen)) == 2


def test_unknown_candidate_names_the_choices():
    with pytest.raises(ValueError, match=r"unknown candidate 'svm'"):
        make_pipeline_for("svm", "classification", seed=0)
