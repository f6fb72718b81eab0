"""Before generation: refuse values that would break the project, and say how to fix each one.

Every problem names the field, the value given and an example of a good value. Exiting non-zero
makes cookiecutter stop and delete the project folder it made for this run. An answer holding
template syntax gets this far only from a replay file, which cookiecutter does not render: any
answer it renders, local_extensions.py refuses before it runs.
"""

from __future__ import annotations

import json
import keyword
import re
import sys

# User values arrive as JSON data, never as source code: tojson escapes quotes, so the raw
# triple-single-quoted string holds any value. (Formatters must not turn it into r""".)
# fmt: off
VALUES = {
    "project_name": json.loads(r''' {{ cookiecutter.project_name | tojson }} '''),
    "project_slug": json.loads(r''' {{ cookiecutter.project_slug | tojson }} '''),
    "package_name": json.loads(r''' {{ cookiecutter.package_name | tojson }} '''),
    "author_name": json.loads(r''' {{ cookiecutter.author_name | tojson }} '''),
    "author_email": json.loads(r''' {{ cookiecutter.author_email | tojson }} '''),
    "description": json.loads(r''' {{ cookiecutter.description | tojson }} '''),
    "tracking": json.loads(r''' {{ cookiecutter.tracking | tojson }} '''),
    "tracking_server_uri": json.loads(r''' {{ cookiecutter.tracking_server_uri | tojson }} '''),
    "__model_name": json.loads(r''' {{ cookiecutter.__model_name | tojson }} '''),
    "__image_name": json.loads(r''' {{ cookiecutter.__image_name | tojson }} '''),
    "__kernel_name": json.loads(r''' {{ cookiecutter.__kernel_name | tojson }} '''),
}
OUTPUT_DIR = json.loads(r''' {{ cookiecutter._output_dir | tojson }} ''')
# The longest value of each free-text field: one table, in local_extensions.py.
MAX_LENGTHS = json.loads(r''' {{ field_max_lengths | tojson }} ''')
# fmt: on
# Names cookiecutter.json computes from the slug, which an answer may set all the same; they are
# written into the package's code.
COMPUTED_NAMES = ("__model_name", "__image_name", "__kernel_name")

# Import names the generated project (or its tooling) imports, distributions it depends on, and its
# own layout: a package or console script of the same name would shadow or clash with them.
# The standard library's module names are added from the running interpreter.
# fmt: off
RESERVED_NAMES = frozenset(
    {
        # the runtime (import name, distribution, its `crisp-ml` command), whose code every
        # project runs as `crisp_ml`: a package of that name would shadow it
        "crisp_ml", "crisp_ml_runtime",
        # dependencies, by import name and by distribution name (hyphens as underscores)
        "mlflow", "mlflow_skinny", "papermill", "nbdev", "ipykernel", "IPython", "jupyter",
        "jupyterlab", "jupyter_client", "jupyter_core", "nbformat", "nbclient", "sklearn",
        "scikit_learn",
        "pandas", "numpy", "scipy", "skops", "pandera", "fairlearn", "pyarrow", "yaml", "pyyaml",
        "pydantic", "matplotlib", "fastapi", "starlette", "uvicorn", "uvloop", "httptools",
        "httpx", "prometheus_client", "psutil",
        "docker", "pytest", "ruff", "pre_commit", "hatchling", "schemathesis", "hypothesis",
        "nbconvert", "ipywidgets", "tqdm",
        # the runtime's `update` command: it regenerates the template and merges notebooks
        "cookiecutter", "nbdime", "cruft",
        # the runtime's `score --engine spark` (its `spark` extra)
        "pyspark",
        # the model compiled to ONNX (05_deployment) and served by ONNX Runtime
        "onnx", "onnxruntime", "skl2onnx",
        # the generated project's own folders, and names Python or pytest treat specially
        "src", "test", "tests", "notebooks", "data", "conftest", "setup", "site",
        # standard-library modules the project imports (also covered by stdlib_module_names)
        "json", "os", "sys", "typing", "pathlib", "re", "ast", "subprocess", "argparse",
    }
) | frozenset(getattr(sys, "stdlib_module_names", ()))
# fmt: on

