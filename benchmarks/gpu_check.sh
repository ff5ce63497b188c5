#!/usr/bin/env bash
# GPU check: the ENS small example and the SSM block benchmark on CUDA, beside the CPU.
# Budget: <= 8 minutes on one GPU (H100-class; the CPU column included).
#
#   benchmarks/gpu_check.sh            # the check
#   benchmarks/gpu_check.sh --quick    # a smoke run (tiny preset, a few steps): the test suite's
#
# 1. ENS (examples/ens_denoise.yaml, small preset) with its budget cut to
#    ENS_TEACHER_STEPS teacher steps, ENS_DISTILL_STEPS distillation steps and ENS_TRIALS
#    trials, run with `device: cpu`, `device: cuda` and `device: cuda` + `precision: bf16`:
#    wall time of `nasframe run`, of the teacher and of the distillation, and the teacher's
#    PSNR (the same seed everywhere: the PSNRs should agree to a few tenths of a dB).
# 2. benchmarks/ssm_gpu.py: the SSM block (chunked scan, mamba-ssm's kernel when it imports)
#    and the transformer block, ms per inference call and per training step, CPU and CUDA,
#    with each CUDA output's max difference from the CPU's.
#
# Without a CUDA GPU it says so, runs the CPU column only and exits 0 (the CPU fallback).
# Environment: PYTHON (default: python), OUT (default: a new temporary folder),
# ENS_TEACHER_STEPS (300), ENS_DISTILL_STEPS (100), ENS_TRIALS (16), SSM_SHAPES, SSM_REPEATS.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
QUICK=0
for arg in "$@"; do
  case "$arg" in
    --quick) QUICK=1 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check: unknown argument '$arg' (use --quick or nothing)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$(mktemp -d -t gpu_check.XXXXXX)}
mkdir -p "$OUT"
if [[ $QUICK == 1 ]]; then
  TEACHER=${ENS_TEACHER_STEPS:-2}; DISTILL=${ENS_DISTILL_STEPS:-2}; TRIALS=${ENS_TRIALS:-2}
  SHAPES=${SSM_SHAPES:-16x16x16}; REPEATS=${SSM_REPEATS:-2}
else
  TEACHER=${ENS_TEACHER_STEPS:-300}; DISTILL=${ENS_DISTILL_STEPS:-100}; TRIALS=${ENS_TRIALS:-16}
  SHAPES=${SSM_SHAPES:-48x64x64,96x128x128}; REPEATS=${SSM_REPEATS:-20}
fi

start_all=$(date +%s)
if [[ $("$PY" -c 'import torch; print(int(torch.cuda.is_available()))') == 1 ]]; then
  if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
  fi
  "$PY" -c 'import torch; print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, {torch.cuda.get_device_name(0)}")'
  RUNS="cpu cuda cuda_bf16"
  GPU=1
else
  echo "gpu_check: no CUDA GPU visible to torch ($("$PY" -c 'import torch; print(f"torch {torch.__version__}, CUDA build {torch.version.cuda}")')):" \
       "CPU fallback, the CPU column only"
  RUNS="cpu"
  GPU=0
fi
echo "gpu_check: output in $OUT"

# -- 1. ENS small example ------------------------------------------------------------
for run in $RUNS; do
  yaml="$OUT/ens_$run.yaml"
  "$PY" - "$run" "$yaml" "$TEACHER" "$DISTILL" "$TRIALS" "$QUICK" "$OUT/ens_$run" <<'EOF'
import sys
import yaml

run, path, teacher, distill, trials, quick, out = sys.argv[1:]
with open("examples/ens_denoise.yaml", encoding="utf-8") as f:
    doc = yaml.safe_load(f)
doc["device"] = "cpu" if run == "cpu" else "cuda"
if run.endswith("bf16"):
    doc["precision"] = "bf16"
p = doc["search_space"]["params"]
p["teacher"]["steps"], p["distill"]["steps"] = int(teacher), int(distill)
if quick == "1":
    p.update(preset="tiny", data={"sigma": 25, "patch": 16, "val_size": 32})
    p["teacher"]["batch_size"] = p["distill"]["batch_size"] = 2
doc["budget"] = {"trials": int(trials)}
doc["output"] = out
doc["name"] = f"gpu_check_{run}"
with open(path, "w", encoding="utf-8") as f:
    yaml.safe_dump(doc, f)
EOF
  "$PY" -m nasframe validate "$yaml" >/dev/null
  t0=$(date +%s.%N)
  "$PY" -m nasframe run "$yaml" --quiet --no-export > "$OUT/ens_$run.log" 2>&1 || {
    echo "gpu_check: ENS on $run failed; the log:" >&2; tail -20 "$OUT/ens_$run.log" >&2; exit 1; }
  t1=$(date +%s.%N)
  echo "$t0 $t1" > "$OUT/ens_$run.time"
done

# -- 2. SSM block ----------------------------------------------------------------------
"$PY" benchmarks/ssm_gpu.py --shapes "$SHAPES" --repeats "$REPEATS" --json "$OUT/ssm.json" \
  > "$OUT/ssm.txt"

# -- the table -------------------------------------------------------------------------
"$PY" - "$OUT" $RUNS <<'EOF'
import json
import sys
from pathlib import Path

out, runs = Path(sys.argv[1]), sys.argv[2:]
print("\nENS small example (same seed and budget on every device)")
print(f"{'run':>10s} {'wall s':>8s} {'teacher s':>10s} {'distill s':>10s} {'teacher PSNR':>13s} {'speed-up':>9s}")
base = None
for run in runs:
    t0, t1 = map(float, (out / f"ens_{run}.time").read_text().split())
    rep = json.loads((out / f"ens_{run}" / "alignment.json").read_text())
    wall = t1 - t0
    base = base or wall
    print(f"{run:>10s} {wall:8.1f} {rep['teacher'].get('seconds', float('nan')):10.1f} "
          f"{rep['surrogates'].get('seconds', float('nan')):10.1f} "
          f"{rep['teacher_psnr']:13.2f} {base / wall:8.2f}x")
print("\nSSM block (ms, median)")
print((out / "ssm.txt").read_text(), end="")
EOF

echo "gpu_check: done in $(( $(date +%s) - start_all )) s"
if [[ $GPU == 0 ]]; then
  echo "gpu_check: CPU fallback: no CUDA column (run this on a machine with a CUDA GPU;" \
       "pip install 'nasframe[cuda]' adds mamba-ssm's kernel)"
fi
