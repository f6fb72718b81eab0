"""The end of a pipeline run in a few lines: the model, its test metric against the threshold, the
gate, the champion alias, the serving runtime and the model card, read from what the notebooks handed on.

Each part is shown only when the notebook that makes it ran in this run: a `--from`/`--only` run
starts from an earlier run's handoff, whose gate or alias would otherwise pass for this run's.
Missing keys leave their line out instead of failing a run that succeeded.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .project import HANDOFF

MODELLING, EVALUATION, DEPLOYMENT = "03_modelling", "04_evaluation", "05_deployment"
Line = tuple[str, str]  # a label and its value
LABEL_WIDTH = 20  # as the command's "executed notebooks:" line, so the values line up


def read_handoff(run_dir: Path) -> dict[str, Any]:
    """The run folder's handoff, or {} when there is none or it cannot be read."""
    try:
        known = json.loads((Path(run_dir) / HANDOFF).read_text())
    except (OSError, ValueError):
        return {}
    return known if isinstance(known, dict) else {}


def _number(value: Any) -> str:
    if not isinstance(value, int | float) or isinstance(value, bool) or math.isnan(value):
        return "undefined"
    return f"{value:.4g}"


def _metric_line(handoff: dict[str, Any], metric: str) -> Line | None:
    """The test metric against the use case's threshold, from the gate's first criterion."""
    criteria = (handoff.get("gate") or {}).get("criteria") or []
    name = f"{metric} on the test set"
    criterion = next((c for c in criteria if c.get("criterion") == name), None)
    if criterion is not None:
        limit = f"{criterion.get('comparison', '')} {_number(criterion.get('limit'))}"
        return f"test {metric}", f"{_number(criterion.get('value'))} (threshold {limit.strip()})"
    if metric in (handoff.get("test_metrics") or {}):
        return f"test {metric}", _number(handoff["test_metrics"][metric])
    return None


def _gate_line(handoff: dict[str, Any]) -> Line | None:
    if "gate_passed" not in handoff:
        return None
    criteria = (handoff.get("gate") or {}).get("criteria") or []
    if handoff["gate_passed"]:
        counted = f" ({len(criteria)} criteria)" if criteria else ""
        return "acceptance gate", f"passed{counted}"
    failed = [c.get("criterion", "?") for c in criteria if not c.get("passed")]
    return "acceptance gate", "failed" + (f" ({'; '.join(failed)})" if failed else "")


def _alias_line(handoff: dict[str, Any]) -> Line | None:
    """Whether the champion alias moved, and why (`decision_reason`, when 05 hands it on)."""
    if "promoted" not in handoff:
        return None
    version, champion = handoff.get("registered_version"), handoff.get("champion_version")
    if handoff["promoted"]:
        moved = f"moved to version {version}"
    else:
        holder = f"stays with version {champion}" if champion else "none yet"
        moved = f"{holder}; version {version} is the challenger"
    reason = handoff.get("decision_reason")
    return "champion alias", f"{moved}: {reason}" if reason else moved


def _runtime_line(handoff: dict[str, Any]) -> Line | None:
    """Which runtime serves the version 05 registered, and why not ONNX when it is not."""
    runtime = handoff.get("serving_runtime")
    if not runtime:
        return None
    reason = handoff.get("serving_runtime_reason")
    return "serving runtime", f"{runtime} (not ONNX: {reason})" if reason else str(runtime)


def summary_lines(handoff: dict[str, Any], metric: str, ran: Iterable[str]) -> list[str]:
    """The summary of a successful run of the notebooks `ran` (stems such as `04_evaluation`),
    one line each; [] when none of them makes anything to summarise."""
    ran = set(ran)
    lines: list[Line | None] = []
    if ran & {MODELLING, EVALUATION, DEPLOYMENT} and handoff.get("best_candidate"):
        lines.append(("model", str(handoff["best_candidate"])))
    if EVALUATION in ran:
        lines += [_metric_line(handoff, metric), _gate_line(handoff)]
    if DEPLOYMENT in ran:
        lines += [_alias_line(handoff), _runtime_line(handoff)]
        if handoff.get("image"):
            lines.append(("serving image", str(handoff["image"])))
    if ran & {EVALUATION, DEPLOYMENT} and handoff.get("model_card_path"):
        lines.append(("model card", str(handoff["model_card_path"])))
    return [f"{label + ':':<{LABEL_WIDTH}}{value}" for label, value in filter(None, lines)]
