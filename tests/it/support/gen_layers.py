#!/usr/bin/env python3
"""Write OCI layer tars from a small text spec with Python's tarfile (never with layerkit).

usage: gen_layers.py OUTDIR < SPEC

SPEC, one item per line (blank lines and lines starting with '#' are ignored):
  === NAME [fmt=pax|gnu|ustar]     start OUTDIR/NAME.tar (default format: PAX)
  TYPE PATH [KEY=VALUE ...]        one member, in order
TYPE: f file, d dir, l symlink, h hardlink, c char device, b block device, p fifo,
      w whiteout (an empty regular file, mode 0, owner 0:0, mtime 0; PATH is the full `.wh.` name).
PATH is stored exactly as written (a leading `/` or `./` stays; tarfile appends `/` to dirs);
`{C*N}` anywhere in PATH or in a link target expands to the character C repeated N times, `\\s` to a
space.
KEYs:
  data=TEXT        file content (literal, no spaces; `\\n` and `\\s` are newline and space)
  size=N           file content: N deterministic bytes
  mode=OCTAL uid=N gid=N uname=S gname=S
  mtime=S[.NANOS]  whole seconds in the header; a fraction goes into a PAX `mtime` record verbatim
  link=TARGET      symlink or hardlink target
  dev=MAJ:MIN      device numbers
  x.NAME=TEXT      xattr (SCHILY.xattr.NAME), value as text
  xh.NAME=HEX      xattr, value as hex bytes
Defaults: mode 0644 (dirs 0755, symlinks 0777), owner 0:0, mtime 1600000000.
"""
import io
import os
import re
import sys
import tarfile

ENC = dict(encoding="utf-8", errors="surrogateescape")
TYPES = {
    "f": tarfile.REGTYPE,
    "w": tarfile.REGTYPE,
    "d": tarfile.DIRTYPE,
    "l": tarfile.SYMTYPE,
    "h": tarfile.LNKTYPE,
    "c": tarfile.CHRTYPE,
    "b": tarfile.BLKTYPE,
    "p": tarfile.FIFOTYPE,
}
FORMATS = {"pax": tarfile.PAX_FORMAT, "gnu": tarfile.GNU_FORMAT, "ustar": tarfile.USTAR_FORMAT}


def expand(s):
    return re.sub(r"\{(.)\*(\d+)\}", lambda m: m.group(1) * int(m.group(2)), s)


def text(s):
    return s.replace("\\n", "\n").replace("\\s", " ").encode("utf-8", "surrogateescape")


def member(tf, line):
    typ, path, *kvs = line.split()
    ti = tarfile.TarInfo(expand(path).replace("\\s", " "))
    ti.type = TYPES[typ]
    ti.mode = {"d": 0o755, "l": 0o777, "w": 0}.get(typ, 0o644)
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = 0 if typ == "w" else 1600000000
    data = b""
    pax = {}
    for kv in kvs:
        k, _, v = kv.partition("=")
        if k == "data":
            data = text(v)
        elif k == "size":
            n = int(v)
            data = (bytes(range(256)) * (n // 256 + 1))[:n]
        elif k == "mode":
            ti.mode = int(v, 8)
        elif k in ("uid", "gid"):
            setattr(ti, k, int(v))
        elif k in ("uname", "gname"):
            setattr(ti, k, v)
        elif k == "mtime":
            ti.mtime = int(v.split(".")[0])
            if "." in v:
                pax["mtime"] = v
        elif k == "link":
            ti.linkname = expand(v).replace("\\s", " ")
        elif k == "dev":
            ti.devmajor, ti.devminor = (int(x) for x in v.split(":"))
        elif k.startswith("x."):
            pax["SCHILY.xattr." + k[2:]] = text(v).decode("utf-8", "surrogateescape")
        elif k.startswith("xh."):
            pax["SCHILY.xattr." + k[3:]] = bytes.fromhex(v).decode("utf-8", "surrogateescape")
        else:
            sys.exit("gen_layers.py: unknown key %r in %r" % (k, line))
    ti.pax_headers = pax
    ti.size = len(data) if ti.type == tarfile.REGTYPE else 0
    tf.addfile(ti, io.BytesIO(data) if ti.size else None)


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    out = sys.argv[1]
    tf = None
    for line in sys.stdin.read().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("==="):
            if tf:
                tf.close()
            name, *opts = line[3:].split()
            fmt = dict(o.split("=", 1) for o in opts).get("fmt", "pax")
            tf = tarfile.open(os.path.join(out, name + ".tar"), "w", format=FORMATS[fmt], **ENC)
            continue
        if tf is None:
            sys.exit("gen_layers.py: member before the first '=== NAME' line")
        member(tf, line)
    if tf:
        tf.close()


main()
