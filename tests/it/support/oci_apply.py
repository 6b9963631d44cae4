#!/usr/bin/env python3
"""An OCI layer applier that shares no code with layerkit: Python's tarfile plus the image-spec rules.

usage: oci_apply.py ROOTFS LAYER(.tar|.tar.gz|.tar.zst)
Whiteouts and opaque markers act on what ROOTFS held before this layer (layer.md "Whiteouts"), so
they are applied first, whatever their position in the tar; then every other entry is created in
order with owner, mode, xattrs (SCHILY.xattr.*, binary-safe) and mtime; directory times last.
"""
import io, os, shutil, stat, subprocess, sys, tarfile

root, layer = sys.argv[1], sys.argv[2]
ENC = dict(encoding="utf-8", errors="surrogateescape")
if layer.endswith((".zst", ".tzst")):
    raw = subprocess.run(["zstd", "-dc", layer], check=True, capture_output=True).stdout
    tf = tarfile.open(fileobj=io.BytesIO(raw), mode="r:", **ENC)
else:
    tf = tarfile.open(layer, "r:*", **ENC)
members = tf.getmembers()


def norm(name):
    while name.startswith("./"):
        name = name[2:]
    return name.strip("/")


def remove(p):
    if os.path.isdir(p) and not os.path.islink(p):
        shutil.rmtree(p)
    elif os.path.lexists(p):
        os.unlink(p)


for m in members:
    d, b = os.path.split(norm(m.name))
    if b == ".wh..wh..opq":
        base = os.path.join(root, d)
        if not os.path.isdir(base) or os.path.islink(base):
            continue  # nothing below to hide; the layer's own entry replaces what is there
        for c in os.listdir(base):
            remove(os.path.join(base, c))
    elif b.startswith(".wh."):
        remove(os.path.join(root, d, b[4:]))

dirs = []
for m in members:
    name = norm(m.name)
    if os.path.basename(name).startswith(".wh."):
        continue
    p = os.path.join(root, name)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    if m.isdir():
        if os.path.lexists(p) and not (os.path.isdir(p) and not os.path.islink(p)):
            remove(p)
        if not os.path.lexists(p):
            os.mkdir(p)
    else:
        remove(p)
        if m.isreg():
            with open(p, "wb") as f:
                shutil.copyfileobj(tf.extractfile(m), f)
        elif m.issym():
            os.symlink(m.linkname, p)
        elif m.islnk():
            os.link(os.path.join(root, norm(m.linkname)), p, follow_symlinks=False)
            continue  # a link has no metadata of its own
        elif m.ischr() or m.isblk():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(p, kind | 0o600, os.makedev(m.devmajor, m.devminor))
        elif m.isfifo():
            os.mkfifo(p)
        else:
            sys.exit("unsupported member type %r for %s" % (m.type, m.name))
    os.chown(p, m.uid, m.gid, follow_symlinks=False)
    if not m.issym():
        os.chmod(p, m.mode)
    for k, v in m.pax_headers.items():
        if k.startswith("SCHILY.xattr."):
            os.setxattr(p, k[len("SCHILY.xattr."):], v.encode("utf-8", "surrogateescape"), follow_symlinks=False)
    if m.isdir():
        dirs.append((p, m.mtime))
    else:
        os.utime(p, (m.mtime, m.mtime), follow_symlinks=False)
for p, t in reversed(dirs):
    os.utime(p, (t, t), follow_symlinks=False)
