"""collect_finished: only finished runs travel, only their CSV and JSON, only the runs named, and a
different file of the same name is never replaced unless asked."""
import json

import pytest

from collect_finished import collect, main


def _run(folder, name, status, csv=True, exp_name=None):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"status": status, "method": "drw",
                                                     "config": {"method": "drw", "exp_name": exp_name}}))
    (folder / f"{name}.model.pt").write_bytes(b"weights")
    if csv:
        (folder / f"{name}.csv").write_text("stage,epoch\n1,1\n")


def test_copies_the_csv_and_json_of_finished_runs_only(tmp_path):
    src, into = tmp_path / "results", tmp_path / "runs"
    _run(src / "literature", "results_a_seed0", "finished")
    _run(src / "literature", "results_b_seed0", "running")
    _run(src, "results_c_seed0", "finished", csv=False)
    (src / "results_d_seed0.json").write_text("{trunc")  # being written
    assert collect([src], into) == (["results_a_seed0.csv", "results_a_seed0.json"], [])
    assert sorted(p.name for p in into.iterdir()) == ["results_a_seed0.csv", "results_a_seed0.json"]
    assert collect([src], into) == ([], [])  # unchanged: nothing copied again


def test_a_different_run_of_the_same_name_is_kept_unless_replace(tmp_path, capsys):
    src, into = tmp_path / "results", tmp_path / "runs"
    _run(src, "results_a_seed0", "finished")
    collect([src], into)
    (src / "results_a_seed0.csv").write_text("stage,epoch\n1,2\n")  # rerun elsewhere: other numbers
    assert main([str(src), "--into", str(into)]) == 1
    out = capsys.readouterr().out
    assert f"kept {into / 'results_a_seed0.csv'}: another run of that name differs" in out and "--replace" in out
    assert (into / "results_a_seed0.csv").read_text() == "stage,epoch\n1,1\n"
    assert collect([src], into, replace=True) == (["results_a_seed0.csv"], [])
    assert (into / "results_a_seed0.csv").read_text() == "stage,epoch\n1,2\n"
    (into / "results_a_seed0.csv").unlink()
    (into / "results_a_seed0.json").write_text("{}")  # another run's JSON, no CSV: the run stays out whole
    assert collect([src], into) == ([], ["results_a_seed0.json"]) and not (into / "results_a_seed0.csv").exists()


def test_runs_picks_runs_by_exp_name_else_method(tmp_path):
    src, into = tmp_path / "results", tmp_path / "runs"
    _run(src, "results_drw_seed0", "finished")
    _run(src, "results_drw_sam_seed0", "finished", exp_name="drw_sam")
    assert collect([src], into, runs={"drw_sam"}) == (["results_drw_sam_seed0.csv", "results_drw_sam_seed0.json"], [])
    assert collect([src], into, runs={"drw"}) == (["results_drw_seed0.csv", "results_drw_seed0.json"], [])


def test_a_missing_folder_is_one_line_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nowhere"), "--into", str(tmp_path / "runs")])
    assert e.value.code == 2 and f"not a folder: {tmp_path / 'nowhere'}" in capsys.readouterr().err
