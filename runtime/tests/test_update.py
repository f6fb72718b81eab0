"""`update`'s merge, file by file: the project's copy, the template before and the template now.

The whole command, on a real template history and a generated project, is in the template's slow
lane (tests/slow/test_update.py)."""

import json

import nbformat
import pytest

from crisp_ml import update
from crisp_ml.update import UpdateError, merge_one, merge_trees

LINES = "".join(f"line {n}\n" for n in range(1, 9))


def write(folder, name, text):
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def sides(tmp_path):
    """Three folders: the project ("mine"), the template before ("base") and now ("theirs")."""
    return tmp_path / "mine", tmp_path / "base", tmp_path / "theirs"


def merge(sides, name, mine=None, base=None, theirs=None):
    paths = [write(folder, name, text) if text is not None else None
             for folder, text in zip(sides, (mine, base, theirs), strict=True)]  # fmt: skip
    target = paths[0] or sides[0] / name
    target.parent.mkdir(parents=True, exist_ok=True)
    return merge_one(name, target, paths[1], paths[2]), target


def test_a_file_the_template_did_not_change_is_left_alone(sides):
    result, mine = merge(sides, "a.txt", mine="ours\n", base=LINES, theirs=LINES)
    assert result is None and mine.read_text() == "ours\n"


def test_changes_to_different_lines_merge_and_the_same_line_is_marked(sides):
    ours = LINES.replace("line 1", "line one")
    result, mine = merge(sides, "a.txt", ours, LINES, LINES.replace("line 8", "line eight"))
    assert (
        result == "changed" and "line one" in mine.read_text() and "line eight" in mine.read_text()
    )
    result, mine = merge(sides, "b.txt", ours, LINES, LINES.replace("line 1", "line uno"))
    assert result == update.MARKED
    assert "<<<<<<< your project\nline one" in mine.read_text() and "line uno" in mine.read_text()


def notebook(*sources):
    made = nbformat.v4.new_notebook()
    # the same cell keeps its id across versions, as in a real notebook's history
    made.cells = [
        nbformat.v4.new_markdown_cell(text, id=f"cell-{n}") for n, text in enumerate(sources)
    ]
    return nbformat.writes(made)


def test_notebooks_merge_cell_by_cell_and_a_clash_stays_valid_json(sides):
    base = notebook("# Title", "shared cell", "last cell")
    ours = notebook("# Title", "shared cell, our words", "last cell")
    result, mine = merge(sides, "n.ipynb", ours, base, notebook("# Title", "shared cell", "last!"))
    cells = [c.source for c in nbformat.read(mine, as_version=4).cells]
    assert result == "changed" and cells == ["# Title", "shared cell, our words", "last!"]
    clash = notebook("# Title", "shared cell, their words", "last cell")
    result, mine = merge(sides, "m.ipynb", ours, base, clash)
    assert result == update.MARKED_CELLS
    merged = nbformat.read(mine, as_version=4)
    nbformat.validate(merged)
    assert "our words" in merged.cells[1].source and "their words" in merged.cells[1].source


def test_a_dropped_file_goes_unless_the_team_changed_it(sides):
    result, mine = merge(sides, "old.txt", mine=LINES, base=LINES)
    assert result == "changed" and not mine.exists()
    result, mine = merge(sides, "kept.txt", mine="ours\n", base=LINES)
    assert result == update.KEPT_EDIT and mine.read_text() == "ours\n"


def test_a_new_file_arrives_and_a_deleted_one_is_reported(sides):
    result, mine = merge(sides, "new.txt", theirs="new\n")
    assert result == "changed" and mine.read_text() == "new\n"
    result, mine = merge(sides, "gone.txt", base=LINES, theirs=LINES + "more\n")
    assert result == update.DELETED and not mine.exists()


def test_the_runtime_wheel_is_the_templates_and_other_binaries_are_not_overwritten(sides):
    result, mine = merge(sides, "vendor/r-0.1.whl", mine="\0stale", base="\0old", theirs="\0new")
    assert result == "changed" and mine.read_text() == "\0new"
    result, mine = merge(sides, "vendor/r-0.0.whl", mine="\0old", base="\0old")
    assert result == "changed" and not mine.exists()
    result, mine = merge(sides, "logo.png", mine="\0ours", base="\0old", theirs="\0new")
    assert result == update.KEPT_BINARY and mine.read_text() == "\0ours"


def test_a_file_that_cannot_merge_leaves_the_project_untouched(tmp_path):
    root, base, theirs = tmp_path / "project", tmp_path / "base", tmp_path / "theirs"
    for folder in (base, theirs):
        write(folder, "a.txt", LINES)
        write(folder, "z.ipynb", notebook("cell"))
    write(theirs, "a.txt", LINES + "new line\n")
    write(theirs, "z.ipynb", notebook("cell changed"))
    write(root, "a.txt", LINES)
    write(root, "z.ipynb", "{not json")  # broken in the project: its merge fails
    with pytest.raises(UpdateError, match=r"z\.ipynb cannot be merged"):
        merge_trees(root, base, theirs, tmp_path / "scratch")
    assert (root / "a.txt").read_text() == LINES, "a.txt merged first, but was not written"


def record(tmp_path, **fields):
    made = {
        "template": "https://example.com/t.git", "commit": "a" * 40, "checkout": None,
        "context": {"cookiecutter": {"project_name": "P"}}, **fields,
    }  # fmt: skip
    (tmp_path / ".cruft.json").write_text(json.dumps(made))


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"commit": None}, "`commit` must be"),
        ({"commit": "--upload-pack=touch /tmp/x"}, "`commit` must be"),
        ({"template": 7}, "`template` must be"),
        ({"context": {}}, "`context.cookiecutter`"),
    ],
)
def test_a_damaged_record_is_named_before_anything_runs(tmp_path, fields, named):
    record(tmp_path, **fields)
    with pytest.raises(UpdateError, match=named):
        update.read_record(tmp_path)


def test_no_record_and_bad_json_say_what_to_do(tmp_path):
    with pytest.raises(UpdateError, match=r"no \.cruft\.json"):
        update.read_record(tmp_path)
    (tmp_path / ".cruft.json").write_text("{")
    with pytest.raises(UpdateError, match="not valid JSON"):
        update.read_record(tmp_path)


def test_credentials_never_reach_the_record_or_the_screen():
    assert update.shown("https://x-access-token:s3cret@github.com/o/t.git") == (
        "https://github.com/o/t.git"
    )
    assert update.shown("git+file:///srv/t") == "git+file:///srv/t"


def test_answers_keep_the_options_and_derived_names_only():
    context = {"project_name": "P", "__model_name": "m", "__prompts__": {}, "_template": "t",
               "_output_dir": "/tmp/x"}  # fmt: skip
    assert update.answers_in(context) == {"project_name": "P", "__model_name": "m"}
