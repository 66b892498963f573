"""Two-stage runs through their lifecycle lose nothing and get nothing wrong: resume after SIGKILL,
determinism, concurrent runs and locks, checkpoints, bad data and an unwritable log_dir through a
run and the CLI, and a non-finite loss. The settings fuzz is test_config.py, the data errors
themselves are in test_data_loader.py and the losses' numerical safety in test_losses.py.

The runs are tiny (the synthetic 4-class data, ResNet-10, batch 32, 1 + 4 epochs) so that the whole
file takes well under a minute. Every run uses ``threads=1``: CPU results are bitwise reproducible
for a fixed thread count only (1 and 2 threads give different last bits), and a single thread also
keeps the runs fast on a busy machine.
"""
from __future__ import annotations

import csv
import json
import math
import os
import pickle
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import config
import data_loader
import launch
import main as cli
import runfiles
import two_stage_ictta as tsi
from conftest import TEST_PRECISION, lock_text, make_image_folder
from train_eval import NonFiniteError

ROOT = Path(__file__).resolve().parents[1]
RUN = dict(stage1_epochs=1, stage2_epochs=4, batch_size=32, val_per_class=5, stat_per_class=5, imb_factor=0.2,
           device="cpu", quiet=True, eval_batch_size=64, threads=1, precision=TEST_PRECISION)
MODEL, SCENARIO = "resnet10", "long_tail"
TIMEOUT = 240  # s, per subprocess: generous, the machine may be shared


@pytest.fixture(autouse=True)
def _restore_threads():
    """``threads=1`` in a run sets torch's global thread count; give the next test its own back."""
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def cli_command(data_root, log_dir, **overrides) -> list[str]:
    """``python main.py ...`` for the RUN settings (plus ``overrides``)."""
    settings_ = {"model_name": MODEL, "imbalance_type": SCENARIO, **RUN, "data_root": str(data_root),
                 "log_dir": str(log_dir), **overrides}
    argv = [sys.executable, "main.py"]
    for k, v in settings_.items():
        flag = "--" + k.replace("_", "-")
        if isinstance(v, bool):
            argv.append(flag if v else "--no-" + flag[2:])
        else:
            argv += [flag, str(v)]
    return argv


def start(argv, log: Path) -> subprocess.Popen:
    return subprocess.Popen(argv, cwd=ROOT, stdout=open(log.with_suffix(".out"), "w"),
                            stderr=open(log.with_suffix(".err"), "w"))


def finish(proc: subprocess.Popen, log: Path) -> str:
    """Wait for ``proc``; fail with its stderr unless it succeeded. Returns stdout."""
    rc = proc.wait(timeout=TIMEOUT)
    err = log.with_suffix(".err").read_text()
    assert rc == 0, f"{proc.args} exited {rc}:\n{err[-3000:]}"
    return log.with_suffix(".out").read_text()


def only(folder: Path, pattern: str) -> Path:
    found = sorted(folder.glob(pattern))
    assert len(found) == 1, f"{pattern} in {folder}: {found}"
    return found[0]


def csv_rows(path: Path, drop=("seconds",)) -> list[dict]:
    """The CSV's rows as exact text, without the wall-clock column."""
    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k not in drop} for row in csv.DictReader(f)]


def assert_same_rows(a: list[dict], b: list[dict], what: str = "") -> None:
    assert len(a) == len(b), f"{what}: {len(a)} rows != {len(b)}"
    for i, (ra, rb) in enumerate(zip(a, b)):
        diff = {k: (ra.get(k), rb.get(k)) for k in ra.keys() | rb.keys() if ra.get(k) != rb.get(k)}
        assert not diff, f"{what}: row {i} (stage {ra.get('stage')} epoch {ra.get('epoch')} " \
                         f"{ra.get('split')}) differs: {diff}"


def leftovers(folder: Path) -> list[str]:
    """Lock files, checkpoints and temporary files: none may remain after a finished run."""
    return sorted(p.name for p in folder.rglob("*")
                  if p.name.endswith((".lock", ".ckpt.pt", ".tmp")) or ".tmp" in p.name)


