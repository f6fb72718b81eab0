"""params.yaml, overrides and the notebooks' typed parameters cells."""

import json
import re
from pathlib import Path

import pytest

from crisp_ml import params as P

BASE = {
    "task": "classification",
    "data": {"path": "demo", "test_size": 0.2, "seed": 42},
    "modelling": {"search_space": {"linear": {"C": [0.1, 1.0]}}},
    "smoke": {"data.seed": 7},
}


def notebook_with(source: str, tmp_path: Path, name: str = "02_demo.ipynb") -> Path:
    cell = {"cell_type": "code", "execution_count": None, "id": "p", "metadata": {"tags": ["parameters"]},
            "outputs": [], "source": source.splitlines(keepends=True)}  # fmt: skip
    path = tmp_path / name
    path.write_text(
        json.dumps({"cells": [cell], "metadata": {}, "nbformat": 4, "nbformat_minor": 5})
    )
    return path


def test_set_parses_yaml_values_and_scientific_floats():
    tree, _ = P.resolve(BASE, sets=["data.test_size=1e-1", "data.path=data/x.csv"])
    assert tree["data"]["test_size"] == pytest.approx(0.1)
    assert tree["data"]["path"] == "data/x.csv"


def test_yes_and_no_stay_text_as_class_labels_do(tmp_path):
    assert [P.parse_value(text) for text in ("yes", "no", "on", "Off")] == [
        "yes",
        "no",
        "on",
        "Off",
    ]
    assert [P.parse_value(text) for text in ("true", "False")] == [True, False]
    labels = tmp_path / "labels.yaml"
    labels.write_text("use_case:\n  positive_class: yes\n  flags: [no, true]\n")
    assert P.load_yaml(labels)["use_case"] == {"positive_class": "yes", "flags": ["no", True]}


def test_unknown_key_is_refused_with_a_suggestion():
    with pytest.raises(
        P.ParamsError, match=r"unknown parameter `data.tset_size`.*`data.test_size`"
    ):
        P.resolve(BASE, sets=["data.tset_size=0.3"])


def test_new_entry_inside_an_open_mapping_is_allowed():
    tree, _ = P.resolve(BASE, sets=["modelling.search_space.linear.penalty=[l2]"])
    assert tree["modelling"]["search_space"]["linear"]["penalty"] == ["l2"]


def test_set_without_equals_sign_says_how():
    with pytest.raises(P.ParamsError, match=r"key=value"):
        P.resolve(BASE, sets=["data.seed"])


def test_smoke_applies_its_overrides_and_set_comes_last():
    tree, _ = P.resolve(BASE, smoke=True)
    assert tree["data"]["seed"] == 7
    tree, _ = P.resolve(BASE, sets=["data.seed=9"], smoke=True)
    assert tree["data"]["seed"] == 9


def test_params_file_overrides_and_is_checked(tmp_path):
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text("data:\n  seed: 5\n")
    bad.write_text("data:\n  sede: 5\n")
    assert P.resolve(BASE, param_files=[good])[0]["data"]["seed"] == 5
    with pytest.raises(P.ParamsError, match=r"bad.yaml: unknown parameter `data.sede`"):
        P.resolve(BASE, param_files=[bad])


def test_wrong_type_names_key_notebook_and_expected_type(tmp_path):
    notebook = notebook_with("data_test_size: float = 0.2\n", tmp_path)
    declared = P.read_notebook_params(notebook)
    tree, raw = P.resolve(BASE, sets=["data.test_size=abc"])
    with pytest.raises(P.ParamsError, match=r"`data.test_size`.*02_demo.ipynb.*`float`"):
        P.notebook_values(tree, declared, raw)


def test_string_parameter_keeps_the_text_of_a_numeric_looking_set(tmp_path):
    notebook = notebook_with('data_path: str = "demo"\n', tmp_path)
    tree, raw = P.resolve(BASE, sets=["data.path=2024"])
    assert P.notebook_values(tree, P.read_notebook_params(notebook), raw) == {"data_path": "2024"}


def test_untyped_parameter_is_an_error(tmp_path):
    with pytest.raises(P.ParamsError, match=r"has no type"):
        P.read_notebook_params(notebook_with("data_seed = 42\n", tmp_path))


def test_missing_parameters_tag_is_an_error(tmp_path):
    notebook = notebook_with("x: int = 1\n", tmp_path)
    content = json.loads(notebook.read_text())
    content["cells"][0]["metadata"] = {}
    notebook.write_text(json.dumps(content))
    with pytest.raises(P.ParamsError, match=r"no cell tagged `parameters`"):
        P.read_notebook_params(notebook)