# A good value of each field, shown in the messages.
EXAMPLES = {
    "project_name": "Churn Model",
    "project_slug": "churn-model",
    "package_name": "churn_model",
    "author_name": "Data Science Team",
    "author_email": "data-science@example.com",
    "description": "Predict which customers will churn.",
    "tracking_server_uri": "http://mlflow.example.com:5000",
}

SLUG_PATTERN = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
PACKAGE_PATTERN = re.compile(r"^[a-z_][a-z0-9_]*$")
EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+$")
URI_PATTERN = re.compile(r"^https?://[^\s\"'\\<>{}]+$")
# Written in halves so that Jinja, which renders this file, does not read them as its own syntax.
TEMPLATE_SYNTAX_START = ("{" + "{", "{" + "%", "{" + "#")
TEMPLATE_SYNTAX = (*TEMPLATE_SYNTAX_START, "}" + "}", "%" + "}")
SHOWN_CHARACTERS = 40  # of an over-long value
QUOTES_AND_BACKSLASH = ('"', "'", "\\")


def has_template_syntax(value: str) -> bool:
    return any(marker in value for marker in TEMPLATE_SYNTAX)


def has_quote_or_backslash(value: str) -> bool:
    return any(char in value for char in QUOTES_AND_BACKSLASH)


def shortened(value: str) -> str:
    return value if len(value) <= SHOWN_CHARACTERS else value[:SHOWN_CHARACTERS] + "..."


def length_problem(field: str, value: str) -> str | None:
    limit = MAX_LENGTHS[field]
    if len(value) <= limit:
        return None
    return (
        f"{field} {shortened(value)!r} is {len(value)} characters long, over the limit of "
        f"{limit}: shorten it, e.g. {EXAMPLES[field]!r}."
    )


def suggest_slug(value: str) -> str:
    """A valid slug close to what the user typed, or a generic one."""
    words = re.findall(r"[a-z0-9]+", value.lower())
    candidate = "-".join(words).lstrip("0123456789-")
    if SLUG_PATTERN.match(candidate) and candidate.replace("-", "_") not in RESERVED_NAMES:
        return candidate
    return EXAMPLES["project_slug"]


def suggest_package(value: str) -> str:
    candidate = suggest_slug(value).replace("-", "_")
    return candidate if candidate != value else f"{candidate}_project"


def project_name_problem(name: str) -> str | None:
    if not name.strip():
        return (
            "project_name is empty: give the project a human-readable name, "
            f"e.g. {EXAMPLES['project_name']!r}."
        )
    if has_template_syntax(name) or has_quote_or_backslash(name):
        return (
            f"project_name {name!r} contains quotes, a backslash or template syntax, which break "
            f"the files it is written into: use plain words, e.g. {EXAMPLES['project_name']!r}."
        )
    return None


def project_slug_problem(slug: str) -> str | None:
    if not slug:
        return (
            "project_slug is empty: it names the folder and the command, "
            f"e.g. {EXAMPLES['project_slug']!r}."
        )
    if not SLUG_PATTERN.match(slug):
        return (
            f"project_slug {slug!r} is not a valid slug: use lowercase letters and digits, "
            f"words joined by single hyphens, starting with a letter, e.g. {suggest_slug(slug)!r}."
        )
    if slug.replace("-", "_") in RESERVED_NAMES:
        return (
            f"project_slug {slug!r} clashes with a package, module or command the project uses: "
            f"pick a name of its own, e.g. '{slug}-project'."
        )
    return None


