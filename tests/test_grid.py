"""The grid runner: plans, stage-1 sharing, the smoke profile end to end (resume after kill -9: the
local launcher in test_launcher.py, a run in test_robustness.py)."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import run_all_models as grid
from two_stage_ictta import METHODS, stage1_hash

ROOT = Path(__file__).resolve().parents[1]


def read_results(folder: Path) -> dict[str, pd.DataFrame]:
    """Every run's CSV under folder, without the wall-clock column."""
    return {p.name: pd.read_csv(p).drop(columns=["seconds"]) for p in sorted(folder.rglob("results_*.csv"))}


def test_baseline_plan_pairs_every_run_with_its_control():
    cfgs = grid.plan_baseline("quick", seeds=(0, 1))
    assert len(cfgs) == 2 * len(grid.BASELINE_MODELS) * len(grid.SCENARIOS) * 2
    runs = {(c.model_name, c.imbalance_type, c.seed, c.exp_name): c for c in cfgs}
    for (model, scen, seed, exp), cfg in runs.items():
        if exp == "baseline":
            control = runs[(model, scen, seed, "control")]
            assert (control.dynamic_mode, control.stage2_loss_type) == ("none", "ce")
            assert (cfg.dynamic_mode, cfg.stage2_loss_type) == ("loss", "focal")
            assert stage1_hash(control) == stage1_hash(cfg)  # the control shares stage 1


@pytest.mark.parametrize("profile", sorted(grid.PROFILES))
def test_tuning_is_one_knob_at_a_time_unless_the_product_is_asked_for(profile):
    n_one = sum(len(v) for v in grid.TUNING_GRID.values())  # at most each knob's values, one at a time
    assert 1 <= len(grid.tuning_points(profile)) <= n_one < len(grid.tuning_points("full", "product"))
    if profile == "full":
        product = grid.tuning_points(profile, "product")
        n_product = 1
        for values in grid.TUNING_GRID.values():
            n_product *= len(values)
        assert len(product) == n_product - 1  # all but the default point, which is the baseline run
        names = {grid._tuning_settings(p)["exp_name"] for p in product}
        assert len(names) == len(product)  # every point writes its own files
    with pytest.raises(ValueError, match="tuning="):
        grid.tuning_points(profile, "grid")


def test_the_main_job_is_68_runs_and_the_product_says_its_size_first():
    args = grid.build_parser().parse_args([])
    assert (args.profile, args.tuning) == ("full", "one_at_a_time")
    parts = grid.plan_parts(args, {})
    text = grid.format_plan(grid.plan_work([c for _, cfgs in parts for c in cfgs], {}), parts)
    assert text.startswith("plan: 68 runs (baseline 20, tuning (one_at_a_time) 48), 20 + 20 epochs each")
    parts = grid.plan_parts(grid.build_parser().parse_args(["--tuning", "product"]), {})
    text = grid.format_plan(grid.plan_work([c for _, cfgs in parts for c in cfgs], {}), parts)
    assert text.startswith("plan: 500 runs (baseline 20, tuning (product) 480)")


def test_the_baseline_suite_is_the_grid_without_its_tuning():
    grid_parts = grid.plan_parts(grid.build_parser().parse_args(["--seeds", "0", "1"]), {})
    parts = grid.plan_parts(grid.build_parser().parse_args(["--suite", "baseline", "--seeds", "0", "1"]), {})
    assert [len(cfgs) for _, cfgs in parts] == [40, 0]  # 5 models x 2 scenarios x (two-stage, control) x 2 seeds
    assert parts[0][1] == grid_parts[0][1]


def test_profile_help_states_the_real_budgets(capsys):
    with pytest.raises(SystemExit):
        grid.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    for budget in ("smoke: 1 + 1 epochs", "quick: 12 + 8 epochs, n_max 1500 (its grid took 2 h 13 min",
                   "full: 20 + 20 epochs, on all the data", "reduced: 16 + 4 epochs, ResNet-10",
                   "literature: 160 + 40 epochs, Cao et al.'s recipe (200 epochs), ResNet-32"):
        assert budget in text
    assert "30-epoch" not in text and "< 1 h" not in text


def test_every_tuning_point_shares_the_baseline_stage1():
    cfgs = grid.plan_baseline("quick", models=("resnet10",), scenarios=("long_tail",)) + \
        grid.plan_tuning("quick", models=("resnet10",), scenarios=("long_tail",))
    assert len({stage1_hash(c) for c in cfgs}) == 1


