"""{{ cookiecutter.description }}

Modules:

- `{{ cookiecutter.package_name }}.params`: Pipeline parameters: params.yaml, one-off overrides, and the notebooks' typed `parameters` cells.
- `{{ cookiecutter.package_name }}.pipeline`: The pipeline runner: the numbered notebooks, in order, through papermill, as one MLflow run tree."""

__version__ = "0.1.0"
