#!/usr/bin/env bash
# Regenerate fuzz/seeds/ (the committed seed corpora). Needs root (overlay mount, mknod, xattrs),
# python3, GNU tar, gzip, zstd, and a built `layerdiff` (LAYERDIFF, default target/release/layerdiff).
#
# Seeds are layer blobs as a registry hands them over; every target takes the same kind of input, so
# the shared sets are kept once and each target starts from several dirs (see fuzz/targets.sh):
#   seeds/common/      real layers: GNU tar (gnu, posix+xattrs, ustar, v7), Python tarfile (pax, gnu,
#                      ustar), layerdiff's own output of testdata/make-sample.sh; each also .gz, .zst
#   seeds/hostile/     every layer of tests/it/support/hostile_tars.py (plain, gzip, zstd), whose
#                      hostile names point at the apply target's canary
#                      (/dev/shm/layerkit-fuzz-sandbox/canary)
#   seeds/dialects/    tests/it/support/gen_tars.py (PAX, GNU long names, ustar prefix, malformed)
#   seeds/tar_reader/  hand-made: GNU and PAX sparse members, base-256 numbers, globals, long K/L
#   seeds/decoder/     hand-made: concatenated gzip members, zstd multi-frame / skippable frames
# Trailing record padding past the end-of-archive marker is cut (keeps the corpus small).
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
LAYERDIFF=${LAYERDIFF:-$ROOT/target/release/layerdiff}
CANARY=/dev/shm/layerkit-fuzz-sandbox/canary
T=$(mktemp -d); trap 'umount "$T/sample/merged" 2>/dev/null || true; rm -rf "$T"' EXIT
rm -rf common hostile dialects tar_reader decoder
mkdir -p common hostile dialects tar_reader decoder

both() { # FILE: add FILE.gz and FILE.zst beside it
  gzip -9 -n -c "$1" > "$1.gz"; zstd -q -19 --check -c "$1" > "$1.zst"
}

# A small tree with every type: files, long names, unicode, dirs, symlinks, a hardlink, a fifo,
# devices, setuid, odd owners and times, user xattrs.
S=$T/tree; mkdir -p "$S/d/sub" "$S/$(printf 'l%.0s' {1..120})"
printf 'hello\n' > "$S/d/f"; printf 'x%.0s' {1..1500} > "$S/d/big"
printf 'u\n' > "$S/d/ünï名"
printf 'deep\n' > "$S/$(printf 'l%.0s' {1..120})/$(printf 'n%.0s' {1..110})"
ln -s f "$S/d/sym"; ln -s "$(printf 't/%.0s' {1..70})x" "$S/d/longsym"; ln "$S/d/f" "$S/d/hard"
mkfifo "$S/d/fifo"; mknod "$S/d/chr" c 1 3; mknod "$S/d/blk" b 7 9
chmod 4755 "$S/d/f"; chown 3000000:70000 "$S/d/big"; touch -d @1700000000.25 "$S/d/big"
touch -d @-100 "$S/d/sub"
setfattr -n user.k -v value "$S/d/f" 2>/dev/null || true
setfattr -n user.bin -v 0x00010aff "$S/d/big" 2>/dev/null || true
for fmt in gnu posix ustar v7; do
  x=(); [ $fmt = posix ] && x=(--xattrs --xattrs-include='*')
  tar --format=$fmt "${x[@]}" -C "$S" -cf "common/gnutar-$fmt.tar" . 2>/dev/null || true
done
# Python tarfile's three formats (gen_tars.py's dialects, as plain real layers).
mkdir -p "$T/dialects"; python3 "$ROOT/tests/it/support/gen_tars.py" "$T/dialects"
for f in "$T/dialects"/*.tar; do cp "$f" "dialects/$(basename "$f")"; done
for f in pax_long gnu_long ustar_prefix; do cp "$T/dialects/$f.tar" "common/py-$f.tar"; done
# layerdiff's own output of a real overlay upper (whiteouts, opaque dir, copy-ups).
if [ -x "$LAYERDIFF" ] && bash "$ROOT/testdata/make-sample.sh" "$T/sample" >/dev/null 2>&1; then
  "$LAYERDIFF" "$T/sample/upper" -o common/layerdiff-sample.tar
  tar -C "$T/sample/lower" -cf common/gnutar-sample-lower.tar .
fi
for f in common/*.tar; do both "$f"; done

# The hostile suite.
python3 "$ROOT/tests/it/support/hostile_tars.py" "$T/hostile" "$CANARY"
for f in "$T/hostile"/*; do
  [ "$(stat -c %s "$f")" -le 65536 ] && cp "$f" hostile/
done
python3 "$(pwd)/extra_seeds.py" tar_reader decoder
# Cut record padding: keep the end-of-archive marker (two zero blocks) of a plain tar, no more.
python3 - common hostile dialects tar_reader <<'PY'
import os, sys
for d in sys.argv[1:]:
    for n in os.listdir(d):
        p = os.path.join(d, n)
        b = open(p, "rb").read()
        if b[:2] == b"\x1f\x8b" or b[:4] == b"\x28\xb5\x2f\xfd" or len(b) % 512:
            continue
        end = len(b.rstrip(b"\0"))
        end = -(-end // 512) * 512 + 1024
        if end < len(b):
            open(p, "wb").write(b[:end])
PY
du -sh --apparent-size .