@pytest.fixture(scope="module")
def data_root(synthetic_root) -> Path:
    data_loader.load_dataset(synthetic_root)  # decode and cache once, before processes race for it
    return synthetic_root


# ----------------------------------------------------------------------------------------------
# Two processes in one log_dir; one of them SIGKILLed mid-run and rerun; a third refused meanwhile

def _checkpoint_state(path: Path) -> dict | None:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)["st"]
    except (OSError, EOFError, RuntimeError, KeyError, ValueError, pickle.UnpicklingError):
        return None  # not written yet


def _wait_for_checkpoint(proc, ckpt: Path, stage: int, epoch: int) -> None:
    deadline = time.monotonic() + TIMEOUT
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"the run ended (rc {proc.returncode}) before it could be killed"
        st_ = _checkpoint_state(ckpt) if ckpt.exists() else None
        if st_ and (st_["stage"], st_["epoch"]) >= (stage, epoch):
            return
        time.sleep(0.01)
    pytest.fail(f"{ckpt} did not reach stage {stage} epoch {epoch} in time")


def _files(folder: Path, name: str) -> dict:
    return {p: p.read_bytes() for p in folder.rglob(f"*{name}*") if p.is_file()}


@pytest.fixture(scope="module")
def shared_dir(data_root, tmp_path_factory) -> dict:
    """Two runs start together as ``python main.py`` processes in one log_dir: ``ref`` (the RUN
    settings) and ``killed`` (the same with another exp_name). Once ``killed`` has finished stage-2
    epoch 1, it is frozen (SIGSTOP: most likely inside an epoch); this process then tries the same
    run and must be refused; ``killed`` gets SIGKILL and its command is run again to completion."""
    log_dir, logs = tmp_path_factory.mktemp("shared_log_dir"), tmp_path_factory.mktemp("logs")
    names = {k: config.run_name(config.TwoStageConfig(MODEL, SCENARIO, exp_name=k, **RUN)) for k in ("ref", "killed")}
    ref = start(cli_command(data_root, log_dir, exp_name="ref"), logs / "ref")
    argv = cli_command(data_root, log_dir, exp_name="killed")
    victim = start(argv, logs / "killed")
    out = {"log_dir": log_dir, "names": names, "victim_pid": victim.pid}
    try:
        _wait_for_checkpoint(victim, log_dir / f"{names['killed']}.ckpt.pt", stage=2, epoch=1)
        os.kill(victim.pid, signal.SIGSTOP)
        out["at_kill"] = _checkpoint_state(log_dir / f"{names['killed']}.ckpt.pt")
        before = _files(log_dir, names["killed"])
        threads = torch.get_num_threads()
        try:  # a second process (this one) on the same run, while the first holds its lock
            tsi.run_two_stage_ictta_on_scenario(MODEL, SCENARIO, data_root=str(data_root), log_dir=str(log_dir),
                                                exp_name="killed", **RUN)
        except runfiles.RunLockedError as e:
            out["refused"] = str(e)
        finally:
            torch.set_num_threads(threads)
        out["unchanged_while_refused"] = _files(log_dir, names["killed"]) == before
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=TIMEOUT)
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait()
    lock = log_dir / f"{names['killed']}.lock"
    out["lock_after_kill"] = lock.read_text() if lock.exists() else None
    killed = config.TwoStageConfig(MODEL, SCENARIO, exp_name="killed", log_dir=str(log_dir), data_root=str(data_root),
                                   **RUN)
    out["planned_resume"] = launch.resume_point(killed)  # what a plan says before the rerun
    finish(start(argv, logs / "resumed"), logs / "resumed")  # the same command again
    finish(ref, logs / "ref")
    return out


