"""Experiments as files: every committed experiment loads and plans, a broken file is one line that
names the file and the key, the command-line overrides, and the smoke experiments end to end (resume
after kill -9: the local launcher in test_launch.py, a run in test_two_stage_ictta_lifecycle.py)."""
from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

import launch
import methods
import run_all_models as grid
from config import run_name, stage1_hash
from conftest import TEST_PRECISION
from methods import METHODS

ROOT = Path(__file__).resolve().parents[1]


def read_results(folder: Path) -> dict[str, pd.DataFrame]:
    """Every run's CSV under folder, without the wall-clock column."""
    return {p.name: pd.read_csv(p).drop(columns=["seconds"]) for p in sorted(folder.rglob("results_*.csv"))}


def plan(name: str, **filters) -> list[tuple[str, list]]:
    return grid.plan_experiment(grid.load_experiment(grid.experiment_path(name)), "/tmp/x", grid.Filters(**filters))


def runs_of(name: str, **filters) -> list:
    return [c for _, cfgs in plan(name, **filters) for c in cfgs]


@pytest.mark.parametrize("name", grid.experiment_names())
def test_every_experiment_file_loads_and_its_runs_are_valid_and_distinct(name):
    parts = plan(name)
    cfgs = [c for _, cfgs in parts for c in cfgs]
    assert cfgs and all(suite in grid.SUITES for suite, _ in parts)
    assert len({(c.log_dir, run_name(c)) for c in cfgs}) == len(cfgs)  # no two runs write one file
    assert all(c.tag.split("-", 1)[0] in grid.SUITES for c in cfgs)


def test_runs_keeps_the_runs_of_those_names_and_methods_keeps_a_methods_runs():
    named = runs_of("compare_reduced", runs=["drw_sam", "mislas"], seeds=[0])
    assert sorted((c.exp_name or c.method, c.sam_rho, c.mixup_alpha) for c in named) == [
        ("drw_sam", 0.5, 0.0), ("mislas", 0.0, 1.0)]
    by_method = runs_of("compare_reduced", methods=["drw"], seeds=[0])
    assert sorted(c.exp_name or c.method for c in by_method) == ["drw", "drw_sam"]


def test_the_dynamic_variants_share_drws_cross_entropy_stage1():
    cfgs = runs_of("dynamic", seeds=[0])
    two_stage = [c for c in cfgs if c.method == "two_stage_ictta"]
    assert len(two_stage) > 1 and len({stage1_hash(c) for c in two_stage}) == 1
    assert stage1_hash(next(c for c in cfgs if c.method == "drw")) == stage1_hash(two_stage[0])


def test_the_grid_pairs_every_two_stage_run_with_its_control_on_its_stage1():
    cfgs = runs_of("grid")
    assert len(cfgs) == 5 * 2 * 3 * 2  # models x scenarios x seeds x (two-stage, control)
    runs = {(c.model_name, c.imbalance_type, c.seed, c.exp_name): c for c in cfgs}
    for (model, scen, seed, exp), cfg in runs.items():
        if exp == "baseline":
            control = runs[(model, scen, seed, "control")]
            assert (control.dynamic_mode, control.stage2_loss_type) == ("none", "ce")
            assert (cfg.dynamic_mode, cfg.stage2_loss_type) == ("loss", "focal")
            assert stage1_hash(control) == stage1_hash(cfg)


def test_each_tuning_point_moves_one_knob_from_its_default_run_and_shares_its_stage1():
    knobs = ({"stage2_lr"}, {"min_weight", "max_weight"}, {"stage2_focal_gamma"}, {"dynamic_mode"})
    cfgs = runs_of("tuning", models=["resnet10"], scenarios=["long_tail"], seeds=[0])
    default = dataclasses.asdict(next(c for c in cfgs if c.exp_name == "default"))
    points = [c for c in cfgs if c.exp_name != "default"]
    assert len(points) == 8
    for cfg in points:
        moved = {k for k, v in dataclasses.asdict(cfg).items() if v != default[k] and k != "exp_name"}
        assert moved in knobs or moved <= {"min_weight", "max_weight"} and moved, (cfg.exp_name, moved)
        assert stage1_hash(cfg) == stage1_hash(cfgs[0])


def test_ablation_variants_share_the_stage1_of_compare_reduced():
    """Each variant is the default two-stage run with its settings (``base:`` gives it the budget of
    compare_reduced.yaml), and shares stage 1 with that file's cross-entropy run of the same seed."""
    compare = {c.seed: c for c in runs_of("compare_reduced", methods=["ce"])}
    variants = runs_of("ablation")
    assert len(variants) == 3 * 8 and {c.log_dir for c in variants} == {compare[0].log_dir}
    for cfg in variants:
        assert cfg.method == "two_stage_ictta" and cfg.exp_name.startswith("abl-")
        assert stage1_hash(cfg) == stage1_hash(compare[cfg.seed])


