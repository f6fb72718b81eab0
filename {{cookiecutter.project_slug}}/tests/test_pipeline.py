"""The runner's choices: which notebooks, in which order, with which checked parameters."""

from pathlib import Path

import pytest

from {{ cookiecutter.package_name }} import pipeline
from {{ cookiecutter.package_name }}.params import ParamsError

PROJECT = Path(__file__).resolve().parents[1]


@pytest.fixture
def notebooks(tmp_path):
    names = ["03_modelling.ipynb", "01_use_case.ipynb", "02_data_preparation.ipynb", "notes.ipynb"]
    for name in names:
        (tmp_path / name).write_text("{}")
    return pipeline.discover(tmp_path)


def test_numbered_notebooks_run_in_number_order(notebooks):
    assert [n.stem for n in notebooks] == ["01_use_case", "02_data_preparation", "03_modelling"]


def test_only_and_from_accept_numbers_and_names(notebooks):
    assert [n.stem for n in pipeline.select(notebooks, only=["3", "01_use_case"])] == [
        "03_modelling",
        "01_use_case",
    ]
    assert [n.stem for n in pipeline.select(notebooks, start="02")] == [
        "02_data_preparation",
        "03_modelling",
    ]


def test_unknown_notebook_lists_the_real_ones(notebooks):
    with pytest.raises(ParamsError, match=r"no notebook matches '09'.*01_use_case"):
        pipeline.select(notebooks, only=["09"])


def test_plan_checks_every_notebook_before_running(monkeypatch):
    monkeypatch.setenv("PROJECT_ROOT", str(PROJECT))
    plan = pipeline.plan(sets=["data.seed=7"], smoke=True)
    assert [n.stem for n in plan.notebooks] == [n.stem for n in pipeline.discover(PROJECT / "notebooks")]
    data_prep = next(n for n in plan.notebooks if n.stem.startswith("02"))
    assert plan.values[data_prep]["data_seed"] == 7
    assert plan.values[data_prep]["data_sample_rows"] > 0  # from the smoke settings
    with pytest.raises(ParamsError, match=r"`data.seed` = 'seven' does not fit 02_data_preparation"):
        pipeline.plan(sets=["data.seed=seven"])
