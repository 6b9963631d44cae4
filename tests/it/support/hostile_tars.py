#!/usr/bin/env python3
"""Write the hostile and corrupt layers for tests/it/apply_hostile.rs (never with layerkit).

usage: hostile_tars.py OUTDIR CANARY
CANARY is the absolute path of a canary dir outside the store; hostile symlinks, names and hardlink
targets name it, so a breakout would really hit it. Writes OUTDIR/base.tar (a good base layer) and
OUTDIR/<case>.layer for every case (plain tar, gzip or zstd; the applier detects the format).
Well-formed-but-malicious layers are written with Python's tarfile; corrupt ones by byte surgery on
headers built here (raw_header) so every field is under control.
"""
import gzip
import io
import os
import subprocess
import sys
import tarfile

out, canary = sys.argv[1], sys.argv[2]
assert canary.startswith("/"), "CANARY must be absolute"
C = canary.lstrip("/")  # the canary path as an in-root path
UP = "../" * 24  # more `..` than any layer root is deep: reaches "/" from anywhere
ENC = dict(encoding="utf-8", errors="surrogateescape")
PWNED = b"pwned\n"

# ---------------------------------------------------------------- members (tarfile)


def mem(name, typ=tarfile.REGTYPE, data=b"", pax=None, **kw):
    ti = tarfile.TarInfo(name)
    ti.type = typ
    ti.size = len(data) if typ == tarfile.REGTYPE else 0
    ti.mode = 0o644 if typ != tarfile.DIRTYPE else 0o755
    ti.mtime = 1700000000
    for k, v in kw.items():
        setattr(ti, k, v)
    if pax:
        ti.pax_headers = dict(pax)
    return ti, data


def F(name, data=PWNED, **kw):
    return mem(name, data=data, **kw)


def D(name, **kw):
    return mem(name, tarfile.DIRTYPE, **kw)


def L(name, target, **kw):
    return mem(name, tarfile.SYMTYPE, linkname=target, **kw)


def H(name, target, **kw):
    return mem(name, tarfile.LNKTYPE, linkname=target, **kw)


def CHR(name, major, minor, **kw):
    return mem(name, tarfile.CHRTYPE, devmajor=major, devminor=minor, **kw)


def BLK(name, major, minor, **kw):
    return mem(name, tarfile.BLKTYPE, devmajor=major, devminor=minor, **kw)


def tar(*members, fmt=tarfile.PAX_FORMAT):
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w", format=fmt, **ENC) as tf:
        for ti, data in members:
            tf.addfile(ti, io.BytesIO(data) if ti.size else None)
    return b.getvalue()


# ---------------------------------------------------------------- raw blocks


def raw_header(name, size=0, typ=b"0", linkname=b"", mode=0o644, mtime=1700000000, devmajor=0,
               devminor=0, size_field=None, fix_checksum=True):
    h = bytearray(512)
    name = name if isinstance(name, bytes) else name.encode()
    h[0:len(name)] = name
    h[100:108] = b"%07o\0" % mode
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = size_field if size_field is not None else b"%011o\0" % size
    h[136:148] = b"%011o\0" % mtime
    h[156:157] = typ
    h[157:157 + len(linkname)] = linkname
    h[257:265] = b"ustar\x0000"
    h[329:337] = b"%07o\0" % devmajor
    h[337:345] = b"%07o\0" % devminor
    h[148:156] = b"        "
    if fix_checksum:
        h[148:156] = b"%06o\0 " % sum(h)
    return bytes(h)


def pad(data):
    return data + b"\0" * (-len(data) % 512)


def rec(key, value):
    """A PAX record with a correct length prefix."""
    body = b" " + key + b"=" + value + b"\n"
    n = len(body) + 1
    while len(str(n).encode()) + len(body) != n:
        n += 1
    return str(n).encode() + body


def pax_block(records):
    return raw_header("PaxHeaders.0/x", len(records), b"x") + pad(records)


def raw_file(name, data, **kw):
    return raw_header(name, len(data), **kw) + pad(data)


END = b"\0" * 1024


def zstd(data):
    return subprocess.run(["zstd", "-q", "-c", "--check"], input=data, check=True,
                          capture_output=True).stdout


def zstd_first_block_header(z):
    """Offset of the first block header in a zstd frame."""
    assert z[:4] == b"\x28\xb5\x2f\xfd"
    fhd = z[4]
    fcs_flag, single, dict_flag = fhd >> 6, (fhd >> 5) & 1, fhd & 3
    off = 5 + (0 if single else 1) + [0, 1, 2, 4][dict_flag]
    off += [1 if single else 0, 2, 4, 8][fcs_flag]
    return off