PAIRED_WITH_A_METHODS_STAGE1 = {  # experiment: {reference run: the two-stage runs trained on its stage 1}
    "compare_reduced": {"drw_sam": ["two_stage_sam", "two_stage_variant_sam"],
                        "mislas": ["two_stage_mixup", "two_stage_variant_mixup"],
                        "weight_balancing": ["two_stage_wb", "two_stage_variant_wb"]},
    "literature": {"drw_sam": ["two_stage_sam", "two_stage_variant_sam"],
                   "weight_balancing": ["two_stage_wb", "two_stage_variant_wb"]},
    "literature_own_schedules": {"mislas": ["two_stage_mixup", "two_stage_variant_mixup"],
                                 "weight_balancing": ["two_stage_wb", "two_stage_variant_wb"]},
}


@pytest.mark.parametrize("name", sorted(PAIRED_WITH_A_METHODS_STAGE1))
def test_two_stage_runs_share_the_stage1_of_the_method_they_pair_with(name):
    """A pair differs only in its second stage: same seed, same stage-1 settings, hence one
    checkpoint. A setting missing from a paired run would train a stage 1 of its own, unpaired."""
    pairs = PAIRED_WITH_A_METHODS_STAGE1[name]
    names = sorted(set(pairs) | {t for treated in pairs.values() for t in treated})
    by_name = {(c.exp_name or c.method, c.seed): c for c in runs_of(name, runs=names, seeds=[0])}
    for reference, treated in pairs.items():
        ref = by_name[(reference, 0)]
        for run in treated:
            assert stage1_hash(by_name[(run, 0)]) == stage1_hash(ref), (name, run, reference)
            assert by_name[(run, 0)].log_dir == ref.log_dir
    others = {c.exp_name or c.method: stage1_hash(c) for c in runs_of(name, seeds=[0])}
    assert len({others[r] for r in pairs}) == len(pairs)  # each reference has a stage 1 of its own


def test_filters_keep_and_seeds_replace():
    cfgs = runs_of("compare_reduced", methods=["ce", "ldam_drw"], seeds=[4])
    assert {(c.method, c.seed) for c in cfgs} == {("ce", 4), ("ldam_drw", 4)}
    assert all(c.stage1_epochs == 16 and c.schedule == "step" and c.lr_milestones == (16, 18) for c in cfgs)


def test_set_overrides_every_run_and_reads_numbers_as_their_field_wants():
    assert grid.parse_set(["stage2_lr=0.03", "weight_decay=5e-4", "n_max=500", "lr_milestones=[1, 2]"]) == \
        {"stage2_lr": 0.03, "weight_decay": 5e-4, "n_max": 500, "lr_milestones": (1, 2)}
    cfgs = runs_of("smoke", settings=grid.parse_set(["stage2_lr=0.03"]))
    assert {c.stage2_lr for c in cfgs} == {0.03}
    with pytest.raises(ValueError, match="did you mean stage2_lr"):
        grid.parse_set(["stage2_lrr=0.03"])


