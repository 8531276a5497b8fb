#!/usr/bin/env bash
# Calibrate every visible GPU into a folder of profiles, one after another:
#   OUT_DIR/<host>-gpu<i>.toml, its .measurements.parquet, and the run's JSON summary.
#
# Usage: scripts/calibrate_all_gpus.sh [OUT_DIR] [calibrate options...]
#   e.g. scripts/calibrate_all_gpus.sh profiles --quick --model llama-3.1-70b --tp 8
# CUDA_VISIBLE_DEVICES selects the GPUs as usual; PYTHON the interpreter tokenfleet runs in.
# Without CuPy or a GPU it says why in one line and exits with code 2, creating nothing.
set -euo pipefail

out_dir="${1:-profiles}"
shift || true
python="${PYTHON:-python3}"
host="$(hostname -s 2>/dev/null || echo host)"

# Ask tokenfleet for the GPUs before creating anything: it tells no CuPy, no CUDA device and
# a driver older than CuPy's runtime apart.
if ! count=$("$python" -c '
import sys
from tokenfleet.calibrate.backends import NoUsableGpu, open_backend
try:
    print(open_backend("cupy").info.device_count)
except NoUsableGpu as err:
    sys.exit("error: " + err.message("tokenfleet calibrate --backend numpy"))
'); then
  exit 2
fi

mkdir -p "$out_dir"
echo "calibrating $count GPU(s) into $out_dir/" >&2
for ((i = 0; i < count; i++)); do
  profile="$out_dir/$host-gpu$i.toml"
  # The summary is written only once the run succeeded: a refused one leaves no empty file.
  summary=$("$python" -m tokenfleet calibrate --backend cupy --device "$i" --name "$host-gpu$i" \
    --json --out "$profile" "$@") || exit $?
  printf '%s\n' "$summary" > "$out_dir/$host-gpu$i.json"
  echo "gpu $i: $profile" >&2
done
