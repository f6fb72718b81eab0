"""The project's environment: what its notebooks need beside the runtime."""


def test_progress_bars_draw_as_widgets_in_a_notebook():
    """tqdm.auto, which MLflow imports, prints "IProgress not found" into every notebook that
    imports MLflow unless ipywidgets is installed."""
    from tqdm.notebook import IProgress

    assert IProgress is not None
