#!/usr/bin/env python3
"""Canonical, sorted text dump of a directory tree, one line per path, for comparing two trees.

usage: dump.py [--drop-overlay-xattrs] [--no-dir-mtimes] ROOT

A line is: PATH TYPE MODE UID GID [SIZE SHA256 | -> TARGET | MAJOR:MINOR] [mtime=S] [xattr=HEX ...]
[link=FIRST]
- PATH is relative to ROOT, sorted as bytes; bytes outside 0x21..0x7e and the backslash are written
  as \\xNN, so every name survives and fields never contain a space.
- TYPE: f file, d dir, l symlink, c/b char/block device, p fifo, s socket (listed so a caller can
  check that it existed and then drop it: a tar cannot carry sockets).
- MODE: the 12 permission bits in octal (symlinks always 0777 on Linux, listed anyway).
- mtime in whole seconds for everything except symlinks; for dirs unless --no-dir-mtimes.
- xattrs sorted by name, value in hex; --drop-overlay-xattrs leaves out trusted.overlay.* and
  user.overlay.* (for dumping an upper or lower itself; a merged view never shows them).
- link=FIRST: non-dirs sharing an inode inside ROOT name the byte-wise smallest path of the group.
The root's own metadata is not dumped.
"""
import hashlib
import os
import stat
import sys

args = sys.argv[1:]
drop_overlay = "--drop-overlay-xattrs" in args
dir_mtimes = "--no-dir-mtimes" not in args
paths = [a for a in args if not a.startswith("--")]
if len(paths) != 1:
    sys.exit(__doc__)
root = os.fsencode(paths[0])

TYPES = {
    stat.S_IFREG: "f",
    stat.S_IFDIR: "d",
    stat.S_IFLNK: "l",
    stat.S_IFCHR: "c",
    stat.S_IFBLK: "b",
    stat.S_IFIFO: "p",
    stat.S_IFSOCK: "s",
}


def esc(b):
    return "".join(chr(c) if 0x21 <= c <= 0x7E and c != 0x5C else "\\x%02x" % c for c in b)


def sha256(p):
    h = hashlib.sha256()
    with open(p, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


rows = {}
inodes = {}
for dirpath, dirnames, filenames in os.walk(root):
    for name in dirnames + filenames:
        p = os.path.join(dirpath, name)
        rel = os.path.relpath(p, root)
        st = os.lstat(p)
        t = TYPES[stat.S_IFMT(st.st_mode)]
        f = [t, "%04o" % stat.S_IMODE(st.st_mode), str(st.st_uid), str(st.st_gid)]
        if t == "f":
            f += [str(st.st_size), sha256(p)]
        elif t == "l":
            f += ["->", esc(os.readlink(p))]
        elif t in "cb":
            f.append("%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev)))
        if t != "l" and (t != "d" or dir_mtimes):
            f.append("mtime=%d" % int(st.st_mtime))
        for x in sorted(os.listxattr(p, follow_symlinks=False)):
            if drop_overlay and x.startswith(("trusted.overlay.", "user.overlay.")):
                continue
            f.append("%s=%s" % (esc(os.fsencode(x)), os.getxattr(p, x, follow_symlinks=False).hex()))
        rows[rel] = f
        if t != "d":
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)

for group in inodes.values():
    if len(group) > 1:
        first = min(group)
        for rel in group:
            rows[rel].append("link=" + esc(first))

out = sys.stdout
for rel in sorted(rows):
    out.write(esc(rel) + " " + " ".join(rows[rel]) + "\n")
