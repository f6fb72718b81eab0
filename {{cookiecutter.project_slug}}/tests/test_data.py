"""This project's cleaning rule (notebooks/02_data_preparation.ipynb exports it)."""

import numpy as np
import pandas as pd

from {{ cookiecutter.package_name }}.data import clean


def frame(rows: int = 40) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame(
        {
            "age": rng.integers(18, 90, rows),
            "city": rng.choice(["Lyon", "Oslo", None], rows),
            "label": rng.choice(["a", "b", "c"], rows),
        }
    )


def test_clean_drops_duplicates_and_missing_targets_and_keeps_integers():
    data = pd.concat([frame(), frame().head(5)]).assign(
        label=lambda d: d["label"].where(d.index != 3)
    )
    cleaned, counts = clean(data, "label", drop_duplicates=True)
    assert counts["duplicates"] > 0 and counts["missing_target"] == 2
    assert cleaned["age"].dtype == "int64" and not cleaned.duplicated().any()
