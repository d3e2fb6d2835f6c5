#!/usr/bin/env bash
# One command for a lent GPU: the loss tests compiled for the GPU, then every benchmark, in
# under 8 minutes, with a short table printed last.
#
#   bash bench/gpu_check.sh OUT_DIR        (e.g. bench/results/gpu-h100)
#   bash bench/gpu_check.sh --fetch-wheels (on a machine with PyPI: fills .whl/, see below)
#
# What runs (TRITON_INTERPRET unset, so every kernel is compiled):
#   1. tests: the InfoNCE test files in full (odd shapes, half precision, duplicates, bad
#      indices, autograd, int64 offsets, Philox bit-exactness: compiled now, interpreted in
#      CI) plus every test marked `cuda` elsewhere (the paper's shape against the reference).
#   2. each bench/bench_*.py with pytest-benchmark; the InfoNCE file twice (torch.compile's
#      compile time gets its own budget).
# Each step has a time budget; on expiry pytest gets SIGINT, so the results it finished are
# still written. OUT_DIR receives the test log and JUnit XML, one JSON + log per benchmark
# run, nvidia-smi output and summary.md (device, versions, commands, tables).
#
# Missing packages: a bare GPU image may lack soundfile (bench_train_step needs it) or
# pytest-benchmark (every benchmark needs it). Wheels in .whl/ are installed first, into
# /tmp/cpc-fast-site (nothing else is touched). `--fetch-wheels` downloads them there for
# Python 3.12 / manylinux x86-64 (the GPU image); carry the .whl folder to the GPU machine.
set -uo pipefail

cd "$(dirname "$0")/.."
# The versions the project is developed with (pytest-benchmark 5.3 needs py-cpuinfo2 instead).
WHEELS=(soundfile==0.14.0 cffi==2.0.0 pycparser==3.0 pytest-benchmark==5.2.3 py-cpuinfo==9.0.0)

if [ "${1:-}" = "--fetch-wheels" ]; then
    mkdir -p .whl
    rm -f .whl/soundfile-* .whl/cffi-* .whl/pycparser-* .whl/pytest_benchmark-* .whl/py_cpuinfo-*
    for p in "${WHEELS[@]}"; do
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$p" ||
            { echo "could not download $p"; exit 1; }
    done
    ls .whl
    exit 0
fi

OUT=${1:?usage: bash bench/gpu_check.sh OUT_DIR | --fetch-wheels}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
unset TRITON_INTERPRET
export TRITON_DEFAULT_FP_FUSION=1 PYTHONUNBUFFERED=1
start=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-470}  # seconds for everything, the summary included
remaining() { echo $(( BUDGET - ($(date +%s) - start) )); }

