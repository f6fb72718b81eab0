"""Jinja extensions of this template, loaded by cookiecutter through `_extensions` in cookiecutter.json.

cookiecutter creates the project folder by rendering the name of the template folder,
`{{cookiecutter.project_slug}}`, *before* the pre-generation hook gets to check the slug. A slug
holding `/` would make nested folders, of which cookiecutter's clean-up after a refused input removes
only the innermost; an empty slug would name the output folder itself, and cookiecutter would stop
with "directory already exists" before the hook could say what is wrong. So the folder's name, and
only it, is rendered through `slugify`: a valid slug is left as it is (slugify does not change one),
and any other value gives a single folder that the hook's refusal removes again.
"""

from __future__ import annotations

from jinja2.ext import Extension

# Written in halves so that Jinja, which may render this file's neighbours, never reads them.
PROJECT_FOLDER = "{" + "{cookiecutter.project_slug}" + "}"
SAFE_PROJECT_FOLDER = (
    "{" + "{ cookiecutter.project_slug | slugify or 'invalid-project-slug' }" + "}"
)


class SafeProjectFolder(Extension):
    """Render the template folder's name as a single, harmless folder name, whatever the slug."""

    def preprocess(self, source: str, name: str | None, filename: str | None = None) -> str:
        # cookiecutter renders a folder name on its own (`from_string`, no template name), and no
        # file of the template consists of exactly this expression.
        if name is None and source == PROJECT_FOLDER:
            return SAFE_PROJECT_FOLDER
        return source
