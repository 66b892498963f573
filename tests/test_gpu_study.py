"""gpu_study: the plan of a lease's runs, the progress it reads, and the finish-first scheduler."""
from __future__ import annotations

import sys
import tarfile
from pathlib import Path

import pytest

import gpu_study
from gpu_study import Job, Study, epochs_done, rebalance
from model import MODELS
from run_all_models import SCENARIOS, TUNING_MODELS
from summary_tuning import variant_and_role


def test_rebalance_keeps_the_runs_that_can_finish_when_some_cannot():
    # 4 runs at 0.1 epoch/s each (0.4 in all); 100 s left: 40 epochs of work fit in all.
    # The two closest to their end (10 and 15 left) fit together: 2 * 15 <= 40; three do not (3 * 30 > 40).
    assert rebalance([0.1] * 4, [10, 15, 30, 200], 100) == 2


def test_rebalance_grows_when_every_run_ends_with_room_to_spare():
    assert rebalance([1.0, 1.0], [10, 20], 100) == 3


def test_rebalance_leaves_a_load_that_just_fits():
    assert rebalance([1.0, 1.0], [10, 90], 100) is None


def test_rebalance_waits_for_every_rate():
    assert rebalance([1.0, None], [10, 10], 100) is None
    assert rebalance([], [], 100) is None


def test_rebalance_keeps_one_run_even_when_none_can_finish():
    assert rebalance([0.1, 0.1], [500, 500], 100) == 1


def test_a_run_without_an_epoch_in_the_window_has_no_rate_yet():
    job = Job("x", [])
    job.done_total = (5, 200)
    for t in range(0, 50, 5):
        job.samples.append((float(t), 5))
    assert job.rate(40.0) is None  # not 0: a slow first epoch must not get a run paused
    job.samples.append((50.0, 7))
    assert job.rate(40.0) == pytest.approx(2 / 40)


def test_epochs_done_reads_the_last_progress_of_a_tqdm_bar(tmp_path):
    log = tmp_path / "run.log"
    assert epochs_done(log) is None
    log.write_bytes(b"resnet32/long_tail/ce:  0%|   | 0/200 [00:00<?, ?it/s]\r"
                    b"resnet32/long_tail/ce: 80%|## | 160/200 [01:23<00:20,  1.9it/s, stage=1]\r")
    assert epochs_done(log) == (160, 200)


def fake_run(epochs: int, seconds_per_epoch: float) -> list[str]:
    """A process that prints a tqdm-like bar, one epoch per ``seconds_per_epoch``."""
    code = (f"import sys, time\nfor e in range({epochs} + 1):\n"
            f"    sys.stderr.write(f'x: |  | {{e}}/{epochs} [..]\\r'); sys.stderr.flush()\n"
            f"    time.sleep({seconds_per_epoch})\n")
    return [sys.executable, "-c", code]


def test_run_jobs_runs_every_job_and_a_waiting_job_after_its_stage1(tmp_path):
    study = Study(tmp_path / "out", tmp_path / "results", budget=60)
    stage1 = tmp_path / "stage1.pt"
    head = Job("head", fake_run(3, 0.05) + [str(stage1)])
    head.command[2] += "\nopen(sys.argv[1], 'w').write('x')\n"
    waiting = Job("waiting", fake_run(2, 0.05), waits_for=stage1)
    other = Job("other", fake_run(2, 0.05))
    study.jobs = [head, waiting, other]
    gpu_study.run_jobs(study, study.jobs, max_jobs=1, deadline=50, pack_every=30, poll_s=0.05, gpu=False)
    started = [e.split("start ")[1] for e in study.events if "] start " in e]
    assert started == ["head", "waiting", "other"]  # the ready waiting run goes before the new one
    assert [j.record["rc"] for j in study.jobs] == [0, 0, 0]
    assert head.done_total == (3, 3)
    with tarfile.open(tmp_path / "out" / "results.tgz") as tar:
        assert "results/gpu_study.json" in tar.getnames()


def test_run_jobs_pauses_runs_that_cannot_finish_and_stops_the_rest_at_the_deadline(tmp_path):
    study = Study(tmp_path / "out", tmp_path / "results", budget=60)
    short = Job("short", fake_run(20, 0.1))     # 2 s of work
    long = Job("long", fake_run(1000, 0.1))     # 100 s of work: cannot finish in 6 s
    study.jobs = [short, long]
    gpu_study.run_jobs(study, study.jobs, max_jobs=2, deadline=6, pack_every=30, poll_s=0.05, window=1.0,
                       gpu=False)
    assert short.record["rc"] == 0
    assert long.record["rc"] == "stopped at the deadline"
    assert long.record["paused_s"], study.events  # paused while the short one ran
    assert long.record.get("resumed_s"), study.events  # and resumed once it ended


