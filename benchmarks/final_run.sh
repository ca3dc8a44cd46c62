#!/usr/bin/env bash
# The whole path at closing-note size (issue 4), timing every stage:
#   backbone (20,000 reviews, with and without 1 MLM epoch) -> search (8 trials on a
#   4,000-row slice, 2 workers) -> export top 3 -> final (3 members on 20,000 train rows,
#   SWA K=2) -> predict 5,000 test rows.
# Usage: benchmarks/final_run.sh [WORK_DIR]   (default runs/final-run; ~30 min on 2 CPU cores)
set -euo pipefail
cd "$(dirname "$0")/.."
WORK=${1:-runs/final-run}
NSMC4=${NSMC4:-../shared/data/nsmc4}
BIN=.venv/bin
mkdir -p "$WORK"
TIMES="$WORK/times.txt"
: >"$TIMES"

stage() {  # stage NAME COMMAND...: run it, append "NAME SECONDS" to times.txt
  local name=$1 start end
  shift
  start=$(date +%s.%N)
  "$@"
  end=$(date +%s.%N)
  printf '%s %.1f\n' "$name" "$(echo "$end - $start" | bc)" | tee -a "$TIMES"
}

BUILD=(--train "$NSMC4/train.csv.gz" --max-samples 20000 --vocab-size 8000 --layers 2
  --hidden 128 --heads 2 --max-length 64)
stage backbone_build "$BIN/focaltune" backbone build "${BUILD[@]}" --out "$WORK/backbone-plain"
stage backbone_build_mlm1 "$BIN/focaltune" backbone build "${BUILD[@]}" --mlm-epochs 1 \
  --out "$WORK/backbone"

"$BIN/python" - "$NSMC4" "$WORK" <<'EOF'
import sys
import pandas as pd
nsmc, work = sys.argv[1:]
pd.read_csv(f"{nsmc}/test.csv.gz", nrows=5000).to_csv(f"{work}/test-5000.csv", index=False)
EOF

cat >"$WORK/study.yaml" <<EOF
study:
  name: final-run
  storage: sqlite:///$WORK/study.db
  n_trials: 8
  sampler: {seed: 0}
  pruner: {type: hyperband}
data:
  train: $NSMC4/train.csv.gz
  test: $WORK/test-5000.csv
  text_column: review
  label_column: label
  max_train_samples: 4000
  max_eval_samples: 1000
  max_length: 64
model: {name_or_path: $WORK/backbone}
train: {batch_size: 32, evals_per_epoch: 2, seed: 42}
space:
  focal_gamma: [0.0, 5.0]
  focal_alpha: [0.25, 4.0]
  label_smoothing: [0.0, 0.3]
  learning_rate: [3.0e-4, 3.0e-3]
  epochs: [1, 3]
EOF
stage search "$BIN/focaltune" launch "$WORK/study.yaml" --workers 2
stage export "$BIN/focaltune" export --storage "sqlite:///$WORK/study.db" --study final-run \
  --top-k 3 --out "$WORK/final.yaml"
# The final members train on 20,000 rows (the search used a 4,000-row slice), SWA over the
# last 2 epochs; validation is a stratified 10 % split of those rows (up to 2,000).
"$BIN/python" - "$WORK/final.yaml" <<'EOF'
import sys
import yaml
path = sys.argv[1]
cfg = yaml.safe_load(open(path))
cfg["data"].update(max_train_samples=20000, max_eval_samples=2000)
cfg["swa"]["last_k"] = 2
yaml.safe_dump(cfg, open(path, "w"), allow_unicode=True, sort_keys=False)
EOF
stage final "$BIN/focaltune" final "$WORK/final.yaml" --out "$WORK/bundle" --overwrite --no-progress
stage predict "$BIN/focaltune" predict "$WORK/bundle" --input "$WORK/test-5000.csv" \
  --output "$WORK/predictions.csv"
cat "$WORK/bundle/report.md"
