#!/bin/bash
# The full-profile baseline (two-stage + same-budget control), 3 seeds, then the tuning grid.
# Resumable: the same script again skips finished runs and resumes the others from their last checkpoints;
# a run still running in another call is left to it.
cd "${REPO:-$HOME/wt-run}" && source .venv/bin/activate   # REPO: a checkout of this project with its .venv
common=(--profile full --launcher local --jobs 2 --threads 1 --no-estimate --quiet --out ~/results)
# What ran, in this order: one call per model (SimpleCNN, ResNet-10, ResNet-15 with 3 seeds, then ResNet-32 seed 0)
for m in simplecnn resnet10 resnet15; do python run_all_models.py --suite baseline "${common[@]}" --models $m --seeds 0 1 2; done
python run_all_models.py --suite baseline "${common[@]}" --models resnet32 --seeds 0
# then, from 20:36, the rest in one call, so that no core waits for the last run of a model
python run_all_models.py --suite baseline "${common[@]}" --models resnet32 resnet20 --seeds 0 1 2
# from 21:58 the same call at 4d75768 (until then 0f48822), whose launcher runs each control right after its
# trainer; --accept-code-change keeps what 0f48822 made, the commits between shown neutral (README)
python run_all_models.py --suite baseline "${common[@]}" --accept-code-change --models resnet32 resnet20 --seeds 0 1 2
# then the tuning grid (one knob at a time, seed 0; the baseline above is skipped as finished)
python run_all_models.py --suite grid "${common[@]}" --accept-code-change --seeds 0
