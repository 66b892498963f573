"""bench.py: a two-step run of every measurement, its JSON, and the reference pipeline's batches."""
from __future__ import annotations

import json

import pytest
import torch

import bench


def tiny_config(root, tmp_path, **kw) -> bench.BenchConfig:
    settings = dict(model="simplecnn", device="cpu", max_steps=2, warmup_steps=1, probe_steps=1,
                    workers="0", data_root=str(root), val_per_class=5, stat_per_class=5, imb_factor=0.2, batch_size=16,
                    eval_batch_size=64, out=str(tmp_path / "bench.json"), quiet=True)
    settings.update(kw)
    return bench.BenchConfig(**settings)


def test_quick_run_writes_every_field(synthetic_root, tmp_path, capsys):
    out = tmp_path / "b.json"
    argv = ["--model", "simplecnn", "--device", "cpu", "--max-steps", "2", "--warmup-steps", "1",
            "--probe-steps", "1", "--workers", "0,1", "--data-root", str(synthetic_root),
            "--val-per-class", "5", "--stat-per-class", "5", "--imb-factor", "0.2", "--batch-size", "16",
            "--eval-batch-size", "64", "--threads", "1", "--out", str(out)]
    threads_before = torch.get_num_threads()
    assert bench.main(argv) == 0
    printed = capsys.readouterr().out
    assert "(c) DataLoader + PIL" in printed and "a/b =" in printed and "a/c =" in printed
    res = json.loads(out.read_text())

    assert res["command"] == "bench.py " + " ".join(argv)
    assert res["config"]["max_steps"] == 2 and res["config"]["threads"] == 1
    for key in ("cpu_model", "cpu_count", "torch", "torchvision", "gpu", "torch_threads"):
        assert key in res["machine"]
    assert res["machine"]["torch"] == torch.__version__ and res["machine"]["torch_threads"] == 1
    assert torch.get_num_threads() == threads_before  # --threads applies to the benchmark only
    assert res["date"] and res["device"] == "cpu"
    assert len(res["load_avg"]["start"]) == 3 and len(res["load_avg"]["end"]) == 3

    data = res["data"]
    assert data["class_counts"] == [50, 29, 17, 10]  # n_max 60 - 5 - 5, imb 0.2 over 4 classes
    assert data["n_train"] == 106 and data["steps_per_epoch"] == 7 and data["n_test"] == 60
    for name in ("a_project", "b_model_step", "c_reference"):
        m = res["results"][name]
        assert m["steps"] == 2 and m["images"] == 32 and not m["full_epoch"]
        assert m["images_per_s"] > 0 and m["seconds"] > 0
        assert m["s_per_epoch"] == pytest.approx(m["seconds"] / 2 * 7)  # extrapolated per step
        assert m["median_step_s"] > 0
    c = res["results"]["c_reference"]
    assert set(c["probe_images_per_s"]) == {"0", "1"}
    assert c["num_workers"] == max((v, int(k)) for k, v in c["probe_images_per_s"].items())[1]
    a, b = res["results"]["a_project"], res["results"]["b_model_step"]
    assert res["ratios"]["a_over_b"] == pytest.approx(a["images_per_s"] / b["images_per_s"])
    assert res["ratios"]["a_over_c"] == pytest.approx(a["images_per_s"] / c["images_per_s"])
    assert res["eval"]["images"] == 60 and res["eval"]["seconds"] > 0
    assert res["memory"]["peak"]["rss_self_mb"] > 0
    assert "targets" not in res  # measured ratios only, no pass/fail thresholds


def test_full_epoch_default_path(synthetic_root, tmp_path, monkeypatch):
    """Without --max-steps every measurement is one whole epoch, short last batch included, and the
    JSON goes to results/bench/bench_<device>_<model>.json beside bench.py, never over the committed
    benchmarks/ files."""
    monkeypatch.setattr(bench, "HERE", tmp_path)
    res = bench.run_bench(tiny_config(synthetic_root, tmp_path, max_steps=None, out=None, batch_size=32))
    assert res["path"] == str(tmp_path / "results" / "bench" / "bench_cpu_simplecnn.json")
    assert not (tmp_path / "benchmarks").exists()
    for name in ("a_project", "b_model_step", "c_reference"):
        m = res["results"][name]
        assert m["full_epoch"] and m["steps"] == 4 and m["images"] == 106
        assert m["s_per_epoch"] == m["seconds"]


def test_reference_batches_are_normalised_random_crops(synthetic_root, tmp_path):
    """Each image of a (c) batch is one of the 9 x 9 crops (zero padding 4), flipped or not, of a
    training image, normalised with the subset's mean and std exactly as the project normalises."""
    s = bench.prepare(tiny_config(synthetic_root, tmp_path))
    xb, yb = next(iter(bench.reference_loader(s, num_workers=0)))
    assert xb.shape == (16, 3, 32, 32) and xb.dtype == torch.float32
    assert yb.shape == (16,) and yb.dtype == torch.int64

    padded = torch.nn.functional.pad(s.x, (4, 4, 4, 4))  # uint8 zeros, as RandomCrop pads the PIL image
    best = torch.full((len(xb),), float("inf"))
    which = torch.zeros(len(xb), dtype=torch.long)
    seen = set()
    for dy in range(9):
        for dx in range(9):
            crop = padded[:, :, dy:dy + 32, dx:dx + 32]
            for flip in (False, True):
                cand = s.normalizer(crop.flip(3) if flip else crop).flatten(1)
                d, j = torch.cdist(xb.flatten(1), cand, compute_mode="donot_use_mm_for_euclid_dist").min(1)
                better = d < best
                best, which = torch.where(better, d, best), torch.where(better, j, which)
                seen.update((dy, dx, flip) for k in range(len(xb)) if d[k] < 1e-3)
    assert best.max() < 1e-3, "a batch image is no normalised crop of a training image"
    assert torch.equal(yb, s.y[which])
    assert len(seen) > 1  # the crops and flips are random, not one fixed view


def test_real_subset_is_a_runs_subset(real_root, tmp_path):
    """On real CIFAR-10 the benchmark draws a run's subset: long_tail 0.01, 100 validation and 50
    statistic images per class held out, 12,031 training images, 94 steps of 128."""
    s = bench.prepare(bench.BenchConfig(device="cpu", data_root=str(real_root), quiet=True))
    assert s.counts == [4850, 2907, 1742, 1044, 626, 375, 225, 134, 80, 48]
    assert len(s.y) == 12031 and s.steps_per_epoch == 94 and len(s.y_test) == 10000
    assert s.x.dtype == torch.uint8 and s.class_weights.min() == 1.0 and s.class_weights.max() == 8.0


@pytest.mark.parametrize("kw, names", [(dict(precision="fp16"), "precision"), (dict(model="vgg"), "model"),
                                      (dict(workers="0,x"), "workers"), (dict(max_steps=0), "max_steps"),
                                      (dict(threads=0), "threads"), (dict(device="tpu"), "device"),
                                      (dict(seed=-1), "seed"), (dict(out="/proc/nowhere/b.json"), "out"),
                                      (dict(out="."), "out")])
def test_bad_settings_raise(kw, names, synthetic_root, tmp_path):
    with pytest.raises(ValueError, match=names):
        bench.validate(tiny_config(synthetic_root, tmp_path, **kw))