@pytest.mark.parametrize("seeds", [(0,), (0, 1)])
def test_plan_orders_runs_by_value_and_waits_for_shared_stage1s(tmp_path, seeds):
    items = gpu_study.work_configs(["literature"], seeds, tmp_path, dry_run=False, device="cuda")
    jobs = gpu_study.plan(items)
    assert len(jobs) == 12 * len(seeds)  # 11 methods + LDAM-DRW with uniform init, per seed
    heads = [j.label for j in jobs if j.waits_for is None]
    assert heads[:len(seeds)] == [f"ce seed{s}" for s in seeds]
    assert heads[-len(seeds):] == [f"ldam_drw_uniform_init seed{s}" for s in seeds]
    waiting = {j.label.split()[0] for j in jobs if j.waits_for is not None}
    assert waiting == {"drw", "crt", "tau_norm", "two_stage_ictta"}
    assert all(j.command[1] == "main.py" and "--device" in j.command for j in jobs)


def test_work_items_run_in_the_order_given_each_in_its_own_folder(tmp_path):
    items = gpu_study.work_configs(["baseline", "fp32"], (0, 1), tmp_path, dry_run=False)
    jobs = gpu_study.plan(items)
    first_fp32 = next(i for i, j in enumerate(jobs) if "fp32" in j.label)
    assert all(j.cfg.tag.startswith("baseline") for j in jobs[:first_fp32])
    fp32 = jobs[first_fp32:]  # ce and ldam_drw, the first seed only
    assert [(j.cfg.method, j.cfg.seed, j.cfg.precision) for j in fp32] == [("ce", 0, "fp32"), ("ldam_drw", 0, "fp32")]
    assert {j.cfg.log_dir for j in jobs} == {str(tmp_path / "full"), str(tmp_path / "fp32")}
    assert {j.cfg.model_name for j in jobs[:first_fp32]} == set(MODELS)  # every model, ResNet-32 too


def test_the_jpeg_item_runs_ce_on_re_encoded_images_first_seed_only(tmp_path):
    jobs = gpu_study.plan(gpu_study.work_configs(["jpeg"], (0, 1, 2), tmp_path, dry_run=False))
    assert [(j.cfg.method, j.cfg.seed, j.cfg.jpeg_quality, j.cfg.exp_name) for j in jobs] == \
        [("ce", 0, 50, "ce_jpeg50"), ("ce", 0, 25, "ce_jpeg25")]
    assert {j.cfg.log_dir for j in jobs} == {str(tmp_path / "jpeg")}
    assert all(j.command[j.command.index("--jpeg-quality") + 1] == str(j.cfg.jpeg_quality) for j in jobs)


def test_every_run_of_every_work_item_has_its_own_label_and_log(tmp_path):
    jobs = gpu_study.plan(gpu_study.work_configs(list(gpu_study.WORK), (0, 1), tmp_path, dry_run=False))
    labels = [j.label for j in jobs]
    assert len(set(labels)) == len(labels) > 100
    assert {"ce seed0", "ce_fp32 seed0", "ce_jpeg50 seed0", "ce_jpeg25 seed0"} <= set(labels)


def test_start_from_a_folder_without_runs_stops_before_anything_runs(tmp_path):
    study = Study(tmp_path / "out", tmp_path / "results", budget=60)
    with pytest.raises(SystemExit, match="no results_\\* files there"):
        gpu_study.start_from(study, [str(tmp_path / "benchmarks" / "typo")])


def test_a_finished_run_is_not_planned_again(tmp_path):
    items = gpu_study.work_configs(["fp32"], (0,), tmp_path, dry_run=True)
    cfg = items[0][0]
    from runfiles import run_paths
    from results_logger import write_json
    from two_stage_ictta import code_fingerprint, config_hash

    paths = run_paths(cfg.log_dir, gpu_study.run_name(cfg))
    Path(paths["csv"]).parent.mkdir(parents=True)
    Path(paths["csv"]).write_text("x\n")
    write_json(paths["config"], {"status": "finished", "run_id": config_hash(cfg), "code_fingerprint": code_fingerprint()})
    assert [j.cfg for j in gpu_study.plan(items)] == items[0][1:]


def test_the_runs_show_the_progress_bar_the_scheduler_reads(tmp_path):
    items = gpu_study.work_configs(list(gpu_study.WORK), (0,), tmp_path, dry_run=True)
    assert all(items) and not any(c.quiet for cfgs in items for c in cfgs)