def test_order_for_sharing_keeps_runs_with_one_stage1_adjacent():
    cfgs = grid.plan_compare("reduced", seeds=(0, 1))
    ordered = grid.order_for_sharing(cfgs)
    hashes = [stage1_hash(c) for c in ordered]
    for h in set(hashes):
        idx = [i for i, x in enumerate(hashes) if x == h]
        assert idx == list(range(idx[0], idx[0] + len(idx)))


def test_compare_plan_filters_cases_and_rejects_unknown():
    cfgs = grid.plan_compare("literature", scenarios=("long_tail",), imb_factors=[0.01], methods=("ce", "ldam_drw"),
                             seeds=(0, 1, 2))
    assert {(c.imbalance_type, c.imb_factor, c.method) for c in cfgs} == {("long_tail", 0.01, "ce"),
                                                                          ("long_tail", 0.01, "ldam_drw")}
    assert all(c.stage1_epochs == 160 and c.stage2_epochs == 40 and c.model_name == "resnet32" for c in cfgs)
    with pytest.raises(ValueError, match="imb_factors"):
        grid.plan_compare("literature", imb_factors=[0.5])


def _grid_cmd(data_root: Path, out: Path) -> list[str]:
    return [sys.executable, "run_all_models.py", "--profile", "smoke", "--models", "resnet10",
            "--scenarios", "long_tail", "--data-root", str(data_root), "--out", str(out), "--device", "cpu",
            "--quiet"]