if compgen -G ".whl/*.whl" > /dev/null; then
    echo "== installing carried wheels: $(cd .whl && ls -- *.whl | tr '\n' ' ')"
    python -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/cpc-fast-site .whl/*.whl &&
        export PYTHONPATH=/tmp/cpc-fast-site${PYTHONPATH:+:$PYTHONPATH}
fi

# --- preflight -------------------------------------------------------------------------
python - <<'EOF' > "$OUT/preflight.txt" 2>&1
import importlib
try:
    import torch
    cuda = torch.cuda.is_available()
    print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, GPU available: {cuda}")
except Exception as exc:  # report, the shell decides
    print(f"torch unavailable: {exc}")
for m in ("triton", "pytest", "pytest_benchmark", "xdist", "soundfile"):
    try:  # importing, not just finding: soundfile also needs its libsndfile
        version = getattr(importlib.import_module(m), "__version__", "")
        print(f"{m}: ok {version}")
    except Exception as exc:
        print(f"{m}: MISSING ({type(exc).__name__}: {exc})")
EOF
cat "$OUT/preflight.txt"
missing() { grep -q "^$1: MISSING" "$OUT/preflight.txt"; }
if ! grep -q "GPU available: True" "$OUT/preflight.txt"; then
    echo "!! no CUDA GPU visible to torch: this script measures a GPU. Stopping."
    exit 2
fi
if missing pytest || missing triton; then
    echo "!! pytest and triton are required. Stopping."
    exit 2
fi
if missing pytest_benchmark || missing soundfile; then
    echo "!! missing packages (see above): on a machine with PyPI run"
    echo "     bash bench/gpu_check.sh --fetch-wheels"
    echo "   and carry the .whl folder here (device tool: carry ['.whl']); this run goes on"
    echo "   without what needs them."
fi

if ! python -c "import cpc_fast.kernels.info_nce" 2> /dev/null; then
    echo "== pip install --no-build-isolation --no-deps -e ."
    python -m pip install --no-build-isolation --no-deps -e . -q > "$OUT/install.log" 2>&1 ||
        { tail -20 "$OUT/install.log"; echo "!! install failed. Stopping."; exit 2; }
fi
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || echo "nvidia-smi not available" > "$OUT/nvidia-smi.txt"

status=0
# run SECONDS NAME CMD...: runs with a budget (capped by what is left, keeping 30 s for the
# summary), SIGINT on expiry so pytest writes what it finished.
run() {
    local seconds=$1 name=$2
    shift 2
    local left=$(( $(remaining) - 30 ))
    [ "$left" -lt "$seconds" ] && seconds=$left
    if [ "$seconds" -lt 15 ]; then
        echo "!! $name: skipped, the time budget is spent"; status=1; return
    fi
    echo "== [$seconds s] $*"
    # Benchmarks that honour it (bench_info_nce.py) stop starting new ones 20 s early.
    BENCH_DEADLINE=$(( $(date +%s) + seconds - 20 )) \
        timeout -s INT -k 15 "$seconds" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    tail -2 "$OUT/$name.log"
    [ "$rc" -eq 0 ] || { echo "!! $name exited with $rc"; status=1; }
}

# --- 1. tests ---------------------------------------------------------------------------
loss_tests=(tests/test_info_nce_fused.py tests/test_info_nce_fused_autograd.py
            tests/test_info_nce_large_offsets.py tests/test_negatives.py)
parallel=()
missing xdist || parallel=(-n 8)  # parallel Triton compiles: most of this step's time
run 150 cuda-tests python -m pytest "${loss_tests[@]}" -q -p no:cacheprovider "${parallel[@]}" \
    --junitxml="$OUT/cuda-tests.xml"
other_cuda=$(grep -l "mark\.cuda" tests/test_*.py | grep -v -F -f <(printf '%s\n' "${loss_tests[@]}"))
if [ -n "$other_cuda" ]; then
    # shellcheck disable=SC2086  # a list of file names without spaces
    run 60 cuda-tests-other python -m pytest $other_cuda -m cuda -q -p no:cacheprovider \
        --continue-on-collection-errors --junitxml="$OUT/cuda-tests-other.xml"
fi

# --- 2. benchmarks ------------------------------------------------------------------------
if missing pytest_benchmark; then
    echo "!! pytest-benchmark missing: no benchmark ran"
    status=1
else
    # name|file|-k filter|seconds
    runs=("bench_info_nce|bench/bench_info_nce.py|not compiled|100"
          "bench_info_nce_compiled|bench/bench_info_nce.py|compiled|100")
    for f in bench/bench_*.py; do
        [ "$f" = bench/bench_info_nce.py ] || runs+=("$(basename "$f" .py)|$f||60")
    done
    for spec in "${runs[@]}"; do
        IFS='|' read -r name file filter seconds <<< "$spec"
        if missing soundfile && grep -qE "^(import|from) soundfile" "$file"; then
            echo "!! $name: skipped, $file imports soundfile (carry it, see above)"
            status=1
            continue
        fi
        cmd=(python -m pytest "$file" -q -p no:cacheprovider "--benchmark-json=$OUT/$name.json")
        [ -n "$filter" ] && cmd+=(-k "$filter")
        run "$seconds" "$name" "${cmd[@]}"
    done
fi

# --- summary ------------------------------------------------------------------------------
{
    echo "# GPU check ($(date -u +%Y-%m-%dT%H:%MZ), $(( $(date +%s) - start )) s)"
    echo
    echo "GPU: $(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null)"
    echo
    sed 's/^/    /' "$OUT/preflight.txt"
    echo
    echo "Command: \`bash bench/gpu_check.sh $1\`; each step's command heads its log."
    echo
    echo "Tests: $(tail -1 "$OUT/cuda-tests.log" 2>/dev/null)"
    echo
    python bench/report.py "$OUT"
} > "$OUT/summary.md" 2>&1
echo "full results: $OUT/summary.md (total $(( $(date +%s) - start )) s, exit $status)"

# The short table, last: InfoNCE medians per provider and dtype.
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
    sys.exit("no InfoNCE benchmark results")
rows = {}
for b in benches:
    e = b.get("extra_info", {})
    rows.setdefault((e.get("provider"), e.get("dtype")), {})[e.get("mode")] = (
        b["stats"]["median"] * 1e3, e.get("peak_extra_MB"))
print(f"\nInfoNCE, paper shape, {data['machine_info'].get('gpu')}")
print(f"{'provider':18} {'dtype':9} {'fwd ms':>9} {'fwd+bwd ms':>11} {'peak MB':>9}")
for (prov, dt), modes in sorted(rows.items(), key=lambda r: tuple(map(str, r[0]))):
    f = modes.get("fwd", (float("nan"), None))[0]
    fb, mem = modes.get("fwd+bwd", (float("nan"), None))
    print(f"{prov!s:18} {dt!s:9} {f:9.3f} {fb:11.3f} {mem!s:>9}")
EOF
exit $status