def test_pack_skips_a_file_that_a_run_removes_meanwhile(tmp_path, monkeypatch):
    """A run removes its checkpoint and temporary files as it ends, while the study packs."""
    study = Study(tmp_path / "out", tmp_path / "results", budget=60)
    (tmp_path / "results" / "kept.csv").write_text("a\n")
    (tmp_path / "results" / "gone.json").write_text("{}")
    add = tarfile.TarFile.add

    def add_racing(self, name, *a, **k):
        if str(name).endswith("gone.json"):
            raise FileNotFoundError(name)
        return add(self, name, *a, **k)

    monkeypatch.setattr(tarfile.TarFile, "add", add_racing)
    study.pack()
    with tarfile.open(tmp_path / "out" / "results.tgz") as tar:
        assert {"results/kept.csv", "results/gpu_study.json"} <= set(tar.getnames())


def test_start_from_copies_committed_runs_and_keeps_the_machines_own(tmp_path):
    committed = tmp_path / "benchmarks" / "literature"
    committed.mkdir(parents=True)
    for name in ("results_a.csv", "results_a.json", "results_b.json", "notes.md", "results_c.model.pt"):
        (committed / name).write_text("committed")
    study = Study(tmp_path / "out", tmp_path / "results", budget=60)
    (tmp_path / "results" / "literature").mkdir()
    (tmp_path / "results" / "literature" / "results_b.json").write_text("the machine's own")
    gpu_study.start_from(study, [str(committed)])
    dest = tmp_path / "results" / "literature"
    assert sorted(f.name for f in dest.iterdir()) == ["results_a.csv", "results_a.json", "results_b.json"]
    assert (dest / "results_b.json").read_text() == "the machine's own"
    assert (dest / "results_a.csv").read_text() == "committed"


@pytest.mark.parametrize("argv, says", [(["--jobs", "0"], "--jobs must be >= 1"), (["--seeds", "-1"], "--seeds"),
                                        (["--budget", "0"], "--budget"), (["--budget", "nan"], "--budget"),
                                        (["--data-tar", "nowhere.tgz"], "no such file")])
def test_bad_arguments_are_one_line_before_anything_runs(argv, says, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_study.main(argv + ["--dry-run", "--out", str(tmp_path / "out"), "--results", str(tmp_path / "res")])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and says in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "res").exists()


def test_without_a_gpu_only_the_dry_run_goes(monkeypatch):
    monkeypatch.setattr(gpu_study, "gpu_visible", lambda: False)
    args = gpu_study.build_parser().parse_args([])
    assert "no NVIDIA GPU here" in gpu_study.argument_problem(args) and "--dry-run" in gpu_study.argument_problem(args)
    assert gpu_study.argument_problem(gpu_study.build_parser().parse_args(["--dry-run"])) is None


def test_a_missing_dataset_is_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        gpu_study.main(["--dry-run", "--data-root", str(tmp_path / "nodata"), "--out", str(tmp_path / "out"),
                        "--results", str(tmp_path / "res"), "--bench-steps", "0"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and err.count("\n") == 1 and "data: no dataset at data_root=" in err


def test_runs_that_failed_are_told_apart_from_runs_stopped_at_the_deadline():
    jobs = [Job(name, []) for name in ("ok", "bad", "stopped", "never started")]
    jobs[0].record, jobs[1].record, jobs[2].record = {"rc": 0}, {"rc": 2}, {"rc": "stopped at the deadline"}
    assert gpu_study.failed_runs(jobs) == ["bad"]


def test_a_repeated_seed_is_one_seed(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(gpu_study, "argument_problem", lambda args: seen.append(args.seeds) or "stop here")
    with pytest.raises(SystemExit):
        gpu_study.main(["--dry-run", "--seeds", "1", "0", "1"])
    assert seen == [[1, 0]]


def test_the_tuning_item_pairs_every_seeds_points_with_that_seeds_default_run(tmp_path):
    """Each seed's default two-stage run trains the stage 1 that its 8 points wait for, in the
    tuning folder; no control runs; seed 0's runs come first."""
    jobs = gpu_study.plan(gpu_study.work_configs(["tuning"], (0, 1), tmp_path, dry_run=False))
    cases = {(m, s, sd) for m in TUNING_MODELS for s in SCENARIOS for sd in (0, 1)}
    heads = [j for j in jobs if j.waits_for is None]
    assert [j.cfg.exp_name for j in heads] == ["default"] * len(cases)
    assert {variant_and_role(vars(j.cfg))[1] for j in heads} == {"two_stage"}  # the points' pair
    assert {(j.cfg.model_name, j.cfg.imbalance_type, j.cfg.seed) for j in heads} == cases
    assert [j.cfg.seed for j in heads] == sorted(j.cfg.seed for j in heads)
    points = [j for j in jobs if j.waits_for is not None]
    assert len(points) == 8 * len(cases) and {j.cfg.tag for j in jobs} == {"tuning-full"}
    trains = {gpu_study.stage1_path(j.cfg): j for j in heads}
    assert all(trains[j.waits_for].cfg.seed == j.cfg.seed for j in points)
    assert {j.cfg.log_dir for j in jobs} == {str(tmp_path / "tuning")}