def test_sigkill_mid_run_then_rerun_gives_the_uninterrupted_csv(shared_dir, data_root):
    log_dir, names = shared_dir["log_dir"], shared_dir["names"]
    at_kill = shared_dir["at_kill"]
    assert at_kill["stage"] == 2 and 1 <= at_kill["epoch"] < RUN["stage2_epochs"]
    meta = json.loads((log_dir / f"{names['killed']}.json").read_text())
    assert meta["status"] == "finished"
    assert meta["resumed_from"] == [at_kill["stage"], at_kill["epoch"]]
    assert shared_dir["planned_resume"] == (at_kill["stage"], at_kill["epoch"])  # the plan knew it
    # row for row, every value as written, except the run's name and id and the wall-clock seconds
    drop = ("seconds", "run_id", "exp_name")
    assert_same_rows(csv_rows(log_dir / f"{names['ref']}.csv", drop), csv_rows(log_dir / f"{names['killed']}.csv", drop),
                     "resumed vs uninterrupted")
    # killed in stage 2: stage 1's test confusion matrix came back from the checkpoint
    ref_meta = json.loads((log_dir / f"{names['ref']}.json").read_text())
    assert set(meta["confusion_test"]) == {"stage1", "stage2"}
    assert meta["confusion_test"] == ref_meta["confusion_test"]

    # once more: a finished run is returned from its JSON, not retrained, and nothing is rewritten
    written = _files(log_dir, names["killed"])
    again = tsi.run_two_stage_ictta_on_scenario(MODEL, SCENARIO, data_root=str(data_root), log_dir=str(log_dir),
                                                exp_name="killed", **RUN)
    assert again["skipped"] is True
    assert _files(log_dir, names["killed"]) == written


def test_a_run_another_process_finished_meanwhile_is_not_trained_again(shared_dir, data_root, monkeypatch):
    """Process B reads the JSON while A still runs; A finishes and releases the lock; B takes it.
    B must look again under the lock, and reuse A's result rather than retrain over it."""
    log_dir, name = shared_dir["log_dir"], shared_dir["names"]["killed"]
    written = _files(log_dir, name)
    real_read, reads = tsi.read_json, []

    def read_before_a_finished(path):
        meta = real_read(path)
        reads.append(path)
        return {**meta, "status": "running"} if len(reads) == 1 and meta else meta

    monkeypatch.setattr(tsi, "read_json", read_before_a_finished)
    again = tsi.run_two_stage_ictta_on_scenario(MODEL, SCENARIO, data_root=str(data_root), log_dir=str(log_dir),
                                                exp_name="killed", **RUN)
    assert again["skipped"] is True and len(reads) >= 2
    assert _files(log_dir, name) == written


def test_second_process_on_a_running_run_is_refused_and_writes_nothing(shared_dir):
    assert f"process {shared_dir['victim_pid']}" in shared_dir.get("refused", ""), "the second run was not refused"
    assert shared_dir["unchanged_while_refused"]


def test_lock_left_by_the_killed_process_was_taken_over(shared_dir):
    owner = runfiles.LockOwner.parse(shared_dir["lock_after_kill"])
    assert (owner.host, owner.pid, owner.job) == (socket.gethostname(), shared_dir["victim_pid"], "-")
    assert ":" in owner.identity
    assert not (shared_dir["log_dir"] / f"{shared_dir['names']['killed']}.lock").exists()


def test_concurrent_runs_in_one_log_dir_do_not_corrupt_each_other(shared_dir):
    log_dir = shared_dir["log_dir"]
    n_rows = 2 * (RUN["stage1_epochs"] + RUN["stage2_epochs"])  # val and test, every epoch
    for exp, name in shared_dir["names"].items():
        rows = csv_rows(log_dir / f"{name}.csv")
        assert len(rows) == n_rows and {r["exp_name"] for r in rows} == {exp}
        meta = json.loads((log_dir / f"{name}.json").read_text())
        assert meta["status"] == "finished" and meta["config"]["exp_name"] == exp
    assert len(list((log_dir / "stage1").iterdir())) == 1  # one shared stage 1, whoever wrote it
    assert leftovers(log_dir) == []