def test_drift_reports_defaults_unknown_names_and_unread_keys(tmp_path):
    notebook = notebook_with("data_seed: int = 1\nextra_knob: int = 3\n", tmp_path)
    problems = P.drift(BASE, {notebook: P.read_notebook_params(notebook)})
    text = "\n".join(problems)
    assert "default of `data_seed` is 1, params.yaml `data.seed` is 42" in text
    assert "`extra_knob` has no key in params.yaml" in text
    assert "params.yaml `data.path` is read by no notebook" in text


def test_sync_copies_values_and_then_reports_no_drift(tmp_path):
    notebook = notebook_with(
        'data_path: str = "old"\ndata_seed: int = 1\ndata_test_size: float = 0.5\n'
        "modelling_search_space: dict = {}\n",
        tmp_path,
    )
    assert P.sync_notebook(notebook, BASE)
    declared = P.read_notebook_params(notebook)
    assert {p.name: p.default for p in declared} == {
        "data_path": "demo",
        "data_seed": 42,
        "data_test_size": 0.2,
        "modelling_search_space": {"linear": {"C": [0.1, 1.0]}},
    }
    assert not P.sync_notebook(notebook, BASE)  # a second sync changes nothing


def test_long_values_are_laid_out_as_ruff_would():
    short = P.format_literal({"a": [1, 2]}, used=10)
    assert short == '{"a": [1, 2]}'
    long = P.format_literal({f"key_{i}": list(range(8)) for i in range(4)}, used=30)
    assert long.startswith("{\n    ") and long.endswith(",\n}")
    assert all(len(line) <= P.LINE_LENGTH for line in long.splitlines())
    text = "x" * 120
    assert P.format_literal(text, used=20) == f'(\n    "{text}"\n)'


def test_project_notebooks_match_params_yaml(generated_project):
    tree = P.load_yaml(generated_project / "params.yaml")
    notebooks = sorted((generated_project / "notebooks").glob("[0-9][0-9]_*.ipynb"))
    declared = {nb: P.read_notebook_params(nb) for nb in notebooks}
    assert P.drift(tree, declared) == []


def test_a_yaml_alias_bomb_is_refused_before_it_expands(tmp_path):
    """The review's attack: 600 bytes of nested aliases became a 3.1 MB parameters cell."""
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [*a{i - 1}, *a{i - 1}, *a{i - 1}, *a{i - 1}]" for i in range(1, 12)]
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\ndata:\n  path: *a11\n")
    with pytest.raises(P.ParamsError, match=r"line 2: YAML aliases \(`\*a0`\) are refused"):
        P.load_yaml(bomb)
    with pytest.raises(P.ParamsError, match="aliases"):
        P.resolve(BASE, sets=["data.path=*a0"])


def test_a_huge_parameters_file_is_refused_unread(tmp_path):
    huge = tmp_path / "huge.yaml"
    huge.write_text("data:\n  path: " + "x" * (P.MAX_FILE_BYTES + 1) + "\n")
    with pytest.raises(P.ParamsError, match="a parameters file may hold"):
        P.load_yaml(huge)


def test_a_huge_value_is_refused_and_never_shown_whole():
    with pytest.raises(P.ParamsError, match="holds more than") as refused:
        P.resolve(BASE, sets=["data.path=" + "y" * (P.MAX_VALUE_CHARS + 1)])
    assert len(str(refused.value)) < 300
    assert len(P.shown(list(range(10**6)), 500)) <= 500


@pytest.mark.parametrize(
    ("setting", "must_be"),
    [
        ("data.test_size=-0.2", "strictly between 0 and 1"),
        ("data.test_size=1.5", "strictly between 0 and 1"),
        ("modelling.cv_folds=1", "at least 2"),
        ("modelling.n_jobs=0", "-1 (every core)"),
        ("monitoring.alpha=2", "between 0 and 1"),
        ("data.seed=.inf", "a finite number"),
    ],
)
def test_ranges_known_up_front_are_checked_before_anything_runs(setting, must_be):
    base = {**BASE, "modelling": {"cv_folds": 5, "n_jobs": -1}, "monitoring": {"alpha": 0.05}}
    with pytest.raises(P.ParamsError, match=re.escape(must_be)):
        P.resolve(base, sets=[setting])


def test_a_retrain_shift_below_the_warn_shift_is_refused():
    base = {**BASE, "monitoring": {"psi_warn": 0.1, "psi_retrain": 0.25}}
    with pytest.raises(P.ParamsError, match="major shift must be at least a moderate one"):
        P.resolve(base, sets=["monitoring.psi_retrain=0.05"])


@pytest.mark.parametrize("where", ["file", "--set"])
def test_values_nested_thousands_deep_are_refused_with_a_message(tmp_path, where):
    deep = "[" * 5000 + "]" * 5000
    with pytest.raises(P.ParamsError, match="nested too deeply"):
        if where == "file":
            (tmp_path / "deep.yaml").write_text(f"data:\n  seed: {deep}\n")
            P.load_yaml(tmp_path / "deep.yaml")
        else:
            P.parse_value(deep)
