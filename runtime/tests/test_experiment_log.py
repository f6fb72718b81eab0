"""Experiments from the server's files: the prediction log of an `ab` or `shadow` server read row by
row, outcomes joined by request and row, a shadow judged as two arms, the decision on record, and
`promote` moving the champion to the winner only when the newest experiment says so (or --force),
so that `rollback` still undoes it."""

import json

import mlflow
import numpy as np
import pandas as pd
import pytest

from crisp_ml import cli, pipeline, registry, tracking
from crisp_ml.experiment import (
    DECISION_FILE,
    EXIT_CODES,
    KIND,
    ExperimentError,
    ExperimentPlan,
    arm_versions,
    compare,
    decide,
    join_experiment,
    look_number,
    promote_winner,
    read_experiment_log,
    read_outcomes,
    segment_comparisons,
    shadow_arms,
    write_decision,
)
from crisp_ml.serving.predlog import Entry, PredictionLog

CLASSES = ("benign", "malignant")


def entry(request: str, arm: str | None, version: str, predictions: list, **fields) -> Entry:
    """One request as the server logs it (`PredictionLog` writes the lines): its rows' inputs
    (by default size 0.0, 1.0 ... and site "a"), predictions and `probabilities`, if any. A shadow
    entry is the challenger's answers to the same rows, logged without inputs."""
    inputs = fields.pop("inputs", None) or [
        {"size": float(i), "site": "a"} for i in range(len(predictions))
    ]
    return Entry(
        timestamp=1769860800.0, request_id=request, endpoint="/predict",
        latency_ms=2.0 if arm == "shadow" else 1.0,
        values={name: [row[name] for row in inputs] for name in inputs[0]},
        predictions=list(predictions), probabilities=fields.pop("probabilities", None),
        model_name="demo-ml-project", model_version=version, arm=arm,
        with_inputs=arm != "shadow",
    )  # fmt: skip


def probabilities(prediction: str, lean: float = 0.8) -> dict:
    other = CLASSES[1 - CLASSES.index(prediction)]
    return {prediction: lean, other: round(1 - lean, 6)}


