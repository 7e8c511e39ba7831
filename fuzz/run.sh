#!/usr/bin/env bash
# Builds and runs every fuzz target (or those named) for a bounded time each.
#
#   fuzz/run.sh [SECONDS] [TARGET...]     SECONDS per target, default 60
#
# Exits non-zero if any target crashed (panic, failed check, hang past -timeout, allocation
# past -malloc_limit_mb, leak) or could not be built/run; the crashing inputs are in
# fuzz/artifacts/<target>/. New corpus entries go to fuzz/work/<target>/ (not committed); the
# seeds in fuzz/corpus/<target>/ are only read. See fuzz/README.md.
set -uo pipefail

secs=${1:-60}
shift || true
here=$(cd "$(dirname "$0")" && pwd)
cd "$here"
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(frame auth stream handshake)
fi
case "$secs" in
    '' | *[!0-9]*) echo "usage: $0 [SECONDS] [TARGET...]" >&2; exit 2 ;;
esac

# libFuzzer options: a unit taking over 30 s is a hang; one allocation over 64 MiB is absurd
# (only enforced with a sanitizer's malloc hooks; the targets also meter allocations), except
# in `stream`, whose unlimited connection may allocate the 256 MiB the library trusts an
# announced length with (the target bounds each receive's allocations itself).
opts=(-max_total_time="$secs" -timeout=30 -rss_limit_mb=4096 -max_len=8192
      -print_final_stats=1)

# cargo-fuzz on nightly (coverage + AddressSanitizer) when both are there; otherwise the same
# libFuzzer binaries built by the default (stable) toolchain with coverage instrumentation
# only, passing rustc the flags cargo-fuzz would. FUZZ_MODE=stable forces the latter.
if [ "${FUZZ_MODE:-}" != stable ] && cargo +nightly fuzz --version >/dev/null 2>&1; then
    mode=cargo-fuzz
else
    mode=stable
    host=$(rustc -vV | sed -n 's/^host: //p')
    export RUSTFLAGS="--cfg fuzzing -Cpasses=sancov-module \
-Cllvm-args=-sanitizer-coverage-level=4 -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
-Cllvm-args=-sanitizer-coverage-pc-table -Cllvm-args=-sanitizer-coverage-trace-compares \
-Cdebug-assertions -Coverflow-checks"
fi
echo "fuzz: $mode, ${secs}s per target: ${targets[*]}"

build() {
    if [ "$mode" = cargo-fuzz ]; then
        local t
        for t in "$@"; do cargo +nightly fuzz build "$t" || return 1; done
    else
        local bins=()
        for t in "$@"; do bins+=(--bin "$t"); done
        cargo build --release --target "$host" --target-dir target/stable "${bins[@]}"
    fi
}

run() {
    local t=$1
    mkdir -p "work/$t" "artifacts/$t" "corpus/$t"
    # New inputs go to the first corpus directory.
    local dirs=("work/$t" "corpus/$t")
    local malloc_mb=64
    [ "$t" = stream ] && malloc_mb=300
    local args=(-artifact_prefix="artifacts/$t/" -malloc_limit_mb=$malloc_mb "${opts[@]}")
    # A hard stop well past libFuzzer's own, in case the process itself wedges.
    if [ "$mode" = cargo-fuzz ]; then
        timeout -k 10 $((secs + 120)) cargo +nightly fuzz run "$t" "${dirs[@]}" -- "${args[@]}"
    else
        timeout -k 10 $((secs + 120)) "target/stable/$host/release/$t" "${args[@]}" "${dirs[@]}"
    fi
}

if ! build "${targets[@]}"; then
    echo "fuzz: build failed" >&2
    exit 1
fi

failed=()
for t in "${targets[@]}"; do
    echo "=== $t (${secs}s)"
    log="work/$t.log"
    mkdir -p work
    run "$t" 2>&1 | tee "$log" \
        | grep --line-buffered -E '^(#[0-9]+.*(INITED|DONE)|stat::(number_of_executed_units|peak_rss)|SUMMARY)'
    status=${PIPESTATUS[0]}
    if [ "$status" -ne 0 ]; then
        failed+=("$t")
        echo "--- $t FAILED (exit $status); log: fuzz/$log; inputs: fuzz/artifacts/$t/"
        grep -E -A4 'panicked at|ERROR: libFuzzer|Test unit written' "$log" | head -40
    fi
done

if [ ${#failed[@]} -ne 0 ]; then
    echo "fuzz: FAILED: ${failed[*]}"
    exit 1
fi
echo "fuzz: no crash in ${targets[*]}"
