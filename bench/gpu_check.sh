#!/usr/bin/env bash
# One command for a lent GPU: the CUDA tests and every benchmark, in under 8 minutes.
#
#   bash bench/gpu_check.sh OUT_DIR        (e.g. bench/results/gpu-h100)
#
# Installs the package in place when cpc_fast.kernels does not import, runs the tests marked
# `cuda` (compiled kernels against the reference at the paper's shape; TRITON_INTERPRET
# unset), then each bench/bench_*.py with pytest-benchmark. OUT_DIR receives: the test log
# and JUnit XML, one JSON + log per benchmark file, nvidia-smi output, and summary.md (device,
# versions, exact commands, tables). The short table is printed last.
set -uo pipefail

OUT=${1:?usage: bash bench/gpu_check.sh OUT_DIR}
cd "$(dirname "$0")/.."
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
unset TRITON_INTERPRET
export TRITON_DEFAULT_FP_FUSION=1
start=$(date +%s)

if ! python -c "import cpc_fast.kernels.info_nce" 2>/dev/null; then
    pip install --no-build-isolation --no-deps -e . -q
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not available" > "$OUT/nvidia-smi.txt"

status=0
cmd_tests="python -m pytest tests -m cuda -q -p no:cacheprovider --junitxml=$OUT/cuda-tests.xml"
echo "== $cmd_tests"
timeout 110 $cmd_tests 2>&1 | tee "$OUT/cuda-tests.log" | tail -5
[ "${PIPESTATUS[0]}" -eq 0 ] || status=1

# (json name, file, -k filter, seconds): torch.compile's compile time gets its own budget, so a
# slow compile cannot cost the other InfoNCE results.
runs=("bench_info_nce|bench/bench_info_nce.py|not compiled|105"
      "bench_info_nce_compiled|bench/bench_info_nce.py|compiled|105")
for f in bench/bench_*.py; do
    [ "$f" = bench/bench_info_nce.py ] || runs+=("$(basename "$f" .py)|$f||75")
done
for run in "${runs[@]}"; do
    IFS='|' read -r name file filter seconds <<< "$run"
    cmd=(python -m pytest "$file" -q -p no:cacheprovider "--benchmark-json=$OUT/$name.json")
    [ -n "$filter" ] && cmd+=(-k "$filter")
    echo "== ${cmd[*]}"
    timeout "$seconds" "${cmd[@]}" > "$OUT/$name.log" 2>&1
    rc=$?
    tail -2 "$OUT/$name.log"
    [ "$rc" -eq 0 ] || { echo "!! $name exited with $rc"; status=1; }
done

{
    echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ), $(( $(date +%s) - start )) s)"
    echo
    echo "GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
    python - <<'EOF'
import torch
try:
    import triton
    tv = triton.__version__
except Exception as exc:
    tv = f"unavailable ({exc})"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), triton {tv}")
EOF
    echo
    echo "Commands: \`bash bench/gpu_check.sh $1\` which ran \`$cmd_tests\` and, per file,"
    echo "\`python -m pytest bench/bench_X.py -q --benchmark-json=OUT/bench_X.json\`."
    echo
    echo "CUDA tests: $(tail -1 "$OUT/cuda-tests.log")"
    echo
    python bench/report.py "$OUT"
} > "$OUT/summary.md"

# The short table: InfoNCE fwd+bwd median per provider and dtype.
python - "$OUT/bench_info_nce.json" "$OUT/bench_info_nce_compiled.json" <<'EOF'
import json, sys
benches, data = [], None
for path in sys.argv[1:]:
    try:
        data = json.load(open(path))
    except (OSError, ValueError):
        continue
    benches += data["benchmarks"]
if data is None:
    sys.exit("no InfoNCE results")
rows = {}
for b in benches:
    e = b.get("extra_info", {})
    rows.setdefault((e.get("provider"), e.get("dtype")), {})[e.get("mode")] = (
        b["stats"]["median"] * 1e3, e.get("peak_extra_MB"))
print(f"\nInfoNCE, paper shape, {data['machine_info'].get('gpu')}")
print(f"{'provider':18} {'dtype':9} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak MB':>9}")
for (prov, dt), modes in sorted(rows.items()):
    f = modes.get("fwd", (float("nan"), None))[0]
    fb, mem = modes.get("fwd+bwd", (float("nan"), None))
    print(f"{prov:18} {dt:9} {f:9.3f} {fb:11.3f} {mem!s:>9}")
EOF
echo "full results: $OUT/summary.md (total $(( $(date +%s) - start )) s)"
exit $status
