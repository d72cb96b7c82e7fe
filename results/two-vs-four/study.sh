#!/usr/bin/env bash
# The two-against-four study (PLAN.md), seed by seed, resumable, from a clone at a named commit
# after the README's set-up:
#
#     bash results/two-vs-four/study.sh 42 43 44 45 46 47 48 49
#
# or, from a copy of this script outside the clone (so that the clone stays clean at its commit):
#     STUDY_REPO=/path/to/clone bash study.sh 42 43 ...
#
# Per seed: T4 merges SST-2, STS-B, QQP and QNLI (inits lora, lora-orthonormal, osrm; two
# worker processes); then the pairs T2a (SST-2 + STS-B) and T2b (QQP + QNLI) side by side,
# each a one-thread process, with T4's plain adapters copied in (they do not depend on the
# other tasks, so the pairs' rerun reuses them) and OSRM fitted to the pair. Each seed's three
# results.json land in results/two-vs-four/seed<S>/ with its commit and wall time; commit them
# as soon as a seed ends. A seed already scored on these grids is skipped; one scored on the
# plan's first grids (seeds 42 and 43) is rescored with its own adapters (PLAN.md, amendment 1).
# Then, over every seed present:
#     python -m study.report results/two-vs-four/seed*/t4/results.json --out results/two-vs-four/t4
#     (and t2a, t2b), then python -m study.task_count t4/results.json t2a/results.json t2b/results.json
set -uo pipefail
cd "${STUDY_REPO:-$(dirname "$0")/../..}"
export GLUE_DIR="${GLUE_DIR:-../shared/glue}"
COMMON=(--carve-splits 800 --dev-samples 500 --train-samples 1600 --merges ta
        --select-on heldout --heldout-samples 300 --own-at-lambda
        --inits lora,lora-orthonormal,osrm)
T4_LAMS=0.2,0.3,0.45,0.6     # the four-task optimum sat near 0.45-0.5; 0.2 added (amendment 1)
T2_LAMS=0.5,0.7,1.0,1.4      # the two-task optima sat at 1.0, the old grid's edge; 0.5 added
GRID="t4 $T4_LAMS, t2 $T2_LAMS"
work=runs/two-vs-four
mkdir -p $work
for S in "$@"; do
  dest=results/two-vs-four/seed$S
  grep -qs "grid $GRID," $dest/made.txt && { echo "seed $S: done already"; continue; }
  t0=$(date +%s)
  OMP_NUM_THREADS=2 python osrm_min.py --tasks sst2,stsb,qqp,qnli "${COMMON[@]}" --lams $T4_LAMS \
    --seeds $S --workers 2 --out $work/seed$S/t4 > $work-seed$S-t4.log 2>&1 || { echo "seed $S: t4 failed"; exit 1; }
  for pair in "t2a sst2,stsb" "t2b qqp,qnli"; do
    read -r name tasks <<< "$pair"
    mkdir -p $work/seed$S/$name/adapters
    for t in ${tasks//,/ }; do
      cp -n $work/seed$S/t4/adapters/{lora,lora-orthonormal}-$t-seed$S.pt $work/seed$S/$name/adapters/
    done
  done
  OMP_NUM_THREADS=1 python osrm_min.py --tasks sst2,stsb "${COMMON[@]}" --lams $T2_LAMS --seeds $S \
    --out $work/seed$S/t2a > $work-seed$S-t2a.log 2>&1 &
  OMP_NUM_THREADS=1 python osrm_min.py --tasks qqp,qnli "${COMMON[@]}" --lams $T2_LAMS --seeds $S \
    --out $work/seed$S/t2b > $work-seed$S-t2b.log 2>&1 &
  wait || true
  for r in t4 t2a t2b; do
    [ -f $work/seed$S/$r/results.json ] || { echo "seed $S: $r failed (see $work-seed$S-$r.log)"; exit 1; }
    mkdir -p $dest/$r && cp $work/seed$S/$r/results.json $work/seed$S/$r/summary.txt $dest/$r/
  done
  echo "commit $(git rev-parse HEAD), seed $S, grid $GRID, wall $(( $(date +%s) - t0 )) s" >> $dest/made.txt
  echo "seed $S: $(cat $dest/made.txt)"
done
