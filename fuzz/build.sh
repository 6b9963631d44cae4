#!/usr/bin/env bash
# Build every fuzz target with libFuzzer's coverage instrumentation on STABLE Rust: the flags
# `cargo fuzz build -O -a -s none` passes (no sanitizer, so no -Z flag), plus debug assertions and
# overflow checks, so an arithmetic overflow on hostile input is a crash, not a silent wrap.
# Binaries: fuzz/target/<host triple>/release/<target>, and lk-list there too (the differential
# checker's view of layerkit, built with the same flags so the dependencies are compiled once).
# usage: fuzz/build.sh [TARGET...]   (default: all)
set -euo pipefail
cd "$(dirname "$0")"
TARGETS=(${@:-tar_reader decoder squash_index apply squash_apply})
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
bins=()
for t in "${TARGETS[@]}" lk-list; do bins+=(--bin "$t"); done
# --target keeps the flags off build scripts and proc macros (sancov there would not link).
RUSTFLAGS="-Cpasses=sancov-module -Cllvm-args=-sanitizer-coverage-level=4 \
-Cllvm-args=-sanitizer-coverage-inline-8bit-counters -Cllvm-args=-sanitizer-coverage-pc-table \
-Cllvm-args=-sanitizer-coverage-trace-compares --cfg fuzzing \
-Cllvm-args=-simplifycfg-branch-fold-threshold=0 -Cllvm-args=-sanitizer-coverage-stack-depth \
-Ccodegen-units=1 -Cdebug-assertions -Coverflow-checks" \
  cargo build --locked --release --target "$TRIPLE" "${bins[@]}"
