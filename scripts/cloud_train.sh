#!/usr/bin/env bash
# The 2nd-place CoaT_ULSTM recipe (github.com/DrHB/2nd-place-contrails) in the cloud, as one script for a
# fresh rented GPU machine: install, get the competition data and
# the pretrained weights, build the cache, train on every GPU, upload the best checkpoint and the code to
# Kaggle. Re-running it after the machine was pre-empted continues where it stopped. See docs/scale-out.md.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: scripts/cloud_train.sh [options] [-- KEY=VALUE ...]

  --config NAME       shipped config or YAML path (default: coat_ulstm)
  --gpus N            GPUs to train on (default: all that nvidia-smi lists; 0 trains on the CPU)
  --data-dir DIR      where the competition data and its cache go (default: ./data)
  --run-dir DIR       the run directory; a second run of the script resumes it (default: runs/cloud/<config>)
  --competition SLUG  Kaggle competition (default: google-research-identify-contrails-reduce-global-warming)
  --dataset-slug S    Kaggle dataset (USER/NAME) that receives the checkpoint and the code
  --torch-index URL   pip index of the CUDA build of torch to install (default: $TORCH_INDEX_URL, else pip's own)
  --skip-install      use the Python environment as it is
  --no-upload         train only
  --dry-run           print every step it would run, run none
  -- KEY=VALUE ...    further config overrides for `segladder train --set`

Credentials: KAGGLE_USERNAME and KAGGLE_KEY, or ~/.kaggle/kaggle.json; WANDB_API_KEY turns on W&B
logging. They are never printed.
EOF
}

CONFIG=coat_ulstm
GPUS=""
DATA_DIR=data
RUN_DIR=""
COMPETITION=google-research-identify-contrails-reduce-global-warming
DATASET_SLUG=""
TORCH_INDEX="${TORCH_INDEX_URL:-}"
INSTALL=1
UPLOAD=1
DRY_RUN=0
SETS=()

while [ $# -gt 0 ]; do
  case "$1" in
    --config) CONFIG="$2"; shift 2 ;;
    --gpus) GPUS="$2"; shift 2 ;;
    --data-dir) DATA_DIR="$2"; shift 2 ;;
    --run-dir) RUN_DIR="$2"; shift 2 ;;
    --competition) COMPETITION="$2"; shift 2 ;;
    --dataset-slug) DATASET_SLUG="$2"; shift 2 ;;
    --torch-index) TORCH_INDEX="$2"; shift 2 ;;
    --skip-install) INSTALL=0; shift ;;
    --no-upload) UPLOAD=0; shift ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; SETS+=("$@"); break ;;
    *) echo "error: unknown option '$1' (see --help)" >&2; exit 2 ;;
  esac
done

case "$GPUS" in
  "") if command -v nvidia-smi >/dev/null 2>&1; then GPUS=$(nvidia-smi --list-gpus | wc -l); else GPUS=0; fi ;;
  *[!0-9]*) echo "error: --gpus '$GPUS': give a number of GPUs (0 for the CPU)" >&2; exit 2 ;;
esac
RUN_DIR="${RUN_DIR:-runs/cloud/$(basename "${CONFIG%.yaml}")}"
CACHE_DIR="$DATA_DIR/cache"
RAW_DIR="$DATA_DIR/raw"
if [ "$UPLOAD" = 1 ] && [ -z "$DATASET_SLUG" ]; then
  echo "error: --dataset-slug USER/NAME is needed to upload (or pass --no-upload)" >&2
  exit 2
fi

step() { echo; echo "== $*"; }
# Prints the command (never a secret: credentials travel in files and the environment), then runs it.
run() {
  echo "+ $*"
  if [ "$DRY_RUN" = 0 ]; then "$@"; fi
}

step "1/6 install"
if [ "$INSTALL" = 1 ]; then
  if [ -n "$TORCH_INDEX" ]; then
    run python3 -m pip install -q torch torchvision --index-url "$TORCH_INDEX"
  else
    run python3 -m pip install -q torch torchvision
  fi
  run python3 -m pip install -q -e . kaggle
  if [ -n "${WANDB_API_KEY:-}" ]; then run python3 -m pip install -q wandb; fi
else
  echo "skipped (--skip-install)"
fi

step "2/6 credentials and competition data"
if [ -n "${KAGGLE_USERNAME:-}" ] && [ -n "${KAGGLE_KEY:-}" ] && [ "$DRY_RUN" = 0 ]; then
  mkdir -p "$HOME/.kaggle"
  umask 077
  printf '{"username": "%s", "key": "%s"}\n' "$KAGGLE_USERNAME" "$KAGGLE_KEY" > "$HOME/.kaggle/kaggle.json"
  chmod 600 "$HOME/.kaggle/kaggle.json"
  echo "Kaggle credentials written to ~/.kaggle/kaggle.json (mode 600)"
