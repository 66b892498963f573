"""collect_finished: only finished runs travel, only their CSV and JSON, and only when changed."""
import json

import pytest

from collect_finished import collect, main


def _run(folder, name, status, csv=True):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"status": status}))
    (folder / f"{name}.model.pt").write_bytes(b"weights")
    if csv:
        (folder / f"{name}.csv").write_text("stage,epoch\n1,1\n")


def test_copies_the_csv_and_json_of_finished_runs_only(tmp_path):
    src, into = tmp_path / "results", tmp_path / "runs"
    _run(src / "literature", "results_a_seed0", "finished")
    _run(src / "literature", "results_b_seed0", "running")
    _run(src, "results_c_seed0", "finished", csv=False)
    (src / "results_d_seed0.json").write_text("{trunc")  # being written
    assert collect([src], into) == ["results_a_seed0.csv", "results_a_seed0.json"]
    assert sorted(p.name for p in into.iterdir()) == ["results_a_seed0.csv", "results_a_seed0.json"]
    assert collect([src], into) == []  # unchanged: nothing copied again
    (src / "literature" / "results_a_seed0.csv").write_text("stage,epoch\n1,2\n")
    assert collect([src], into) == ["results_a_seed0.csv"]
    assert (into / "results_a_seed0.csv").read_text() == "stage,epoch\n1,2\n"


def test_a_missing_folder_is_one_line_naming_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([str(tmp_path / "nowhere"), "--into", str(tmp_path / "runs")])
    assert e.value.code == 2 and f"not a folder: {tmp_path / 'nowhere'}" in capsys.readouterr().err