@pytest.mark.parametrize("text, where", [
    ("folder: x\nparts: [{suite: compare, methods: [ce]}]\nmodels: [resnet10]\nscenarios: [long_tail]\n"
     "seeds: [0]\nsetings: {}\n", "setings: unknown key"),
    ("folder: x\nparts: [{suite: comparison, methods: [ce]}]\n", "parts[0].suite: 'comparison' is not one of"),
    ("folder: x\nmodels: [resnet10]\nscenarios: [long_tail]\nseeds: [0]\n"
     "parts: [{suite: compare, methods: [ce, drw2]}]\n", "parts[0].methods: 'drw2' is not one of"),
    ("folder: x\nmodels: [resnet10]\nscenarios: [long_tail]\nseeds: [0]\n"
     "parts: [{suite: baseline, runs: [{stage2_lr: -1}]}]\n", "parts[0].runs[0]: stage2_lr=-1.0 is invalid"),
    ("folder: x\nmodels: [resnet10]\nscenarios: [long_tail]\nseeds: [0]\n"
     "parts: [{suite: baseline, runs: [{ema: 0.5}]}]\n", "parts[0].runs[0].ema: unknown setting; did you mean"),
    ("folder: x\nparts: [{suite: baseline, seeds: zero, runs: [{}]}]\nmodels: [resnet10]\nscenarios: [long_tail]\n",
     "parts[0].seeds: 'zero' is not a list"),
    ("folder: x\n  parts: [\n", "not valid YAML at line"),
    ("- just a list\n", "expected a mapping"),
])
def test_a_broken_experiment_file_is_one_line_naming_the_file_and_the_key(tmp_path, capsys, text, where):
    path = tmp_path / "broken.yaml"
    path.write_text(text)
    with pytest.raises(SystemExit) as e:
        grid.main([str(path), "--dry-run", "--no-estimate", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1, err
    assert f"{path}: " in err and where in err, err


def test_a_missing_experiment_names_the_ones_there(capsys):
    with pytest.raises(SystemExit) as e:
        grid.main(["--profile", "nope", "--dry-run"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no such experiment file" in err and "literature" in err


def _grid_cmd(data_root: Path, out: Path, precision: str | None = TEST_PRECISION) -> list[str]:
    """The smoke grid's command line; ``precision=None`` leaves the default."""
    return [sys.executable, "run_all_models.py", "--profile", "smoke_grid", "--scenarios", "long_tail",
            "--data-root", str(data_root), "--out", str(out), "--device", "cpu", "--quiet",
            *(["--precision", precision] if precision else [])]


def test_smoke_grid_runs_end_to_end_and_skips_on_rerun(synthetic_root, tmp_path):
    out = tmp_path / "out"
    r = subprocess.run(_grid_cmd(synthetic_root, out), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    files = read_results(out)
    assert set(files) == {f"results_{e}_resnet10_long_tail_imb0.1_seed0.csv"
                          for e in ("baseline", "control", "tune-lr0.003-w1-8-g1.5-loss")}
    assert len(list((out / "smoke" / "stage1").glob("*.pt"))) == 1  # one stage 1 for all three
    assert "3 done" in r.stdout and "0 failed" in r.stdout
    again = subprocess.run(_grid_cmd(synthetic_root, out), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "3 skipped" in again.stdout
    for name, df in read_results(out).items():
        pd.testing.assert_frame_equal(df, files[name])


def test_plan_names_the_precision_fix_where_bf16_is_emulated(synthetic_root, tmp_path, capsys, monkeypatch):
    argv = _grid_cmd(synthetic_root, tmp_path / "out", precision=None)[2:] + ["--dry-run", "--no-estimate"]
    for emulated in (True, False):
        monkeypatch.setattr(grid, "precision_advice",
                            lambda device, precision, e=emulated: "ADVICE" if e and precision == "bf16" else None)
        assert grid.main(argv) == 0
        assert ("\n  ADVICE" in capsys.readouterr().out) is emulated
        assert grid.main(argv + ["--precision", "fp32"]) == 0
        assert "ADVICE" not in capsys.readouterr().out


def test_plan_progress_dry_run_and_estimate(synthetic_root, tmp_path, capsys, monkeypatch):
    """The plan comes before the first run, with its timed estimate; one bar runs over the whole
    experiment; a dry run prints the plan, writes nothing and times nothing once everything is finished."""
    import shutil

    data = tmp_path / "data"
    shutil.copytree(synthetic_root, data, ignore=shutil.ignore_patterns(".*"))  # no decoded cache yet
    before = sorted(p.name for p in data.rglob("*"))
    argv = [a for a in _grid_cmd(data, tmp_path / "out")[2:] if a != "--quiet"]  # in-process, progress bars on
    assert grid.main(argv + ["--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "plan: 3 runs (baseline 2, tuning 1), 1 + 1 epochs each\n" \
           "  0 finished before (skipped), 3 to run, training 1 stage 1 (the others share one)" in out
    assert "estimated time here, one run after another: " in out and "resnet10" in out
    assert not (tmp_path / "out").exists() and sorted(p.name for p in data.rglob("*")) == before

    assert grid.main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out.index("plan: 3 runs") < captured.out.index("3 done")
    [report] = (tmp_path / "out").rglob("report_*.json")  # one report for both parts
    assert report.name == "report_inline.json" and len(json.loads(report.read_text())["done"]) == 3
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


def test_plan_counts_parts_by_name_and_says_which_runs_go_on_from_a_checkpoint():
    cfg = runs_of("literature", seeds=[0], runs=["drw"])[0]
    work = [{"cfg": cfg, "finished": False, "read_elsewhere": False, "trains_stage1": trains, "sizes": None,
             "resume_from": resume} for trains, resume in ((True, (1, 60)), (False, (2, 3)), (True, None))]
    parts = [("compare", [cfg]), ("compare", [cfg, cfg]), ("ablation", []), ("compare", [])]
    lines = grid.format_plan(work, parts).splitlines()
    assert lines[0] == "plan: 3 runs (compare 3), 160 + 40 epochs each"
    assert lines[1] == "  0 finished before (skipped), 3 to run, training 2 stage 1s (the others share one)"
    assert lines[2] == "  2 of them go on from their checkpoints: epoch 60 of 160 + 40, epoch 163 of 160 + 40"
    assert "1 of them goes on from its checkpoint: epoch 60 of" in grid.format_plan(work[:1], parts[:1])
    assert "checkpoint" not in grid.format_plan(work[2:], parts[:1])



def test_the_plan_says_when_its_estimate_counts_sam_steps_twice():
    plain, sam = runs_of("literature", seeds=[0], runs=["drw", "drw_sam"])
    sizes = {"train": 1280, "val": 0, "test": 0, "stat": 0}
    timings = {("resnet32", 128): {"step_s": 0.5, "eval_image_s": 0.0}}
    work = [{"cfg": c, "finished": False, "read_elsewhere": False, "trains_stage1": True, "sizes": sizes,
             "resume_from": None, "seconds": s} for c, s in ((plain, 1000.0), (sam, 2000.0))]
    both = grid.format_plan(work, [("compare", [plain, sam])], timings)
    assert "estimated time here, one run after another: 50 min" in both and "a SAM step counts as two" in both
    assert "SAM" not in grid.format_plan(work[:1], [("compare", [plain])], timings)

def test_an_unknown_run_name_is_one_line_naming_the_experiments_runs(capsys):
    path = grid.experiment_path("literature")
    with pytest.raises(SystemExit) as e:
        grid.main([str(path), "--runs", "mislas", "misslas", "--dry-run", "--no-estimate"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1
    assert f"--runs misslas: {path} has no run of that name; its runs are " in err
    assert "drw_sam" in err and "mislas," in err


def test_grid_reports_a_failed_run_and_goes_on(synthetic_root, tmp_path, monkeypatch):
    real = launch.run_two_stage
    calls = []

    def flaky(cfg):
        calls.append(cfg.exp_name)
        if cfg.exp_name == "baseline":
            raise FloatingPointError("training loss became nan")
        return real(cfg)

    monkeypatch.setattr(launch, "run_two_stage", flaky)
    [(_, cfgs), _] = grid.plan_experiment(grid.load_experiment(grid.experiment_path("smoke_grid")), tmp_path,
                                          grid.Filters(scenarios=["long_tail"],
                                                       settings=dict(data_root=str(synthetic_root), device="cpu",
                                                                     precision=TEST_PRECISION)))
    report = launch.run_grid(cfgs, quiet=True)
    assert len(report["failed"]) == 1 and "nan" in report["failed"][0]["error"]
    assert len(report["done"]) == 1 and calls == ["baseline", "control"]
    assert "1 failed" in launch.format_report(report)


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
    monkeypatch.setattr(launch, "check_plan", lambda *a, **k: pytest.fail("the plan was checked: too late"))
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


def runs_of_file(name, out, suite: str, **filters) -> list:
    """The runs of one suite of an experiment, written under ``out``."""
    parts = grid.plan_experiment(grid.load_experiment(grid.experiment_path(name)), out, grid.Filters(**filters))
    return [c for s, cfgs in parts if s == suite for c in cfgs]


CIFAR100_METHODS = [m for m in METHODS if m != "mislas"]  # MiSLAS's CIFAR-100 recipe is not implemented


@pytest.fixture(scope="module")
def cifar100_results(tmp_path_factory):
    """The compare suite (every method, long_tail) and the baseline suite (head_tail) of the smoke
    profile on a synthetic CIFAR-100 in torchvision's format: 100 classes of 10 ... 1 training images."""
    from conftest import make_cifar100_folder

    tmp = tmp_path_factory.mktemp("c100")
    make_cifar100_folder(tmp / "data", n_train=11, n_test=1)
    small = dict(data_root=str(tmp / "data"), dataset="cifar100", device="cpu", n_max=10, val_per_class=1,
                 stat_per_class=0, batch_size=128, threads=1, precision=TEST_PRECISION)  # one thread: far faster on a busy machine
    threads = torch.get_num_threads()
    out = tmp / "out"
    compare = launch.run_grid(runs_of_file("smoke", out, suite="compare", seeds=[0], settings=small,
                                           methods=CIFAR100_METHODS), quiet=True)
    baseline = launch.run_grid(runs_of_file("smoke_grid", out, suite="baseline", scenarios=["head_tail"],
                                            settings=small), quiet=True)
    torch.set_num_threads(threads)  # a run sets the process's threads; the other tests keep theirs
    return tmp, compare, baseline


def test_cifar100_every_method_and_scenario(cifar100_results):
    tmp, compare, baseline = cifar100_results
    assert compare["failed"] == [] and baseline["failed"] == []
    assert len(compare["done"]) == len(CIFAR100_METHODS) and len(baseline["done"]) == 2
    out = tmp / "out" / "smoke-cifar100"  # never mixed with CIFAR-10 runs of the profile
    files = read_results(out)
    assert len(files) == len(CIFAR100_METHODS) + 2
    for name, df in files.items():
        assert "_cifar100_" in name and (df["dataset"] == "cifar100").all()
        assert {f"f1_{c}" for c in (0, 99)} <= set(df.columns) and "f1_100" not in df.columns
        assert df["tag"].str.endswith("-smoke-cifar100").all()


def test_cifar100_summary_and_figures(cifar100_results, tmp_path):
    import plots
    import summary_tuning

    tmp, _, _ = cifar100_results
    tables = summary_tuning.write_summary(tmp / "out", tmp_path / "tables", verbose=False)
    assert set(tables["compare"]["method"]) >= set(CIFAR100_METHODS)
    plots.make_plots(tmp / "out", tmp_path / "figures", verbose=False)
    for figure in ("compare/compare-smoke-cifar100_resnet10_long_tail_imb0.1.png",
                   "per_class_f1/resnet10_head_tail_f1_vs_count.png",
                   "class_weights/resnet10_head_tail_stage2_weights.png"):
        assert (tmp_path / "figures" / figure).is_file(), figure


def test_a_method_registered_in_one_place_runs_through_the_grid_and_the_summary(synthetic_root, tmp_path,
                                                                                monkeypatch):
    """A new method is one entry of methods.METHODS: an experiment file may name it, the command
    line accepts it, the grid runs it and the summary tables it."""
    import summary_tuning

    monkeypatch.setitem(methods.METHODS, "toy", methods.Method("ce", "inverse", "focal", "effective", "a toy method"))
    (tmp_path / "base.yaml").write_text((ROOT / "experiments" / "smoke.yaml").read_text())
    (tmp_path / "toy.yaml").write_text("base: base.yaml\nmodels: [resnet10]\nscenarios: [long_tail]\nseeds: [0]\n"
                                       "parts: [{suite: compare, methods: [drw, toy]}]\n")
    assert "toy" in grid.build_parser().parse_args(["--methods", "toy"]).methods
    threads = torch.get_num_threads()
    cfgs = runs_of_file(tmp_path / "toy.yaml", tmp_path / "out", suite="compare",
                        settings=dict(data_root=str(synthetic_root), device="cpu", threads=1, precision=TEST_PRECISION))
    report = launch.run_grid(cfgs, quiet=True)
    torch.set_num_threads(threads)
    assert report["failed"] == [] and len(report["done"]) == 2
    tables = summary_tuning.write_summary(tmp_path / "out", tmp_path / "tables", verbose=False)
    assert set(tables["compare"]["method"]) == {"drw", "toy"}


def test_the_plan_trains_a_stage1_shared_across_parts_once_from_the_run_furthest_into_it(synthetic_root, tmp_path, capsys):
    """Runs of two parts share a stage 1 and the later part's run is into it by its own checkpoint:
    the plan, as the launcher does, has that run go on and the others wait, so one stage 1 is trained."""
    from types import SimpleNamespace

    from config import config_hash
    from results_logger import code_fingerprint
    from runfiles import run_paths

    exp = grid.load_experiment(grid.experiment_path("smoke_grid"))
    settings = {"data_root": str(synthetic_root), "device": "cpu", "stage1_epochs": 3}
    parts = grid.plan_experiment(exp, tmp_path, grid.Filters(scenarios=["long_tail"], settings=settings))
    [tuned] = [c for suite, cfgs in parts if suite == "tuning" for c in cfgs]
    assert len({stage1_hash(c) for _, cfgs in parts for c in cfgs}) == 1
    Path(tuned.log_dir).mkdir(parents=True)
    torch.save({"run_id": config_hash(tuned), "code_fingerprint": code_fingerprint(), "st": {"stage": 1, "epoch": 1}},
               run_paths(tuned.log_dir, run_name(tuned))["checkpoint"])
    work = grid.show_plan(exp, parts, SimpleNamespace(dry_run=True, no_estimate=True, launcher="local"))
    out = capsys.readouterr().out
    assert "3 to run, training 1 stage 1 (the others share one)" in out
    assert "1 of them goes on from its checkpoint: epoch 1 of 3 + 1" in out
    assert [w["cfg"] for w in work if w["trains_stage1"]] == [tuned]
