#!/usr/bin/env python3
"""A flat OCI layer applier (Python tarfile, no code shared with layerkit) for the layerapply tests.

usage: apply_flat.py ROOT LAYER...     (bottom first; plain, gzip incl. multi-member, zstd incl. multi-frame)

It applies each layer to one plain directory, as moby's UnpackLayer or umoci would, and is the
reference for what the kernel must show when it mounts the layers layerapply wrote. Unlike
apply_oci.py it is lenient where the layerapply contract is:
- Names: leading `/` and `./` stripped, empty and `.` components dropped (`..` is an error).
- Parents are resolved inside ROOT with chroot semantics: a symlink in a parent path is followed, an
  absolute target restarts at ROOT, `..` stops at ROOT (at most 40 links). Missing parents are
  created 0755 root:root, mtime 0, no xattrs.
- `D/.wh..wh..opq` removes every child D had before this layer, `D/.wh.X` removes X as it was before
  this layer: both first, whatever their position, so this layer's own entries always survive.
  A root-level marker empties the root.
- Then the other entries in order: a non-dir replaces whatever is at its path (a dir with its
  content), a dir over a dir keeps the children and takes the entry's attributes, a duplicate path
  means the last entry wins.
- Hardlinks resolve their target in ROOT (parents as above, the final component not followed), so
  a target from an earlier layer works; a link entry has no metadata of its own.
- Metadata: lchown, chmod (not symlinks), the entry's xattrs replace the old set (security.selinux
  from the tar is skipped; an existing one is kept), mtime with nanoseconds from a PAX `mtime`
  record (symlinks too).
- Directory times at the end of each layer: a dir with an entry gets the entry's mtime, a dir
  created as a missing parent gets 0, a dir that existed before the layer and has no entry keeps
  its old mtime (children added or removed do not change it: a native layer copies the lower
  dir's attributes into its implied dir).
"""
import io
import os
import shutil
import stat
import subprocess
import sys
import tarfile

ENC = dict(encoding="utf-8", errors="surrogateescape")
PAX_XATTR = "SCHILY.xattr."
SKIP_XATTRS = ("security.selinux",)
OPQ = ".wh..wh..opq"


def fail(msg):
    sys.exit("apply_flat.py: " + msg)


def open_layer(path):
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic == b"\x28\xb5\x2f\xfd":
        raw = subprocess.run(["zstd", "-dc", path], check=True, capture_output=True).stdout
        return tarfile.open(fileobj=io.BytesIO(raw), mode="r:", **ENC)
    if magic[:2] == b"\x1f\x8b":
        return tarfile.open(path, mode="r:gz", **ENC)  # gzip reads every member
    return tarfile.open(path, mode="r:", **ENC)


def clean(name):
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        fail("'..' in %r" % name)
    return parts


def lexists(p):
    return os.path.lexists(p)


def is_real_dir(p):
    return lexists(p) and stat.S_ISDIR(os.lstat(p).st_mode)


def remove(p):
    if is_real_dir(p):
        shutil.rmtree(p)
    elif lexists(p):
        os.unlink(p)


class Layer:
    def __init__(self, root):
        self.root = root
        self.implied = set()  # rel paths of dirs created as missing parents

    def host(self, comps):
        return os.path.join(self.root, *comps) if comps else self.root

    def resolve_dir(self, comps, create):
        """The resolved components of directory `comps`, or None if missing and not `create`."""
        cur, queue, hops = [], list(comps), 0
        while queue:
            c = queue.pop(0)
            if c in ("", "."):
                continue
            if c == "..":
                cur = cur[:-1]
                continue
            p = self.host(cur + [c])
            if os.path.islink(p):
                hops += 1
                if hops > 40:
                    fail("too many symlinks resolving %r" % "/".join(comps))
                t = os.readlink(p)
                if t.startswith("/"):
                    cur = []
                queue = t.split("/") + queue
                continue
            if not lexists(p):
                if not create:
                    return None
                os.mkdir(p)
                os.chown(p, 0, 0)
                os.chmod(p, 0o755)
                self.implied.add("/".join(cur + [c]))
            elif not stat.S_ISDIR(os.lstat(p).st_mode):
                if create:
                    fail("parent %r of %r is not a directory" % (c, "/".join(comps)))
                return None
            cur.append(c)
        return cur

    def path(self, parts, create):
        """(host path, rel path) of `parts` with its parents resolved; None if a parent is missing."""
        d = self.resolve_dir(parts[:-1], create)
        if d is None:
            return None
        return self.host(d + [parts[-1]]), "/".join(d + [parts[-1]])


