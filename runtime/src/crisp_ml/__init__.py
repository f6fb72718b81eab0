"""crisp-ml-runtime: the machinery of a CRISP-DM notebook project, shared by every generated project.

The public API is what the notebooks and a generated project import:

- `crisp_ml.cli`: the command line every `make` target calls (`main` is the project's console script).
- `crisp_ml.project`: where things live (`project_root`, `run_dir`), what one phase hands on
  (`hand_on`, `handed_on`) and the project's own settings (`settings`, from `[tool.crisp-ml]`).
- `crisp_ml.params`: params.yaml, one-off overrides and the notebooks' typed `parameters` cells.
- `crisp_ml.tracking`: MLflow set-up (`start_phase_run`, `client`, `model_name`).
- `crisp_ml.use_case`: the use case 01 checks and hands on as one object (`UseCase`), which the
  later phases read back (`handed_on_use_case`) and monitoring rebuilds from a version's pipeline
  run (`UseCase.from_params` with `crisp_ml.registry.trained_params`).
- `crisp_ml.columns`: the role of each column (feature, or left out and why) that 02 decides.
- `crisp_ml.data`, `crisp_ml.modelling`, `crisp_ml.evaluation`, `crisp_ml.registry`,
  `crisp_ml.monitoring`: the generic steps of phases 02 to 06, as the library their notebooks call.
- `crisp_ml.preflight`: every setting checked against the data before a run (`check_before_run`),
  as small checks a notebook can call on its own frame (`check_columns`, `check_positive_class`).
- `crisp_ml.serving`: the model server, its bundle and integrity records, and the serving image.
- `crisp_ml.compiling`: the model compiled to ONNX for serving, and checked to answer alike.
- `crisp_ml.scoring`: `score`, batch predictions of a registered version from files, on this
  machine in bounded memory or on Apache Spark (the `spark` extra).
- `crisp_ml.update`: `make update`, a newer template merged into the project.
- Two names the notebooks read: `crisp_ml.pipeline.PARENT_RUN_ENV` (the pipeline's parent run) and
  the registration tags of `crisp_ml.recovery` (`DECISION_TAG`, `PENDING`, `REGISTERED_BY_TAG`).

Everything else (the pipeline runner, warm kernels, recovery, the project's chores) is machinery
the command line drives; its names may change between minor versions.
"""

import os as _os

__version__ = "0.1.0"
# ONNX Runtime's official Linux builds send usage telemetry (1.32 here wrote a device ID and an event
# cache under ~/.cache/Microsoft on first use). Neither a model server nor a team's notebooks should
# report to a third party unasked. Off unless ORT_DISABLE_TELEMETRY=0 is set; it must be set before
# onnxruntime starts, so here, where every use of the runtime begins.
_os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
