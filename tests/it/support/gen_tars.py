#!/usr/bin/env python3
"""Write tar archives of many dialects with Python's tarfile and list each as Python reads it.

usage: gen_tars.py OUTDIR
For each case: OUTDIR/CASE.tar and OUTDIR/CASE.json (Python's listing) or OUTDIR/CASE.err (Python
refused it). Names and values are hex so no encoding question arises. Used by tests/it/tar_read.rs to
check that layerkit's reader sees exactly what an independent reader sees.
"""
import hashlib, io, json, os, sys, tarfile

out = sys.argv[1]
ENC = dict(encoding="utf-8", errors="surrogateescape")


def add(tf, name, typ=tarfile.REGTYPE, data=b"", **kw):
    ti = tarfile.TarInfo(name)
    ti.type = typ
    ti.size = len(data) if typ in (tarfile.REGTYPE,) else 0
    for k, v in kw.items():
        setattr(ti, k, v)
    tf.addfile(ti, io.BytesIO(data) if ti.size else None)


def case(name, fmt, build):
    path = os.path.join(out, name + ".tar")
    with tarfile.open(path, "w", format=fmt, **ENC) as tf:
        build(tf)


def raw_case(name, data):
    with open(os.path.join(out, name + ".tar"), "wb") as f:
        f.write(data)


def xattrs(d):
    return {"SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in d.items()}


def pax_long(tf):
    add(tf, "d/", tarfile.DIRTYPE, mode=0o755, mtime=1700000000)
    add(tf, "d/" + "n" * 250, data=b"hello", mode=0o4755, uid=3000000, gid=70000, mtime=1700000000)
    add(tf, "d/ünïcødé-名前", data=b"u", mtime=5)
    add(tf, "d/link", tarfile.SYMTYPE, linkname="t/" * 80 + "x")
    add(tf, "d/x", data=b"xattrs", pax_headers={**xattrs({"user.bin": b"\x00\x01\n\xff", "security.capability": b"\x01\x00\x00\x02\x00\x20\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00", "user.nl": b"a\n17 path=evil.txt\n"}), "mtime": "1700000000.25"})
    add(tf, "d/neg", data=b"", mtime=-100)


def gnu_long(tf):
    add(tf, "g/" + "L" * 200, data=b"gnu", uid=2**40, mtime=2**36)
    add(tf, "g/hard", tarfile.LNKTYPE, linkname="g/" + "L" * 200)
    add(tf, "g/sym", tarfile.SYMTYPE, linkname="K" * 150)


def ustar_prefix(tf):
    add(tf, "p" * 120 + "/" + "q" * 20, data=b"prefixed")
    add(tf, "dev/c", tarfile.CHRTYPE, devmajor=1, devminor=3, mode=0o666)
    add(tf, "dev/b", tarfile.BLKTYPE, devmajor=7, devminor=9)
    add(tf, "dev/f", tarfile.FIFOTYPE)
    add(tf, "big", data=bytes(range(256)) * 400)
    add(tf, "empty", data=b"")


case("pax_long", tarfile.PAX_FORMAT, pax_long)
case("gnu_long", tarfile.GNU_FORMAT, gnu_long)
case("ustar_prefix", tarfile.USTAR_FORMAT, ustar_prefix)


# Hand-made: a PAX header whose first record is malformed (newline inside the length field) and whose
# second sets size. tar-rs ignores the size and desynchronises; a correct reader refuses or agrees.
def hdr(name, size, typ=b"0"):
    b = bytearray(512)
    b[0:len(name)] = name
    b[100:108] = b"0000644\0"
    b[108:116] = b"0000000\0"
    b[116:124] = b"0000000\0"
    b[124:136] = b"%011o\0" % size
    b[136:148] = b"00000000000\0"
    b[156:157] = typ
    b[257:263] = b"ustar\0"
    b[263:265] = b"00"
    b[148:156] = b" " * 8
    b[148:156] = b"%06o\0 " % sum(b)
    return bytes(b)


def pad(d):
    return d + b"\0" * (-len(d) % 512)


recs = b"10 bad\nx=y\n" + b"13 size=1024\n"
raw_case("pax_malformed", hdr(b"PaxHeaders/x", len(recs), b"x") + pad(recs) + hdr(b"x.txt", 0) + b"\0" * 1024)
raw_case("lone_zero_block", hdr(b"a", 0) + b"\0" * 512 + hdr(b"b", 0) + b"\0" * 1024)
raw_case("truncated", hdr(b"a", 2048) + b"x" * 100)

for f in sorted(os.listdir(out)):
    if not f.endswith(".tar"):
        continue
    base = os.path.join(out, f[:-4])
    try:
        rows = []
        with tarfile.open(base + ".tar", "r:", **ENC) as tf:
            for m in tf:
                h = lambda s: s.encode("utf-8", "surrogateescape").hex()
                data = tf.extractfile(m).read() if m.isreg() else b""
                xs = {h(k[len("SCHILY.xattr."):]): h(v) for k, v in m.pax_headers.items() if k.startswith("SCHILY.xattr.")}
                mt = m.mtime
                rows.append({
                    "path": h(m.name), "link": h(m.linkname), "type": m.type.decode() if m.type != tarfile.AREGTYPE else "0",
                    "size": m.size, "mode": m.mode & 0o7777, "uid": m.uid, "gid": m.gid,
                    "mtime": int(mt // 1), "devmajor": m.devmajor if m.ischr() or m.isblk() else 0,
                    "devminor": m.devminor if m.ischr() or m.isblk() else 0, "xattrs": xs,
                    "sha256": hashlib.sha256(data).hexdigest(),
                })
        with open(base + ".json", "w") as j:
            json.dump(rows, j, indent=1, sort_keys=True)
    except Exception as e:  # Python refused the archive
        with open(base + ".err", "w") as j:
            j.write(repr(e))
