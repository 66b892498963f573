#!/bin/bash
# What lossy storage costs. CE, SimpleCNN, long_tail 0.01, the full profile's 20 + 20
# epochs, on the stored JPEG copy (quality 75) and re-encoded at 50 and 25; seeds 0-2, paired.
# Resumable: the same script again resumes from the last checkpoints. ~/wt-jpeg was a checkout of
# e80b169 (git worktree add ~/wt-jpeg e80b169); the code since then was shown neutral (README).
cd ~/wt-jpeg && source .venv/bin/activate
for s in 0 1 2; do
  for q in stored 50 25; do
    extra=(); [ $q != stored ] && extra=(--jpeg-quality $q --exp-name ce_jpeg$q)
    python main.py --model-name simplecnn --imbalance-type long_tail --method ce --seed $s \
      --threads 1 --quiet --log-dir ~/results/jpeg "${extra[@]}"
  done
done
