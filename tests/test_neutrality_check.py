"""neutrality_check: which CSV columns are numbers, and what counts as a difference."""
from pathlib import Path

import pandas as pd
import pytest

import neutrality_check

from neutrality_check import differences, numbers


def _write(folder, name, **cols):
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(cols).to_csv(folder / name, index=False)


def test_settings_and_identities_are_not_numbers_but_metrics_are(tmp_path):
    _write(tmp_path, "results_a.csv", run_id=["x"], seconds=[1.5], max_weight=[8.0], acc=[0.5], w_0=[1.0])
    assert list(numbers(tmp_path)["results_a.csv"].columns) == ["acc", "w_0"]


def test_identical_numbers_are_neutral_even_when_identities_and_timings_differ(tmp_path):
    _write(tmp_path / "old", "results_a.csv", run_id=["x"], seconds=[1.0], acc=[0.5])
    _write(tmp_path / "new", "results_a.csv", run_id=["y"], seconds=[2.0], acc=[0.5])
    assert differences(numbers(tmp_path / "old"), numbers(tmp_path / "new")) == []


def test_a_changed_number_or_a_missing_run_is_reported(tmp_path):
    _write(tmp_path / "old", "results_a.csv", acc=[0.5, 0.6])
    _write(tmp_path / "new", "results_a.csv", acc=[0.5, 0.6000001])
    _write(tmp_path / "old", "results_b.csv", acc=[0.1])
    diff = differences(numbers(tmp_path / "old"), numbers(tmp_path / "new"))
    assert diff == ["only in the old results: results_b.csv", "results_a.csv: numbers differ in acc"]


def test_a_folder_that_is_not_a_checkout_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        neutrality_check.main(["--old", str(tmp_path / "nope")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "--old" in err and "no run_all_models.py there" in err


def test_a_failing_smoke_grid_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:  # the new side is this checkout; its grid fails on a data root with no data
        neutrality_check.main(["--old", str(Path(neutrality_check.__file__).parents[1]), "--data-root", str(tmp_path)])
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and "the smoke grid of --old failed (exit 2)" in err[-1]


def test_a_new_run_or_column_is_listed_beside_the_verdict_but_a_lost_column_is_a_difference(tmp_path):
    _write(tmp_path / "old", "results_a.csv", acc=[0.5])
    _write(tmp_path / "new", "results_a.csv", acc=[0.5], ece=[0.1])
    _write(tmp_path / "new", "results_m.csv", acc=[0.7])
    neutral, text = neutrality_check.verdict(numbers(tmp_path / "old"), numbers(tmp_path / "new"))
    assert neutral and text.splitlines() == [
        "neutral: 1 smoke runs, every number bit-identical (and what the new code adds:)",
        "new run: results_m.csv", "new columns in the common runs: ece"]
    neutral, text = neutrality_check.verdict(numbers(tmp_path / "new"), numbers(tmp_path / "old"))
    assert not neutral and "results_a.csv: columns or rows differ" in text and "missing: ece" in text
