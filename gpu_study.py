"""Everything one GPU lease measures, in one command, inside a fixed wall-clock budget.

A lent GPU comes for minutes, once: this script runs the full-budget work in order of value and
stops each phase at its deadline, so that whatever finished is kept (every run checkpoints its CSV
each epoch; see README "GPU results"). Phases:

1. ``bench.py`` on the GPU (project epoch vs model step vs DataLoader + PIL, eager), while it is idle;
2. one literature-recipe run alone (ResNet-32, 200 epochs, ``ce``, seed 0), timed end to end;
3. the rest of the literature comparison (``ce``, ``drw``, ``two_stage_ictta`` sharing stage 1;
   ``ldam_drw``; ``logit_adjust``; 3 seeds) and the reduced-profile comparison of all methods,
   as concurrent processes (each is launch-bound, so the GPU runs several at once);
4. the fp32 vs bf16 accuracy check and the quick grid, if time is left.

Results are tarred into ``OUT/results.tgz`` after every phase (``OUT`` defaults to ``$OUT``).
Run on CPU with tiny settings for a dry run: ``python gpu_study.py --dry-run --data-root DIR``.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
PY = sys.executable


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    p.add_argument("--budget", type=float, default=560.0, help="seconds for everything")
    p.add_argument("--data-root", default=None)
    p.add_argument("--dry-run", action="store_true", help="CPU, smoke profile: checks the plumbing")
    p.add_argument("--compile", default="reduce-overhead", help="compile mode, or 'none'")
    args = p.parse_args()
    t0 = time.time()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    results = HERE / "results_gpu"
    logs = results / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    dry = args.dry_run
    device = "cpu" if dry else "cuda"
    lit, reduced, quick = ("smoke", "smoke", "smoke") if dry else ("literature", "reduced", "quick")
    lit_imb = "0.1" if dry else "0.01"
    events = []

    def left() -> float:
        return args.budget - (time.time() - t0)

    def note(msg: str) -> None:
        line = f"[{time.time() - t0:6.1f}s] {msg}"
        print(line, flush=True)
        events.append(line)

    def pack() -> None:
        (results / "events.txt").write_text("\n".join(events) + "\n")
        tmp = out / "results.tgz.tmp"
        with tarfile.open(tmp, "w:gz") as tar:
            tar.add(results, arcname="results_gpu",
                    filter=lambda ti: None if ti.name.endswith((".pt", ".lock")) else ti)
        os.replace(tmp, out / "results.tgz")

    def launch(name: str, cmd: list[str]) -> subprocess.Popen:
        note(f"start {name}: {' '.join(cmd)}")
        f = open(logs / f"{name}.log", "w")
        return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=HERE,
                                env={**os.environ, "PYTHONUNBUFFERED": "1"})

    def wait_all(procs: dict, deadline: float) -> dict:
        codes = {}
        while procs:
            for name, pr in list(procs.items()):
                if pr.poll() is not None:
                    codes[name] = pr.returncode
                    note(f"end {name}: rc={pr.returncode}")
                    del procs[name]
            if procs and time.time() - t0 > deadline:
                for name, pr in procs.items():
                    pr.terminate()
                    note(f"deadline: stopped {name}")
                for name, pr in procs.items():
                    try:
                        pr.wait(10)
                    except subprocess.TimeoutExpired:
                        pr.kill()
                    codes[name] = "stopped"
                procs.clear()
            time.sleep(1)
        return codes

    common = ["--device", device, "--quiet", "--threads", "2"]
    if args.data_root:
        common += ["--data-root", args.data_root]
    compile_args = [] if args.compile == "none" or dry else ["--compile", args.compile]
    grid = [PY, "run_all_models.py", "--out", str(results)]

    # 0. the machine and the data cache
    env = subprocess.run([PY, "-c", "import torch,sys; print(sys.version); print(torch.__version__, "
                          "torch.cuda.is_available() and torch.cuda.get_device_name())"],
                         capture_output=True, text=True)
    note(f"env: {env.stdout.strip()} {env.stderr.strip()[-300:]}")
    if not dry:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True)
        note(f"nvidia-smi: {smi.stdout.strip()}")
    r = subprocess.run([PY, "-c", f"import data_loader as d; x=d.load_dataset({args.data_root!r}); "
                        "print(x.train_x.shape, x.source)"], capture_output=True, text=True, cwd=HERE)
    note(f"data: {r.stdout.strip()} {r.stderr.strip()[-500:]}")

    # 1. bench while the GPU is idle
    if (HERE / "bench.py").exists():
        bench = [PY, "bench.py", "--device", device, "--max-steps", "3" if dry else "150",
                 "--model", "simplecnn" if dry else "resnet32", "--workers", "0,1,2" if dry else "0,4,8"]
        if args.data_root:
            bench += ["--data-root", args.data_root]
        wait_all({"bench": launch("bench", bench + ["--out", str(results / f"bench_{device}.json")])},
                 deadline=min(90, args.budget * 0.2))
    pack()

    # 2. one literature run alone, timed end to end
    lit_case = ["--suite", "compare", "--profile", lit, "--scenarios", "long_tail", "--imb-factors", lit_imb]
    solo_cmd = grid + lit_case + ["--methods", "ce", "--seeds", "0"] + common + compile_args
    t_solo = time.time()
    codes = wait_all({"solo_ce_seed0": launch("solo_ce_seed0", solo_cmd)}, deadline=time.time() - t0 + 150)
    solo = {"command": " ".join(solo_cmd), "wall_s": round(time.time() - t_solo, 1), "rc": codes["solo_ce_seed0"]}
    (results / "solo_run.json").write_text(json.dumps(solo, indent=1))
    note(f"solo literature run: {solo}")
    if solo["rc"] != 0 and compile_args:
        note("solo run failed with compile; the rest runs eager")
        compile_args = []
    pack()

    # 3. the literature comparison (3 seeds) and the reduced comparison, concurrently
    procs = {}
    for seed in ("0", "1", "2"):
        shared = ["drw", "two_stage_ictta"] if seed == "0" and solo["rc"] == 0 else ["ce", "drw", "two_stage_ictta"]
        for tag, methods in (("shared", shared), ("ldam", ["ldam_drw"]), ("la", ["logit_adjust"])):
            cmd = grid + lit_case + ["--methods", *methods, "--seeds", seed] + common + compile_args
            procs[f"lit_{tag}_seed{seed}"] = launch(f"lit_{tag}_seed{seed}", cmd)
    for seed in ("0", "1", "2"):
        cmd = grid + ["--suite", "compare", "--profile", reduced, "--seeds", seed] + common
        procs[f"reduced_seed{seed}"] = launch(f"reduced_seed{seed}", cmd)
    wait_all(procs, deadline=args.budget - 100)
    pack()

    # 4. precision check and the quick grid, with what is left
    procs = {}
    if left() > 60:
        # fp32 twins of phase 3's bf16 reduced runs of these two methods (same seeds)
        cmd = [PY, "run_all_models.py", "--out", str(results / "precision_fp32"), "--suite", "compare",
               "--profile", reduced, "--methods", "ce", "two_stage_ictta", "--precision", "fp32"] + common
        procs["precision_fp32"] = launch("precision_fp32", cmd)
        procs["quick_grid"] = launch("quick_grid", grid + ["--profile", quick] + common)
        wait_all(procs, deadline=args.budget - 15)
    note("done")
    pack()
    return 0


if __name__ == "__main__":
    sys.exit(main())
