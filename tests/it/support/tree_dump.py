#!/usr/bin/env python3
"""Canonical text dump of a directory tree, one line per path, for comparing trees.

usage: tree_dump.py ROOT
Per path (sorted by bytes): type, mode, uid, gid, then size+sha256 (files), target (symlinks), rdev
(devices), whole-second mtime (not for symlinks: a kernel overlay view and an applier need not agree
on symlink times), sorted xattrs in hex, and a hardlink group (smallest path sharing the inode).
Sockets are listed separately (a tar cannot hold them). Overlay-private xattrs never appear in a
merged view, and an applied tree must not have them either, so they are not filtered.
"""
import hashlib, os, stat, sys

root = os.fsencode(sys.argv[1])
rows, inodes = [], {}
for dirpath, dirnames, filenames in os.walk(root):
    dirnames.sort()
    for n in sorted(dirnames + filenames):
        p = os.path.join(dirpath, n)
        rel = os.path.relpath(p, root)
        st = os.lstat(p)
        m = st.st_mode
        if stat.S_ISSOCK(m):
            rows.append((rel, "socket"))
            continue
        t = {stat.S_IFREG: "f", stat.S_IFDIR: "d", stat.S_IFLNK: "l", stat.S_IFCHR: "c", stat.S_IFBLK: "b", stat.S_IFIFO: "p"}[stat.S_IFMT(m)]
        parts = [t, "%04o" % stat.S_IMODE(m) if t != "l" else "-", str(st.st_uid), str(st.st_gid)]
        if t == "f":
            h = hashlib.sha256()
            with open(p, "rb") as f:
                for b in iter(lambda: f.read(1 << 20), b""):
                    h.update(b)
            parts += [str(st.st_size), h.hexdigest()[:16]]
            inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
        if t == "l":
            parts.append("-> " + os.readlink(p).decode("utf-8", "backslashreplace"))
        if t in "cb":
            parts.append("%d:%d" % (os.major(st.st_rdev), os.minor(st.st_rdev)))
        if t != "l":
            parts.append("mtime=%d" % int(st.st_mtime))
        xs = sorted(os.listxattr(p, follow_symlinks=False))
        for x in xs:
            parts.append("%s=%s" % (x, os.getxattr(p, x, follow_symlinks=False).hex()))
        rows.append((rel, " ".join(parts)))
groups = {}
for names in inodes.values():
    if len(names) > 1:
        for n in names:
            groups[n] = min(names)
rows.sort()
for rel, line in rows:
    g = groups.get(rel)
    print(rel.decode("utf-8", "backslashreplace"), line, ("link=" + g.decode("utf-8", "backslashreplace")) if g else "")
