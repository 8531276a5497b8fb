#!/usr/bin/env bash
# Calibrate every visible GPU into a folder of profiles, one after another:
#   OUT_DIR/<host>-gpu<i>.toml, its .measurements.parquet, and the run's JSON summary.
#
# Usage: scripts/calibrate_all_gpus.sh [OUT_DIR] [calibrate options...]
#   e.g. scripts/calibrate_all_gpus.sh profiles --quick --model llama-3.1-70b --tp 8
# CUDA_VISIBLE_DEVICES selects the GPUs as usual. Without CuPy or a GPU, tokenfleet says why
# in one line and the script exits with its code (2).
set -euo pipefail

out_dir="${1:-profiles}"
shift || true
python="${PYTHON:-python3}"
host="$(hostname -s 2>/dev/null || echo host)"
mkdir -p "$out_dir"

if ! count=$("$python" -c 'import cupy; print(cupy.cuda.runtime.getDeviceCount())' 2>/dev/null) \
    || [ "$count" -lt 1 ]; then
  # Let tokenfleet explain (no CuPy, no device, driver too old); it writes nothing.
  tokenfleet calibrate --backend cupy --out "$out_dir/$host-gpu0.toml" "$@"
  exit $?
fi

echo "calibrating $count GPU(s) into $out_dir/" >&2
for ((i = 0; i < count; i++)); do
  profile="$out_dir/$host-gpu$i.toml"
  tokenfleet calibrate --backend cupy --device "$i" --name "$host-gpu$i" --json \
    --out "$profile" "$@" > "$out_dir/$host-gpu$i.json"
  echo "gpu $i: $profile" >&2
done
