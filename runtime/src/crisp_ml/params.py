"""Pipeline parameters: params.yaml, one-off overrides, and the notebooks' typed `parameters` cells.

params.yaml is the one source. A key `data.test_size` there is the notebook parameter `data_test_size`;
each notebook's `parameters` cell declares the ones it reads, with a type annotation and the same value
as its default. Everything is checked before a notebook runs, because papermill itself only warns about
unknown parameters and never checks types.
"""

from __future__ import annotations

import ast
import difflib
import json
import math
import re
import reprlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

PARAMS_FILE = "params.yaml"
RUNNER_SECTIONS = ("smoke",)  # read by the runner itself, not by a notebook
# The names a parameter annotation may use.
_SAFE_TYPES = {"str": str, "int": int, "float": float, "bool": bool, "list": list, "dict": dict}
_SAFE_TYPES |= {"None": None, "Any": Any, "Literal": Literal}


class ParamsError(ValueError):
    """Parameters that cannot run: each problem names the key, the notebook and the fix."""


MAX_FILE_BYTES = 1_000_000  # a parameters file larger than this is refused before it is parsed
MAX_VALUE_CHARS = 10_000  # a single setting larger than this (as JSON) is refused


class _Loader(yaml.SafeLoader):
    """YAML 1.1 reads `1e-3` as a string; this loader reads it as the float everyone means. It
    refuses aliases (`*name`): a few hundred bytes of nested aliases expand to gigabytes (a
    "billion laughs"), and parameters never need them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ParamsError(
                f"{self.name}, line {event.start_mark.line + 1}: YAML aliases (`*{event.anchor}`) "
                "are refused in parameters; write the values out"
            )
        return super().compose_node(parent, index)


# YAML 1.1 also reads yes, no, on and off as booleans: a class labelled `yes` or `no` would become
# True or False. Only true and false are booleans here, as in YAML 1.2.
BOOL_TAG = "tag:yaml.org,2002:bool"
_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d[\d_]*)?\.?\d*(?:[eE][-+]?\d+)$|^[-+]?\d[\d_]*\.\d*$|^[-+]?\.\d+$"),
    list("-+0123456789."),
)


def load_yaml(path: Path) -> dict[str, Any]:
    path = Path(path)
    try:
        if (size := path.stat().st_size) > MAX_FILE_BYTES:
            raise ParamsError(
                f"{path} holds {size:,} bytes; a parameters file may hold {MAX_FILE_BYTES:,}"
            )
        tree = _parse(path.read_text(), str(path))
    except (FileNotFoundError, IsADirectoryError):
        raise ParamsError(f"parameters file not found: {path}") from None
    except yaml.YAMLError as error:
        raise ParamsError(f"{path} is not valid YAML: {error}") from None
    if not isinstance(tree, dict):
        raise ParamsError(f"{path} must hold a mapping of sections (data:, modelling:, ...)")
    return tree


def _parse(text: str, name: str) -> Any:
    loader = _Loader(text)
    loader.name = name  # named in the alias refusal
    try:
        return loader.get_single_data()
    except RecursionError:  # `[[[[...` thousands deep: PyYAML recurses once per level
        raise ParamsError(
            f"{name}: values are nested too deeply; parameters need a few levels"
        ) from None
    finally:
        loader.dispose()


def parse_value(text: str) -> Any:
    """A `--set` value as YAML: `5` is an int, `[a, b]` a list, `null` None, `abc` a string."""
    try:
        return _parse(text, "--set")
    except yaml.YAMLError:
        return text


def shown(value: Any, limit: int = 200) -> str:
    """A value as text for a log or a message, cut to `limit` characters: reprlib stops early, so a
    huge value is never turned into a huge string first."""
    if isinstance(value, str):
        return value[:limit]
    bounded = reprlib.Repr()
    bounded.maxstring = bounded.maxother = limit
    bounded.maxlist = bounded.maxdict = bounded.maxtuple = bounded.maxset = 50
    return bounded.repr(value)[:limit]


def _share(v: float) -> bool:
    return 0 <= v <= 1


# What a setting must be, where that can be known before anything runs: (test, what it must be).
RANGES: dict[str, tuple[Callable[[float], bool], str]] = {
    "data.test_size": (lambda v: 0 < v < 1, "a share strictly between 0 and 1, e.g. 0.2"),
    "data.sample_rows": (lambda v: v >= 0, "0 (every row) or a number of rows"),
    "data.max_missing_share": (_share, "a share between 0 and 1"),
    "data.min_rows_per_class": (lambda v: v >= 1, "at least 1"),
    "data.max_categories": (lambda v: v >= 1, "at least 1 distinct value"),
    "modelling.cv_folds": (lambda v: v >= 2, "at least 2 cross-validation folds"),
    "modelling.n_iter": (lambda v: v >= 1, "at least 1 setting per candidate"),
    "modelling.n_jobs": (lambda v: v == -1 or v >= 1, "-1 (every core) or a number of fits"),
    "modelling.search_rows": (lambda v: v >= 0, "0 (every row) or a number of rows"),
    "modelling.max_search_seconds": (lambda v: v >= 0, "0 (no limit) or a number of seconds"),
    "modelling.max_model_mb": (lambda v: v >= 0, "0 (no warning) or a size in MB"),
    "evaluation.baseline_margin": (lambda v: v >= 0, "0 or more, in the metric's units"),
    "evaluation.max_generalization_gap": (lambda v: v >= 0, "0 or more, in the metric's units"),
    "monitoring.alpha": (lambda v: 0 < v < 1, "a false discovery rate between 0 and 1, e.g. 0.05"),
    "monitoring.psi_warn": (lambda v: v >= 0, "0 or more"),
    "monitoring.psi_retrain": (lambda v: v >= 0, "0 or more"),
    "monitoring.retrain_share": (_share, "a share between 0 and 1"),
    "monitoring.max_unseen_share": (_share, "a share between 0 and 1"),
    "monitoring.max_missing_increase": (_share, "a share between 0 and 1"),
    "monitoring.max_metric_drop": (lambda v: v >= 0, "0 or more, in the metric's units"),
    "monitoring.min_rows": (lambda v: v >= 1, "at least 1"),
    "monitoring.bins": (lambda v: v >= 2, "at least 2 bins"),
}


def value_problems(tree: dict[str, Any]) -> list[str]:
    """Settings too large, not finite, or outside what they can be; one sentence each."""
    problems = []
    for key, value in leaves(tree).items():
        if len(json.dumps(value, default=str)) > MAX_VALUE_CHARS:
            problems.append(
                f"`{key}` holds more than {MAX_VALUE_CHARS:,} characters: {shown(value, 80)}"
            )
        elif isinstance(value, float) and not math.isfinite(value):
            problems.append(f"`{key}` = {value}: use a finite number")
        elif key in RANGES and _number(value) and not RANGES[key][0](value):
            problems.append(f"`{key}` = {value!r}: it must be {RANGES[key][1]}")
    warn, retrain = (get_dotted_or_none(tree, f"monitoring.psi_{k}") for k in ("warn", "retrain"))
    if _number(warn) and _number(retrain) and retrain < warn:
        problems.append(
            f"`monitoring.psi_retrain` ({retrain}) is below `monitoring.psi_warn` ({warn}): a "
            "major shift must be at least a moderate one"
        )
    return problems


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def get_dotted_or_none(tree: dict[str, Any], key: str) -> Any:
    try:
        return get_dotted(tree, key)
    except (KeyError, TypeError):
        return None


def dotted_keys(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Every node of the tree under its dotted key, mappings and leaves alike."""
    keys = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        keys[key] = value
        if isinstance(value, dict):
            keys.update(dotted_keys(value, prefix=f"{key}."))
    return keys


