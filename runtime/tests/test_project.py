"""The project's settings the runtime reads: `[tool.crisp-ml]` in its pyproject.toml."""

import pytest

from crisp_ml import cli, project
from crisp_ml.project import ProjectNotFound, settings

GOOD = """\
[project]
name = "p"

[tool.crisp-ml]
package = "p"
model_name = "p"
image_name = "p"
kernel_name = "p"
"""


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("[project]\nname = 'p'\n", "no \\[tool.crisp-ml\\] table"),
        (GOOD.replace('kernel_name = "p"\n', ""), "kernel_name is missing"),
        (GOOD + 'colour = "red"\n', "unknown key `colour`"),
        (GOOD.replace('package = "p"', "package = 3"), "package must be text"),
        (GOOD + 'tracking = "sever"\n', "tracking must be local or server"),
        (GOOD + 'tracking = "server"\n', "needs tracking_uri"),
        (GOOD.replace('name = "p"\n\n', "\n"), "\\[project\\] name is missing"),
        ("[project\n", "cannot be read"),
    ],
    ids=["no table", "missing", "unknown", "not text", "tracking", "no uri", "no name", "toml"],
)
def test_bad_settings_are_named(isolated_project, text, named):
    (isolated_project / "pyproject.toml").write_text(text)
    project._settings_of.cache_clear()
    with pytest.raises(ProjectNotFound, match=named):
        settings()


def test_good_settings_are_read(isolated_project):
    (isolated_project / "pyproject.toml").write_text(GOOD + 'tracking = "local"\n')
    project._settings_of.cache_clear()
    assert (settings().name, settings().tracking, settings().tracking_uri) == ("p", "local", None)


def test_the_command_line_outside_a_project_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("PROJECT_ROOT")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["doctor"]) == 1
    assert "no project here" in capsys.readouterr().err
