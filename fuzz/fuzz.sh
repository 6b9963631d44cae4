#!/usr/bin/env bash
# Run one fuzz target (built by fuzz/build.sh) with libFuzzer.
# usage: fuzz/fuzz.sh TARGET SECONDS [more libFuzzer flags, e.g. -jobs=2 -workers=2]
# New inputs go to fuzz/corpus/TARGET (kept between runs; CORPUS=DIR for another), crashes,
# timeouts and OOMs to fuzz/artifacts/TARGET/. The committed seeds (fuzz/seeds/...) are read, never
# written. Env: TIMEOUT (s per input, default 10), MAX_LEN (bytes, default 131072), RSS_MB (default
# 4096), LAYERKIT_FUZZ_KNOWN (ids of known bugs whose checks to skip, see
# testdata/fuzz-regressions/KNOWN), LAYERKIT_FUZZ_SANDBOX (apply's sandbox root).
set -euo pipefail
cd "$(dirname "$0")"
t=${1:?usage: fuzz.sh TARGET SECONDS [libFuzzer flags]}; secs=${2:?SECONDS}; shift 2
TRIPLE=$(rustc -vV | sed -n 's/^host: //p')
bin=target/$TRIPLE/release/$t
case $t in
  tar_reader|squash_index) seeds=(seeds/common seeds/dialects seeds/hostile seeds/tar_reader) ;;
  decoder) seeds=(seeds/common seeds/hostile seeds/decoder seeds/tar_reader) ;;
  apply|squash_apply) seeds=(seeds/common seeds/hostile seeds/dialects seeds/tar_reader) ;;
  *) echo "fuzz.sh: unknown target $t" >&2; exit 2 ;;
esac
[ -x "$bin" ] || { echo "fuzz.sh: $bin missing; run fuzz/build.sh" >&2; exit 2; }
corpus=${CORPUS:-corpus/$t}
mkdir -p "$corpus" "artifacts/$t"
exec "$bin" -max_total_time="$secs" -timeout="${TIMEOUT:-10}" -rss_limit_mb="${RSS_MB:-4096}" \
  -max_len="${MAX_LEN:-131072}" -dict=tar.dict -artifact_prefix="artifacts/$t/" \
  -print_final_stats=1 "$@" "$corpus" "${seeds[@]}"