def get_dotted(tree: dict[str, Any], key: str) -> Any:
    node: Any = tree
    for part in key.split("."):
        node = node[part]
    return node


def set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    *parents, last = key.split(".")
    node = tree
    for part in parents:
        node = node.setdefault(part, {})
    node[last] = value


def parameter_name(key: str) -> str:
    """The notebook parameter for a params.yaml key: `data.test_size` -> `data_test_size`."""
    return re.sub(r"\W", "_", key.replace(".", "_"))


@dataclass(frozen=True)
class NotebookParam:
    notebook: str  # file name, e.g. 02_data_preparation.ipynb
    name: str  # the variable in the parameters cell
    annotation: str  # its type annotation, as written
    default: Any

    def expected_type(self) -> Any:
        return eval(self.annotation, {"__builtins__": {}}, _SAFE_TYPES)  # only the names above

    def check(self, value: Any) -> str | None:
        """None when `value` fits the annotation, else what is wrong."""
        from pydantic import (  # here: the template's hook lacks pydantic
            TypeAdapter,
            ValidationError,
        )

        try:
            TypeAdapter(self.expected_type()).validate_python(value, strict=True)
        except ValidationError as error:
            return error.errors()[0]["msg"]
        return None


def parameters_cell(notebook: dict[str, Any]) -> tuple[int, dict[str, Any]] | None:
    for index, cell in enumerate(notebook["cells"]):
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            return index, cell
    return None


