#!/usr/bin/env bash
# The two-against-four study's reading over every seed present (PLAN.md), after study.sh:
#
#     bash results/two-vs-four/report.sh
#
# Each run's seeds combined by study.report (its tables: <run>/summary.txt; the combined
# results.json, which repeats the seeds' own, is left in a temporary folder), then the endpoint,
# its rule and the exploratory readings by study.task_count (summary.txt).
set -euo pipefail
cd "$(dirname "$0")/../.."
here=results/two-vs-four
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for r in t4 t2a t2b; do
  python -m study.report $here/seed*/$r/results.json --out "$tmp/$r" > /dev/null
  mkdir -p $here/$r && cp "$tmp/$r/summary.txt" $here/$r/summary.txt
done
python -m study.task_count "$tmp"/{t4,t2a,t2b}/results.json > "$tmp/summary.txt"
mv "$tmp/summary.txt" $here/summary.txt
cat $here/summary.txt