def mtime_ns(m):
    s = m.pax_headers.get("mtime")
    if s is None:
        return int(m.mtime) * 10**9
    sec, _, frac = s.partition(".")
    ns = abs(int(sec)) * 10**9 + int((frac + "000000000")[:9])
    return -ns if s.startswith("-") else ns


def dir_times(root):
    out = {}
    for dp, dn, fn in os.walk(root):
        for n in dn:
            p = os.path.join(dp, n)
            if is_real_dir(p):
                out[os.path.relpath(p, root)] = os.lstat(p).st_mtime_ns
    return out


def apply(root, layer):
    tf = open_layer(layer)
    members = tf.getmembers()
    before = dir_times(root)
    L = Layer(root)

    # 1. Whiteouts and opaque markers, against the tree as it was before this layer.
    for m in members:
        parts = clean(m.name)
        if not parts or not parts[-1].startswith(".wh."):
            continue
        if parts[-1] == OPQ:
            d = L.resolve_dir(parts[:-1], create=False)
            if d is not None:
                base = L.host(d)
                for c in os.listdir(base):
                    remove(os.path.join(base, c))
        else:
            r = L.path(parts[:-1] + [parts[-1][4:]], create=False)
            if r:
                remove(r[0])

    # 2. Everything else, in order; the last duplicate wins.
    entry_dirs = {}
    for m in members:
        parts = clean(m.name)
        if not parts:
            continue  # the root itself: its metadata is not compared
        if parts[-1].startswith(".wh."):
            continue
        p, rel = L.path(parts, create=True)
        if m.isdir():
            if lexists(p) and not is_real_dir(p):
                os.unlink(p)
            if not lexists(p):
                os.mkdir(p, 0o700)
            entry_dirs[rel] = mtime_ns(m)
        else:
            remove(p)
            # The dirs below went with it: their entries' times no longer apply.
            for k in [k for k in entry_dirs if k == rel or k.startswith(rel + "/")]:
                del entry_dirs[k]
            if m.isreg():
                fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
                with os.fdopen(fd, "wb") as f:
                    shutil.copyfileobj(tf.extractfile(m), f)
            elif m.issym():
                os.symlink(os.fsencode(m.linkname), p)
            elif m.islnk():
                t = L.path(clean(m.linkname), create=False)
                if t is None or not lexists(t[0]) or is_real_dir(t[0]):
                    fail("hardlink %r -> %r: no such non-directory" % (m.name, m.linkname))
                os.link(t[0], p, follow_symlinks=False)
                continue
            elif m.ischr() or m.isblk():
                kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
                os.mknod(p, kind | 0o600, os.makedev(m.devmajor, m.devminor))
            elif m.isfifo():
                os.mkfifo(p, 0o600)
            else:
                fail("unsupported member type %r for %r" % (m.type, m.name))
        os.chown(p, m.uid, m.gid, follow_symlinks=False)
        if not m.issym():
            os.chmod(p, stat.S_IMODE(m.mode))
        want = {
            k[len(PAX_XATTR):]: v.encode("utf-8", "surrogateescape")
            for k, v in m.pax_headers.items()
            if k.startswith(PAX_XATTR) and k[len(PAX_XATTR):] not in SKIP_XATTRS
        }
        for x in os.listxattr(p, follow_symlinks=False):
            if x not in want and x not in SKIP_XATTRS:
                os.removexattr(p, x, follow_symlinks=False)
        for x, v in sorted(want.items()):
            os.setxattr(p, x, v, follow_symlinks=False)
        if not m.isdir():
            t = mtime_ns(m)
            os.utime(p, ns=(t, t), follow_symlinks=False)

    # 3. Directory times last.
    for rel in dir_times(root):
        if rel in entry_dirs:
            t = entry_dirs[rel]
        elif rel in L.implied:
            t = 0
        elif rel in before:
            t = before[rel]
        else:
            continue
        os.utime(os.path.join(root, rel), ns=(t, t), follow_symlinks=False)


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    root = os.path.abspath(sys.argv[1])
    os.makedirs(root, exist_ok=True)
    for layer in sys.argv[2:]:
        apply(root, layer)


main()