def write(path, items: list[Entry | str]) -> str:
    """A prediction log: each Entry written by the server's own writer, each text as a line of
    its own (what no writer makes: a line a killed server left unfinished)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    log = PredictionLog(path, "demo-ml-project", "1", max_bytes=50 * 1024 * 1024)
    try:
        for item in items:
            if isinstance(item, Entry):
                log.record(item)
            else:
                with path.open("a") as file:
                    file.write(f"{item}\n")
    finally:
        log.close()
    return str(path)


def simulated(seed: int, requests: int, right: dict[str, float], mode: str = "ab"):
    """Log entries and outcomes: each version's answer is right with probability right[arm];
    every third request holds two rows."""
    rng = np.random.default_rng(seed)
    entries, outcomes = [], []
    for number in range(requests):
        request = f"req-{number}"
        arm = "champion" if mode == "shadow" or rng.random() < 0.5 else "challenger"
        answers, inputs = {"champion": [], "challenger": []}, []
        for row in range(2 if number % 3 == 0 else 1):
            truth = str(rng.choice(CLASSES))
            outcomes.append({"request_id": request, "row": row, "diagnosis": truth})
            for who in ("champion", "challenger"):
                correct = rng.random() < right[who]
                answers[who].append(truth if correct else CLASSES[1 - CLASSES.index(truth)])
            inputs.append({"size": float(rng.normal()), "site": str(rng.choice(["a", "b"]))})
        version = "1" if arm == "champion" else "2"
        entries.append(
            entry(request, arm, version, answers[arm], inputs=inputs,
                  probabilities=[probabilities(a) for a in answers[arm]])
        )  # fmt: skip
        if mode == "shadow":
            answer = answers["challenger"]
            entries.append(
                entry(request, "shadow", "2", answer, inputs=inputs,
                      probabilities=[probabilities(a) for a in answer])
            )  # fmt: skip
    return entries, pd.DataFrame(outcomes)


def plan(**settings) -> ExperimentPlan:
    return ExperimentPlan(
        metric="accuracy", task="classification", target="diagnosis",
        minimum_detectable_effect=0.05, positive_class="malignant", **settings,
    )  # fmt: skip


# --- reading the log ----------------------------------------------------------------------------


def test_an_ab_log_gives_one_row_per_request_and_row_with_its_arm_version_and_probabilities(
    tmp_path,
):
    log_file = tmp_path / "logs" / "predictions.jsonl"
    write(tmp_path / "logs" / "predictions.jsonl.1", [  # the rotated, older copy
        entry("r1", "champion", "1", ["benign", "malignant"],
              probabilities=[probabilities("benign"), probabilities("malignant", 0.9)]),
    ])  # fmt: skip
    write(log_file, [
        entry("r2", "challenger", "2", ["malignant"], probabilities=[probabilities("malignant")]),
        '{"timestamp": "2026-01-31T12:00:01', # a line a killed server left unfinished
        json.dumps({"request_id": "r3", "model_version": "2", "arm": "challenger", "rows": 9,
                    "rows_logged": 0}),  # a request too large for the log
    ])  # fmt: skip
    log = read_experiment_log(str(log_file))
    assert log[["request_id", "row", "arm", "model_version"]].to_dict("records") == [
        {"request_id": "r1", "row": 0, "arm": "champion", "model_version": "1"},
        {"request_id": "r1", "row": 1, "arm": "champion", "model_version": "1"},
        {"request_id": "r2", "row": 0, "arm": "challenger", "model_version": "2"},
    ]
    assert log["probability_malignant"].tolist() == pytest.approx([0.2, 0.9, 0.8])
    assert log["size"].tolist() == [0.0, 1.0, 0.0]  # the inputs, by their names
    assert log.attrs["mode"] == "ab"
    assert (log.attrs["skipped_lines"], log.attrs["rows_left_out"]) == (1, 9)
    assert arm_versions(log) == {"champion": "1", "challenger": "2"}


def test_a_shadow_log_puts_the_challengers_answer_beside_the_champions_row(tmp_path):
    path = write(tmp_path / "shadow.jsonl", [
        entry("r1", "champion", "1", ["benign", "benign"],
              probabilities=[probabilities("benign")] * 2),
        entry("r1", "shadow", "2", ["benign", "malignant"],
              probabilities=[probabilities("benign", 0.6), probabilities("malignant", 0.7)]),
        entry("gone", "shadow", "2", ["benign"]),  # its champion row is in no file
    ])  # fmt: skip
    log = read_experiment_log(path)
    assert log.attrs["mode"] == "shadow" and log.attrs["shadow_unmatched"] == 1
    assert log["prediction"].tolist() == ["benign", "benign"]  # the champion's answers
    assert log["shadow_prediction"].tolist() == ["benign", "malignant"]  # matched by row
    assert log["shadow_model_version"].tolist() == ["2", "2"]
    assert log["shadow_latency_ms"].tolist() == [2.0, 2.0]
    assert log["shadow_probability_malignant"].tolist() == pytest.approx([0.4, 0.7])
    assert arm_versions(log) == {"champion": "1", "challenger": "2"}


def test_a_log_without_arms_is_refused_naming_the_serving_mode(tmp_path):
    path = write(tmp_path / "single.jsonl", [entry("r1", None, "1", ["benign"])])
    with pytest.raises(
        ExperimentError, match=r"has no arms: its 1 rows .*\(mode single\).*--mode ab"
    ):
        read_experiment_log(path)


def test_a_missing_log_names_the_setting(tmp_path):
    with pytest.raises(ExperimentError, match=r"no prediction log at .*experiment.prediction_log"):
        read_experiment_log(str(tmp_path / "nowhere.jsonl"))


def test_a_log_that_changed_mode_or_version_midway_is_refused(tmp_path):
    mixed = write(tmp_path / "mixed.jsonl", [
        entry("r1", "challenger", "2", ["benign"]),
        entry("r2", "champion", "1", ["benign"]),
        entry("r2", "shadow", "2", ["benign"]),
    ])  # fmt: skip
    with pytest.raises(ExperimentError, match=r"mixes ab traffic .* fresh log"):
        read_experiment_log(mixed)
    changed = write(tmp_path / "changed.jsonl", [
        entry("r1", "champion", "1", ["benign"]),
        entry("r2", "champion", "3", ["benign"]),
        entry("r3", "challenger", "2", ["benign"]),
    ])  # fmt: skip
    with pytest.raises(ExperimentError, match=r"champion arm was served by versions 1, 3"):
        arm_versions(read_experiment_log(changed))


# --- outcomes ---------------------------------------------------------------------------------


def test_outcomes_join_each_row_of_a_request_by_request_id_and_row(tmp_path):
    lines, outcomes = simulated(1, 30, {"champion": 0.8, "challenger": 0.8})
    log = read_experiment_log(write(tmp_path / "ab.jsonl", lines))
    outcomes = outcomes.sample(frac=1, random_state=0)  # any order
    outcomes.iloc[:5].to_csv(tmp_path / "few.csv", index=False)
    joined = join_experiment(
        log, read_outcomes(str(tmp_path / "few.csv"), "diagnosis"), "diagnosis"
    )
    assert joined.attrs["matched"] == 5 and joined.attrs["log_unmatched"] == len(log) - 5
    expected = outcomes.iloc[:5].set_index(["request_id", "row"])["diagnosis"]
    got = joined.set_index(["request_id", "row"])["diagnosis"]
    assert got.sort_index().equals(expected.sort_index())


def test_outcomes_without_row_join_by_request_only_when_each_request_holds_one_row(tmp_path):
    lines, outcomes = simulated(2, 30, {"champion": 0.8, "challenger": 0.8})
    log = read_experiment_log(write(tmp_path / "ab.jsonl", lines))
    with pytest.raises(ExperimentError, match=r"no column 'row', but 10 requests .* add `row`"):
        join_experiment(log, outcomes.drop(columns=["row"]), "diagnosis")
    single = log[log["row"] == 0].reset_index(drop=True)
    first = outcomes[outcomes["row"] == 0].drop(columns=["row"])
    assert len(join_experiment(single, first, "diagnosis")) == 30


def test_outcomes_that_join_no_row_or_are_missing_are_refused(tmp_path):
    lines, outcomes = simulated(3, 10, {"champion": 0.8, "challenger": 0.8})
    log = read_experiment_log(write(tmp_path / "ab.jsonl", lines))
    outcomes["request_id"] = "other-" + outcomes["request_id"]
    with pytest.raises(
        ExperimentError, match=r"no outcome joins a row: .*'req-0/0'.*'other-req-0/0'"
    ):
        join_experiment(log, outcomes, "diagnosis")
    with pytest.raises(ExperimentError, match=r"experiment.outcomes_path: no file at"):
        read_outcomes(str(tmp_path / "outcomes.csv"), "diagnosis")
    with pytest.raises(ExperimentError, match=r"outcomes_path is empty"):
        read_outcomes("", "diagnosis")
    outcomes.drop(columns=["diagnosis"]).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(ExperimentError, match=r"has no column \['diagnosis'\]"):
        read_outcomes(str(tmp_path / "bad.csv"), "diagnosis")


# --- judging ----------------------------------------------------------------------------------


def test_a_better_shadow_is_judged_on_the_same_rows_and_promoted(tmp_path):
    lines, outcomes = simulated(4, 900, {"champion": 0.75, "challenger": 0.95}, mode="shadow")
    log = read_experiment_log(write(tmp_path / "shadow.jsonl", lines))
    arms = shadow_arms(join_experiment(log, outcomes, "diagnosis"))
    assert arms["arm"].value_counts().to_dict() == {"champion": 1200, "challenger": 1200}
    challenger = arms[arms["arm"] == "challenger"]
    assert set(challenger["model_version"]) == {"2"}
    assert (challenger["prediction"] == challenger["diagnosis"]).mean() == pytest.approx(
        0.95, abs=0.03
    )
    decision = decide(compare(arms, plan(looks=5)), plan(looks=5))
    assert decision.action == "promote", decision.reasons


def test_segments_are_compared_where_each_arm_has_enough_rows(tmp_path):
    lines, outcomes = simulated(5, 700, {"champion": 0.75, "challenger": 0.95})
    joined = join_experiment(read_experiment_log(write(tmp_path / "ab.jsonl", lines)), outcomes,
                             "diagnosis")  # fmt: skip
    table = segment_comparisons(joined, plan(segments=["site"]))
    assert table["group"].tolist() == ["a", "b"]
    assert (table["status"] == "challenger better").all()
    assert (table["difference"] > 0.1).all()
    small = segment_comparisons(joined.iloc[:80], plan(segments=["site"]))
    assert small["status"].str.startswith("not tested: under 30 rows").all()


# --- the command and promotion -----------------------------------------------------------------


def test_the_pipeline_leaves_the_experiment_notebook_to_its_own_command(tmp_path):
    for name in ("05_deployment", "06_monitoring", "07_experiment"):
        (tmp_path / f"{name}.ipynb").write_text("{}")
    assert [n.stem for n in pipeline.discover(tmp_path)] == ["05_deployment"]


def test_the_experiment_parameters_are_checked_like_the_pipelines(generated_project, monkeypatch):
    monkeypatch.setenv("PROJECT_ROOT", str(generated_project))
    notebook = pipeline.on_demand_notebook("07_experiment")
    chosen = pipeline.plan(sets=["experiment.looks=3"], notebooks=[notebook])
    assert chosen.values[notebook]["experiment_looks"] == 3  # noqa: PD011 (a dict, not pandas)
    with pytest.raises(Exception, match=r"`experiment.looks` = 'often' does not fit 07"):
        pipeline.plan(sets=["experiment.looks=often"], notebooks=[notebook])


@pytest.mark.parametrize("action", sorted(EXIT_CODES))
def test_experiment_exits_with_the_decisions_code(monkeypatch, tmp_path, capsys, action):
    def run_on_demand(the_plan, kind):
        assert kind == KIND
        write_decision(record(action, "run"), tmp_path)
        return pipeline.Outcome("run", tmp_path, [tmp_path / "07_experiment.ipynb"])

    monkeypatch.setattr(pipeline, "plan", lambda *args, **kwargs: None)
    monkeypatch.setattr(pipeline, "run_on_demand", run_on_demand)
    assert cli.main(["experiment"]) == EXIT_CODES[action]
    assert f"Decision: {action}" in capsys.readouterr().out


def record(action: str, champion: str, challenger: str = "2") -> dict:
    return {"action": action, "exit_code": EXIT_CODES[action], "reasons": [f"{action}: because"],
            "model_name": "demo-ml-project", "champion_version": champion,
            "challenger_version": challenger, "mode": "ab"}  # fmt: skip


def registered(client, count: int) -> list[str]:
    """`count` versions of the project's model (their files do not matter here), the first the
    champion as the pipeline leaves it."""
    name = tracking.model_name()
    client.create_registered_model(name)
    versions = [
        str(client.create_model_version(name, f"/nowhere/model-{i}").version) for i in range(count)
    ]
    registry.promote(client, versions[0], "first")
    return versions


def experiment_run(client, action: str, champion: str = "1", challenger: str = "2") -> str:
    """A finished `experiment` run as the command leaves it, with its decision."""
    run = client.create_run(tracking.configure(), tags={"kind": KIND})
    client.log_dict(run.info.run_id, record(action, champion, challenger), DECISION_FILE)
    client.set_terminated(run.info.run_id)
    return run.info.run_id


def champion(client) -> str:
    return registry.champion_now(client)


def test_promote_moves_the_champion_to_the_winner_and_rollback_moves_it_back(client, capsys):
    registered(client, 2)
    run_id = experiment_run(client, "promote")
    assert cli.main(["promote"]) == 0
    assert champion(client) == "2"
    assert f"experiment {run_id}: promote" in capsys.readouterr().out
    version = client.get_model_version(tracking.model_name(), "2")
    assert version.tags["promoted_by_experiment"] == run_id
    assert version.tags["promotion_forced"] == "false"
    assert client.get_run(run_id).data.tags["promoted_version"] == "2"
    assert cli.main(["promote"]) == 1, "promoted once: the champion is already the winner"
    assert "already the champion" in capsys.readouterr().err
    assert cli.main(["rollback"]) == 0
    assert champion(client) == "1"


@pytest.mark.parametrize("action", ["keep", "continue"])
def test_promote_refuses_keep_and_continue_unless_forced_and_records_the_force(
    client, capsys, action
):
    registered(client, 2)
    run_id = experiment_run(client, action)
    assert cli.main(["promote"]) == 1
    error = capsys.readouterr().err
    assert f"decided {action}, not promote" in error and "--force" in error
    assert champion(client) == "1"
    assert cli.main(["promote", "--force"]) == 0
    assert champion(client) == "2"
    assert f"forced: the experiment ({run_id}) decided {action}" in capsys.readouterr().out
    version = client.get_model_version(tracking.model_name(), "2")
    assert version.tags["promotion_forced"] == "true"
    assert "--force" in version.tags["champion_reason"]
    assert client.get_run(run_id).data.tags["promotion_forced"] == "true"
    assert cli.main(["rollback"]) == 0 and champion(client) == "1"


def test_promote_acts_on_the_newest_experiment_only(client):
    registered(client, 2)
    experiment_run(client, "promote")
    experiment_run(client, "continue")  # a later look: not yet
    with pytest.raises(ExperimentError, match="decided continue"):
        promote_winner()
    assert champion(client) == "1"


def test_promote_refuses_a_decision_about_a_former_champion(client):
    registered(client, 3)
    experiment_run(client, "promote", champion="1", challenger="2")
    registry.promote(client, "3", "a pipeline run since")
    with pytest.raises(ExperimentError, match=r"compared champion version 1 .* now version 3"):
        promote_winner()
    assert champion(client) == "3"


def test_promote_without_an_experiment_says_so(client, capsys):
    registered(client, 1)
    with mlflow.start_run(tags={"kind": "monitoring"}):  # another kind of run does not count
        pass
    assert cli.main(["promote"]) == 1
    assert "no finished experiment run: run `make experiment` first" in capsys.readouterr().err


def test_an_experiment_promotes_once_so_a_rollback_is_not_undone_without_force(client, capsys):
    registered(client, 2)
    run_id = experiment_run(client, "promote")
    assert cli.main(["promote"]) == 0 and champion(client) == "2"
    assert cli.main(["rollback"]) == 0 and champion(client) == "1"
    capsys.readouterr()
    assert cli.main(["promote"]) == 1, "the same evidence would undo the rollback"
    error = capsys.readouterr().err
    assert f"run {run_id}) already promoted version 2 once" in error
    assert "one promotion per experiment" in error and "--force" in error
    assert champion(client) == "1"
    assert cli.main(["promote", "--force"]) == 0 and champion(client) == "2"
    assert "already promoted version 2 once" in capsys.readouterr().out
    assert client.get_model_version(tracking.model_name(), "2").tags["promotion_forced"] == "true"


def test_looks_count_the_finished_runs_that_tested_the_same_two_versions(client):
    def tested(champion_version: str, challenger_version: str, p_value: bool = True) -> None:
        run_id = experiment_run(client, "continue", champion_version, challenger_version)
        for key, value in {"model_name": tracking.model_name(),
                           "champion_version": champion_version,
                           "challenger_version": challenger_version}.items():  # fmt: skip
            client.set_tag(run_id, key, value)
        if p_value:
            client.log_metric(run_id, "p_value", 0.3)

    experiment_id, name = tracking.configure(), tracking.model_name()
    versions = {"champion": "1", "challenger": "2"}
    assert look_number(client, experiment_id, name, versions) == 1
    tested("1", "2")
    tested("1", "2")
    tested("1", "3")  # another challenger: another experiment
    tested("1", "2", p_value=False)  # a shadow run without outcomes tested nothing
    client.create_run(
        experiment_id, tags={"kind": KIND, "champion_version": "1", "challenger_version": "2"}
    )  # still running: this one
    assert look_number(client, experiment_id, name, versions) == 3


def test_a_retried_request_is_kept_once_and_counted(tmp_path):
    """A client that retries with the same X-Request-ID is logged twice; the first is judged."""
    first = entry("r1", "champion", "1", ["benign"])
    retry = entry("r1", "champion", "1", ["malignant"])
    other = entry("r2", "challenger", "2", ["benign"])
    log = read_experiment_log(write(tmp_path / "ab.jsonl", [first, retry, other]))
    outcomes = pd.DataFrame({"request_id": ["r1", "r2"], "row": [0, 0], "diagnosis": "benign"})
    joined = join_experiment(log, outcomes, "diagnosis")
    assert joined["prediction"].tolist() == ["benign", "benign"]
    assert joined.attrs["duplicate_rows"] == 1
