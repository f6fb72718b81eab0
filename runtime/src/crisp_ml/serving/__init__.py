"""Serving the registered model: a lean web app, its local runner and its Docker image.

What runs in the image imports no MLflow (the image holds only the `serve` dependency group):
    integrity the SHA-256 record of a model's files (optionally signed), made when they were trusted
    bundle   the exported model folder and its manifest (the version's record, provenance)
    model    MLmodel signature + model.skops loaded with skops (never pickle, only this project's
             types); predictions
    schema   requests in MLflow's scoring formats and CSV, checked against the signature
    predlog  the optional, size-bounded JSON Lines prediction log
    app      the FastAPI app: /invocations /predict /ping /health /version /metadata /metrics
    __main__ `python -m crisp_ml.serving`: integrity check, then uvicorn

What runs on the developer's machine, with MLflow and Docker:
    export   a registered model version as a bundle, or loaded here, checked against its record;
             the image tag recorded on the version
    image    build the image from a bundle, run it, check its answers (`build_and_verify`)
"""
