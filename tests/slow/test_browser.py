"""The JupyterLab round trip and the MLflow UI, in a real browser.

One classification project of its own, its `params.yaml` set to the smoke values and committed (so
an interactive run is as short as `pipeline --smoke` and does the same work). A smoke pipeline runs
first; then JupyterLab, started with the project's own `lab` command on a free loopback port, opens
notebooks 01, 02 and 03 in Debian's Chromium driven by Playwright. Each is run with Run > Run All
Cells in the project's kernel and saved with Ctrl+S; one code cell of 01 gets a comment line typed
into it first. Then:

- nothing failed in the browser, and the interactive 02 and 03 logged the pipeline's numbers;
- `check` fails on the saved notebooks, `fix` makes it pass, and git then sees only the typed line;
- the MLflow UI (`ui`) shows the pipeline's run tree and the champion alias of the model.

Nothing is downloaded: the browser is /usr/bin/chromium (`apt-get install chromium`, which .ci/run
does), never Playwright's own. On failure the page is kept in build/screenshots/.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from playwright.sync_api import expect, sync_playwright
from ports import free_port

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("browser")]

CHROMIUM = Path("/usr/bin/chromium")
TEMPLATE = Path(__file__).resolve().parents[2]
SCREENSHOTS = TEMPLATE / "build" / "screenshots"
NO_IMAGE = ["--set", "deployment.build_image=false"]  # images are tested on the smoked projects
NOTEBOOKS = ["01_use_case", "02_data_preparation", "03_modelling"]
# The edit made in the browser: this line typed at the top of the code cell holding ANCHOR.
EDITED, ANCHOR = "01_use_case", 'run = start_phase_run("01_use_case")'
EDIT_LINE = "# Use case reviewed with the clinic's diagnostic board."
SERVER_START = 180  # s for JupyterLab or the MLflow UI to answer (2 busy cores)
RUN_ALL = 600  # s for one notebook's Run All
ACTIVE = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook on show
STDERR = '.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]'
FAILED = re.compile(r"Traceback|\w*Error\b")  # in a stderr output: an error, not a warning


# --- servers the test starts and stops ----------------------------------------------------------


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log: Path


@contextmanager
def serving(project, args: list[str], url: str, ready: str, log: Path) -> Iterator[Server]:
    """The project's command `args` in a process group of its own, until `ready` answers 200;
    stopped with its whole family afterwards, whatever happened."""
    with log.open("w") as out:
        process = subprocess.Popen(
            [str(project.root / ".venv" / "bin" / project.slug), *args], cwd=project.root,
            env=project.env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_answer(ready, process, log)
        yield Server(url, process, log)
    finally:
        stop(process)


def wait_for_answer(url: str, process: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"exited {process.returncode} before answering:\n{log.read_text()[-4000:]}")
        with suppress(OSError), urllib.request.urlopen(url, timeout=5) as response:
            if response.status == 200:
                return
        time.sleep(1)
    pytest.fail(f"no answer from {url} within {SERVER_START} s:\n{log.read_text()[-4000:]}")


def descendants(pid: int) -> set[int]:
    """Every living process under `pid` (Jupyter's kernels run in sessions of their own, so the
    process group alone does not reach them)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with suppress(OSError):
            fields = stat.read_text().rpartition(")")[2].split()
            if fields[0] != "Z":
                children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state != "Z"


def stop(process: subprocess.Popen) -> None:
    """SIGTERM to the server's group (it shuts its kernels down), SIGKILL to whatever of its
    family is still there 30 s later: no orphan outlives the test."""
    family = descendants(process.pid)
    with suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        with suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    deadline = time.monotonic() + 30
    while (left := {pid for pid in family if alive(pid)}) and time.monotonic() < deadline:
        time.sleep(0.5)
    for pid in left:
        print(f"killing {pid}, left running by {process.args[1:3]}")
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


