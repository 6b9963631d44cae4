#!/usr/bin/env python3
"""Differential check of layerkit's tar reader against Python's tarfile and GNU tar.

usage: differential.py [--lk-list PATH] [--json OUT] [--quiet] DIR_OR_FILE...

For every file (a corpus dir is walked, not recursively): layerkit's view comes from `lk-list` (the
tar Reader, after the same decompression as layerapply, plus `to_entry` of every member: layerkit
"accepts" an archive when the reader reads it to the end and every member converts, as apply and
squash need); Python's from `tarfile` (every member, regular files' data read to the end); GNU tar's
from `tar -tvv --numeric-owner --full-time --quoting-style=c --xattrs` (exit 0 = accepted).

Rules (a violation is a MISMATCH, exit 1):
  - Python and GNU tar agree (both accept, same members) and layerkit accepts: layerkit's members
    equal theirs: name, type, size, link target, mode, uid, gid, mtime (whole seconds), device
    numbers, xattr names and values (Python) and value lengths (GNU tar);
  - Python and GNU tar disagree (one refuses, or their members differ): layerkit refuses;
  - both refuse: layerkit refuses (accepting what neither accepts is reported as well).
Layerkit refusing what both accept is allowed (it is stricter on purpose) and only counted.
"""
import argparse
import calendar
import gzip
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import zlib

ENC = dict(encoding="utf-8", errors="surrogateescape")
HERE = os.path.dirname(os.path.abspath(__file__))


def h(s):
    return s.encode("utf-8", "surrogateescape").hex() if isinstance(s, str) else s.hex()


def typ(t):
    """Typeflags as layerkit reports them: NUL and contiguous ('7') are regular files."""
    return "0" if t in ("\0", "7", "") else t


def norm_name(hexname):
    """Names compared without trailing '/' (Python strips it from directories)."""
    b = bytes.fromhex(hexname)
    while b.endswith(b"/") and len(b) > 1:
        b = b[:-1]
    return b.hex()


# ----------------------------------------------------------------------------- Python


def decompress(data):
    """Python's view of the blob's compression (gzip module, the zstd CLI for zstd)."""
    if data[:2] == b"\x1f\x8b":
        return gzip.decompress(data)
    if data[:4] == b"\x28\xb5\x2f\xfd":
        r = subprocess.run(["zstd", "-dcq", "--long=31"], input=data, capture_output=True,
                           timeout=30)
        if r.returncode != 0:
            raise ValueError("zstd: " + r.stderr.decode(errors="replace").strip())
        return r.stdout
    return data