def test_smoke_grid_runs_end_to_end_and_skips_on_rerun(synthetic_root, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(_grid_cmd(synthetic_root, out), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    files = read_results(out)
    assert set(files) == {"results_baseline_resnet10_long_tail_imb0.1_seed0.csv",
                          "results_control_resnet10_long_tail_imb0.1_seed0.csv",
                          f"results_{grid._tuning_settings(grid.tuning_points('smoke')[0])['exp_name']}"
                          "_resnet10_long_tail_imb0.1_seed0.csv"}
    assert len(list((out / "smoke" / "stage1").glob("*.pt"))) == 1  # one stage 1 for all three
    assert "3 done" in r.stdout and "0 failed" in r.stdout
    again = subprocess.run(_grid_cmd(synthetic_root, out), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "3 skipped" in again.stdout
    for name, df in read_results(out).items():
        pd.testing.assert_frame_equal(df, files[name])


def test_plan_progress_dry_run_and_estimate(synthetic_root, tmp_path, capsys, monkeypatch):
    """The plan comes before the first run, with its timed estimate; one bar runs over the whole grid;
    a dry run prints the plan, writes nothing and times nothing once everything is finished."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data, ignore=shutil.ignore_patterns(".*"))  # no decoded cache yet
    before = sorted(p.name for p in data.rglob("*"))
    argv = _grid_cmd(data, tmp_path / "out")[2:-1]  # in-process, progress bars on
    assert grid.main(argv + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("plan: 3 runs (baseline 2, tuning (one_at_a_time) 1), 1 + 1 epochs each\n"
                          "  0 finished before (skipped), 3 to run, training 1 stage 1 (the others share one)")
    assert "estimated time here, one run after another: " in out and "resnet10" in out
    assert not (tmp_path / "out").exists() and sorted(p.name for p in data.rglob("*")) == before

    assert grid.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.index("plan: 3 runs") < captured.out.index("3 done")
    bar = captured.err.replace("\r", "\n")
    assert "grid 100%" in bar and "run 3/3: tuning-smoke" in bar and "<00:00]" in bar
    assert bar.count("grid   0%") >= 1 and "run 1/3" in bar  # one bar for both parts

    monkeypatch.setattr(grid, "time_model", lambda *a, **k: pytest.fail("timed with nothing to run"))
    assert grid.main(argv + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "3 finished before (skipped), 0 to run" in out and "estimated" not in out
    assert grid.main(argv + ["--dry-run", "--seeds", "1", "--no-estimate"]) == 0
    assert "3 to run" in capsys.readouterr().out
    assert grid.main(argv + ["--dry-run", "--seeds", "1", "0", "1", "--no-estimate"]) == 0  # a repeated value counts once
    assert "plan: 6 runs" in capsys.readouterr().out
    moved = tmp_path / "moved"
    shutil.copytree(data, moved)
    assert grid.main(argv + ["--dry-run", "--no-estimate", "--data-root", str(moved)]) == 0  # the last --data-root wins
    out = capsys.readouterr().out
    assert "3 finished before (skipped)" in out and f"3 of the finished runs read their data from {data}, not" in out




def test_grid_reports_a_failed_run_and_goes_on(synthetic_root, tmp_path, monkeypatch):
    import two_stage_ictta

    real = two_stage_ictta.run_two_stage
    calls = []

    def flaky(cfg):
        calls.append(cfg.exp_name)
        if cfg.exp_name == "baseline":
            raise FloatingPointError("training loss became nan")
        return real(cfg)

    monkeypatch.setattr(grid, "run_two_stage", flaky)
    report = grid.run_baseline_all_models("smoke", models=("resnet10",), scenarios=("long_tail",),
                                          out=str(tmp_path), quiet=True, data_root=str(synthetic_root), device="cpu")
    assert len(report["failed"]) == 1 and "nan" in report["failed"][0]["error"]
    assert len(report["done"]) == 1 and calls == ["baseline", "control"]
    assert "1 failed" in grid.format_report(report)


def test_grid_cli_rejects_bad_input_with_usage_error(tmp_path):
    junk = tmp_path / "junk"  # a folder with files but no dataset: no download is tried
    junk.mkdir()
    (junk / "notes.txt").write_text("not a dataset")
    r = subprocess.run([sys.executable, "run_all_models.py", "--profile", "smoke", "--data-root",
                        str(junk), "--out", str(tmp_path / "o")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "data_root" in r.stderr
    assert not (tmp_path / "o").exists() or not list((tmp_path / "o").rglob("*.csv"))


def test_out_that_is_a_file_is_one_line_before_any_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(grid, "check_plan", lambda configs: pytest.fail("the plan was checked: too late"))
    blocker = tmp_path / "results.txt"
    blocker.write_text("notes")
    with pytest.raises(SystemExit) as e:
        grid.main(["--profile", "smoke", "--out", str(blocker)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert f"--out {blocker}: {blocker} is a file, not a folder" in err
    assert blocker.read_text() == "notes"
    with pytest.raises(SystemExit) as e:  # --status too: not "running ... pid -1 on ?" for every run
        grid.main(["--profile", "smoke", "--status", "--out", str(blocker)])
    assert e.value.code == 2 and "is a file, not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("profile", sorted(grid.PROFILES))
def test_each_tuning_point_differs_from_its_baseline_in_one_knob(profile):
    """The baseline of a one-at-a-time grid is the profile's config, so each point moves exactly
    the knob it names (weight_range moves min_weight and max_weight together)."""
    knobs = {"stage2_lr": ("stage2_lr",), "weight_range": ("min_weight", "max_weight"),
             "stage2_focal_gamma": ("stage2_focal_gamma",), "dynamic_mode": ("dynamic_mode",)}
    base = dataclasses.asdict(grid.plan_baseline(profile, models=("resnet10",), scenarios=("long_tail",))[0])
    for point in grid.tuning_points(profile):
        cfg = dataclasses.asdict(grid._config(profile, "baseline", "resnet10", "long_tail", 0, {},
                                              **grid._tuning_settings(point)))
        moved = {k for k in base if k != "exp_name" and cfg[k] != base[k]}
        assert len([k for k, fields in knobs.items() if moved & set(fields)]) == 1, (point, moved)
        assert moved <= {f for fields in knobs.values() for f in fields}, moved


def test_ablation_variants_share_the_compare_suites_stage1():
    """Each variant is the default two-stage run with its settings, and shares stage 1 with the
    compare suite's cross-entropy run of the same seed (so a variant costs only its stage 2)."""
    compare = {c.seed: c for c in grid.plan_compare("reduced", methods=("ce",))}
    variants = grid.plan_ablation("reduced")
    assert len(variants) == 3 * len(grid.ABLATIONS)
    for cfg in variants:
        assert cfg.method == "two_stage_ictta" and cfg.exp_name.startswith("abl-")
        assert stage1_hash(cfg) == stage1_hash(compare[cfg.seed])
        default = dataclasses.asdict(grid._config("reduced", "ablation", cfg.model_name, cfg.imbalance_type,
                                                  cfg.seed, {}, method="two_stage_ictta",
                                                  imb_factor=cfg.imb_factor))
        moved = {k for k, v in dataclasses.asdict(cfg).items() if v != default[k] and k != "exp_name"}
        assert moved == set(grid.ABLATIONS[cfg.exp_name[len("abl-"):]]), (cfg.exp_name, moved)


@pytest.fixture(scope="module")
def cifar100_results(tmp_path_factory):
    """The compare suite (every method, long_tail) and the baseline suite (head_tail) of the smoke
    profile on a synthetic CIFAR-100 in torchvision's format: 100 classes of 10 ... 1 training images."""
    from conftest import make_cifar100_folder

    tmp = tmp_path_factory.mktemp("c100")
    make_cifar100_folder(tmp / "data", n_train=11, n_test=1)
    small = dict(data_root=str(tmp / "data"), dataset="cifar100", device="cpu", n_max=10, val_per_class=1,
                 stat_per_class=0, batch_size=128, threads=1)  # one thread: far faster on a busy machine
    threads = torch.get_num_threads()
    compare = grid.run_compare("smoke", seeds=(0,), out=str(tmp / "out"), quiet=True, **small)
    baseline = grid.run_baseline_all_models("smoke", models=("resnet10",), scenarios=("head_tail",),
                                            out=str(tmp / "out"), quiet=True, **small)
    torch.set_num_threads(threads)  # a run sets the process's threads; the other tests keep theirs
    return tmp, compare, baseline


def test_cifar100_every_method_and_scenario(cifar100_results):
    tmp, compare, baseline = cifar100_results
    assert compare["failed"] == [] and baseline["failed"] == []
    assert len(compare["done"]) == len(METHODS) and len(baseline["done"]) == 2
    out = tmp / "out" / "smoke-cifar100"  # never mixed with CIFAR-10 runs of the profile
    files = read_results(out)
    assert len(files) == len(METHODS) + 2
    for name, df in files.items():
        assert "_cifar100_" in name and (df["dataset"] == "cifar100").all()
        assert {f"f1_{c}" for c in (0, 99)} <= set(df.columns) and "f1_100" not in df.columns
        assert df["tag"].str.endswith("-smoke-cifar100").all()


def test_cifar100_summary_and_figures(cifar100_results, tmp_path):
    import plots
    import summary_tuning

    tmp, _, _ = cifar100_results
    tables = summary_tuning.write_summary(tmp / "out", tmp_path / "tables", verbose=False)
    assert set(tables["compare"]["method"]) >= set(METHODS)
    plots.make_plots(tmp / "out", tmp_path / "figures", verbose=False)
    for figure in ("compare/compare-smoke-cifar100_resnet10_long_tail_imb0.1.png",
                   "per_class_f1/resnet10_head_tail_f1_vs_count.png",
                   "class_weights/resnet10_head_tail_stage2_weights.png"):
        assert (tmp_path / "figures" / figure).is_file(), figure


def test_a_method_registered_in_one_place_runs_through_the_grid_and_the_summary(synthetic_root, tmp_path,
                                                                                monkeypatch):
    """A new method is one entry of two_stage_ictta.METHODS: the compare suite plans it, the grid runs
    it, the summary orders it with the others."""
    import summary_tuning
    import two_stage_ictta as tsi

    monkeypatch.setitem(tsi.METHODS, "toy", tsi.Method("ce", "inverse", "focal", "effective", "a toy method"))
    assert "toy" in {c.method for c in grid.plan_compare("smoke", seeds=(0,))}
    assert "toy" in grid.build_parser().parse_args(["--suite", "compare", "--methods", "toy"]).methods
    threads = torch.get_num_threads()
    report = grid.run_compare("smoke", seeds=(0,), methods=("drw", "toy"), out=str(tmp_path / "out"), quiet=True,
                              data_root=str(synthetic_root), device="cpu", threads=1)
    torch.set_num_threads(threads)
    assert report["failed"] == [] and len(report["done"]) == 2
    tables = summary_tuning.write_summary(tmp_path / "out", tmp_path / "tables", verbose=False)
    compare = tables["compare"]
    assert set(compare["method"]) == {"drw", "toy"}
    assert list(dict.fromkeys(compare["method"])) == ["drw", "toy"]  # the registry's order