# ---------------------------------------------------------------- the layers

cases = {}


def case(name, data):
    assert name not in cases, name
    cases[name] = data


BASE = tar(
    D("etc", mtime=1600000000),
    F("etc/group", b"base-group\n", mtime=1600000001),
    D("usr", mtime=1600000002),
    D("usr/lib", mtime=1600000003),
    F("usr/lib/libc.so", b"libc\n"),
    L("lib", "usr/lib"),
    L("out", "/" + C),  # a lower-layer symlink to the canary
    D("keep", mode=0o750, mtime=1600000004),
    F("keep/data", b"base data\n", mode=0o600, uid=1234, gid=5678),
)

# names
case("dotdot_plain", tar(F("../../../../dotdot_plain_evil"), fmt=tarfile.USTAR_FORMAT))
case("dotdot_mid", tar(D("a"), F("a/../../dotdot_mid_evil")))
case("dotdot_deep_canary", tar(F(UP + C + "/deep_evil")))
case("dotdot_pax_path", tar(F("benign_pax", pax={"path": UP + C + "/pax_evil"})))
case("dotdot_gnu_longname", tar(F(UP + C + "/gnu_evil"), fmt=tarfile.GNU_FORMAT))
case("dotdot_ustar_prefix", tar(F("../" * 40 + "prefix_evil"), fmt=tarfile.USTAR_FORMAT))
case("abs_name_canary", tar(F("/" + C + "/abs_evil")))
case("slash_dotdot", tar(F("/../slash_dotdot_evil"), fmt=tarfile.USTAR_FORMAT))
case("nul_in_pax_path", tar(F("benign_nul", pax={"path": "nul_evil\x00tail"})))
case("empty_name", tar(F("", b"x"), fmt=tarfile.USTAR_FORMAT))
case("dotdot_symlink_name", tar(L("../dotdot_link", "/")))
case("dotdot_dir_name", tar(D("sub"), D("sub/../../dotdot_dir")))
case("root_as_symlink", tar(L("./", "/" + C), F("root_evil")))
case("root_as_file", tar(F(".", b"x"), F("root_file_evil")))
case("parent_is_file", tar(F("pf"), F("pf/x")))
case("unknown_typeflag", raw_file("weird_type", b"abc", typ=b"Z") + END)
case("sparse_gnu", raw_file("sparse_file", b"", typ=b"S") + END)

# symlinks
case("sym_root_write", tar(L("s", "/"), F("s/etc/sym_root_x")))
case("sym_dotdot_write", tar(L("s", ".."), F("s/sym_dotdot_x")))
case("sym_up3_write", tar(L("s", "../../../x"), F("s/y")))
case("sym_canary_abs_write", tar(L("s", "/" + C), F("s/evil"), F("s/file")))
case("sym_canary_deep_rel_write", tar(L("s", UP + C), F("s/file")))
case("sym_chain", tar(L("c1", "c2"), L("c2", "sub/c3"), D("sub"), L("sub/c3", "/" + C),
                      F("c1/chain_x")))
case("sym_planted_deep_parent", tar(D("a"), L("a/b", "../../../../" + C), F("a/b/sub/x")))
case("sym_replaces_dir_write", tar(D("d"), F("d/keep"), L("d", "/" + C), F("d/x")))
case("sym_loop_parent", tar(L("loop1", "loop2"), L("loop2", "loop1"), F("loop1/x")))
case("sym_self_loop", tar(L("self", "self"), F("self/x")))
case("sym_chain_over_40", tar(*[L("l%d" % i, "l%d" % (i + 1)) for i in range(50)],
                              L("l50", "/" + C), F("l0/x")))
case("dir_over_canary_symlink", tar(L("s", "/" + C), D("s", mode=0o700, mtime=1)))
case("file_over_canary_symlink", tar(L("s", "/" + C + "/file"), F("s", mode=0o666, mtime=1)))
case("sym_lower_canary_write", tar(F("out/lower_evil")))
case("dir_over_lower_canary_symlink", tar(D("out", mode=0o700, mtime=1), F("out/y")))