def py_mtime(m):
    """Whole seconds of Python's mtime, from the PAX record itself when there is one (Python keeps
    it as a float, which rounds large values)."""
    import decimal
    import math
    v = m.pax_headers.get("mtime")
    if v is not None:
        try:
            return math.floor(decimal.Decimal(v))
        except (decimal.InvalidOperation, ValueError, OverflowError):
            pass
    return int(m.mtime // 1)


def python_rows(path):
    import io
    with open(path, "rb") as f:
        raw = decompress(f.read())
    rows = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:", **ENC) as tf:
        for m in tf:
            if m.isreg():
                tf.extractfile(m).read()
            xs = {h(k[len("SCHILY.xattr."):]): h(v) for k, v in m.pax_headers.items()
                  if k.startswith("SCHILY.xattr.")}
            rows.append({
                "path": norm_name(h(m.name)), "type": typ(m.type.decode("latin-1")),
                # GNU tar lists a link target for links only; layerkit uses it for links only.
                "link": h(m.linkname) if m.type in (tarfile.LNKTYPE, tarfile.SYMTYPE) else "",
                "size": m.size if m.type not in (tarfile.LNKTYPE,) else 0, "mode": m.mode & 0o7777,
                "uid": m.uid, "gid": m.gid, "mtime": py_mtime(m),
                "devmajor": m.devmajor if m.ischr() or m.isblk() else 0,
                "devminor": m.devminor if m.ischr() or m.isblk() else 0,
                "xattrs": xs,
            })
    return rows


# ----------------------------------------------------------------------------- GNU tar

# The time is a date and a time of day, or (beyond what its calendar code handles) the raw number of
# seconds alone.
LINE = re.compile(r'^(?P<mode>\S{10})\*?\s+(?P<uid>-?\d+)/(?P<gid>-?\d+) +(?P<size>\S+) '
                  r'(?:(?P<date>\S+) (?P<time>\d\d:\S+)|(?P<secs>-?\d+)) +(?P<rest>".*)$')
GNU_TYPES = {"-": "0", "d": "5", "l": "2", "h": "1", "c": "3", "b": "4", "p": "6", "C": "0"}


def cstring(s, i):
    """Parse a C-quoted string starting at s[i] == '"'; returns (bytes, index after it)."""
    assert s[i] == '"'
    out = bytearray()
    i += 1
    esc = {"n": 10, "t": 9, "r": 13, "f": 12, "v": 11, "b": 8, "a": 7, "\\": 92, '"': 34,
           "?": 63, "'": 39}
    while s[i] != '"':
        c = s[i]
        if c == "\\":
            n = s[i + 1]
            if n in "01234567":
                j = i + 1
                while j < i + 4 and s[j] in "01234567":
                    j += 1
                out.append(int(s[i + 1:j], 8) & 0xFF)
                i = j
                continue
            out.append(esc.get(n, ord(n)))
            i += 2
            continue
        out += c.encode("utf-8", "surrogateescape")
        i += 1
    return bytes(out), i + 1


def mode_bits(m):
    bits = 0
    for i, (c, v) in enumerate(zip(m[1:], [0o400, 0o200, 0o100, 0o40, 0o20, 0o10, 4, 2, 1])):
        if c not in "-ST":
            bits |= v
    if m[3] in "sS":
        bits |= 0o4000
    if m[6] in "sS":
        bits |= 0o2000
    if m[9] in "tT":
        bits |= 0o1000
    return bits


def gnu_time(date, tm):
    m = re.fullmatch(r"(-?\d+)-(\d\d)-(\d\d)", date)
    t = re.fullmatch(r"(\d\d):(\d\d):(\d\d)(?:\.\d+)?", tm)
    if not m or not t:
        return None
    try:
        return calendar.timegm((int(m[1]), int(m[2]), int(m[3]), int(t[1]), int(t[2]), int(t[3])))
    except (ValueError, OverflowError):
        return None


# GNU tar errors that are limits of this host's types, not a reading of the archive: GNU tar still
# lists the member (clamped), so the member list is taken and the clamped fields are not compared.
RANGE = re.compile(r"^tar: Archive value .* is out of \w+ range .*$|"
                   r"^tar: Exiting with failure status due to previous errors$")


def gnu_decompress(path):
    """GNU's side of the decompression: the gzip and zstd programs (zstd with the 2 GiB window
    layerkit allows), as `tar -z` / `--zstd` would run them."""
    with open(path, "rb") as f:
        head = f.read(4)
    prog = (["gzip", "-dc"] if head[:2] == b"\x1f\x8b" else
            ["zstd", "-dcq", "--long=31"] if head == b"\x28\xb5\x2f\xfd" else None)
    if prog is None:
        return None
    r = subprocess.run(prog + [path], capture_output=True, timeout=60)
    if r.returncode != 0:
        raise ValueError("%s exit %d: %s" % (prog[0], r.returncode,
                                             r.stderr.decode(errors="replace").strip()[:300]))
    return r.stdout


def gnu_rows(path):
    env = dict(os.environ, TZ="UTC", LC_ALL="C")
    data = gnu_decompress(path)
    r = subprocess.run(["tar", "--numeric-owner", "--full-time", "--quoting-style=c", "--xattrs",
                        "--xattrs-include=*", "-tvvf", "-" if data is not None else path],
                       input=data, capture_output=True, env=env, timeout=60)
    errs = [ln for ln in r.stderr.decode(errors="replace").splitlines() if ln.startswith("tar: ")]
    clamped = r.returncode == 2 and errs and all(RANGE.match(ln) for ln in errs)
    if r.returncode != 0 and not clamped:
        raise ValueError("GNU tar exit %d: %s" % (r.returncode,
                                                  r.stderr.decode(errors="replace").strip()[:300]))
    rows = []
    for line in r.stdout.decode("utf-8", "surrogateescape").split("\n"):
        if not line:
            continue
        x = re.match(r"^  x: (\d+) (.*)$", line)
        if x:
            rows[-1]["xattr_lens"][h(x[2])] = int(x[1])
            continue
        if line.startswith("  "):
            continue
        m = LINE.match(line)
        if not m:
            raise ValueError("unparsed GNU tar line: %r" % line)
        name, i = cstring(m["rest"], 0)
        rest = m["rest"][i:]
        link = b""
        if rest.startswith(" -> ") or rest.startswith(" link to "):
            link, _ = cstring(rest, rest.index('"'))
        t = GNU_TYPES.get(m["mode"][0], "?" + m["mode"][0])
        size, dev = m["size"], (0, 0)
        if "," in size:
            a, b = size.split(",")
            dev, size = (int(a), int(b)), 0
        rows.append({
            "path": norm_name(name.hex()), "link": link.hex(), "type": t, "size": int(size),
            "mode": mode_bits(m["mode"]), "uid": int(m["uid"]), "gid": int(m["gid"]),
            "mtime": (int(m["secs"]) if m["secs"] is not None else gnu_time(m["date"], m["time"])),
            "devmajor": dev[0], "devminor": dev[1],
            "xattr_lens": {},
        })
        if clamped:
            for k in ("uid", "gid"):
                if rows[-1][k] == 4294967295:
                    rows[-1][k] = None
            rows[-1]["mtime"] = None
    return rows


# ----------------------------------------------------------------------------- comparison

COMMON = ("path", "link", "size", "mode", "uid", "gid", "devmajor", "devminor")


def diff_rows(a, b, an, bn, keys, mtime=True, types=True):
    """First difference between two member lists, or None."""
    if len(a) != len(b):
        return "%s has %d members, %s %d" % (an, len(a), bn, len(b))
    for i, (x, y) in enumerate(zip(a, b)):
        ks = list(keys) + (["type"] if types else [])
        if mtime and x.get("mtime") is not None and y.get("mtime") is not None:
            ks.append("mtime")
        for k in ks:
            if x[k] is not None and y[k] is not None and x[k] != y[k]:
                return "member %d (%s): %s %s=%r, %s=%r" % (
                    i, bytes.fromhex(x["path"])[:80], k, an, x[k], bn, y[k])
    return None


def gnu_type_ok(py_type, gnu_type):
    # GNU lists types it does not know as '?', and a few Python types differently.
    if gnu_type.startswith("?"):
        return py_type not in ("0", "1", "2", "3", "4", "5", "6")
    return py_type == gnu_type


def gnu_listing_form(rows):
    """GNU tar lists a hardlink's target without its leading '/' (it warns 'Removing leading'),
    but reads the same target; compare hardlink targets in that form."""
    out = []
    for r in rows:
        if r["type"] == "1":
            r = dict(r, link=bytes.fromhex(r["link"]).lstrip(b"/").hex())
        out.append(r)
    return out


def py_gnu_diff(p, g):
    d = diff_rows(gnu_listing_form(p), gnu_listing_form(g), "python", "gnu", COMMON, types=False)
    if d:
        return d
    for i, (x, y) in enumerate(zip(p, g)):
        if not gnu_type_ok(x["type"], y["type"]):
            return "member %d: type python=%r gnu=%r" % (i, x["type"], y["type"])
        lens = {k: len(v) // 2 for k, v in x["xattrs"].items()}
        if y["xattr_lens"] and lens != y["xattr_lens"]:
            return "member %d: xattrs python=%r gnu=%r" % (i, lens, y["xattr_lens"])
    return None


def lk_rows(raw):
    return [{**r, "path": norm_name(r["path"]), "link": r["link"] if r["type"] in "12" else ""}
            for r in raw]


def side(rows, p, g):
    """Which reference layerkit's list equals, for triage."""
    sides = []
    if p is not None and diff_rows(rows, p, "l", "p", COMMON) is None:
        sides.append("python")
    if g is not None and diff_rows(gnu_listing_form(rows), gnu_listing_form(g), "l", "g", COMMON,
                                   types=False) is None:
        sides.append("gnu")
    return "layerkit = " + (" = ".join(sides) if sides else "neither")


def check(path, lk):
    """Returns (verdict, detail). Verdicts starting with MISMATCH are failures."""
    try:
        p, perr = python_rows(path), None
    except Exception as e:  # noqa: BLE001 - any refusal by Python counts
        p, perr = None, "%s: %s" % (type(e).__name__, e)
    try:
        g, gerr = gnu_rows(path), None
    except Exception as e:  # noqa: BLE001
        g, gerr = None, str(e)
    if lk.get("panic"):
        return "MISMATCH-PANIC", "layerkit panicked: %s" % lk["err"]
    if "err" in lk:
        lk_ok, lk_err, rows = False, lk["err"], None
    else:
        rows = lk_rows(lk["ok"])
        bad = [r for r in rows if r.get("entry")]
        lk_ok = not bad
        lk_err = None if lk_ok else "reader accepts, to_entry refuses %s: %s" % (
            bytes.fromhex(bad[0]["path"])[:80], bad[0]["entry"])
    if p is not None and g is not None:
        d = py_gnu_diff(p, g)
        if d is None:
            if not lk_ok:
                return "strict", "python and gnu accept, layerkit refuses: %s" % lk_err
            d = diff_rows(rows, p, "layerkit", "python", COMMON + ("xattrs",))
            if d:
                return "MISMATCH-LIST", d
            for i, (x, y) in enumerate(zip(rows, g)):
                if not gnu_type_ok(x["type"], y["type"]) and not gnu_type_ok(y["type"], x["type"]):
                    return "MISMATCH-LIST", "member %d: type layerkit=%r gnu=%r" % (i, x["type"], y["type"])
            return "agree", ""
        if lk_ok:
            return "MISMATCH-ACCEPTS-DISAGREEMENT", "python and gnu disagree (%s); layerkit accepts (%s)" % (
                d, side(rows, p, g))
        return "refused-disagreement", d
    if p is None and g is None:
        if lk_ok:
            return "MISMATCH-ACCEPTS-REFUSED", "python (%s) and gnu (%s) refuse; layerkit accepts" % (perr, gerr)
        return "all-refuse", ""
    who = "python refuses (%s), gnu accepts" % perr if p is None else "gnu refuses (%s), python accepts" % gerr
    if lk_ok:
        return "MISMATCH-ACCEPTS-DISAGREEMENT", who + "; layerkit accepts (%s)" % side(rows, p, g)
    return "refused-disagreement", who


# ----------------------------------------------------------------------------- known classes


def _num_field_ids(f, decoded):
    """Ids of known numeric-field disagreements in one header field."""
    out = set()
    if not decoded or f == bytes(len(f)):
        return out
    if f[0] & 0x80:
        if f[0] not in (0x80, 0xFF):
            out.add("base256-lead-byte")
        return out
    if f[0] == 0 and any(f):
        out.add("numeric-leading-nul")
    return out


def known_classes(path):
    """Which known, reported disagreement classes (testdata/fuzz-regressions/KNOWN) the archive
    shows, by a walk over its headers. Used to label a mismatch, never to pass a file silently."""
    try:
        with open(path, "rb") as fh:
            b = decompress(fh.read())
    except Exception:  # noqa: BLE001
        return set()
    ids, off, pending_path = set(), 0, None
    octal = re.compile(rb"^[ \0]*[0-7]*[ \0]*$")
    while off + 512 <= len(b):
        h = b[off:off + 512]
        if h == bytes(512):
            off += 512
            continue
        typ = h[156:157]
        for a, z in ((100, 108), (108, 116), (116, 124), (124, 136), (136, 148)):
            ids |= _num_field_ids(h[a:z], True)
            if typ in (b"x", b"g", b"L", b"K") and h[a] not in (0x80, 0xFF) and not octal.match(h[a:z]):
                ids.add("unparsed-numeric-garbage")
        for a, z in ((329, 337), (337, 345)):
            if typ in (b"3", b"4"):
                ids |= _num_field_ids(h[a:z], True)
            elif h[a] not in (0x80, 0xFF) and not octal.match(h[a:z]):
                ids.add("unparsed-numeric-garbage")
        if h[257:263] != b"ustar\0" and h[345:500].split(b"\0")[0]:
            ids.add("prefix-without-ustar-magic")
        name = h[0:100].split(b"\0")[0]
        prefix = h[345:500].split(b"\0")[0]
        if prefix and h[257:263] == b"ustar\0":
            name = prefix + b"/" + name
        size_f = h[124:136]
        try:
            if size_f[0] & 0x80:
                size = int.from_bytes(size_f[1:], "big") if size_f[0] == 0x80 else 0
            else:
                digits = size_f.split(b"\0")[0].strip()
                size = int(digits or b"0", 8)
        except ValueError:
            size = 0
        data = b[off + 512:off + 512 + size]
        if typ == b"x":
            for m in re.finditer(rb"(\d+) ([^=]+)=", data):
                val = data[m.end():m.start(1) + int(m[1]) - 1]
                if m[2] == b"path":
                    pending_path = val
                if m[2] == b"mtime" and val.startswith(b"-") and b"." in val:
                    ids.add("pax-neg-fraction-mtime")
                if b"\0" in m[2]:
                    ids.add("pax-key-nul")
        elif typ == b"L":
            pending_path = data.split(b"\0")[0]
        elif typ not in (b"g", b"K"):
            full = pending_path if pending_path is not None else name
            if typ in (b"\0", b"0", b"7") and (full.endswith(b"/") or name.endswith(b"/")):
                ids.add("aregtype-trailing-slash")
            pending_path = None
        if size > len(b):
            break
        off += 512 + -(-size // 512) * 512
    return ids


def lk_list(binary, files):
    out = {}
    for i in range(0, len(files), 200):
        chunk = files[i:i + 200]
        r = subprocess.run([binary, *chunk], capture_output=True, timeout=600)
        if r.returncode != 0:
            raise SystemExit("lk-list failed (exit %d) on a batch starting with %s:\n%s" % (
                r.returncode, chunk[0], r.stderr.decode(errors="replace")[-3000:]))
        for line in r.stdout.decode().splitlines():
            j = json.loads(line)
            out[j["file"]] = j
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+")
    triple = subprocess.run(["rustc", "-vV"], capture_output=True, text=True).stdout
    triple = re.search(r"^host: (\S+)", triple, re.M)[1]
    ap.add_argument("--lk-list", default=os.path.join(HERE, "target", triple, "release", "lk-list"))
    ap.add_argument("--json", help="write every verdict here")
    ap.add_argument("--quiet", action="store_true", help="print only mismatches and the summary")
    a = ap.parse_args()
    files = []
    for p in a.paths:
        if os.path.isdir(p):
            files += sorted(os.path.join(p, n) for n in os.listdir(p)
                            if os.path.isfile(os.path.join(p, n)))
        else:
            files.append(p)
    t0 = time.time()
    lk = lk_list(a.lk_list, files)
    # Reported, not yet fixed bugs (fuzz/run-ci.sh exports testdata/fuzz-regressions/KNOWN): a
    # mismatch in a file named <id>.* or showing a listed class (known_classes) is reported as
    # known-<verdict> with the ids, not failed.
    known = {k for k in os.environ.get("LAYERKIT_FUZZ_KNOWN", "").split(",") if k}
    counts, mismatches, verdicts = {}, [], []
    for f in files:
        v, d = check(f, lk[f])
        if v.startswith("MISMATCH"):
            ids = ({os.path.basename(f).split(".")[0]} | known_classes(f)) & known
            if ids:
                v, d = "known-" + v, "[%s] %s" % (",".join(sorted(ids)), d)
        counts[v] = counts.get(v, 0) + 1
        verdicts.append({"file": f, "verdict": v, "detail": d})
        if v.startswith("MISMATCH"):
            mismatches.append((f, v, d))
            print("%s %s: %s" % (v, f, d))
        elif not a.quiet:
            print("%s %s%s" % (v, f, (": " + d) if d else ""))
    if a.json:
        with open(a.json, "w") as j:
            json.dump(verdicts, j, indent=1)
    print("differential: %d files in %.0fs: %s" % (
        len(files), time.time() - t0, ", ".join("%s %d" % kv for kv in sorted(counts.items()))))
    print("%d passed, %d failed" % (len(files) - len(mismatches), len(mismatches)))
    sys.exit(1 if mismatches else 0)


if __name__ == "__main__":
    main()
