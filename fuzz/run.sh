#!/usr/bin/env bash
# Runs every fuzz target for SECONDS each (default 60) and prints how many inputs each ran.
#
#   bash fuzz/run.sh [SECONDS]
#
# Needs cargo-fuzz (installed here when missing) and a nightly toolchain for the address
# sanitizer (`rustup toolchain install nightly`). Without nightly the targets are built on the
# default toolchain with no sanitizer (RUSTC_BOOTSTRAP=1 allows cargo-fuzz's -Z flags there).
#
# Seeds are read from fuzz/corpus/<target>/ and never written; what the fuzzer learns goes to
# fuzz/target/corpus/<target>/ and is reused by the next run. A crash stops its target, leaves
# the input in fuzz/artifacts/<target>/ and makes the script exit 1 once every target has run;
# replay it with `cargo +nightly fuzz run <target> <file>`.
set -euo pipefail

seconds="${1:-60}"
targets=(request config json_path)
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$here"

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

if rustup run nightly rustc --version >/dev/null 2>&1; then
    fuzz=(cargo +nightly fuzz)
    run_flags=()
    echo "toolchain: $(rustup run nightly rustc --version), address sanitizer"
else
    export RUSTC_BOOTSTRAP=1
    fuzz=(cargo fuzz)
    run_flags=(--sanitizer none)
    echo "toolchain: $(rustc --version) with RUSTC_BOOTSTRAP=1, no sanitizer (no nightly found)"
fi

"${fuzz[@]}" build "${run_flags[@]}"

mkdir -p target/logs
failed=()
for target in "${targets[@]}"; do
    mkdir -p "target/corpus/$target"
    log="target/logs/$target.log"
    echo "== $target: ${seconds}s"
    # -timeout: an input taking over 10 s is reported as a hang.
    if "${fuzz[@]}" run "${run_flags[@]}" "$target" "target/corpus/$target" "corpus/$target" -- \
        -max_total_time="$seconds" -timeout=10 -print_final_stats=1 >"$log" 2>&1; then
        runs="$(grep -E '^stat::number_of_executed_units' "$log" | awk '{print $2}')"
        cov="$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | grep -oE 'cov: [0-9]+' || true)"
        echo "   ok: ${runs:-?} inputs, ${cov:-cov: ?}, corpus $(ls "target/corpus/$target" | wc -l) files"
    else
        failed+=("$target")
        echo "   FAILED: see fuzz/$log and fuzz/artifacts/$target/"
        grep -E 'panicked|ERROR: |SUMMARY|Test unit written' "$log" | head -5 | sed 's/^/   /'
    fi
done

if ((${#failed[@]})); then
    echo "failed: ${failed[*]}"
    exit 1
fi
echo "all targets ran ${seconds}s without a failure"
