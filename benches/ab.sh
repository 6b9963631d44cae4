#!/usr/bin/env bash
# Same-run A/B benchmark of two layerkit builds on the benchmark corpus.
#
# usage: ab.sh OLD_BIN_DIR NEW_BIN_DIR [RUNS]        (RUNS default 5; needs root)
#
#   OLD_BIN_DIR, NEW_BIN_DIR  dirs holding layerapply, layerdiff and layerkit (e.g. target/release).
#                             The binaries are copied into $BENCH_TMP/bin at start, so a concurrent
#                             `cargo build` cannot change them mid-run.
# env:
#   LAYERKIT_CORPUS  corpus built by make-corpus.sh               (default /work/corpus)
#   BENCH_TMP        scratch: outputs, stores, TMPDIR of commands (default /var/tmp/layerkit-ab);
#                    must not be tmpfs.
#   AB_CASES         subset of cases, space separated (default: all available):
#                      store-gz store-zst into-tar diff-upper squash-gz
#   AB_OUT           also write the markdown report to this file
#   AB_LOOPFS        size of a fresh ext4 made in a sparse loop file $BENCH_TMP.img and mounted
#                    (loop,noatime, no discard) on BENCH_TMP for the run, unmounted and deleted at
#                    exit (default 8G). This is the setup benches/README.md recommends: the VM's root
#                    ext4 is mounted with `discard`, and the trims after one run's deletions make the
#                    next run's file creation 2-5x slower at random. AB_LOOPFS=off: use BENCH_TMP
#                    as it is.
#
# Per case: one untimed warm-up of old then new, then RUNS rounds old, new, old, new, ...
# Before every run (untimed): the previous output is removed, then `sync`.
# Timing as in benches/common/mod.rs: wall seconds around
#   /usr/bin/time -f %M -o RSS bash -o pipefail -c CMD
# median and min of the timed runs; peak RSS = max %M over the timed runs (largest process).
# Equality checks (untimed, every run, old vs new and across runs):
#   store-*    the lowerdir ids (basenames of STORE/<id>/diff), topmost first
#   diff-upper sha256 of the output file + the --json digest/diffID
#   squash-gz  sha256 of the output file + the --json digest/diffID
#   into-tar   a metadata manifest of the tree (path, type, mode, owner, file size, link target)
# Exit status: 0 if every run succeeded and every check matched, 1 otherwise.
set -euo pipefail
export LC_ALL=C

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2; exit 2; }
[ $# -ge 2 ] && [ $# -le 3 ] || usage
OLD_DIR=$1 NEW_DIR=$2 RUNS=${3:-5}
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "RUNS must be a positive integer: $RUNS" >&2; exit 2; }
C=${LAYERKIT_CORPUS:-/work/corpus}
T=${BENCH_TMP:-/var/tmp/layerkit-ab}
BINS=(layerapply layerdiff layerkit)

