#!/usr/bin/env python3
"""Ten synthetic layers for the squash bench: churn of every kind the squash algebra handles.

usage: gen-synth.py DIR        (writes DIR/S0.tar .. DIR/S9.tar; deterministic, seed 42)

Each layer adds ~1,500 files of 4-48 KiB (text-like, so compressible) across 60 dirs, and from the
second layer on also: overwrites ~300 earlier files, deletes ~200 (`.wh.`), empties one earlier
dir with an opaque marker and refills it, replaces a file by a dir and a dir by a file (each after a whiteout of
it, which GNU tar in the naive baseline needs), and adds
hardlinks (some to files a later layer overwrites). About 490 MB of tar in all.
"""
import io
import os
import random
import sys
import tarfile

rnd = random.Random(42)
WORDS = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9))) for _ in range(4000)]


def blob(n):
    out = bytearray()
    while len(out) < n:
        out += rnd.choice(WORDS) + (b"\n" if rnd.random() < 0.1 else b" ")
    return bytes(out[:n])


def add(t, name, kind, data=b"", link="", mtime=1_700_000_000):
    ti = tarfile.TarInfo(name)
    ti.mtime = mtime
    ti.uid = ti.gid = 0
    if kind == "d":
        ti.type, ti.mode = tarfile.DIRTYPE, 0o755
        t.addfile(ti)
    elif kind == "h":
        ti.type, ti.linkname, ti.mode = tarfile.LNKTYPE, link, 0o644
        t.addfile(ti)
    else:
        ti.size, ti.mode = len(data), 0o644
        t.addfile(ti, io.BytesIO(data))


def main():
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    files = []  # live regular files (by path)
    dirs = [f"d{i:02}" for i in range(60)]
    for layer in range(10):
        path = os.path.join(out, f"S{layer}.tar")
        tmp = path + ".part"
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as t:
            made = set()
            if layer == 0:
                for d in dirs:
                    add(t, d, "d")
            else:
                # whiteouts of earlier files
                for p in rnd.sample(files, min(200, len(files))):
                    files.remove(p)
                    d, b = os.path.split(p)
                    add(t, f"{d}/.wh.{b}", "f", mtime=0)
                # a dir becomes a file
                gone = dirs.pop(rnd.randrange(len(dirs)))
                files = [p for p in files if not p.startswith(gone + "/")]
                made = {p for p in made if not p.startswith(gone + "/")}
                add(t, f".wh.{gone}", "f", mtime=0)
                add(t, gone, "f", blob(3000))
                # one dir emptied and refilled
                d = rnd.choice(dirs)
                add(t, d, "d", mtime=1_700_000_000 + layer)
                add(t, f"{d}/.wh..wh..opq", "f", mtime=0)
                files = [p for p in files if not p.startswith(d + "/")]
                for i in range(50):
                    p = f"{d}/re{layer}_{i}"
                    add(t, p, "f", blob(rnd.randint(4096, 16384)))
                    files.append(p)
                    made.add(p)
                # overwrites
                for p in rnd.sample(files, min(300, len(files))):
                    if p in made:
                        continue
                    add(t, p, "f", blob(rnd.randint(4096, 49152)), mtime=1_700_000_000 + layer)
                    made.add(p)
                # a file becomes a dir, a dir becomes a file
                victim = rnd.choice([p for p in files if p not in made])
                files.remove(victim)
                vd, vb = os.path.split(victim)
                add(t, f"{vd}/.wh.{vb}", "f", mtime=0)  # GNU tar (the naive baseline) needs it
                add(t, victim, "d")
                add(t, victim + "/inside", "f", blob(5000))
                files.append(victim + "/inside")
                made.add(victim + "/inside")
                newd = f"n{layer}"
                dirs.append(newd)
                add(t, newd, "d")
            for i in range(1500):
                d = rnd.choice(dirs)
                p = f"{d}/f{layer}_{i}"
                add(t, p, "f", blob(rnd.randint(4096, 49152)))
                files.append(p)
                made.add(p)
            # hardlinks to this layer's files
            mine = sorted(made)
            for i in range(50):
                target = rnd.choice(mine)
                p = f"{os.path.dirname(target)}/hl{layer}_{i}"
                add(t, p, "h", link=target)
        os.replace(tmp, path)


if __name__ == "__main__":
    main()
