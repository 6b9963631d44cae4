#!/usr/bin/env python3
"""An OCI layer applier that shares no code with layerkit: Python's tarfile plus the image-spec rules.

usage: apply_oci.py ROOTFS LAYER      (plain, gzip or zstd tar; detected from the magic bytes)

Rules (opencontainers/image-spec layer.md):
- `D/.wh..wh..opq` removes every child of D that existed before this layer; `D/.wh.NAME` removes
  NAME as it existed before this layer. Both act on the pre-layer tree only, so they are applied
  first, whatever their position in the tar, and this layer's own entries always survive.
- Other entries are created in order: a non-dir replaces whatever is at its path (a dir with all
  its content); a dir over an existing dir keeps the children and takes the entry's attributes.
- Metadata: owner (lchown), then mode (not on symlinks), then xattrs from SCHILY.xattr.* (the
  entry's set replaces the old set, values binary-safe), then mtime (symlinks too, directories
  last, deepest first). Hardlink entries carry no metadata of their own.

Stricter than the spec on purpose, because layerdiff's output should never need leniency: a
duplicate path, an absolute or `..` name, a parent that is not yet a real directory, a hardlink to
anything but an earlier entry of this layer, a sparse member or an unknown type is an error.
"""
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile

if len(sys.argv) != 3:
    sys.exit(__doc__)
root, layer = os.path.abspath(sys.argv[1]), sys.argv[2]
# PAX values are byte strings: keep undecodable bytes as surrogates and re-encode them the same way.
ENC = dict(encoding="utf-8", errors="surrogateescape")
PAX_XATTR = "SCHILY.xattr."
KEEP_XATTRS = ("security.selinux",)  # host-specific; never ours to clear

with open(layer, "rb") as f:
    magic = f.read(4)
if magic == b"\x28\xb5\x2f\xfd":
    raw = subprocess.run(["zstd", "-dc", layer], check=True, capture_output=True).stdout
    tf = tarfile.open(fileobj=io.BytesIO(raw), mode="r:", **ENC)
elif magic[:2] == b"\x1f\x8b":
    tf = tarfile.open(layer, mode="r:gz", **ENC)
else:
    tf = tarfile.open(layer, mode="r:", **ENC)
members = tf.getmembers()


def fail(msg):
    sys.exit("apply_oci.py: " + msg)


def clean(name):
    """The layer path of a member: no leading './', no trailing '/', never escaping the root."""
    n = name
    while n.startswith("./"):
        n = n[2:]
    n = n.rstrip("/")
    parts = n.split("/")
    if not n or n.startswith("/") or any(p in ("", ".", "..") for p in parts):
        fail("bad member name %r" % name)
    return n


def lookup(rel):
    """The host path of `rel` if every parent is a real dir (symlinks are not followed), else None."""
    p = root
    parts = rel.split("/")
    for part in parts[:-1]:
        p = os.path.join(p, part)
        st = os.lstat(p) if os.path.lexists(p) else None
        if st is None or not stat.S_ISDIR(st.st_mode):
            return None
    return os.path.join(p, parts[-1])


def is_real_dir(p):
    return os.path.lexists(p) and stat.S_ISDIR(os.lstat(p).st_mode)


def remove(p):
    if is_real_dir(p):
        shutil.rmtree(p)
    elif os.path.lexists(p):
        os.unlink(p)


names = [clean(m.name) for m in members]
seen = set()
for n in names:
    if n in seen:
        fail("duplicate entry %r" % n)
    seen.add(n)

# 1. Whiteouts and opaque markers, against the tree as it was before this layer.
for n in names:
    d, _, b = n.rpartition("/")
    if not b.startswith(".wh."):
        continue
    if b == ".wh..wh..opq":
        base = lookup(n)  # resolves D's parents; D itself must be a real dir to have children
        base = os.path.dirname(base) if base else None
        if base and is_real_dir(base):
            for c in os.listdir(base):
                remove(os.path.join(base, c))
    else:
        target = lookup((d + "/" if d else "") + b[4:])
        if target:
            remove(target)

# 2. Everything else, in order.
created = {}
dirs = []
for m, n in zip(members, names):
    if n.rpartition("/")[2].startswith(".wh."):
        if not m.isreg() or m.size != 0:
            fail("whiteout %r is not an empty regular file" % m.name)
        continue
    p = lookup(n)
    if p is None:
        fail("parent of %r is not a directory (yet)" % m.name)
    if m.issparse():
        fail("sparse member %r" % m.name)
    if m.isdir():
        if os.path.lexists(p) and not is_real_dir(p):
            os.unlink(p)
        if not os.path.lexists(p):
            os.mkdir(p, 0o700)
    else:
        remove(p)
        if m.isreg():
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            with os.fdopen(fd, "wb") as f:
                shutil.copyfileobj(tf.extractfile(m), f)
        elif m.issym():
            os.symlink(os.fsencode(m.linkname), p)
        elif m.islnk():
            target = clean(m.linkname)
            if target not in created:
                fail("hardlink %r -> %r: not an earlier entry of this layer" % (m.name, m.linkname))
            os.link(created[target], p, follow_symlinks=False)
            created[n] = p
            continue  # a link shares its target's inode and metadata
        elif m.ischr() or m.isblk():
            kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
            os.mknod(p, kind | 0o600, os.makedev(m.devmajor, m.devminor))
        elif m.isfifo():
            os.mkfifo(p, 0o600)
        else:
            fail("unsupported member type %r for %r" % (m.type, m.name))
    created[n] = p
    os.chown(p, m.uid, m.gid, follow_symlinks=False)
    if not m.issym():
        os.chmod(p, stat.S_IMODE(m.mode))
    want = {
        k[len(PAX_XATTR):]: v.encode("utf-8", "surrogateescape")
        for k, v in m.pax_headers.items()
        if k.startswith(PAX_XATTR)
    }
    for x in os.listxattr(p, follow_symlinks=False):
        if x not in want and x not in KEEP_XATTRS:
            os.removexattr(p, x, follow_symlinks=False)
    for x, v in sorted(want.items()):
        os.setxattr(p, x, v, follow_symlinks=False)
    if m.isdir():
        dirs.append((n.count("/"), p, m.mtime))
    else:
        os.utime(p, (m.mtime, m.mtime), follow_symlinks=False)

# 3. Directory times last, deepest first, so creating children cannot disturb them.
for _, p, t in sorted(dirs, key=lambda d: -d[0]):
    os.utime(p, (t, t), follow_symlinks=False)
