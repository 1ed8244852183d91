#!/usr/bin/env bash
# Build the CUDA flavour of `cws` on a machine WITHOUT a GPU and WITHOUT a
# system CUDA toolkit, using NVIDIA's CUDA 13.0 wheels from PyPI.
#
#   scripts/build-cuda.sh                # venv + toolkit + build + small bundle
#   scripts/build-cuda.sh --bundle=full  # also copy cuBLAS/cuRAND/NVRTC (~800 MB)
#   scripts/build-cuda.sh --bundle=none  # no bundle
#   scripts/build-cuda.sh --env          # only set up, print the exports to eval
#   scripts/build-cuda.sh -- --example cuda_smoke   # extra cargo args
#
# Environment knobs:
#   CWS_CUDA_VENV     venv location   (default $HOME/.cache/cws/cuda-venv)
#   CARGO_TARGET_DIR  cargo target dir (default <repo>/target-cuda)
#   CWS_GPU_BUNDLE    bundle dir      (default $CARGO_TARGET_DIR/gpu-bundle)
#   CUDA_COMPUTE_CAP  default 90 (Hopper: H100/H200)
#   PYTHON            python used to create the venv (default python3)
#
# See docs/cuda.md for the why of every step (stub libcuda, no rpath, ...).
set -euo pipefail

die() { echo "build-cuda: ERROR: $*" >&2; exit 1; }
log() { echo "build-cuda: $*" >&2; }

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${CWS_CUDA_VENV:-$HOME/.cache/cws/cuda-venv}
PYTHON=${PYTHON:-python3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO/target-cuda}
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
BUNDLE_DIR=${CWS_GPU_BUNDLE:-$CARGO_TARGET_DIR/gpu-bundle}
BUNDLE=small
ENV_ONLY=0
CARGO_EXTRA=()

while [ $# -gt 0 ]; do
  case "$1" in
    --bundle=*) BUNDLE=${1#--bundle=} ;;
    --env) ENV_ONLY=1 ;;
    --) shift; CARGO_EXTRA=("$@"); break ;;
    -h|--help) sed -n '2,18p' "$0"; exit 0 ;;
    *) die "unknown argument: $1 (see --help)" ;;
  esac
  shift
done
case "$BUNDLE" in none|small|full) ;; *) die "--bundle must be none|small|full" ;; esac

# ---------------------------------------------------------------------------
# (a) venv with pinned CUDA 13.0 (Update 2) wheels.  nvcc must stay at 13.0:
# the GPU machines run driver 580 (= CUDA 13.0); PTX made by a newer nvcc
# would carry a PTX ISA the 580 driver cannot JIT.
# ---------------------------------------------------------------------------
PINS=(
  nvidia-cuda-nvcc==13.0.88     # nvcc, ptxas, fatbinary, nvlink
  nvidia-nvvm==13.0.88          # cicc + libdevice (nvcc front end)
  nvidia-cuda-crt==13.0.88      # include/crt/* host/device headers
  nvidia-cuda-runtime==13.0.96  # cuda_runtime.h, cuda.h, libcudart.so.13
  nvidia-cuda-cccl==13.0.85     # include/cccl (cuda/std, cub, thrust)
  nvidia-cublas==13.1.0.3       # libcublas.so.13, libcublasLt.so.13
  nvidia-curand==10.4.0.35      # libcurand.so.10
  nvidia-cuda-nvrtc==13.0.88    # libnvrtc.so.13 (+ builtins)
)
PIN_STAMP="$VENV/.cws-pins"
pins_text=$(printf '%s\n' "${PINS[@]}")

if [ ! -x "$VENV/bin/python" ]; then
  log "creating venv $VENV"
  mkdir -p "$(dirname "$VENV")"
  "$PYTHON" -m venv "$VENV" || die "python venv creation failed ($PYTHON -m venv $VENV)"
fi
if [ -f "$PIN_STAMP" ] && [ "$(cat "$PIN_STAMP")" = "$pins_text" ]; then
  log "venv $VENV already has the pinned wheels (delete $PIN_STAMP to force reinstall)"
else
  log "pip installing ${#PINS[@]} pinned CUDA 13.0 wheels into $VENV (~1 GB download/unpacked 2.3 GB)"
  "$VENV/bin/python" -m pip install --disable-pip-version-check --no-input "${PINS[@]}" \
    || die "pip install of the CUDA wheels failed (network? PyPI index? see output above)"
  printf '%s\n' "$pins_text" > "$PIN_STAMP"
fi

# ---------------------------------------------------------------------------
# (b) the wheels all unpack into site-packages/nvidia/cu13/{bin,include,lib,nvvm};
# use that as the toolkit root and add what a "real" toolkit layout has.
# ---------------------------------------------------------------------------
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
CUDA_ROOT="$SITE/nvidia/cu13"
[ -x "$CUDA_ROOT/bin/nvcc" ] || die "nvcc not found at $CUDA_ROOT/bin/nvcc (wheel layout changed?)"
LIB="$CUDA_ROOT/lib"