def package_name_problem(package: str) -> str | None:
    if not package:
        return (
            "package_name is empty: it is the Python import name, "
            f"e.g. {EXAMPLES['package_name']!r}."
        )
    if not (PACKAGE_PATTERN.match(package) and package.isidentifier()):
        return (
            f"package_name {package!r} is not a valid lowercase Python identifier: use lowercase "
            f"letters, digits and underscores, not starting with a digit, "
            f"e.g. {suggest_package(package)!r}."
        )
    if keyword.iskeyword(package):
        return (
            f"package_name {package!r} is a Python keyword and cannot be imported: "
            f"e.g. '{package}_project'."
        )
    if package in RESERVED_NAMES:
        return (
            f"package_name {package!r} would shadow the module {package!r} that the project "
            f"imports (a dependency or the standard library): e.g. '{package}_project'."
        )
    return None


def author_problems(author_name: str, author_email: str) -> list[str]:
    found = []
    if has_template_syntax(author_name):
        found.append(
            f"author_name {author_name!r} contains template syntax: "
            f"e.g. {EXAMPLES['author_name']!r}."
        )
    if not EMAIL_PATTERN.match(author_email) or has_quote_or_backslash(author_email):
        found.append(
            f"author_email {author_email!r} is not an e-mail address: "
            f"e.g. {EXAMPLES['author_email']!r}."
        )
    return found


def description_problem(description: str) -> str | None:
    # The description opens the package's docstring: a backslash or three double quotes break it.
    if has_template_syntax(description) or "\\" in description or '"""' in description:
        return (
            f"description {description!r} contains a backslash, three double quotes or template "
            f"syntax: use one plain sentence, e.g. {EXAMPLES['description']!r}"
        )
    return None


def computed_name_problems(values: dict) -> list[str]:
    """A model, image or kernel name given apart from the slug must be a name like the slug."""
    slug, limit = values["project_slug"], MAX_LENGTHS["project_slug"]
    found = []
    for field in COMPUTED_NAMES:
        name = values[field]
        if name != slug and not (SLUG_PATTERN.match(name) and len(name) <= limit):
            found.append(
                f"{field} {shortened(name)!r} is not a name like project_slug (lowercase words "
                f"joined by single hyphens, at most {limit} characters): leave it out to use the "
                f"slug, or give one, e.g. '{slug}-model'."
            )
    return found


def output_dir_problem(output_dir: str) -> str | None:
    # cookiecutter renders every path it writes, the output folder's included, as a template.
    if any(marker in output_dir for marker in TEMPLATE_SYNTAX_START):
        return (
            f"the output folder {output_dir!r} holds template syntax, which cookiecutter would run "
            "as code in the paths it writes: generate into another folder, e.g. --output-dir ."
        )
    return None


def tracking_server_uri_problem(tracking: str, uri: str) -> str | None:
    # Only read when runs go to a server; it is then written into the package's code.
    if tracking == "server" and not URI_PATTERN.match(uri):
        return (
            f"tracking_server_uri {uri!r} is not an http(s) address: "
            f"e.g. {EXAMPLES['tracking_server_uri']!r}."
        )
    return None


def problems(values: dict, output_dir: str = ".") -> list[str]:
    """Every problem with the values, each a sentence naming the field, the value and a fix."""
    too_long = [length_problem(field, values[field]) for field in values if field in MAX_LENGTHS]
    if any(too_long):  # alone: the other checks would quote the long values whole
        return [problem for problem in too_long if problem]
    found = [
        project_name_problem(values["project_name"]),
        project_slug_problem(values["project_slug"]),
        package_name_problem(values["package_name"]),
        *author_problems(values["author_name"], values["author_email"]),
        description_problem(values["description"]),
        tracking_server_uri_problem(values["tracking"], values["tracking_server_uri"]),
        *computed_name_problems(values),
        output_dir_problem(output_dir),
    ]
    return [problem for problem in found if problem]


def main() -> int:
    found = problems(VALUES, OUTPUT_DIR)
    if not found:
        return 0
    print("Cannot generate the project:", file=sys.stderr)
    for problem in found:
        print(f"  - {problem}", file=sys.stderr)
    print("Run cookiecutter again with corrected values.", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