# hardlinks
case("hl_dotdot", tar(F("t"), H("hl_dotdot", "../x")))
case("hl_pax_linkpath", tar(F("benign"), H("hl_pax", "benign", pax={"linkpath": UP + C + "/file"})))
case("hl_gnu_longlink", tar(H("hl_gnu", UP + C + "/file"), fmt=tarfile.GNU_FORMAT))
case("hl_prefix_store", tar(H("hl_prefix_store", "../store-evil/x")))
case("hl_prefix_into", tar(H("hl_prefix_into", "../into-evil/x")))
case("hl_abs_canary", tar(H("hl_abs_canary", "/" + C + "/file")))
case("hl_abs_host", tar(H("hl_abs_host", "/etc/passwd")))
case("hl_abs_lower", tar(H("hl_abs_lower", "/etc/group")))
case("hl_to_symlink_then_data", tar(L("s", "/" + C + "/file"), H("h", "s"), F("h")))
case("hl_to_symlink_metadata", tar(L("s", "/" + C + "/file"),
                                   H("h", "s", mode=0o777, uid=4242, gid=4242, mtime=1)))
case("hl_symlink_as_parent", tar(L("s", "/" + C), H("h", "s"), F("h/hx")))
case("hl_to_dir", tar(D("hd"), H("hl_dir", "hd")))
case("hl_before_target", tar(H("hl_early", "later"), F("later")))
case("hl_via_symlink_canary", tar(L("s", "/" + C), H("hl_via", "s/file")))
case("hl_via_lower_symlink", tar(H("hl_lower_via", "out/file")))

# whiteouts
case("wh_empty", tar(F(".wh.", b"")))
case("wh_dot", tar(F(".wh..", b"")))
case("wh_dotdot", tar(F(".wh...", b"")))
case("wh_parent_dotdot", tar(F("../.wh.x", b""), fmt=tarfile.USTAR_FORMAT))
case("wh_dir_component", tar(F("a/.wh.b/c")))
case("wh_aufs_plnk", tar(D(".wh..wh.plnk"), F(".wh..wh.plnk/1234.5678")))
case("wh_aufs_aufs", tar(F(".wh..wh.aufs", b"")))
case("wh_through_symlink", tar(L("s", "/" + C), F("s/.wh.file", b"")))
case("wh_through_lower_symlink", tar(F("out/.wh.file", b"")))
case("opq_through_symlink", tar(L("s", "/" + C), F("s/.wh..wh..opq", b"")))

# devices
case("char00_normal_name", tar(CHR("dev/null0", 0, 0)))
case("dev_major_4096", tar(CHR("dev/big_major", 4096, 0)))
case("dev_minor_1048576", tar(BLK("dev/big_minor", 1, 1048576)))
case("dev_base256_huge", tar(CHR("dev/huge", 2**40, 1), fmt=tarfile.GNU_FORMAT))
case("dev_base256_alias00", tar(CHR("dev/alias", 2**32, 2**32), fmt=tarfile.GNU_FORMAT))
case("dev_max_ok", tar(CHR("dev/max", 4095, 1048575)))

# streams
GOOD = tar(D("sd"), *[F("sd/f%d" % i, bytes([65 + i % 26]) * (3000 + 700 * i)) for i in range(30)])
case("stream_empty", b"")
case("stream_garbage", bytes((i * 7919 + 13) % 251 for i in range(4096)))
case("truncated_header", raw_file("a", b"abc") + raw_header("b")[:300])
case("truncated_data", raw_file("a", b"abc") + raw_header("big", 5000) + b"x" * 2000)
bad = bytearray(raw_file("bad_sum", b"abc") + END)
bad[0:1] = b"c"  # name changes, checksum does not
case("bad_checksum", bytes(bad))
case("size_beyond_data", raw_header("huge", 10 << 20) + pad(b"y" * 100) + END)
case("pax_bad_length", pax_block(b"99 path=pax_len_evil\n") + raw_file("pax_len_benign", b"z") + END)
case("pax_size_overflow", pax_block(rec(b"size", b"9" * 40)) + raw_file("pax_big", b"z") + END)
smuggled = raw_file("smuggled", b"evil\n")
inner = pad(smuggled + b"\0" * 512)
case("pax_size_overrides_ustar", pax_block(rec(b"size", str(len(inner)).encode()))
     + raw_header("outer", 0) + inner + END)
