#!/usr/bin/env bash
# Sim-to-real: synthesize, prepare and train on synthetic records only, through the documented commands,
# leaving the model at OUT/best.ckpt; with REAL given, score it on real records at the threshold chosen on
# synthetic validation. 6 minutes on 2 idle CPU cores with the defaults (measured; docs/benchmarks.md).
#
#   scripts/sim2real.sh OUT [REAL [SPLIT]]
#
# Environment: RECORDS (320), VAL_RECORDS (48), EPOCHS (the config's), SEED (0), CONFIG (configs/sim2real.yaml),
# SEGLADDER (segladder). Re-running resumes the synthesis and the cache and retrains.
set -euo pipefail

if [ $# -lt 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
  sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
  exit 2
fi
OUT=$1
REAL=${2:-}
SPLIT=${3:-train}
RECORDS=${RECORDS:-320}
VAL_RECORDS=${VAL_RECORDS:-48}
SEED=${SEED:-0}
CONFIG=${CONFIG:-$(dirname "$0")/../configs/sim2real.yaml}
SEGLADDER=${SEGLADDER:-segladder}
EPOCHS_SET=()
if [ -n "${EPOCHS:-}" ]; then EPOCHS_SET=(--set "trainer.max_epochs=$EPOCHS"); fi

mkdir -p "$OUT"
start=$(date +%s)
$SEGLADDER synth contrails "$OUT/synth" --records "$RECORDS" --val-records "$VAL_RECORDS" --test-records 0 \
  --size 256 --seed "$SEED" --no-progress
$SEGLADDER data prepare "$OUT/synth" --out "$OUT/cache" --frames 4 --workers 2
$SEGLADDER train "$CONFIG" --out "$OUT/run" --set "data.root=$OUT/cache" --set "seed=$SEED" "${EPOCHS_SET[@]}"
cp "$OUT/run/checkpoints/best.ckpt" "$OUT/best.ckpt"
echo "sim2real: trained in $(( $(date +%s) - start )) s; model: $OUT/best.ckpt"

if [ -n "$REAL" ]; then
  # The checkpoint's stored threshold is the one chosen on synthetic validation.
  $SEGLADDER evaluate "$OUT/best.ckpt" --data "$REAL" --split "$SPLIT" --out "$OUT/eval-real-$SPLIT"
fi
