"""estimate: a run's work from its settings, and a timed step of a model."""
from __future__ import annotations

import pytest
import torch

from estimate import epochs_left, evaluations, format_duration, run_seconds, time_model
from config import TwoStageConfig

SIZES = {"train": 1000, "val": 100, "test": 500, "stat": 50}


def test_evaluations_count_every_nth_epoch_and_the_last():
    assert [evaluations(e, 4) for e in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    assert evaluations(20, 1) == 20
    # after the first ``done`` epochs: those evaluated later only
    assert [evaluations(9, 4, done) for done in (0, 3, 4, 7, 8, 9)] == [3, 3, 2, 2, 1, 0]


def test_run_seconds_is_steps_times_step_time_plus_evaluated_images():
    cfg = TwoStageConfig("resnet10", "long_tail", stage1_epochs=4, stage2_epochs=2, batch_size=100, eval_every=2)
    timing = {"step_s": 0.5, "eval_image_s": 0.001}
    # 6 epochs x 10 steps x 0.5 s + (2 + 1) evaluations x 600 images x 1 ms
    assert run_seconds(cfg, SIZES, timing) == pytest.approx(30 + 1.8)
    # stage 1 from a shared checkpoint: stage 2's 2 epochs and 1 evaluation only
    assert run_seconds(cfg, SIZES, timing, trains_stage1=False) == pytest.approx(10 + 0.6)
    # the held-out statistic is measured before each stage-2 epoch
    val_mode = TwoStageConfig("resnet10", "long_tail", stage1_epochs=4, stage2_epochs=2, batch_size=100,
                              eval_every=2, dynamic_mode="val_loss")
    assert run_seconds(val_mode, SIZES, timing) == pytest.approx(30 + 1.8 + 2 * 50 * 0.001)



def test_a_sam_step_counts_two_passes_and_its_evaluations_once():
    plain = TwoStageConfig("resnet10", "long_tail", stage1_epochs=4, stage2_epochs=2, batch_size=100, eval_every=2)
    sam = TwoStageConfig("resnet10", "long_tail", stage1_epochs=4, stage2_epochs=2, batch_size=100, eval_every=2,
                         sam_rho=0.5)
    timing = {"step_s": 0.5, "eval_image_s": 0.001}
    assert run_seconds(plain, SIZES, timing) == pytest.approx(30 + 1.8)
    assert run_seconds(sam, SIZES, timing) == pytest.approx(2 * 30 + 1.8)

def test_run_seconds_of_a_resumed_run_count_what_is_left():
    cfg = TwoStageConfig("resnet10", "long_tail", stage1_epochs=4, stage2_epochs=2, batch_size=100, eval_every=2)
    timing = {"step_s": 0.5, "eval_image_s": 0.001}
    assert epochs_left(cfg) == (4, 2) and epochs_left(cfg, trains_stage1=False) == (0, 2)
    # stopped after stage-1 epoch 1: 3 + 2 epochs, evaluations after epochs 2, 4 and stage 2's 2
    assert epochs_left(cfg, resume_from=(1, 1)) == (3, 2)
    assert run_seconds(cfg, SIZES, timing, resume_from=(1, 1)) == pytest.approx(25 + 1.8)
    # stopped after stage-1 epoch 2: its evaluation is done
    assert run_seconds(cfg, SIZES, timing, resume_from=(1, 2)) == pytest.approx(20 + 1.2)
    # its own checkpoint wins over a shared stage 1, as in the run
    assert epochs_left(cfg, trains_stage1=False, resume_from=(1, 2)) == (2, 2)
    # stopped after stage-2 epoch 1: one epoch and one evaluation left
    assert epochs_left(cfg, resume_from=(2, 1)) == (0, 1)
    assert run_seconds(cfg, SIZES, timing, resume_from=(2, 1)) == pytest.approx(5 + 0.6)
    assert run_seconds(cfg, SIZES, timing, resume_from=(2, 2)) == 0
    val_mode = TwoStageConfig("resnet10", "long_tail", stage1_epochs=4, stage2_epochs=2, batch_size=100,
                              eval_every=2, dynamic_mode="val_loss")
    assert run_seconds(val_mode, SIZES, timing, resume_from=(2, 1)) == pytest.approx(5 + 0.6 + 50 * 0.001)


def test_format_duration():
    assert [format_duration(s) for s in (40, 300, 2 * 3600 + 13 * 60, 3 * 86400 + 4 * 3600)] == \
        ["40 s", "5 min", "2 h 13 min", "3 d 4 h"]


def test_time_model_times_a_real_step_and_leaves_the_threads_alone():
    before = torch.get_num_threads()
    cfg = TwoStageConfig("simplecnn", "long_tail", batch_size=8, eval_batch_size=8, device="cpu", threads=1)
    t = time_model(cfg, num_classes=10, steps=1)
    assert t["step_s"] > 0 and t["eval_image_s"] > 0
    assert torch.get_num_threads() == before