# --- the browser ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    """Debian's Chromium under Playwright; skipped, loudly, where it is not installed."""
    if not CHROMIUM.is_file():
        message = (
            f"NO CHROMIUM at {CHROMIUM}: the browser tests are SKIPPED. "
            "Install it with `apt-get install -y chromium` (.ci/run does)."
        )
        print(f"\n{'!' * 80}\n{message}\n{'!' * 80}")
        pytest.skip(message)
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=["--no-sandbox"],  # root has no sandbox
        )
        try:
            yield chromium
        finally:
            chromium.close()


@contextmanager
def screenshot_on_failure(page, name: str) -> Iterator[None]:
    """Keep what the page showed when anything in the block failed, and say where."""
    try:
        yield
    except BaseException:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.png"
        with suppress(Exception):
            page.screenshot(path=str(path), full_page=True)
            print(f"\nscreenshot of the failure: {path}")
        raise


@contextmanager
def new_page(browser) -> Iterator:
    page = browser.new_page(viewport={"width": 1400, "height": 900})
    page.set_default_timeout(60_000)
    try:
        yield page
    finally:
        page.close()


# --- the project ---------------------------------------------------------------------------------


def set_params(path: Path, values: dict) -> None:
    """Edit `section.key: value` lines of params.yaml in place, comments and layout kept."""
    lines = path.read_text().splitlines(keepends=True)
    for dotted, value in values.items():
        section, key = dotted.split(".")
        start = lines.index(f"{section}:\n")
        for number in range(start + 1, len(lines)):
            if match := re.match(rf"(  {key}:\s*)(\S+)(.*)", lines[number], re.DOTALL):
                lines[number] = f"{match[1]}{json.dumps(value)}{match[3]}"
                break
        else:
            raise AssertionError(f"no {dotted} in {path}")
    path.write_text("".join(lines))


@pytest.fixture(scope="module")
def round_trip(browser, project_factory):
    """A project whose params.yaml holds the smoke values (committed), after a smoke pipeline."""
    project = project_factory(task="classification", project_name="Browser Round Trip")
    params = project.root / "params.yaml"
    set_params(params, yaml.safe_load(params.read_text())["smoke"])
    # `fix` copies them into the notebooks' parameters cells (its verdict is tested below).
    project.cli("fix", check=False)
    project.run("git", "add", "--all")
    identity = ["-c", "user.name=test", "-c", "user.email=test@localhost"]
    project.run("git", *identity, "commit", "--quiet", "--no-verify", "-m", "Smoke values")
    # What git holds is clean: whatever `check` finds in the notebooks later, the browser did.
    assert not notebook_problems(project.cli("check", check=False).stdout)
    project.cli("pipeline", "--smoke", *NO_IMAGE)
    return project


def notebook_problems(report: str) -> list[str]:
    """The failed checks of a `check` report that are about notebooks."""
    return [line for line in report.splitlines() if line.startswith("FAIL") and "notebook" in line]


# --- JupyterLab ----------------------------------------------------------------------------------


@dataclass
class Interactive:
    saved: dict[str, dict]  # notebook -> the .ipynb as saved from the browser
    stderr: dict[str, list[str]]  # notebook -> the stderr outputs the page showed
    kernels: dict[str, str]  # notebook -> the kernel its session ran


def lab_args(port: int, token: str, state: Path) -> list[str]:
    """`lab` on loopback with a token; settings and workspaces in `state`, not the user's own,
    with JupyterLab's offer of news (a toast over the notebook) answered no."""
    notification = state / "settings" / "@jupyterlab" / "apputils-extension"
    notification.mkdir(parents=True, exist_ok=True)
    (notification / "notification.jupyterlab-settings").write_text(
        json.dumps({"fetchNews": "false", "checkForUpdates": False})
    )
    return [
        "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
        "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
        f"--LabApp.user_settings_dir={state / 'settings'}",
        f"--LabApp.workspaces_dir={state / 'workspaces'}",
    ]  # fmt: skip