die() { echo "ab.sh: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "needs root (layerapply writes owners, device nodes, trusted.* xattrs)"
[ -x /usr/bin/time ] || die "needs GNU time at /usr/bin/time (apt-get install time)"
for d in "$OLD_DIR" "$NEW_DIR"; do
  for b in "${BINS[@]}"; do [ -x "$d/$b" ] || die "$d/$b: missing or not executable"; done
done
[ -d "$C/layers" ] || die "no corpus at $C (build it: make-corpus.sh $C, as root, outside git repos)"

mkdir -p "$T"
T=$(realpath "$T")
LOOP_IMG=""
cleanup() {
  rm -rf "$W"
  if [ -n "$LOOP_IMG" ]; then umount "$T" || umount -l "$T"; rm -f "$LOOP_IMG"; fi
}
W=$T/work
trap cleanup EXIT
trap 'exit 130' INT TERM
AB_LOOPFS=${AB_LOOPFS:-8G}
if [ "$AB_LOOPFS" != off ]; then
  if mountpoint -q "$T"; then
    # left over from a killed run of this script: our own image, unmount it
    if losetup -j "$T.img" 2>/dev/null | grep -q . && [ "$(findmnt -n -o SOURCE -T "$T")" = "$(losetup -j "$T.img" | head -1 | cut -d: -f1)" ]; then
      echo "unmounting a leftover $T.img from $T" >&2; umount "$T"
    else
      die "$T is already a mount point (not of $T.img); set BENCH_TMP elsewhere or AB_LOOPFS=off"
    fi
  fi
  [ -z "$(ls -A "$T")" ] || die "AB_LOOPFS: $T must be empty (it becomes the mount point)"
  LOOP_IMG=$T.img
  truncate -s "$AB_LOOPFS" "$LOOP_IMG"
  mkfs.ext4 -q -F -E nodiscard "$LOOP_IMG"
  mount -o loop,noatime "$LOOP_IMG" "$T" || { rm -f "$LOOP_IMG"; LOOP_IMG=""; die "cannot mount $LOOP_IMG"; }
fi
[ "$(stat -f -c %T "$T")" != tmpfs ] || die "BENCH_TMP=$T is tmpfs; use a real disk"
rm -rf "$W" "$T/bin"
mkdir -p "$W" "$T/bin/old" "$T/bin/new"
for b in "${BINS[@]}"; do
  cp "$OLD_DIR/$b" "$T/bin/old/$b"
  cp "$NEW_DIR/$b" "$T/bin/new/$b"
done

# ------------------------------------------------------------------ inputs
q() { printf '%q' "$1"; }
have_stack() { local e=$1 i; for i in 0 1 2; do [ -f "$C/layers/L$i$e" ] || return 1; done; }
stack() { local e=$1; printf '%s ' "$(q "$C/layers/L0$e")" "$(q "$C/layers/L1$e")" "$(q "$C/layers/L2$e")"; }

BIG_LAYER=$(ls -1S "$C"/layers/L*.tar 2>/dev/null | head -1 || true)
BIG_UPPER=""
if [ -d "$C/upper" ]; then
  BIG_UPPER=$(for u in "$C"/upper/*/; do [ -d "$u" ] && du -s --apparent-size -B1 "$u"; done 2>/dev/null |
              sort -rn | head -1 | cut -f2- || true)
  BIG_UPPER=${BIG_UPPER%/}
fi

ALL_CASES=()
declare -A CMD DESC INPUT_BYTES
if have_stack .tar.gz; then
  ALL_CASES+=(store-gz)
  DESC[store-gz]="layerapply --store S L{0,1,2}.tar.gz"
  CMD[store-gz]="\$BIN/layerapply --store \$OUT/store $(stack .tar.gz)> \$OUT/stdout"
fi
if have_stack .tar.zst; then
  ALL_CASES+=(store-zst)
  DESC[store-zst]="layerapply --store S L{0,1,2}.tar.zst"
  CMD[store-zst]="\$BIN/layerapply --store \$OUT/store $(stack .tar.zst)> \$OUT/stdout"
fi
if [ -n "$BIG_LAYER" ]; then
  ALL_CASES+=(into-tar)
  DESC[into-tar]="layerapply --into D $(basename "$BIG_LAYER")"
  CMD[into-tar]="\$BIN/layerapply --into \$OUT/dir $(q "$BIG_LAYER") > \$OUT/stdout"
fi
if [ -z "$BIG_UPPER" ] && [ -n "$BIG_LAYER" ]; then
  # no upper in the corpus: a plain dir is a valid upper; unpack the biggest layer with GNU tar
  BIG_UPPER=$T/upper-from-$(basename "$BIG_LAYER" .tar)
  if [ ! -f "$BIG_UPPER.done" ]; then
    echo "making an upper: tar -x $BIG_LAYER -> $BIG_UPPER" >&2
    rm -rf "$BIG_UPPER"; mkdir -p "$BIG_UPPER"
    tar -C "$BIG_UPPER" --xattrs --xattrs-include='*' --numeric-owner -xpf "$BIG_LAYER"
    touch "$BIG_UPPER.done"
  fi
fi
if [ -n "$BIG_UPPER" ]; then
  ALL_CASES+=(diff-upper)
  DESC[diff-upper]="layerdiff ${BIG_UPPER#"$C"/} -o X.tar.zst --json"
  CMD[diff-upper]="\$BIN/layerdiff $(q "$BIG_UPPER") -o \$OUT/x.tar.zst --json > \$OUT/stdout"
fi
if have_stack .tar.gz; then
  ALL_CASES+=(squash-gz)
  DESC[squash-gz]="layerkit squash L{0,1,2}.tar.gz -o X.tar.zst --json"
  CMD[squash-gz]="\$BIN/layerkit squash $(stack .tar.gz)-o \$OUT/x.tar.zst --json > \$OUT/stdout"
fi

CASES=()
if [ -n "${AB_CASES:-}" ]; then
  for c in $AB_CASES; do
    [ -n "${CMD[$c]:-}" ] || die "unknown or unavailable case: $c (available: ${ALL_CASES[*]})"
    CASES+=("$c")
  done
else
  CASES=("${ALL_CASES[@]}")
fi
[ ${#CASES[@]} -gt 0 ] || die "no case can run on this corpus"

# ------------------------------------------------------------------ running
# one run: fresh OUT (removed + sync, untimed), then the timed command. Sets SECS, KIB.
run_one() { # case side
  local c=$1 side=$2 out=$W/$1-$2 rss t0 t1 rc
  rm -rf "$out"; mkdir -p "$out/tmp"; sync
  rss=$W/rss-$c-$side
  rm -f "$rss"
  local cmd="export TMPDIR=$(q "$out/tmp"); BIN=$(q "$T/bin/$side"); OUT=$(q "$out"); ${CMD[$c]}"
  t0=$EPOCHREALTIME
  rc=0
  /usr/bin/time -f %M -o "$rss" bash -o pipefail -c "$cmd" < /dev/null > /dev/null 2> "$W/stderr-$c-$side" || rc=$?
  t1=$EPOCHREALTIME
  if [ $rc -ne 0 ]; then
    echo "FAILED ($side, rc $rc): ${DESC[$c]}" >&2
    echo "  $cmd" >&2
    grep -v '^Command exited with non-zero' "$W/stderr-$c-$side" | tail -5 | sed 's/^/  /' >&2
    return 1
  fi
  SECS=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b-a}')
  KIB=$(tail -1 "$rss" | tr -d ' ')
}

# untimed signature of a run's output, what must be equal between old and new
signature() { # case side
  local c=$1 out=$W/$1-$2
  case $c in
    store-*)
      # one line STORE/<id>/diff:STORE/<id>/diff:STORE/<id>/diff -> ids, topmost first
      local line ids="" p n=0
      line=$(cat "$out/stdout")
      [ "$(wc -l < "$out/stdout")" -le 1 ] || { echo "BAD: stdout has more than one line"; return; }
      IFS=: read -ra parts <<< "$line"
      for p in "${parts[@]}"; do
        [ "$(basename "$p")" = diff ] && [ -d "$p" ] || { echo "BAD: $p is not an existing .../diff"; return; }
        ids+="$(basename "$(dirname "$p")") "; n=$((n+1))
      done
      [ $n = 3 ] || { echo "BAD: $n lowerdir entries, want 3"; return; }
      echo "ids ${ids% }";;
    diff-upper|squash-gz)
      local file json
      file=$(sha256sum < "$out/x.tar.zst" | cut -c1-64)
      json=$(tr -d ' \n' < "$out/stdout")
      echo "sha256 $file json $json";;
    into-tar)
      local m
      m=$( { find "$out/dir" -mindepth 1 ! -type d -printf '%P\t%y\t%m\t%U:%G\t%s\t%l\n'
             find "$out/dir" -mindepth 1 -type d -printf '%P\t%y\t%m\t%U:%G\n'; } | sort | sha256sum | cut -c1-64)
      echo "tree $(find "$out/dir" -mindepth 1 | wc -l) entries, manifest $m";;
  esac
}

median() { sort -g | awk '{v[NR]=$1} END{ if (NR==0) {print "nan"; exit}
  if (NR%2) printf "%.3f", v[(NR+1)/2]; else printf "%.3f", (v[NR/2]+v[NR/2+1])/2 }'; }
minimum() { sort -g | head -1; }

declare -A TIMES RSS SIG STATUS
FAIL=0
START=$EPOCHREALTIME

fs_line() { findmnt -n -o SOURCE,FSTYPE,OPTIONS -T "$1" | head -1; }
{
  echo "# layerkit A/B: old vs new"
  echo
  echo "- date: $(date -u +%FT%TZ), host $(hostname), $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
  for side in old new; do
    d=$OLD_DIR; [ $side = new ] && d=$NEW_DIR
    echo "- $side: $d (layerkit sha256 $(sha256sum < "$T/bin/$side/layerkit" | cut -c1-12), built $(date -r "$d/layerkit" '+%F %T'))"
  done
  echo "- corpus: $C; BENCH_TMP: $T on $(fs_line "$T")"
  echo "- runs: 1 untimed warm-up + $RUNS timed per side, interleaved old/new; rm + sync before each run"
} >&2
if findmnt -n -o OPTIONS -T "$T" | tr , '\n' | grep -qx discard; then
  echo "- note: BENCH_TMP is on a fs mounted with 'discard': file-creation timings are noisier" >&2
fi
echo >&2

for c in "${CASES[@]}"; do
  echo "[$(date +%T)] $c: ${DESC[$c]}" >&2
  STATUS[$c]=ok
  TIMES[$c,old]="" TIMES[$c,new]="" RSS[$c,old]=0 RSS[$c,new]=0
  for ((r=0; r<=RUNS; r++)); do
    for side in old new; do
      if ! run_one "$c" "$side"; then STATUS[$c]=FAILED; FAIL=1; break 2; fi
      s=$(signature "$c" "$side")
      if [[ $s == BAD:* ]]; then
        echo "  $side run $r: $s" >&2; STATUS[$c]="bad output"; FAIL=1; break 2
      fi
      if [ -z "${SIG[$c]:-}" ]; then
        SIG[$c]=$s
      elif [ "$s" != "${SIG[$c]}" ]; then
        echo "  MISMATCH ($side, run $r):" >&2
        echo "    first: ${SIG[$c]}" >&2
        echo "    this:  $s" >&2
        STATUS[$c]=DIFFERS; FAIL=1
      fi
      if [ $r -eq 0 ]; then
        printf '  warm-up %s %6.2fs\n' "$side" "$SECS" >&2
      else
        TIMES[$c,$side]+="$SECS "
        [ "$KIB" -gt "${RSS[$c,$side]}" ] && RSS[$c,$side]=$KIB
        printf '  run %d %s %6.2fs %7d KiB\n' "$r" "$side" "$SECS" "$KIB" >&2
      fi
    done
  done
  rm -rf "$W/$c-old" "$W/$c-new"
  echo "  output: ${STATUS[$c]} (${SIG[$c]:-none})" >&2
done
ELAPSED=$(awk -v a="$START" -v b="$EPOCHREALTIME" 'BEGIN{printf "%.0f", b-a}')

# ------------------------------------------------------------------ report
report() {
  echo "## layerkit A/B ($RUNS timed runs per side, $(date -u +%FT%TZ), $(nproc) cores)"
  echo
  echo "old: \`$OLD_DIR\`  "
  echo "new: \`$NEW_DIR\`  "
  echo "corpus: \`$C\`, scratch: \`$T\` ($(findmnt -n -o FSTYPE,OPTIONS -T "$T" | head -1 | cut -c1-60))"
  echo
  echo "| command | old median s | old min s | new median s | new min s | new/old median | new/old min | old peak RSS MiB | new peak RSS MiB | outputs |"
  echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|"
  local c om on nm nn rm rn eq
  for c in "${CASES[@]}"; do
    om=$(tr ' ' '\n' <<< "${TIMES[$c,old]}" | grep . | median || true)
    on=$(tr ' ' '\n' <<< "${TIMES[$c,old]}" | grep . | minimum || true)
    nm=$(tr ' ' '\n' <<< "${TIMES[$c,new]}" | grep . | median || true)
    nn=$(tr ' ' '\n' <<< "${TIMES[$c,new]}" | grep . | minimum || true)
    if [ -n "${TIMES[$c,old]}" ] && [ -n "${TIMES[$c,new]}" ]; then
      rm=$(awk -v a="$om" -v b="$nm" 'BEGIN{printf "%.3f", b/a}')
      rn=$(awk -v a="$on" -v b="$nn" 'BEGIN{printf "%.3f", b/a}')
    else
      rm=–; rn=–; om=${om:-–}; on=${on:-–}; nm=${nm:-–}; nn=${nn:-–}
      [ "$om" = nan ] && om=–; [ "$nm" = nan ] && nm=–
    fi
    case ${STATUS[$c]} in
      ok) case $c in
            store-*) eq="equal (lowerdir ids)";;
            into-tar) eq="equal (tree manifest)";;
            *) eq="equal (sha256 + json)";;
          esac;;
      *) eq="**${STATUS[$c]}**";;
    esac
    printf '| %s | %s | %s | %s | %s | %s | %s | %.1f | %.1f | %s |\n' "\`${DESC[$c]}\`" \
      "$om" "$on" "$nm" "$nn" "$rm" "$rn" \
      "$(awk -v k="${RSS[$c,old]}" 'BEGIN{print k/1024}')" "$(awk -v k="${RSS[$c,new]}" 'BEGIN{print k/1024}')" "$eq"
  done
  echo
  echo "new/old > 1: new is slower. Wall time of the whole script: ${ELAPSED}s."
  echo "Only ratios from one run are comparable; re-run before calling a difference under ~1.1-1.3x real."
}
echo >&2
if [ -n "${AB_OUT:-}" ]; then report | tee "$AB_OUT"; else report; fi
exit $FAIL
