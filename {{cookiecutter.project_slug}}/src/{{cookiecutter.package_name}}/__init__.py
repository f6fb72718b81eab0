"""{{ cookiecutter.description }}

Modules:

- `{{ cookiecutter.package_name }}.kernel_guard`: A kernel the pipeline starts dies with the pipeline, and takes its worker processes with it.
- `{{ cookiecutter.package_name }}.kernels`: Warm kernels: each notebook's kernel starts, and imports what the notebook imports, while the notebook before it runs.
- `{{ cookiecutter.package_name }}.params`: Pipeline parameters: params.yaml, one-off overrides, and the notebooks' typed `parameters` cells.
- `{{ cookiecutter.package_name }}.pipeline`: The pipeline runner: the numbered notebooks, in order, through papermill, as one MLflow run tree.
- `{{ cookiecutter.package_name }}.recovery`: Finish what a killed run left behind: runs RUNNING for ever, and a registration without its decision.
- `{{ cookiecutter.package_name }}.serving.app`: The serving app: MLflow's scoring protocol, a typed /predict, health, metadata and metrics.
- `{{ cookiecutter.package_name }}.serving.bundle`: A serving bundle: the model folder exported from the registry, plus a manifest.
- `{{ cookiecutter.package_name }}.serving.export`: Models out of the registry, checked: the serving bundle, and models loaded in this process.
- `{{ cookiecutter.package_name }}.serving.image`: The serving image: stage a build context from the registry, build it, run it, check its answers.
- `{{ cookiecutter.package_name }}.serving.integrity`: Integrity records: the SHA-256 of every file of a model, made while the files were trusted.
- `{{ cookiecutter.package_name }}.serving.model`: The model as the server sees it: signature from MLmodel, estimator from model.skops.
- `{{ cookiecutter.package_name }}.serving.predlog`: The prediction log: JSON Lines, one line per predicted row, off unless PREDICTION_LOG is set.
- `{{ cookiecutter.package_name }}.serving.schema`: Requests checked against the model's signature, before anything reaches the model."""

__version__ = "0.1.0"