def read_notebook_params(path: Path) -> list[NotebookParam]:
    """The typed parameters a notebook declares; a missing tag or annotation is an error."""
    notebook = json.loads(Path(path).read_text())
    found = parameters_cell(notebook)
    if found is None:
        raise ParamsError(
            f"{path.name} has no cell tagged `parameters`: papermill would ignore every value. "
            "Tag the cell that declares its parameters (JupyterLab: Property Inspector > Cell Tags)."
        )
    source = "".join(found[1]["source"])
    params = []
    for node in ast.parse(source).body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value:
            default = ast.literal_eval(node.value)
            params.append(
                NotebookParam(path.name, node.target.id, ast.unparse(node.annotation), default)
            )
        elif isinstance(node, ast.Assign):
            name = ast.unparse(node.targets[0])
            raise ParamsError(
                f"{path.name}: parameter `{name}` has no type; write it as `{name}: <type> = <value>`"
            )
    return params


def parameter_keys(tree: dict[str, Any]) -> dict[str, str]:
    """Notebook parameter name -> params.yaml key, refusing two keys that would share a name."""
    names: dict[str, str] = {}
    for key in dotted_keys(tree):
        name = parameter_name(key)
        if name in names:
            raise ParamsError(f"params.yaml keys `{names[name]}` and `{key}` both map to `{name}`")
        names[name] = key
    return names


def resolve(
    base: dict[str, Any],
    param_files: Iterable[Path] = (),
    sets: Iterable[str] = (),
    smoke: bool = False,
) -> tuple[dict[str, Any], dict[str, str]]:
    """params.yaml with `--params` files, the smoke settings and `--set key=value` applied, in that order.

    Returns the tree and the raw text of each `--set`, so `--set data.target=123` can stay a string
    where a notebook expects one.
    """
    tree = json.loads(json.dumps(base))  # a deep copy that also proves the tree is plain data
    for path in param_files:
        for key, value in leaves(load_yaml(path)).items():
            _apply(tree, base, key, value, source=str(path))
    if smoke:
        for key, value in (base.get("smoke") or {}).items():
            _apply(tree, base, key, value, source="params.yaml smoke")
    raw_sets = {}
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep:
            raise ParamsError(f"--set {item!r} needs the form key=value, e.g. --set data.seed=7")
        key = key.strip()
        _apply(tree, base, key, parse_value(text), source=f"--set {item}")
        raw_sets[key] = text
    if problems := value_problems(tree):
        raise ParamsError("\n".join(problems))
    return tree, raw_sets


def changed_keys(base: dict[str, Any], tree: dict[str, Any]) -> set[str]:
    """The dotted keys whose value in `tree` differs from `base` (added keys included)."""
    before = leaves(base)
    return {key for key, value in leaves(tree).items() if key not in before or before[key] != value}


