"""Serving the registered model: a lean web app, its local runner and its Docker image.

What runs in the image imports no MLflow (the image holds only the `serve` dependency group):
    integrity the SHA-256 record of a model's files (optionally signed), made when they were trusted
    bundle   the exported model folder and its manifest (the version's record, provenance)
    model    MLmodel signature + model.skops loaded with skops (never pickle, only this project's
             types); predictions
    onnx_model the model compiled to ONNX, scored with ONNX Runtime (no scikit-learn)
    schema   requests in MLflow's scoring formats and CSV, checked against the signature
    predlog  the optional, size-bounded JSON Lines prediction log
    settings the server's settings from the environment, and its worker count
    arms     the two-version modes (single, ab, shadow), ab's split and their settings
    versions the versions served: the champion and a challenger checked against it, the shadow
    metrics  the Prometheus metrics, added up across worker processes
    gate     the ASGI middleware in front of every request: token, body limits, request id
    app      the FastAPI app: /invocations /predict /ping /health /version /metadata /metrics,
             and what a prediction request goes through (`Scoring`)
    __main__ `python -m crisp_ml.serving`: integrity check, then uvicorn

What runs on the developer's machine, with MLflow and Docker:
    export   a registered model version as a bundle, or loaded here, checked against its record;
             the image tag recorded on the version
    image    build the image from a bundle, run it, check its answers (`build_and_verify`)
"""