def api(lab: Server, token: str, path: str):
    request = urllib.request.Request(
        f"{lab.url}{path}", headers={"Authorization": f"token {token}"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.load(response)


@pytest.fixture(scope="module")
def interactive(round_trip, browser, tmp_path_factory) -> Interactive:
    """Notebooks 01 to 03 run in JupyterLab as a user runs them, each saved and closed."""
    state = tmp_path_factory.mktemp("jupyterlab")
    port, token = free_port(), secrets.token_hex(16)
    url = f"http://127.0.0.1:{port}"
    result = Interactive({}, {}, {})
    args = lab_args(port, token, state)
    with (
        serving(round_trip, args, url, f"{url}/api/status?token={token}", state / "lab.log") as lab,
        new_page(browser) as page,
    ):
        for name in NOTEBOOKS:
            with screenshot_on_failure(page, f"jupyterlab-{name}"):
                run_in_lab(page, lab, token, name, round_trip, result)
    return result


def run_in_lab(page, lab: Server, token: str, name: str, project, result: Interactive) -> None:
    path = f"notebooks/{name}.ipynb"
    code_cells = sum(
        cell["cell_type"] == "code"
        for cell in json.loads((project.root / path).read_text())["cells"]
    )
    # A workspace of its own: only this notebook opens (a workspace reopens what it had open).
    page.goto(f"{lab.url}/lab/workspaces/{name}/tree/{path}?token={token}")
    page.locator(f"{ACTIVE} .jp-Cell").first.wait_for()
    wait_for_kernel(page, lab, token, path, result, name)

    if name == EDITED:
        cell = page.locator(f"{ACTIVE} .jp-CodeCell", has_text=ANCHOR)
        cell.locator(".cm-content").click()
        page.keyboard.press("Control+Home")  # the start of the cell
        page.keyboard.type(EDIT_LINE)
        page.keyboard.press("Enter")
        page.keyboard.press("Escape")  # command mode

    page.get_by_role("menuitem", name="Run", exact=True).click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    page.wait_for_function(
        """([active, stderr, count]) => {
            const panel = document.querySelector(active);
            const status = panel.querySelector(".jp-Notebook-ExecutionIndicator")?.dataset.status;
            const prompts = [...panel.querySelectorAll(".jp-CodeCell .jp-InputArea-prompt")]
                .map(prompt => prompt.textContent.trim());
            const failed = [...panel.querySelectorAll(stderr)]
                .some(output => /Traceback|\\w*Error\\b/.test(output.textContent));
            const numbered = prompts.length === count && prompts.every(p => /^\\[\\d+\\]:$/.test(p));
            return status === "idle" && !prompts.some(p => p.includes("*")) && (numbered || failed);
        }""",
        arg=[ACTIVE, STDERR, code_cells],
        timeout=RUN_ALL * 1000,
        polling=1000,
    )
    result.stderr[name] = page.locator(f"{ACTIVE} {STDERR}").all_text_contents()

    tab = page.locator(".lm-DockPanel-tabBar .lm-TabBar-tab", has_text=f"{name}.ipynb")
    page.keyboard.press("Control+s")
    expect(tab).not_to_have_class(re.compile(r"\bjp-mod-dirty\b"), timeout=60_000)
    result.saved[name] = json.loads((project.root / path).read_text())

    # File > Close and Shut Down Notebook, confirmed: its kernel stops with it.
    page.get_by_role("menuitem", name="File", exact=True).click()
    page.locator('.lm-Menu-item[data-command="filemenu:close-and-cleanup"]').click()
    page.locator(".jp-Dialog .jp-mod-accept").click()
    deadline = time.monotonic() + 60
    while any(s["path"] == path for s in api(lab, token, "/api/sessions")):
        assert time.monotonic() < deadline, f"{path}'s kernel still runs after shutting it down"
        time.sleep(0.5)


def wait_for_kernel(page, lab: Server, token: str, path: str, result: Interactive, name: str):
    """The notebook's kernel up and idle; a kernel-selection dialog, if one comes, is answered
    with its default choice (and the kernel actually used is recorded and checked later)."""
    idle = page.locator(f'{ACTIVE} .jp-Notebook-ExecutionIndicator[data-status="idle"]')
    dialog = page.locator(".jp-Dialog")
    deadline = time.monotonic() + SERVER_START
    while True:
        idle.or_(dialog).first.wait_for(timeout=SERVER_START * 1000)
        if dialog.count():
            print(f"{name}: JupyterLab asked: {dialog.first.inner_text()!r}; accepting")
            dialog.locator(".jp-mod-accept").first.click()
            continue
        sessions = [s for s in api(lab, token, "/api/sessions") if s["path"] == path]
        if sessions and sessions[0]["kernel"]["execution_state"] == "idle":
            result.kernels[name] = sessions[0]["kernel"]["name"]
            return
        assert time.monotonic() < deadline, f"no idle kernel for {path}: {sessions}"
        time.sleep(0.5)


def test_run_all_in_jupyterlab_runs_01_to_03_in_the_projects_kernel(round_trip, interactive):
    assert interactive.kernels == dict.fromkeys(NOTEBOOKS, round_trip.slug)
    for name in NOTEBOOKS:
        failures = [text for text in interactive.stderr[name] if FAILED.search(text)]
        assert not failures, f"{name} showed errors in the browser:\n" + "\n".join(failures)
        cells = [c for c in interactive.saved[name]["cells"] if c["cell_type"] == "code"]
        unrun = [i for i, cell in enumerate(cells) if not cell.get("execution_count")]
        errors = [
            f"{output['ename']}: {output['evalue']}"
            for cell in cells
            for output in cell.get("outputs", [])
            if output["output_type"] == "error"
        ]
        assert not unrun and not errors, f"{name} as saved: code cells not run {unrun}, {errors}"
        if interactive.stderr[name]:
            print(f"{name} wrote to stderr (warnings):\n" + "\n".join(interactive.stderr[name]))


def test_run_all_logs_the_numbers_the_pipeline_logs(round_trip, interactive):
    """Each interactive phase run (named after its notebook, outside the pipeline's run tree)
    against the pipeline's child run of the same phase: the same data (02's row counts and dataset
    digests) and the same model search (03's cross-validated scores, best candidate)."""
    phases = round_trip.mlflow_query(
        """
        pipeline = next(r.info.run_id for r in runs if r.data.tags.get("kind") == "pipeline")
        found = {}
        for run in runs:
            phase = run.info.run_name.split(" ")[0]  # "03_modelling" or "03_modelling (...)"
            if phase in ("02_data_preparation", "03_modelling"):
                parent = run.data.tags.get("mlflow.parentRunId")
                found.setdefault(phase, {}).setdefault(
                    "pipeline" if parent == pipeline else "interactive", []
                ).append({
                    # everything but timings (search_seconds): the same numbers, not the same pace
                    "metrics": {k: v for k, v in run.data.metrics.items() if not k.endswith("_seconds")},
                    "best_candidate": run.data.tags.get("best_candidate"),
                    "inputs": sorted(d.dataset.digest for d in run.inputs.dataset_inputs),
                })
        print(json.dumps(found))
        """
    )
    for phase in ("02_data_preparation", "03_modelling"):
        runs = phases.get(phase, {})
        assert len(runs.get("pipeline", [])) == 1 and len(runs.get("interactive", [])) == 1, runs
        assert runs["interactive"][0] == runs["pipeline"][0], phase
    modelling = phases["03_modelling"]["interactive"][0]["metrics"]
    assert modelling["cv_roc_auc_mean"] > 0.9  # the metric the use case names, cross-validated


def test_saved_notebooks_fail_check_and_fix_leaves_only_the_edit(round_trip, interactive):
    checked = round_trip.cli("check", check=False)
    assert checked.returncode != 0 and notebook_problems(checked.stdout), checked.stdout
    fixed = round_trip.cli("fix", check=False)

    stat = round_trip.run("git", "diff", "--stat", "--", "notebooks").stdout
    diff = round_trip.run("git", "diff", "--unified=0", "--", "notebooks").stdout
    shown = (
        f"git diff --stat -- notebooks:\n{stat}\ngit diff --unified=0 -- notebooks:\n{brief(diff)}"
    )
    files = re.findall(r"^diff --git a/(\S+)", diff, re.MULTILINE)
    changed = [
        line
        for line in diff.splitlines()
        if line.startswith(("+", "-")) and not line.startswith(("+++", "---"))
    ]
    assert files == [f"notebooks/{EDITED}.ipynb"], shown
    assert len(changed) == 1 and changed[0].startswith("+"), shown
    assert json.loads(changed[0][1:].strip().rstrip(",")) == f"{EDIT_LINE}\n", shown

    assert fixed.returncode == 0, f"`fix` exited {fixed.returncode}:\n{fixed.stdout}{fixed.stderr}"
    rechecked = round_trip.cli("check", check=False)
    assert rechecked.returncode == 0, f"`check` after `fix`:\n{rechecked.stdout}"


def brief(diff: str, lines: int = 150, width: int = 160) -> str:
    """A diff made readable in a failure message: long lines (base64 images) cut, and at most
    `lines` of them."""
    kept = [line if len(line) <= width else f"{line[:width]}...[cut]" for line in diff.splitlines()]
    more = f"\n... and {len(kept) - lines} more lines" if len(kept) > lines else ""
    return "\n".join(kept[:lines]) + more


# --- the MLflow UI -------------------------------------------------------------------------------


def test_mlflow_ui_shows_the_pipeline_run_tree_and_the_champion(round_trip, browser, tmp_path):
    known = round_trip.mlflow_query(
        """
        parent = next(r for r in runs if r.data.tags.get("kind") == "pipeline")
        children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
        champion = client.get_model_version_by_alias(MODEL_NAME, "champion")
        print(json.dumps({
            "experiment": experiment_id, "model": MODEL_NAME, "champion": champion.version,
            "parent": [parent.info.run_id, parent.info.run_name],
            "children": {r.info.run_name: r.info.run_id for r in children},
        }))
        """
    )
    assert {"01_use_case", "02_data_preparation", "03_modelling"} <= known["children"].keys()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with (
        serving(
            round_trip, ["ui", "--port", str(port)], url, f"{url}/health", tmp_path / "ui.log"
        ) as ui,
        new_page(browser) as page,
        screenshot_on_failure(page, "mlflow-ui"),
    ):
        # The link `ui` prints: the experiment's training runs, not MLflow 3's GenAI overview.
        link = re.search(r"http://\S+", ui.log.read_text())[0]
        assert f"/#/experiments/{known['experiment']}/runs" in link, link
        page.goto(link)
        parent_id, parent_name = known["parent"]
        row = page.locator("[role=row]", has=page.locator(f'a[href$="/runs/{parent_id}"]'))
        row.get_by_text(parent_name).wait_for()
        child_links = {
            name: page.locator(f'a[href$="/runs/{run_id}"]')
            for name, run_id in known["children"].items()
        }
        assert all(link.count() == 0 for link in child_links.values()), "children before parent"
        row.locator("button").first.click()  # the tree's expander, before the run's name
        for name, link in child_links.items():
            link.wait_for()
            assert link.inner_text() == name

        page.goto(f"{url}/#/models/{known['model']}")
        version = page.locator("[role=row]", has_text=f"Version {known['champion']}")
        version.get_by_text(re.compile(r"^@\s*champion$")).wait_for()
