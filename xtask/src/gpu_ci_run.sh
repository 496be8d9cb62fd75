#!/usr/bin/env bash
# kiln GPU CI, run on the GPU machine from the repository root (the carried working tree):
#   bash target/gpu-bundle/run.sh [tests|sanitize|bench|peers|peers-compile|all]...
# Built by `cargo xtask gpu-ci --pack` (nextest archive, xtask binary, cargo-nextest). Logs, JUnit
# and bench JSON lines go to $OUT. A missing GPU, NVRTC or nvcc is a failure here.
set -uo pipefail
cd "$(dirname "$0")/../.." || exit 1
G=target/gpu-bundle
OUT=${OUT:-$PWD/target/gpu-ci-out}
mkdir -p "$OUT"
export KILN_REQUIRE_GPU=1 KILN_REQUIRE_NVRTC=1 KILN_REQUIRE_NVCC=${KILN_REQUIRE_NVCC:-1}
export KILN_CACHE_DIR=${KILN_CACHE_DIR:-/tmp/kiln-cache}
export CI=1 # insta: compare snapshots, never write them
EXT=/tmp/kiln-ext
mkdir -p "$EXT"
steps=("$@")
[ ${#steps[@]} -eq 0 ] && steps=(all)
# `all` is every step but peers-compile (minutes of torch.compile).
has() { for s in "${steps[@]}"; do [ "$s" = "$1" ] || { [ "$s" = all ] && [ "$1" != peers-compile ]; } && return 0; done; return 1; }
rc=0
summary=()
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm --format=csv,noheader 2>&1 | tee "$OUT/gpu.txt"

extract() {
  [ -d "$EXT/target" ] && return 0
  "$G/cargo-nextest" nextest list --archive-file "$G/tests.tar.zst" --workspace-remap . \
    --extract-to "$EXT" --extract-overwrite >/dev/null 2>&1
}

if has tests; then
  t0=$(date +%s)
  "$G/cargo-nextest" nextest run --archive-file "$G/tests.tar.zst" --workspace-remap . \
    --extract-to "$EXT" --extract-overwrite --profile ci --no-fail-fast 2>&1 | tee "$OUT/nextest.log"
  r=${PIPESTATUS[0]}
  # With --archive-file the report lands under the extraction or the remapped workspace.
  j=$(find "$EXT/target" target/nextest -name junit.xml -path '*/ci/*' 2>/dev/null | head -1)
  [ -n "$j" ] && cp "$j" "$OUT/junit.xml"
  line=$(grep -E "^ +Summary" "$OUT/nextest.log" | tail -1)
  summary+=("tests: rc=$r $(echo $line) ($(( $(date +%s) - t0 )) s)")
  [ "$r" -ne 0 ] && rc=1
fi

if has sanitize; then
  extract
  : >"$OUT/sanitizer.log"
  for bin in $(find "$EXT/target" -path '*/deps/*' -type f -perm -u+x \( -name 'runtime_gpu-*' -o -name 'activation-*' -o -name 'rmsnorm-*' -o -name 'rope-*' -o -name 'mxfp8-*' -o -name 'mxfp8_gemm-*' \) | sort); do
    for tool in memcheck racecheck; do
      echo "== $tool $(basename "$bin")" | tee -a "$OUT/sanitizer.log"
      compute-sanitizer --tool "$tool" --error-exitcode 9 --print-limit 20 "$bin" --test-threads 1 sanitize >>"$OUT/sanitizer.log" 2>&1
      r=$?
      tail -3 "$OUT/sanitizer.log"
      summary+=("sanitize $tool $(basename "$bin" | sed 's/-[0-9a-f]*$//'): rc=$r $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer.log" | tail -1)")
      [ "$r" -ne 0 ] && rc=1
    done
  done
fi

if has bench; then
  "$G/xtask" bench --out "$OUT/kiln.jsonl" ${BENCH_ARGS:-} 2>&1 | tee "$OUT/bench.log"
  [ "${PIPESTATUS[0]}" -ne 0 ] && rc=1
fi

# peers: SGLang + torch eager (../shared/peers), then PyTorch's FP8 GEMMs (xtask/peers/torch_gemm.py)
# and SGLang's filtered activation (xtask/peers/sglang_filtered.py);
# peers-compile: torch.compile rows too (slow: one compile per shape; PEERS_COMPILE_ONLY picks the ops).
if { has peers || has peers-compile; } && [ -f target/peers/bench_peers.py ]; then
  export PYTHONUNBUFFERED=1
  : >"$OUT/peers-all.jsonl"
  if has peers; then
    python3 target/peers/bench_peers.py 2>&1 | tee "$OUT/peers.log" | grep -v '^{' | tail -5
    cat "$OUT/peers.jsonl" >>"$OUT/peers-all.jsonl" 2>/dev/null
    : >"$OUT/peers.jsonl"
    python3 xtask/peers/torch_gemm.py 2>&1 | tee -a "$OUT/peers.log" | grep -v '^{' | tail -5
    cat "$OUT/peers.jsonl" >>"$OUT/peers-all.jsonl"
    : >"$OUT/peers.jsonl"
    python3 xtask/peers/sglang_filtered.py 2>&1 | tee -a "$OUT/peers.log" | grep -v '^{' | tail -3
    cat "$OUT/peers.jsonl" >>"$OUT/peers-all.jsonl"
  fi
  if has peers-compile; then
    COMPILE=1 ONLY=${PEERS_COMPILE_ONLY:-activation,rmsnorm} python3 target/peers/bench_peers.py 2>&1 \
      | tee -a "$OUT/peers.log" | grep -v '^{' | tail -3
    grep '"torch_compile"' "$OUT/peers.jsonl" >>"$OUT/peers-all.jsonl"
  fi
  mv "$OUT/peers-all.jsonl" "$OUT/peers.jsonl"
  # compare.py pairs rows by (op, shape); the runtime rows have neither.
  [ -f "$OUT/kiln.jsonl" ] && grep '"shape"' "$OUT/kiln.jsonl" >/tmp/kiln-shaped.jsonl &&
    python3 target/peers/compare.py /tmp/kiln-shaped.jsonl "$OUT/peers.jsonl" | tee "$OUT/compare.txt"
fi

printf '%s\n' "${summary[@]}" | tee -a "$OUT/summary.txt"
# The device tool brings back at most 8 files: keep the results loose, pack the logs.
(cd "$OUT" && logs=$(ls | grep -vE '^(summary\.txt|compare\.txt|kiln\.jsonl|peers\.jsonl|junit\.xml|logs\.tar\.gz)$') &&
  [ -n "$logs" ] && tar czf logs.tar.gz.new $logs logs.tar.gz 2>/dev/null; [ -f logs.tar.gz.new ] && rm -f $logs && mv logs.tar.gz.new logs.tar.gz)
exit $rc