def test_a_stage1_made_with_other_cpu_threads_is_reused_with_a_notice(data_root, tmp_path, capsys):
    """CPU numbers are bitwise reproducible for one thread count only: reusing a checkpoint made with
    another one says so, and the run's JSON lists every count that made it."""
    kw = dict(data_root=str(data_root), log_dir=str(tmp_path), **{**RUN, "stage2_epochs": 1})
    first = tsi.run_two_stage_ictta_on_scenario(MODEL, SCENARIO, exp_name="one_thread", **kw)
    assert json.loads(Path(first["paths"]["config"]).read_text())["cpu_threads"] == [1]
    other = tsi.run_two_stage_ictta_on_scenario(MODEL, SCENARIO, exp_name="two_threads", **{**kw, "threads": 2})
    assert other["stage1_reused"]
    assert "was made on 1 CPU thread(s), this run uses 2" in capsys.readouterr().err
    meta = json.loads(Path(other["paths"]["config"]).read_text())
    assert meta["cpu_threads"] == [1, 2] and meta["torch_threads"] == 2
    same = tsi.run_two_stage_ictta_on_scenario(MODEL, SCENARIO, exp_name="one_again", **kw)
    assert same["stage1_reused"] and "CPU thread" not in capsys.readouterr().err
    assert json.loads(Path(same["paths"]["config"]).read_text())["cpu_threads"] == [1]


@pytest.mark.parametrize("content", [b"", b"not a checkpoint", b"PK\x03\x04 truncated zip"])
def test_an_unreadable_checkpoint_is_one_error_line_naming_it(data_root, tmp_path, content):
    cfg = config.TwoStageConfig(MODEL, SCENARIO, data_root=str(data_root), log_dir=str(tmp_path), **RUN)
    ckpt = runfiles.run_paths(tmp_path, config.run_name(cfg))["checkpoint"]
    ckpt.write_bytes(content)
    with pytest.raises(ValueError, match=f"{re.escape(str(ckpt))} cannot be read .*; delete it") as e:
        tsi.run_two_stage(cfg)
    assert "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------
# Determinism

def test_same_seed_same_csv_in_process_and_from_the_cli(shared_dir, data_root, tmp_path):
    """The API in this process and the CLI in another give the same numbers for the same seed."""
    res = tsi.run_two_stage_ictta_on_scenario(MODEL, SCENARIO, data_root=str(data_root), log_dir=str(tmp_path),
                                              exp_name="ref", **RUN)
    reference = shared_dir["log_dir"] / f"{shared_dir['names']['ref']}.csv"
    assert_same_rows(csv_rows(reference), csv_rows(Path(res["paths"]["csv"])), "API vs CLI")
    other = tsi.run_two_stage_ictta_on_scenario(MODEL, SCENARIO, data_root=str(data_root),
                                                log_dir=str(tmp_path / "seed1"), exp_name="ref", **{**RUN, "seed": 1})
    # the comparison has teeth: another seed gives other numbers
    assert [r["loss"] for r in csv_rows(Path(other["paths"]["csv"]))] != [r["loss"] for r in csv_rows(reference)]


# ----------------------------------------------------------------------------------------------
# The run lock, through a run and the CLI (the lock itself: test_runfiles.py)

def test_lock_held_by_a_live_process_refuses_the_run(tmp_path, live_pid, synthetic_root):
    cfg = config.TwoStageConfig(MODEL, SCENARIO, data_root=str(synthetic_root), log_dir=str(tmp_path), **RUN)
    lock = tmp_path / f"{config.run_name(cfg)}.lock"
    lock.write_text(lock_text(live_pid))
    with pytest.raises(runfiles.RunLockedError, match=f"process {live_pid}"):
        tsi.run_two_stage(cfg)
    assert sorted(p.name for p in tmp_path.iterdir()) == [lock.name]  # nothing written
    assert lock.read_text() == lock_text(live_pid)


def test_a_finished_run_is_reused_whoever_holds_its_lock(shared_dir, data_root, live_pid):
    """Two grids over the same finished runs, or a lock a dead node left on another host: a
    finished run is returned from its JSON, not refused as locked."""
    log_dir, name = shared_dir["log_dir"], shared_dir["names"]["ref"]
    lock = log_dir / f"{name}.lock"
    for holder in (lock_text(live_pid), "node2 1234"):
        lock.write_text(holder)
        try:
            again = tsi.run_two_stage_ictta_on_scenario(MODEL, SCENARIO, data_root=str(data_root),
                                                        log_dir=str(log_dir), exp_name="ref", **RUN)
        finally:
            lock.unlink()
        assert again["skipped"] is True