case("pax_newline_smuggling", tar(F("benign_nl", b"benign\n", pax={
    "SCHILY.xattr.user.nl": "a\n13 path=evil\n",
    "comment": "x\n13 path=evil\n24 linkpath=/etc/passwd\n",
})))
case("zero_block_mid", raw_file("zb_a", b"a") + b"\0" * 512 + raw_file("zb_b", b"b") + END)
gz = bytearray(gzip.compress(GOOD, mtime=0))
gz[-8] ^= 0xFF
case("gzip_bad_crc", bytes(gz))
gz = bytearray(gzip.compress(GOOD, mtime=0))
gz[-1] ^= 0x01
case("gzip_bad_isize", bytes(gz))
case("gzip_truncated", gzip.compress(GOOD, mtime=0)[:-2000])
zs = bytearray(zstd(GOOD))
zs[zstd_first_block_header(zs)] |= 0b110  # block type 3: reserved
case("zstd_bad_block_type", bytes(zs))
zs = bytearray(zstd(GOOD))
zs[-1] ^= 0xFF  # the frame's XXH64 content checksum
case("zstd_bad_checksum", bytes(zs))
case("zstd_truncated", zstd(GOOD)[:-100])
case("gzip_dotdot", gzip.compress(cases["dotdot_plain"], mtime=0))
case("zstd_sym_canary", zstd(cases["sym_canary_abs_write"]))

# readers that disagree (issue 11): GNU tar and Python apply a PAX global header, Go ignores it;
# GNU tar and Python read a GNU long name to the block's first NUL, Go to the declared size; Go keeps
# the last of two PAX headers (or long names), Python the first
def raw_pax(records, typ=b"x"):
    return raw_header("PaxHeaders.0/g", len(records), typ) + pad(records)


def gnu_long(typ, declared, block):
    return raw_header("././@LongLink", declared, typ) + pad(block)


case("pax_global_path", raw_pax(rec(b"path", b"evil.txt") + rec(b"size", b"2"), b"g")
     + raw_file("benign.txt", b"benign text\n") + END)
case("pax_global_comment", raw_pax(rec(b"comment", b"git commit id"), b"g")
     + raw_file("commented.txt", PWNED) + END)
case("gnu_longname_past_size", gnu_long(b"L", 5, b"short_evil\0") + raw_file("x", PWNED) + END)
case("gnu_longlink_past_size", gnu_long(b"K", 5, b"targe_evil\0")
     + raw_file("t", PWNED) + raw_header("lnk", 0, b"2", linkname=b"targe") + END)
case("pax_two_headers", raw_pax(rec(b"path", b"first_evil")) + raw_pax(rec(b"path", b"second_evil"))
     + raw_file("two_pax", PWNED) + END)
case("gnu_two_longnames", gnu_long(b"L", 10, b"first_evil") + gnu_long(b"L", 11, b"second_evil")
     + raw_file("two_long", PWNED) + END)
case("pax_size_above_i64", raw_pax(rec(b"size", b"18446744073709550080"))
     + raw_file("huge_size", PWNED) + END)
case("pax_size_i64_max_plus_one", raw_pax(rec(b"size", b"9223372036854775808"))
     + raw_file("i64_size", PWNED) + END)
case("pax_junk_over_limit", raw_pax(rec(b"comment", b"j" * 700000) + rec(b"SCHILY.xattr.user.a",
                                                                        b"v" * 400000))
     + raw_file("junk_member", PWNED) + END)
case("sym_through_missing_dotdot", tar(L("s", "missing/.."), F("s/f")))
# A marker through a symlink its own layer made: the lower path or the link's target? Refused.
case("whiteout_through_own_symlink", tar(D("d"), L("s", "d"), F("s/.wh.x", b"")))
case("opaque_through_own_symlink", tar(D("d"), L("s", "d"), F("s/.wh..wh..opq", b"")))
# The marker before the symlink: it concerns the lower `s/x`, which the symlink hides anyway.
case("whiteout_before_own_symlink", tar(D("d"), F("s/.wh.x", b""), L("s", "d")))
# Through a lower layer's symlink (`lib -> usr/lib` in the base): one meaning, accepted.
case("whiteout_through_lower_symlink", tar(F("lib/.wh.libc.so", b"")))
case("opaque_through_lower_symlink", tar(F("lib/.wh..wh..opq", b""), F("lib/new")))
# Owner ids Linux cannot hold: GNU tar clamps them (and fails), Go and Python keep them.
case("uid_beyond_32_bits", tar(F("big_uid", uid=2**40)))
case("gid_minus_one", tar(F("gid_m1", gid=4294967295)))
# A newline in an xattr name: a line-based reader sees a second PAX record `17 path=evil.txt`.
case("xattr_name_newline", tar(F("xattr_nl", pax={"SCHILY.xattr.user.a\n17 path": "evil.txt"})))
case("xattr_empty_name", tar(F("xattr_empty", pax={"SCHILY.xattr.": "v"})))
case("xattr_no_namespace", tar(F("xattr_nons", pax={"SCHILY.xattr.foo": "v"})))

os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "base.tar"), "wb") as f:
    f.write(BASE)
for name, data in cases.items():
    with open(os.path.join(out, name + ".layer"), "wb") as f:
        f.write(data)