def leaves(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The settings of a tree under their dotted keys (an empty mapping counts as a setting)."""
    found = {}
    for name, value in tree.items():
        key = f"{prefix}{name}"
        if isinstance(value, dict) and value:
            found.update(leaves(value, prefix=f"{key}."))
        else:
            found[key] = value
    return found


def _apply(tree: dict[str, Any], base: dict[str, Any], key: str, value: Any, source: str) -> None:
    known = dotted_keys(base)
    parent = key.rpartition(".")[0]
    # A new entry is fine inside an open mapping such as a search space, not as a new setting.
    open_parent = parent in known and isinstance(known[parent], dict) and parent.count(".") >= 1
    if key not in known and not open_parent:
        close = difflib.get_close_matches(key, list(known), n=1)
        hint = f" Did you mean `{close[0]}`?" if close else " See params.yaml for the keys."
        raise ParamsError(f"{source}: unknown parameter `{key}`.{hint}")
    set_dotted(tree, key, value)


def notebook_values(
    tree: dict[str, Any], params: list[NotebookParam], raw_sets: dict[str, str] | None = None
) -> dict[str, Any]:
    """The values to inject into one notebook, each checked against its annotation."""
    names = parameter_keys(tree)
    values, problems = {}, []
    for param in params:
        key = names.get(param.name)
        if key is None:
            problems.append(
                f"{param.notebook}: parameter `{param.name}` has no key in params.yaml; "
                f"add it there (a key `a.b` is the parameter `a_b`) or remove it from the notebook"
            )
            continue
        value = get_dotted(tree, key)
        if raw_sets and key in raw_sets and param.expected_type() is str:
            value = raw_sets[key]
        if error := param.check(value):
            problems.append(
                f"`{key}` = {value!r} does not fit {param.notebook}, which expects "
                f"`{param.annotation}` ({error})"
            )
        values[param.name] = value
    if problems:
        raise ParamsError("\n".join(problems))
    return values


def drift(tree: dict[str, Any], notebooks: dict[Path, list[NotebookParam]]) -> list[str]:
    """Where the notebooks and params.yaml disagree: what `check` reports and `fix` mends."""
    names = parameter_keys(tree)
    problems = []
    used = set()
    for params in notebooks.values():
        for param in params:
            key = names.get(param.name)
            if key is None:
                problems.append(f"{param.notebook}: `{param.name}` has no key in params.yaml")
                continue
            used.add(key)
            value = get_dotted(tree, key)
            if param.default != value:
                problems.append(
                    f"{param.notebook}: default of `{param.name}` is {param.default!r}, "
                    f"params.yaml `{key}` is {value!r} (run `fix` to copy params.yaml's value)"
                )
    for key in leaves({k: v for k, v in tree.items() if k not in RUNNER_SECTIONS}):
        if not any(key == u or key.startswith(f"{u}.") for u in used):
            problems.append(f"params.yaml `{key}` is read by no notebook: use it or remove it")
    for key in tree.get("smoke") or {}:
        if key not in dotted_keys(tree):
            problems.append(f"params.yaml smoke: `{key}` is not a parameter")
    return problems


def sync_notebook(path: Path, tree: dict[str, Any]) -> bool:
    """Copy params.yaml's values into a notebook's parameters cell; True when it changed."""
    notebook = json.loads(path.read_text())
    found = parameters_cell(notebook)
    if found is None:
        return False
    _, cell = found
    names = parameter_keys(tree)
    source = "".join(cell["source"])
    # Rewrite statements from the last one up, so earlier offsets stay valid.
    nodes = [n for n in ast.parse(source).body if isinstance(n, ast.AnnAssign) and n.value]
    for node in reversed(nodes):
        name = ast.unparse(node.target)
        key = names.get(name)
        if key is None or ast.literal_eval(node.value) == get_dotted(tree, key):
            continue
        lines = source.splitlines(keepends=True)
        start = sum(len(x) for x in lines[: node.lineno - 1]) + node.col_offset
        end = sum(len(x) for x in lines[: node.end_lineno - 1]) + _char_offset(
            lines[node.end_lineno - 1], node.end_col_offset
        )
        head = f"{name}: {ast.get_source_segment(source, node.annotation)} = "
        literal = format_literal(get_dotted(tree, key), indent=0, used=len(head))
        source = source[:start] + head + literal + source[end:]
    if source == "".join(cell["source"]):
        return False
    cell["source"] = source.splitlines(keepends=True)
    path.write_text(json.dumps(notebook, sort_keys=True, indent=1, ensure_ascii=False) + "\n")
    return True


def _char_offset(line: str, byte_offset: int) -> int:
    """ast reports UTF-8 byte offsets; strings are indexed by character."""
    return len(line.encode()[:byte_offset].decode())


LINE_LENGTH = 100  # ruff's line-length in pyproject.toml


def format_literal(value: Any, indent: int = 0, used: int = 0, trailing: int = 0) -> str:
    """A value as Python source laid out the way ruff formats it, so `check` stays green after `fix`:
    on one line when it fits, else one item per line with a trailing comma."""
    if isinstance(value, str):
        text = json.dumps(value, ensure_ascii=False)
        if indent == 0 and used + len(text) > LINE_LENGTH:
            return f"(\n    {text}\n)"  # ruff wraps a long string assigned at top level
        return text
    if not isinstance(value, list | dict) or not value:
        return repr(value)
    inline = _inline(value)
    if used + len(inline) + trailing <= LINE_LENGTH:
        return inline
    inner = indent + 4
    if isinstance(value, dict):
        items = []
        for key, item in value.items():
            head = f"{json.dumps(str(key), ensure_ascii=False)}: "
            items.append(head + format_literal(item, inner, inner + len(head), trailing=1))
        opening, closing = "{", "}"
    else:
        items = [format_literal(item, inner, inner, trailing=1) for item in value]
        opening, closing = "[", "]"
    body = "".join(f"{' ' * inner}{item},\n" for item in items)
    return f"{opening}\n{body}{' ' * indent}{closing}"


def _inline(value: Any) -> str:
    if isinstance(value, dict):
        pairs = (
            f"{json.dumps(str(k), ensure_ascii=False)}: {_inline(v)}" for k, v in value.items()
        )
        return "{" + ", ".join(pairs) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_inline(v) for v in value) + "]"
    return format_literal(value)