elif [ -f "$HOME/.kaggle/kaggle.json" ]; then
  chmod 600 "$HOME/.kaggle/kaggle.json"
  echo "Kaggle credentials: ~/.kaggle/kaggle.json"
elif [ "$DRY_RUN" = 0 ]; then
  echo "error: no Kaggle credentials: set KAGGLE_USERNAME and KAGGLE_KEY, or put kaggle.json in ~/.kaggle" >&2
  exit 2
fi
if [ -f "$RAW_DIR/.complete" ]; then
  echo "already downloaded and unpacked: $RAW_DIR"
else
  run mkdir -p "$RAW_DIR"
  run kaggle competitions download -c "$COMPETITION" -p "$DATA_DIR"
  run python3 -m zipfile -e "$DATA_DIR/$COMPETITION.zip" "$RAW_DIR"
  run touch "$RAW_DIR/.complete"
fi

step "3/6 pretrained weights"
# Building the task once fills the timm/Hugging Face cache (a download on a cache miss); training then reads it.
SET_ARGS=()
for kv in "${SETS[@]}"; do SET_ARGS+=(--set "$kv"); done
run segladder models fetch "$CONFIG" "${SET_ARGS[@]}"

step "4/6 cache"
if [ "$DRY_RUN" = 1 ]; then
  FRAMES="<the config's frames>" SIZE="<its image_size>" CHANNELS="<its channels>"
else
  read -r FRAMES SIZE CHANNELS < <(python3 -c 'import sys
from segladder.config import load_config, resolve_config_path
c = load_config(resolve_config_path(sys.argv[1]), sys.argv[2:]).data
print(",".join(map(str, c.frames)), c.image_size, ",".join(c.channels))' "$CONFIG" "${SETS[@]}")
fi
run segladder data prepare "$RAW_DIR" --out "$CACHE_DIR" --frames "$FRAMES" --size "$SIZE" --channels "$CHANNELS" \
  --workers "$(nproc)"

step "5/6 train on $GPUS GPU(s)"
TRAIN_SETS=("data.root=$CACHE_DIR")
if [ "$GPUS" -eq 0 ]; then
  TRAIN_SETS+=(trainer.accelerator=cpu trainer.devices=1)
elif [ "$GPUS" -eq 1 ]; then
  TRAIN_SETS+=(trainer.accelerator=gpu trainer.devices=1)
else
  TRAIN_SETS+=(trainer.accelerator=gpu "trainer.devices=$GPUS" trainer.strategy=ddp)
fi
if [ -n "${WANDB_API_KEY:-}" ]; then TRAIN_SETS+=(trainer.wandb_project=segladder); fi
if [ -f "$RUN_DIR/config.yaml" ] && ls "$RUN_DIR"/checkpoints/*.ckpt >/dev/null 2>&1; then
  echo "resuming $RUN_DIR (the machine was pre-empted or the script ran before)"
  run segladder train --resume "$RUN_DIR"
else
  run segladder train "$CONFIG" --out "$RUN_DIR" --set "${TRAIN_SETS[@]}" "${SETS[@]}"
fi

step "6/6 upload"
if [ "$UPLOAD" = 0 ]; then
  echo "skipped (--no-upload)"
  exit 0
fi
UPLOAD_DIR="$DATA_DIR/upload"
run mkdir -p "$UPLOAD_DIR"
run cp "$RUN_DIR/checkpoints/best.ckpt" "$RUN_DIR/config.yaml" "$UPLOAD_DIR/"
run tar --exclude=.git --exclude=.venv --exclude=runs --exclude="$DATA_DIR" -czf "$UPLOAD_DIR/segladder-code.tar.gz" .
if [ "$DRY_RUN" = 0 ]; then
  printf '{"title": "%s", "id": "%s", "licenses": [{"name": "other"}]}\n' "${DATASET_SLUG#*/}" "$DATASET_SLUG" \
    > "$UPLOAD_DIR/dataset-metadata.json"
fi
if [ "$DRY_RUN" = 0 ] && kaggle datasets status "$DATASET_SLUG" >/dev/null 2>&1; then
  run kaggle datasets version -p "$UPLOAD_DIR" -m "segladder $(basename "$RUN_DIR")" --dir-mode zip
else
  run kaggle datasets create -p "$UPLOAD_DIR" --dir-mode zip
fi
if [ "$DRY_RUN" = 1 ]; then echo "dry run: nothing was run"; exit 0; fi
echo "uploaded to $DATASET_SLUG; a Kaggle notebook can now run segladder predict on the test split"