def test_cli_on_a_locked_run_says_who_holds_it_without_a_traceback(tmp_path, live_pid, synthetic_root, capsys):
    cfg = config.TwoStageConfig(MODEL, SCENARIO, data_root=str(synthetic_root), log_dir=str(tmp_path), **RUN)
    (tmp_path / f"{config.run_name(cfg)}.lock").write_text(lock_text(live_pid))
    argv = ["--model-name", MODEL, "--imbalance-type", SCENARIO, "--data-root", str(synthetic_root),
            "--log-dir", str(tmp_path)]
    for k, v in RUN.items():
        argv += ["--" + k.replace("_", "-"), str(v)] if not isinstance(v, bool) else \
                ["--" + ("" if v else "no-") + k.replace("_", "-")]
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert f"process {live_pid}" in err and "Traceback" not in err


# ----------------------------------------------------------------------------------------------
# Bad data, through a run and the CLI (the data errors themselves: test_data_loader.py)

def test_bad_data_through_the_run_and_the_cli_writes_nothing(tmp_path, capsys):
    root = make_image_folder(tmp_path / "data", classes=("ant", "bee"), n_train=3, n_test=2)
    bad = root / "test" / "ant" / "0000.png"
    bad.write_bytes(b"")
    log_dir = tmp_path / "runs"
    with pytest.raises(ValueError, match=str(bad)):
        tsi.run_two_stage_ictta_on_scenario(MODEL, SCENARIO, data_root=str(root), log_dir=str(log_dir), **RUN)
    assert not any(log_dir.rglob("*"))
    argv = ["--model-name", MODEL, "--imbalance-type", SCENARIO, "--data-root", str(root), "--log-dir",
            str(log_dir), "--device", "cpu", "--quiet"]
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2 and str(bad) in capsys.readouterr().err
    assert not any(log_dir.rglob("*"))


@pytest.mark.parametrize("where", ["under a regular file", "is a regular file"])
def test_unwritable_log_dir_fails_before_any_data_or_training(tmp_path, monkeypatch, where):
    """Tests run as root, which may write anywhere permissions allow: a regular file blocks it."""
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    log_dir = blocker / "runs" if where.startswith("under") else blocker

    def no_data(*args, **kwargs):
        raise AssertionError("data was loaded before log_dir was checked")

    monkeypatch.setattr(data_loader, "load_dataset", no_data)
    with pytest.raises(ValueError, match=f"log_dir=.*: {re.escape(str(blocker))} is a file, not a folder"):
        tsi.run_two_stage_ictta_on_scenario(MODEL, SCENARIO, log_dir=str(log_dir), **RUN)
    assert blocker.read_text() == ""


# ----------------------------------------------------------------------------------------------
# A non-finite loss or weight (the losses' own numerical safety: test_losses.py)

@pytest.mark.parametrize("how", [{"stage1_lr": 1e6}, {"min_weight": 1.0, "max_weight": 1e300}])
def test_non_finite_loss_or_weight_stops_the_run_and_is_recorded(data_root, tmp_path, how):
    """A huge learning rate diverges; a weight range beyond float32 gives an infinite class weight."""
    settings_ = {**RUN, "stage1_epochs": 1, "stage2_epochs": 2, "model_name": "simplecnn", **how}
    with pytest.raises(NonFiniteError):
        tsi.run_two_stage_ictta_on_scenario(imbalance_type=SCENARIO, data_root=str(data_root),
                                            log_dir=str(tmp_path), **settings_)
    meta = json.loads(only(tmp_path, "results_*.json").read_text())
    assert meta["status"] == "failed"
    assert meta["error"].startswith("NonFiniteError") and "loss" in meta["error"]
    assert {k: meta["config"][k] for k in how} == how
    csv_path = Path(meta["paths"]["csv"])
    for row in csv_rows(csv_path) if csv_path.exists() else []:  # only what came before the failure
        assert all(math.isfinite(float(row[k])) for k in ("loss", "acc", "train_loss")), row
    assert not list(tmp_path.glob("*.lock"))
