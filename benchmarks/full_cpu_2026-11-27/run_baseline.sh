#!/bin/bash
# Issue 13: the full-profile baseline (two-stage + same-budget control), 3 seeds.
# Order: finish ResNet-15, then seed 0 of ResNet-20 and ResNet-32 (a depth trend on one seed early), then their seeds 1-2.
# Resumable: the same script again skips finished runs and resumes the others from their last checkpoints.
cd "${REPO:-$HOME/wt-run}" && source .venv/bin/activate   # REPO: a checkout of this project with its .venv
grid() {
  python run_all_models.py --suite baseline --profile full --models "$1" --seeds "${@:2}" \
    --launcher local --jobs 2 --threads 1 --no-estimate --quiet --out ~/results
}
for m in simplecnn resnet10 resnet15; do grid $m 0 1 2; done
for m in resnet20 resnet32; do grid $m 0; done
for m in resnet20 resnet32; do grid $m 1 2; done
# then the tuning grid of issue 13 (one knob at a time, seed 0; the baseline above is skipped as finished)
python run_all_models.py --suite grid --profile full --seeds 0 --launcher local --jobs 2 --threads 1 --no-estimate --quiet --out ~/results
