#!/usr/bin/env python3
"""Hand-made seeds that the hostile suite and real layers do not cover.

usage: extra_seeds.py TAR_DIR DECODER_DIR   (run by make-seeds.sh; needs GNU tar, zstd, root not)
"""
import gzip
import io
import os
import struct
import subprocess
import sys
import tarfile
import tempfile
import zlib

tar_dir, dec_dir = sys.argv[1], sys.argv[2]


def put(d, name, data):
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)


def pytar(fmt, members, **kw):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=fmt, **kw) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if data else None)
    return b.getvalue()


def ti(name, typ=tarfile.REGTYPE, data=b"", **kw):
    t = tarfile.TarInfo(name)
    t.type = typ
    t.size = len(data)
    t.mtime = 1700000000
    for k, v in kw.items():
        setattr(t, k, v)
    return t, data


# ---- tar_reader: sparse files as GNU tar writes them (old GNU 'S', PAX 0.0, 0.1, 1.0)
with tempfile.TemporaryDirectory() as d:
    sp = os.path.join(d, "sparse")
    with open(sp, "wb") as f:
        f.write(b"head")
        f.seek(40000)
        f.write(b"middle")
        f.seek(90000)
        f.write(b"tail")
    for name, args in [("sparse-gnu", ["--format=gnu"]),
                       ("sparse-pax-0.0", ["--format=posix", "--sparse-version=0.0"]),
                       ("sparse-pax-0.1", ["--format=posix", "--sparse-version=0.1"]),
                       ("sparse-pax-1.0", ["--format=posix", "--sparse-version=1.0"])]:
        out = os.path.join(tar_dir, name + ".tar")
        subprocess.run(["tar", "--sparse", *args, "-C", d, "-cf", out, "sparse"], check=True)

# ---- tar_reader: PAX global header, two PAX headers, comment/atime/charset records, every type
put(tar_dir, "pax-global.tar", pytar(tarfile.PAX_FORMAT, [ti("g/file", data=b"x")],
                                     pax_headers={"comment": "global"}))
put(tar_dir, "pax-global-path.tar", pytar(tarfile.PAX_FORMAT, [ti("a"), ti("b")],
                                          pax_headers={"path": "same"}))
put(tar_dir, "pax-records.tar", pytar(tarfile.PAX_FORMAT, [
    ti("r/file", data=b"data", pax_headers={"comment": "c", "atime": "1.5", "ctime": "2",
                                          "charset": "ISO-IR 10646 2000 UTF-8", "hdrcharset": "BINARY",
                                          "uname": "u", "gname": "g", "mtime": "1.25"}),
    ti("r/dir", tarfile.DIRTYPE), ti("r/sym", tarfile.SYMTYPE, linkname="file"),
    ti("r/hard", tarfile.LNKTYPE, linkname="r/file"), ti("r/fifo", tarfile.FIFOTYPE),
    ti("r/chr", tarfile.CHRTYPE, devmajor=1, devminor=3), ti("r/blk", tarfile.BLKTYPE, devmajor=8),
    ti("r/.wh.gone", data=b""), ti("r/dir/.wh..wh..opq"),
    ti("r/cont", tarfile.CONTTYPE, data=b"contiguous"),
]))
one = pytar(tarfile.PAX_FORMAT, [ti("dup", data=b"1", pax_headers={"path": "first"})])
# Two PAX headers before one member (the first member's x header duplicated).
put(tar_dir, "pax-two-headers.tar", one[:1024] + one)
put(tar_dir, "gnu-longlink.tar", pytar(tarfile.GNU_FORMAT, [
    ti("L" * 300, tarfile.SYMTYPE, linkname="K" * 300),
    ti("big-ids", data=b"z", uid=2 ** 50, gid=2 ** 33, mtime=-2 ** 40),
]))
# (a NUL-typeflag member named "dir/" is in testdata/fuzz-regressions/differential/)

# ---- decoder: gzip/zstd framing variants
body = pytar(tarfile.PAX_FORMAT, [ti("f%d" % i, data=bytes([65 + i]) * (100 * i)) for i in range(5)])
put(dec_dir, "gzip-two-members.tar.gz", gzip.compress(body[:2048], mtime=0) + gzip.compress(body[2048:], mtime=0))
b = io.BytesIO()
with gzip.GzipFile(filename="layer.tar", fileobj=b, mode="wb", mtime=1) as g:
    g.write(body)
put(dec_dir, "gzip-fname.tar.gz", b.getvalue())
# FEXTRA + FCOMMENT + FHCRC by hand.
hdr = bytearray(b"\x1f\x8b\x08\x1e\0\0\0\0\0\xff")
hdr += struct.pack("<H", 4) + b"AB\0\0" + b"comment\0"
hdr += struct.pack("<H", zlib.crc32(bytes(hdr)) & 0xFFFF)
c = zlib.compressobj(6, zlib.DEFLATED, -15)
put(dec_dir, "gzip-fextra-fcomment-fhcrc.tar.gz",
    bytes(hdr) + c.compress(body) + c.flush() + struct.pack("<II", zlib.crc32(body), len(body)))
put(dec_dir, "gzip-empty.gz", gzip.compress(b"", mtime=0))
put(dec_dir, "gzip-stored.tar.gz", gzip.compress(body, compresslevel=0, mtime=0))
put(dec_dir, "gzip-trailing-garbage.tar.gz", gzip.compress(body, mtime=0) + b"garbage")
put(dec_dir, "gzip-trailing-zeros.tar.gz", gzip.compress(body, mtime=0) + b"\0" * 512)


def zstd(data, *args):
    return subprocess.run(["zstd", "-q", "-c", *args], input=data, check=True,
                          capture_output=True).stdout


put(dec_dir, "zstd-two-frames.tar.zst", zstd(body[:3072], "--check") + zstd(body[3072:], "--no-check"))
skippable = struct.pack("<II", 0x184D2A50, 6) + b"skip!!"
put(dec_dir, "zstd-skippable.tar.zst", skippable + zstd(body, "--check") + skippable)
put(dec_dir, "zstd-long31.tar.zst", zstd(body, "--long=31", "-19"))
put(dec_dir, "zstd-empty.zst", zstd(b""))
put(dec_dir, "zstd-rle.zst", zstd(b"\0" * 300000, "--check"))