# Unversioned dev symlinks: the wheels only ship runtime SONAME files, but
# `-lcublas` etc. need libcublas.so.
for pair in cudart:13 cublas:13 cublasLt:13 curand:10 nvrtc:13; do
  name=${pair%%:*}; ver=${pair##*:}
  [ -e "$LIB/lib$name.so.$ver" ] || die "missing $LIB/lib$name.so.$ver"
  ln -sfn "lib$name.so.$ver" "$LIB/lib$name.so"
done
# nvcc.profile looks for $(TOP)/targets/x86_64-linux/{include,lib}.
mkdir -p "$CUDA_ROOT/targets/x86_64-linux"
ln -sfn ../../include "$CUDA_ROOT/targets/x86_64-linux/include"
ln -sfn ../../lib "$CUDA_ROOT/targets/x86_64-linux/lib"

export PATH="$CUDA_ROOT/bin:$PATH"
export CUDA_ROOT CUDA_HOME="$CUDA_ROOT" CUDA_PATH="$CUDA_ROOT" CUDA_TOOLKIT_ROOT_DIR="$CUDA_ROOT"
export NVCC="$CUDA_ROOT/bin/nvcc"

nvcc_ver=$(nvcc --version 2>&1) || die "nvcc does not run: $nvcc_ver"
echo "$nvcc_ver" | grep -q 'release 13\.0' || die "expected nvcc release 13.0, got: $nvcc_ver"

# ---------------------------------------------------------------------------
# (c) link stub for the driver library libcuda.so.  No wheel ships it (it is
# part of the NVIDIA driver).  cudarc (dynamic-linking) emits `-lcuda`, so the
# link needs *a* libcuda.so that defines the cu* symbols.  We generate one from
# the exact symbol list cudarc's driver bindings reference; every function
# returns CUDA_ERROR_STUB_LIBRARY (34), like NVIDIA's own lib/stubs/libcuda.so.
# Its SONAME is libcuda.so.1, so the binary records NEEDED libcuda.so.1 and the
# dynamic loader picks the driver's real libcuda.so.1 on the GPU machine.
# The stub lives in lib/stubs (never on any runtime path) and Rust adds no
# rpath/runpath, so nothing can shadow the real driver.
# ---------------------------------------------------------------------------
STUB_DIR="$LIB/stubs"
STUB="$STUB_DIR/libcuda.so"
if [ ! -f "$STUB" ]; then
  log "generating libcuda.so link stub"
  (cd "$REPO" && cargo fetch --quiet) || die "cargo fetch failed"
  CUDARC_DIR=$(cd "$REPO" && cargo metadata --format-version 1 --features cuda 2>/dev/null \
    | "$VENV/bin/python" -c 'import json,sys,os; m=json.load(sys.stdin); print(next(os.path.dirname(p["manifest_path"]) for p in m["packages"] if p["name"]=="cudarc"))') \
    || die "could not locate the cudarc crate source via cargo metadata"
  SYS="$CUDARC_DIR/src/driver/sys/mod.rs"
  [ -f "$SYS" ] || die "cudarc driver bindings not found at $SYS"
  mkdir -p "$STUB_DIR"
  tmpc=$(mktemp --suffix=.c)
  {
    echo '/* generated by scripts/build-cuda.sh: link-time stub for libcuda.so.1 */'
    grep -oE 'load::<_F>\("cu[A-Za-z0-9_]+"\)' "$SYS" | sed -E 's/.*"(cu[A-Za-z0-9_]+)".*/\1/' | sort -u \
      | sed -E 's/.*/int &(void) { return 34; }/'
  } > "$tmpc"
  n=$(grep -c 'return 34' "$tmpc")
  [ "$n" -gt 100 ] || die "only $n driver symbols found in $SYS; cudarc layout changed?"
  cc -shared -fPIC -O1 -Wl,-soname,libcuda.so.1 -o "$STUB" "$tmpc" || die "compiling the libcuda stub failed"
  rm -f "$tmpc"
  log "stub $STUB exports $n symbols"
fi

if [ "$ENV_ONLY" = 1 ]; then
  cat <<EOF
export PATH="$CUDA_ROOT/bin:\$PATH"
export CUDA_ROOT="$CUDA_ROOT" CUDA_HOME="$CUDA_ROOT" CUDA_PATH="$CUDA_ROOT" CUDA_TOOLKIT_ROOT_DIR="$CUDA_ROOT"
export NVCC="$CUDA_ROOT/bin/nvcc" CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP CARGO_TARGET_DIR="$CARGO_TARGET_DIR"
EOF
  exit 0
fi

# ---------------------------------------------------------------------------
# (d) build.  cudarc picks the CUDA version from `nvcc --version` (13.0);
# candle-kernels' build.rs (cudaforge) runs nvcc for sm_$CUDA_COMPUTE_CAP.
# ---------------------------------------------------------------------------
log "cargo build --release --features cuda (CUDA_COMPUTE_CAP=$CUDA_COMPUTE_CAP, target dir $CARGO_TARGET_DIR)"
start=$(date +%s)
(cd "$REPO" && cargo build --release --features cuda --bins --examples "${CARGO_EXTRA[@]}") \
  || die "cargo build --features cuda failed (see output above)"
log "build took $(( $(date +%s) - start )) s"

BIN="$CARGO_TARGET_DIR/release/cws"
SMOKE="$CARGO_TARGET_DIR/release/examples/cuda_smoke"
for b in "$BIN" "$SMOKE"; do
  [ -f "$b" ] || continue
  echo "== $b ($(du -h "$b" | cut -f1))"
  if readelf -d "$b" | grep -qE 'RPATH|RUNPATH'; then
    die "$b has an RPATH/RUNPATH; it could shadow the real driver"
  fi
  echo "-- NEEDED:"; readelf -d "$b" | grep NEEDED | sed 's/.*\[\(.*\)\]/   \1/'
  echo "-- ldd (build machine, libcuda.so.1 is expected to be 'not found' here):"
  ldd "$b" | sed 's/^/  /' || true
done

# ---------------------------------------------------------------------------
# Bundle for the GPU machine.
#   small: binaries + libcudart + run.sh that finds cuBLAS/cuRAND/NVRTC from
#          the GPU machine's own PyTorch cu13 wheels (site-packages/nvidia/cu13/lib)
#          or a system CUDA 13 install.  ~10 MB.
#   full:  also copies cublas, cublasLt (542 MB!), curand (133 MB), nvrtc (+builtins, 114 MB).
# ---------------------------------------------------------------------------
if [ "$BUNDLE" != none ]; then
  rm -rf "$BUNDLE_DIR"; mkdir -p "$BUNDLE_DIR/lib"
  cp "$BIN" "$BUNDLE_DIR/"
  # Every example (cuda_smoke, device_parity, ...) travels with the binary.
  for ex in "$CARGO_TARGET_DIR"/release/examples/*; do
    case "$(basename "$ex")" in *-*|*.d|*.rlib) continue ;; esac
    [ -f "$ex" ] && [ -x "$ex" ] && cp "$ex" "$BUNDLE_DIR/"
  done
  cp -L "$LIB/libcudart.so.13" "$BUNDLE_DIR/lib/"
  if [ "$BUNDLE" = full ]; then
    for f in libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnvrtc.so.13 libnvrtc-builtins.so.13.0; do
      cp -L "$LIB/$f" "$BUNDLE_DIR/lib/"
    done
  fi
  cat > "$BUNDLE_DIR/run.sh" <<'EOF'
#!/usr/bin/env bash
# Run a cws CUDA binary on the GPU machine:  ./run.sh cws ARGS... | ./run.sh cuda_smoke
# ./run.sh --ldd PROG shows which libraries PROG would load with this environment.
# Library search order: this bundle's lib/, $CWS_CUDA_LIBS, the nvidia/cu13/lib
# of the local Python (PyTorch's cu13 wheels), then the system (ldconfig,
# /usr/local/cuda).  libcuda.so.1 always comes from the installed driver.
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ldd_only=0; [ "${1:-}" = --ldd ] && { ldd_only=1; shift; }
prog=${1:?usage: run.sh cws|cuda_smoke [args...]}; shift
dirs="$here/lib"
[ -n "${CWS_CUDA_LIBS:-}" ] && dirs="$dirs:$CWS_CUDA_LIBS"
py=$(command -v python3 || command -v python || true)
if [ -n "$py" ]; then
  d=$("$py" -c 'import nvidia, os; ps=[os.path.join(p,"cu13","lib") for p in nvidia.__path__]; print(":".join(p for p in ps if os.path.isdir(p)))' 2>/dev/null || true)
  [ -n "$d" ] && dirs="$dirs:$d"
fi
[ -d /usr/local/cuda/lib64 ] && dirs="$dirs:/usr/local/cuda/lib64"
export LD_LIBRARY_PATH="$dirs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
[ "$ldd_only" = 1 ] && { echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"; exec ldd "$here/$prog"; }
exec "$here/$prog" "$@"
EOF
  chmod +x "$BUNDLE_DIR/run.sh"
  echo "== GPU bundle ($BUNDLE): $BUNDLE_DIR ($(du -sh "$BUNDLE_DIR" | cut -f1))"
  ls -la "$BUNDLE_DIR" "$BUNDLE_DIR/lib" | sed 's/^/  /'
fi
echo "== binary: $BIN"
