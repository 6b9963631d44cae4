//! layerapply on hostile and corrupt layers (semantics.md D, contract "Security decisions").
//!
//! Every layer comes from `support/hostile_tars.py` (Python tarfile or raw byte surgery, never
//! layerkit). Hostile symlinks, names and hardlink targets name a real canary dir next to the
//! store (files, a subdir, a symlink, xattrs, odd modes, owners and mtimes), so a breakout would
//! really hit it. For every case, as root:
//! - `--store S base.tar hostile` (base applied and dumped in an earlier run, so it is reused):
//!   the prescribed outcome, rejected (exit 1, exactly one non-`warning:` stderr line that starts
//!   with `layerapply: `, names the layer argument and, for entry-level rules, the entry) or
//!   confined (exit 0, the written objects at their in-root places inside the new layer dir);
//!   the base layer's dump and inode/ctime fingerprint unchanged; when rejected, `S` and `S/l`
//!   list exactly what they listed before; `S/.layerkit/staging` empty or absent;
//! - `--into DIR` with DIR absent (layerapply) and DIR empty (`layerkit apply`): same outcome;
//!   when rejected DIR is left absent / empty, when confined the same in-root objects;
//! - after each run the canary's inode/ctime fingerprint (any write, chmod, chown, utimes, xattr
//!   or link changes a ctime) and, per case, its dump.py dump are unchanged, as are the prefix-trick
//!   dirs `store-evil/` and `into-evil/` beside the store; no escape name appears in any
//!   ancestor dir.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::support::*;

/// What must hold inside a confined layer dir. Paths are in-root; `@` stands for the canary's
/// absolute path without its leading `/` (so `/@` is the canary itself).
#[derive(Clone, Copy, Debug)]
enum Probe {
    /// A regular file with this content.
    File(&'static str, &'static str),
    /// A regular file of this size.
    Size(&'static str, u64),
    Dir(&'static str),
    /// A symlink with this target.
    Sym(&'static str, &'static str),
    /// A char device 0/0 (an overlay whiteout).
    Char00(&'static str),
    /// A char device major:minor.
    Dev(&'static str, u32, u32),
    /// A dir with `trusted.overlay.opaque=y`.
    Opaque(&'static str),
    Absent(&'static str),
    /// Two names on one inode.
    Same(&'static str, &'static str),
}

/// The prescribed outcome.
#[derive(Clone, Copy, Debug)]
enum Want {
    /// Exit 1, one error line naming the layer and each of these (entry paths, `@` expanded).
    Reject(&'static [&'static str]),
    /// Exit 0 and these probes hold in the layer dir.
    Confine(&'static [Probe]),
}

use Probe::*;
use Want::*;

struct Case {
    name: &'static str,
    store: Want,
    into: Want,
}

const fn same(name: &'static str, want: Want) -> Case {
    Case {
        name,
        store: want,
        into: want,
    }
}

const fn split(name: &'static str, store: Want, into: Want) -> Case {
    Case { name, store, into }
}

const PW: &str = "pwned\n";

const NAMES: &[Case] = &[
    same("dotdot_plain", Reject(&["../../../../dotdot_plain_evil"])),
    same("dotdot_mid", Reject(&["a/../../dotdot_mid_evil"])),
    same("dotdot_deep_canary", Reject(&["@/deep_evil"])),
    same("dotdot_pax_path", Reject(&["@/pax_evil"])),
    same("dotdot_gnu_longname", Reject(&["@/gnu_evil"])),
    same("dotdot_ustar_prefix", Reject(&["../prefix_evil"])),
    same("abs_name_canary", Confine(&[File("@/abs_evil", PW)])),
    same("slash_dotdot", Reject(&["../slash_dotdot_evil"])),
    same("nul_in_pax_path", Reject(&["nul_evil"])),
    same("empty_name", Reject(&[])),
    same("dotdot_symlink_name", Reject(&["../dotdot_link"])),
    same("dotdot_dir_name", Reject(&["sub/../../dotdot_dir"])),
    same("root_as_symlink", Reject(&[])),
    same("root_as_file", Reject(&[])),
    same("parent_is_file", Reject(&["pf/x"])),
    same("unknown_typeflag", Reject(&["weird_type"])),
];

const SYMLINKS: &[Case] = &[
    same(
        "sym_root_write",
        Confine(&[Sym("s", "/"), File("etc/sym_root_x", PW)]),
    ),
    same(
        "sym_dotdot_write",
        Confine(&[Sym("s", ".."), File("sym_dotdot_x", PW)]),
    ),
    same("sym_up3_write", Confine(&[Dir("x"), File("x/y", PW)])),
    same(
        "sym_canary_abs_write",
        Confine(&[Sym("s", "/@"), File("@/evil", PW), File("@/file", PW)]),
    ),
    same("sym_canary_deep_rel_write", Confine(&[File("@/file", PW)])),
    same("sym_chain", Confine(&[File("@/chain_x", PW)])),
    same("sym_planted_deep_parent", Confine(&[File("@/sub/x", PW)])),
    same(
        "sym_replaces_dir_write",
        Confine(&[Sym("d", "/@"), File("@/x", PW)]),
    ),
    same("sym_loop_parent", Reject(&["loop1/x"])),
    same("sym_self_loop", Reject(&["self/x"])),
    same("sym_chain_over_40", Reject(&["l0/x"])),
    same("dir_over_canary_symlink", Confine(&[Dir("s")])),
    same("file_over_canary_symlink", Confine(&[File("s", PW)])),
    same(
        "dir_over_lower_canary_symlink",
        Confine(&[Dir("out"), File("out/y", PW)]),
    ),
];

const HARDLINKS: &[Case] = &[
    same("hl_dotdot", Reject(&["hl_dotdot"])),
    same("hl_pax_linkpath", Reject(&["hl_pax"])),
    same("hl_gnu_longlink", Reject(&["hl_gnu"])),
    same("hl_prefix_store", Reject(&["hl_prefix_store"])),
    same("hl_prefix_into", Reject(&["hl_prefix_into"])),
    same("hl_abs_canary", Reject(&["hl_abs_canary"])),
    split(
        "hl_abs_lower",
        Confine(&[
            File("hl_abs_lower", "base-group\n"),
            Same("hl_abs_lower", "etc/group"),
        ]),
        Reject(&["hl_abs_lower"]),
    ),
    same(
        "hl_to_symlink_then_data",
        Confine(&[Sym("s", "/@/file"), File("h", PW)]),
    ),
    same(
        "hl_to_symlink_metadata",
        Confine(&[Sym("h", "/@/file"), Same("h", "s")]),
    ),
    same(
        "hl_symlink_as_parent",
        Confine(&[Same("h", "s"), File("@/hx", PW)]),
    ),
    same("hl_to_dir", Reject(&["hl_dir"])),
    same("hl_before_target", Reject(&["hl_early"])),
    same("hl_via_symlink_canary", Reject(&["hl_via"])),
    same("hl_via_lower_symlink", Reject(&["hl_lower_via"])),
];

const WHITEOUTS: &[Case] = &[
    same("wh_empty", Reject(&[".wh."])),
    same("wh_dot", Reject(&[".wh.."])),
    same("wh_dotdot", Reject(&[".wh..."])),
    same("wh_parent_dotdot", Reject(&["../.wh.x"])),
    same("wh_dir_component", Reject(&["a/.wh.b/c"])),
    same("wh_aufs_plnk", Reject(&[".wh..wh.plnk"])),
    same("wh_aufs_aufs", Reject(&[".wh..wh.aufs"])),
    // --store: nothing below has `@/file`, so the whiteout (a ghost in an unmerged dir) and the
    // dirs made for it go; --into keeps it for whatever lowers the dir gets.
    split(
        "wh_through_symlink",
        Reject(&["s/.wh.file", "a symlink of its own layer"]),
        Reject(&["s/.wh.file", "a symlink of its own layer"]),
    ),
];

const DEVICES: &[Case] = &[
    same("char00_normal_name", Reject(&["dev/null0"])),
    same("dev_major_4096", Reject(&["dev/big_major"])),
    same("dev_minor_1048576", Reject(&["dev/big_minor"])),
    same("dev_max_ok", Confine(&[Dev("dev/max", 4095, 1048575)])),
];

const STREAMS: &[Case] = &[
    same("stream_empty", Reject(&[])),
    same("stream_garbage", Reject(&[])),
    same("truncated_header", Reject(&[])),
    same("truncated_data", Reject(&[])),
    same("bad_checksum", Reject(&[])),
    same("size_beyond_data", Reject(&[])),
    same("pax_bad_length", Reject(&[])),
    same("pax_size_overflow", Reject(&[])),
    same(
        "pax_size_overrides_ustar",
        Confine(&[Size("outer", 1536), Absent("smuggled")]),
    ),
    same(
        "pax_newline_smuggling",
        Confine(&[File("benign_nl", "benign\n"), Absent("evil")]),
    ),
    same("zero_block_mid", Reject(&[])),
    same("gzip_bad_crc", Reject(&[])),
    same("gzip_bad_isize", Reject(&[])),
    same("gzip_truncated", Reject(&[])),
    same("zstd_bad_block_type", Reject(&[])),
    same("zstd_bad_checksum", Reject(&[])),
    same("zstd_truncated", Reject(&[])),
    same("gzip_dotdot", Reject(&["dotdot_plain_evil"])),
    same(
        "zstd_sym_canary",
        Confine(&[Sym("s", "/@"), File("@/evil", PW), File("@/file", PW)]),
    ),
];

/// Cases this suite first caught the engine getting wrong (fixed; kept as regressions):
/// - sparse_gnu, dev_base256_*: rejected, but the error line named no entry (the reader failed
///   "at byte 0" before the entry was known).
/// - hl_abs_host (--store): the error line named the target `etc/passwd` as the entry.
/// - sym_lower_canary_write, wh_through_lower_symlink (--store): a lower symlink whose in-root
///   target is missing was shadowed by an implied dir instead of being written through.
/// - opq_through_symlink: `s/.wh..wh..opq` turned the same-layer symlink `s` into an opaque dir
///   instead of marking its in-root target (then: marked the target; now refused, see
///   `whiteout_through_own_symlink`).
const REGRESSIONS: &[Case] = &[
    same("sparse_gnu", Reject(&["sparse_file"])),
    split(
        "sym_lower_canary_write",
        Confine(&[File("@/lower_evil", PW), Absent("out")]),
        Confine(&[Dir("out"), File("out/lower_evil", PW)]),
    ),
    same("hl_abs_host", Reject(&["hl_abs_host"])),
    split(
        "wh_through_lower_symlink",
        Confine(&[Char00("@/file"), Absent("out")]),
        Confine(&[Char00("out/file")]),
    ),
    same(
        "opq_through_symlink",
        Reject(&["s/.wh..wh..opq", "a symlink of its own layer"]),
    ),
    same("dev_base256_huge", Reject(&["dev/huge"])),
    same("dev_base256_alias00", Reject(&["dev/alias"])),
];

/// Archives GNU tar, Go and Python read differently (issue 11), and archives past the bounds
/// every member is held to: refused whole, whatever the position of the offending header.
const READERS: &[Case] = &[
    same(
        "pax_global_path",
        Reject(&["PAX global header sets \"path\""]),
    ),
    same(
        "pax_global_comment",
        Confine(&[File("commented.txt", PW), Absent("evil.txt")]),
    ),
    same(
        "gnu_longname_past_size",
        Reject(&["past its declared size"]),
    ),
    same(
        "gnu_longlink_past_size",
        Reject(&["past its declared size"]),
    ),
    same("pax_two_headers", Reject(&["a second PAX header"])),
    same("gnu_two_longnames", Reject(&["a second GNU long name"])),
    same(
        "pax_size_above_i64",
        Reject(&["huge_size", "largest a file can have"]),
    ),
    same("pax_size_i64_max_plus_one", Reject(&["i64_size"])),
    same("pax_junk_over_limit", Reject(&["limit"])),
    // Resolved as squash resolves it: `missing/..` is the root, and no `missing/` is left behind.
    same(
        "sym_through_missing_dotdot",
        Confine(&[Sym("s", "missing/.."), File("f", PW), Absent("missing")]),
    ),
    same(
        "whiteout_through_own_symlink",
        Reject(&[
            "s/.wh.x",
            "a symlink of its own layer",
            "s is a symlink in this layer",
        ]),
    ),
    same(
        "opaque_through_own_symlink",
        Reject(&["a symlink of its own layer", "s is a symlink in this layer"]),
    ),
    same(
        "whiteout_before_own_symlink",
        Confine(&[Dir("d"), Sym("s", "d"), Absent("d/x")]),
    ),
    split(
        "whiteout_through_lower_symlink",
        // The store resolves `lib` against the base when the layer is settled.
        Confine(&[Char00("usr/lib/libc.so"), Absent("lib")]),
        Confine(&[Char00("lib/libc.so")]),
    ),
    split(
        "opaque_through_lower_symlink",
        Confine(&[Opaque("usr/lib"), File("usr/lib/new", PW), Absent("lib")]),
        Confine(&[Opaque("lib"), File("lib/new", PW)]),
    ),
    same(
        "uid_beyond_32_bits",
        Reject(&["big_uid", "owner id out of range (uid 1099511627776"]),
    ),
    same(
        "gid_minus_one",
        Reject(&["gid_m1", "owner id out of range (gid 4294967295"]),
    ),
    same(
        "xattr_name_newline",
        Reject(&["xattr_nl", "control character in xattr name"]),
    ),
    same(
        "xattr_empty_name",
        Reject(&["xattr_empty", "empty xattr name"]),
    ),
    same(
        "xattr_no_namespace",
        Reject(&["xattr_nons", "no namespace"]),
    ),
];

/// Names a breakout would create; none may appear in any ancestor of a case dir.
const ESCAPE_NAMES: &[&str] = &[
    "dotdot_plain_evil",
    "dotdot_mid_evil",
    "slash_dotdot_evil",
    "prefix_evil",
    "dotdot_link",
    "dotdot_dir",
    "root_evil",
    "root_file_evil",
    "sym_dotdot_x",
    "etc/sym_root_x",
    "x/y",
    "chain_x",
    "lower_evil",
    "hx",
    ".wh.x",
    "evil",
    "abs_evil",
];

/// The scratch dir, the canary and the generated layers for one test function.
struct Env {
    _t: tempfile::TempDir,
    root: PathBuf,
    layers: PathBuf,
    canary: PathBuf,
    /// The canary as an in-root path (no leading `/`).
    at: String,
}

impl Env {
    fn new() -> Env {
        let t = scratch();
        let root = t.path().to_path_buf();
        sh(
            &root,
            "mkdir -p canary/sub cases
             printf 'canary file\\n' > canary/file
             printf 'inner\\n' > canary/sub/inner
             printf '#!/bin/sh\\n' > canary/exec
             ln -s file canary/link
             chown 1234:5678 canary/file
             chmod 0640 canary/file; chmod 0600 canary/sub/inner; chmod 4755 canary/exec
             chmod 0750 canary/sub; chmod 0751 canary
             setfattr -n user.canary -v keep canary/file
             setfattr -n user.canarydir -v keep canary/sub
             setfattr -n trusted.canary -v keep canary
             touch -h -d @1000000000 canary/link
             touch -d @1000000001 canary/file canary/sub/inner canary/exec
             touch -d @1000000002 canary/sub canary",
        );
        let canary = root.join("canary");
        let layers = root.join("layers");
        run(Command::new("python3")
            .arg(support("hostile_tars.py"))
            .arg(&layers)
            .arg(&canary));
        let at = canary.to_str().unwrap().trim_start_matches('/').to_string();
        Env {
            _t: t,
            root,
            layers,
            canary,
            at,
        }
    }

    fn expand(&self, s: &str) -> String {
        s.replace('@', &self.at)
    }
}

/// Every path under `root` (root included) with inode, link count, mode, owner, size, mtime and
/// ctime in nanoseconds: any write, chmod, chown, utimes, xattr change or new link shows up.
fn fingerprint(root: &Path) -> String {
    fn walk(p: &Path, rel: &str, out: &mut String) {
        let m = std::fs::symlink_metadata(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        out.push_str(&format!(
            "{rel} ino={} nlink={} mode={:o} uid={} gid={} size={} mtime={}.{} ctime={}.{}\n",
            m.ino(),
            m.nlink(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec()
        ));
        if m.is_dir() {
            for n in listing(p) {
                walk(&p.join(&n), &format!("{rel}/{n}"), out);
            }
        }
    }
    let mut out = String::new();
    walk(root, ".", &mut out);
    out
}

/// `dump.py` of every dir (one interpreter for all: `hostile_dumps.py`), plus their fingerprints.
fn snapshot(dirs: &[&Path]) -> String {
    let out = run(Command::new("python3")
        .arg(support("hostile_dumps.py"))
        .args(dirs));
    let mut s = String::from_utf8(out.stdout).expect("dump.py writes ASCII");
    for d in dirs {
        s.push_str(&fingerprint(d));
    }
    s
}

/// `layerapply` (or `layerkit apply`) under a timeout, so a hang fails instead of blocking.
fn applier(kit: bool) -> Command {
    let mut c = Command::new("timeout");
    c.arg("120");
    if kit {
        c.arg(env!("CARGO_BIN_EXE_layerkit")).arg("apply");
    } else {
        c.arg(env!("CARGO_BIN_EXE_layerapply"));
    }
    c
}

fn show(out: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Exit 1 and exactly one non-warning stderr line: `<prog>: ...`, naming the layer argument and,
/// outside the layer argument itself, every needle.
fn check_rejected(out: &Output, prog: &str, layer: &Path, needles: &[String], what: &str) {
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: must be rejected with exit 1\n{}",
        show(out)
    );
    let err = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("warning: "))
        .collect();
    assert_eq!(
        lines.len(),
        1,
        "{what}: exactly one non-warning stderr line\n{}",
        show(out)
    );
    let line = lines[0];
    assert!(
        line.starts_with(&format!("{prog}: ")),
        "{what}: the error line starts with `{prog}: `: {line:?}"
    );
    let layer = layer.to_str().unwrap();
    assert!(
        line.contains(layer),
        "{what}: the error names the layer argument {layer}: {line:?}"
    );
    let rest = line.replacen(layer, "", 1);
    for n in needles {
        assert!(
            rest.contains(n.as_str()),
            "{what}: the error names the entry {n:?}: {line:?}"
        );
    }
}

fn check_probes(env: &Env, dir: &Path, probes: &[Probe], what: &str) {
    for p in probes {
        let at = |rel: &str| dir.join(env.expand(rel));
        let meta = |rel: &str| {
            std::fs::symlink_metadata(at(rel))
                .unwrap_or_else(|e| panic!("{what}: {p:?}: {}: {e}", at(rel).display()))
        };
        match *p {
            File(rel, want) => {
                assert!(meta(rel).is_file(), "{what}: {p:?}: not a regular file");
                assert_eq!(
                    std::fs::read(at(rel)).unwrap(),
                    want.as_bytes(),
                    "{what}: {p:?}: content"
                );
            }
            Size(rel, n) => {
                let m = meta(rel);
                assert!(m.is_file() && m.len() == n, "{what}: {p:?}: got {m:?}");
            }
            Dir(rel) => assert!(meta(rel).is_dir(), "{what}: {p:?}: not a dir"),
            Sym(rel, target) => {
                assert!(meta(rel).is_symlink(), "{what}: {p:?}: not a symlink");
                assert_eq!(
                    std::fs::read_link(at(rel)).unwrap(),
                    PathBuf::from(env.expand(target)),
                    "{what}: {p:?}: target"
                );
            }
            Char00(rel) => {
                let m = meta(rel);
                assert!(
                    m.file_type().is_char_device() && m.rdev() == 0,
                    "{what}: {p:?}: not a 0/0 whiteout: {m:?}"
                );
            }
            Dev(rel, major, minor) => {
                let m = meta(rel);
                assert!(
                    m.file_type().is_char_device()
                        && rustix::fs::major(m.rdev()) == major
                        && rustix::fs::minor(m.rdev()) == minor,
                    "{what}: {p:?}: got {}:{}",
                    rustix::fs::major(m.rdev()),
                    rustix::fs::minor(m.rdev())
                );
            }
            Opaque(rel) => {
                assert!(meta(rel).is_dir(), "{what}: {p:?}: not a dir");
                let mut buf = [0u8; 16];
                let n = rustix::fs::lgetxattr(at(rel), "trusted.overlay.opaque", &mut buf)
                    .unwrap_or_else(|e| panic!("{what}: {p:?}: {e}"));
                assert_eq!(&buf[..n], b"y", "{what}: {p:?}");
            }
            Absent(rel) => assert!(
                std::fs::symlink_metadata(at(rel)).is_err(),
                "{what}: {p:?}: exists"
            ),
            Same(a, b) => assert_eq!(
                (meta(a).dev(), meta(a).ino()),
                (meta(b).dev(), meta(b).ino()),
                "{what}: {p:?}: not one inode"
            ),
        }
    }
}

/// The first line of stdout, split on ':'.
fn lowerdir(out: &Output, what: &str) -> Vec<PathBuf> {
    let s = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        s.lines().count(),
        1,
        "{what}: one stdout line\n{}",
        show(out)
    );
    s.trim_end().split(':').map(PathBuf::from).collect()
}

fn staging_clean(store: &Path, what: &str) {
    let st = store.join(".layerkit/staging");
    assert!(
        listing(&st).is_empty(),
        "{what}: {} not empty: {:?}",
        st.display(),
        listing(&st)
    );
}

/// Ancestors of `dir` up to `/`, each with which escape names exist in it.
fn escape_names_present(dir: &Path) -> Vec<String> {
    dir.ancestors()
        .flat_map(|a| ESCAPE_NAMES.iter().map(move |n| a.join(n)))
        .filter(|p| std::fs::symlink_metadata(p).is_ok())
        .map(|p| p.display().to_string())
        .collect()
}

/// The canary dirs: the one the tars name, and the prefix-trick siblings of the store and --into dir.
fn canaries(env: &Env, case_dir: &Path) -> [PathBuf; 3] {
    [
        env.canary.clone(),
        case_dir.join("store-evil"),
        case_dir.join("into-evil"),
    ]
}

fn fingerprints(dirs: &[PathBuf]) -> String {
    dirs.iter().map(|d| fingerprint(d)).collect()
}

fn run_case(env: &Env, case: &Case) {
    let name = case.name;
    let layer = env.layers.join(format!("{name}.layer"));
    assert!(
        layer.is_file(),
        "{name}: the generator wrote no {}",
        layer.display()
    );
    let c = env.root.join("cases").join(name);
    std::fs::create_dir(&c).unwrap();
    for d in ["store-evil", "into-evil"] {
        std::fs::create_dir(c.join(d)).unwrap();
        std::fs::write(c.join(d).join("x"), b"prefix canary\n").unwrap();
    }
    let cans = canaries(env, &c);
    let can_fp = fingerprints(&cans);
    let top_listing = listing(&env.root);
    let escapes_before = escape_names_present(&c);
    let check_canaries = |when: &str| {
        assert_same(
            &can_fp,
            &fingerprints(&cans),
            &format!("{name}: canary fingerprint after {when}"),
        );
        assert_eq!(
            listing(&env.root),
            top_listing,
            "{name}: new names beside the canary after {when}"
        );
        assert_eq!(
            escape_names_present(&c),
            escapes_before,
            "{name}: escape names in an ancestor after {when}"
        );
    };

    // (c) a good base layer in its own run.
    let store = c.join("store");
    let base_tar = env.layers.join("base.tar");
    let out = applier(false)
        .arg("--store")
        .arg(&store)
        .arg(&base_tar)
        .output()
        .unwrap();
    assert!(out.status.success(), "{name}: base layer\n{}", show(&out));
    let base = lowerdir(&out, "base")[0].clone();
    // (b), (c): the canaries and the base layer, by dump.py and by fingerprint.
    let watched: Vec<&Path> = [base.as_path()]
        .into_iter()
        .chain(cans.iter().map(PathBuf::as_path))
        .collect();
    let snap = snapshot(&watched);
    let base_fp = fingerprint(&base);
    // `.layerkit/` is internal state that any run may create (lock, staging).
    let ids = |s: &Path| -> Vec<String> {
        listing(s)
            .into_iter()
            .filter(|n| n != ".layerkit")
            .collect()
    };
    let store_listing = ids(&store);
    let links = listing(&store.join("l"));

    // --store S base.tar hostile
    let what = format!("{name} (--store, base reused)");
    let out = applier(false)
        .arg("--store")
        .arg(&store)
        .arg(&base_tar)
        .arg(&layer)
        .output()
        .unwrap();
    check_canaries("--store");
    match case.store {
        Reject(needles) => {
            let needles: Vec<String> = needles.iter().map(|n| env.expand(n)).collect();
            check_rejected(&out, "layerapply", &layer, &needles, &what);
            assert_eq!(ids(&store), store_listing, "{what}: store top level");
            assert_eq!(listing(&store.join("l")), links, "{what}: S/l");
        }
        Confine(probes) => {
            assert!(
                out.status.success(),
                "{what}: must be accepted\n{}",
                show(&out)
            );
            let dirs = lowerdir(&out, &what);
            assert_eq!(dirs.len(), 2, "{what}: two lowerdirs: {dirs:?}");
            assert_eq!(dirs[1], base, "{what}: base is the lower");
            assert!(
                dirs[0].starts_with(&store) && dirs[0].is_dir() && dirs[0] != base,
                "{what}: new layer dir {}",
                dirs[0].display()
            );
            check_probes(env, &dirs[0], probes, &what);
            assert_eq!(
                listing(&store.join("l")).len(),
                links.len() + 1,
                "{what}: one new S/l link"
            );
            assert_eq!(
                ids(&store).len(),
                store_listing.len() + 1,
                "{what}: one new layer id in the store"
            );
        }
    }
    staging_clean(&store, &what);
    assert_same(
        &base_fp,
        &fingerprint(&base),
        &format!("{what}: base inodes"),
    );

    // --into DIR, DIR absent (layerapply) and DIR empty (layerkit apply).
    let empty = c.join("into-empty");
    std::fs::create_dir(&empty).unwrap();
    let empty_meta = std::fs::metadata(&empty).unwrap();
    for (kit, dir) in [(false, c.join("into")), (true, empty.clone())] {
        let prog = if kit { "layerkit apply" } else { "layerapply" };
        let what = format!("{name} ({prog} --into {})", dir.display());
        let out = applier(kit)
            .arg("--into")
            .arg(&dir)
            .arg(&layer)
            .output()
            .unwrap();
        check_canaries(&what);
        match case.into {
            Reject(needles) => {
                let needles: Vec<String> = needles.iter().map(|n| env.expand(n)).collect();
                check_rejected(&out, prog, &layer, &needles, &what);
                if kit {
                    let m = std::fs::symlink_metadata(&dir).unwrap();
                    assert!(
                        m.is_dir()
                            && listing(&dir).is_empty()
                            && (m.mode(), m.uid(), m.gid())
                                == (empty_meta.mode(), empty_meta.uid(), empty_meta.gid()),
                        "{what}: DIR left as it was (empty dir): {:?}",
                        listing(&dir)
                    );
                } else {
                    assert!(
                        std::fs::symlink_metadata(&dir).is_err(),
                        "{what}: DIR left absent"
                    );
                }
            }
            Confine(probes) => {
                assert!(
                    out.status.success(),
                    "{what}: must be accepted\n{}",
                    show(&out)
                );
                assert!(
                    out.stdout.is_empty(),
                    "{what}: stdout empty\n{}",
                    show(&out)
                );
                check_probes(env, &dir, probes, &what);
            }
        }
    }
    let left: Vec<String> = listing(&c)
        .into_iter()
        .filter(|n| {
            !["store", "store-evil", "into-evil", "into-empty", "into"].contains(&n.as_str())
        })
        .collect();
    assert!(
        left.is_empty(),
        "{name}: stray names in the case dir: {left:?}"
    );
    assert_same(
        &snap,
        &snapshot(&watched),
        &format!("{name}: base layer and canaries (dump.py and fingerprint) after all runs"),
    );
}

/// Run every case (each one isolated by catch_unwind, so one report lists all failures).
fn run_table(what: &str, table: &[Case]) {
    if !need_root(what) {
        return;
    }
    let env = Env::new();
    let failed: Vec<&str> = table
        .iter()
        .filter(|c| catch_unwind(AssertUnwindSafe(|| run_case(&env, c))).is_err())
        .map(|c| c.name)
        .collect();
    assert!(
        failed.is_empty(),
        "{what}: {} of {} cases failed (details above): {failed:?}",
        failed.len(),
        table.len()
    );
}

#[test]
fn hostile_names_are_rejected_or_confined_in_root() {
    run_table("hostile names", NAMES);
}

#[test]
fn hostile_symlinks_never_lead_outside_the_layer() {
    run_table("hostile symlinks", SYMLINKS);
}

#[test]
fn hostile_hardlinks_never_reach_outside_the_layer() {
    run_table("hostile hardlinks", HARDLINKS);
}

#[test]
fn hostile_whiteouts_are_rejected_or_confined_in_root() {
    run_table("hostile whiteouts", WHITEOUTS);
}

#[test]
fn out_of_range_and_disguised_devices_are_rejected() {
    run_table("hostile devices", DEVICES);
}

#[test]
fn corrupt_streams_are_rejected_and_pax_is_read_by_length() {
    run_table("corrupt streams", STREAMS);
}

/// Regressions found by this suite: entry-less errors (sparse, base-256 devices, hardlinks resolved
/// in the lowers), a lower symlink whose target is missing below, an opaque marker through a symlink.
#[test]
fn regressions_name_the_entry_and_follow_symlinks_in_root() {
    run_table("regressions", REGRESSIONS);
}

#[test]
fn archives_readers_disagree_on_are_refused() {
    run_table("reader differentials", READERS);
}

#[test]
fn every_generated_layer_is_in_a_table() {
    let t = scratch();
    let layers = t.path().join("layers");
    run(Command::new("python3")
        .arg(support("hostile_tars.py"))
        .arg(&layers)
        .arg("/nonexistent/canary"));
    let mut generated: Vec<String> = listing(&layers)
        .into_iter()
        .filter_map(|n| n.strip_suffix(".layer").map(String::from))
        .collect();
    let mut table: Vec<String> = [
        NAMES,
        SYMLINKS,
        HARDLINKS,
        WHITEOUTS,
        DEVICES,
        STREAMS,
        REGRESSIONS,
        READERS,
    ]
    .iter()
    .flat_map(|t| t.iter().map(|c| c.name.to_string()))
    .collect();
    generated.sort();
    table.sort();
    assert_eq!(generated, table);
    assert!(table.len() >= 35);
}

/// One rulebook: over the empty base, `layerkit squash --flatten base X` accepts exactly the stacks
/// `layerapply --store` accepts, for every hostile and corrupt layer (a squash that takes what the
/// applier refuses would hand the ambiguity on; one that hangs or grows without bound on a size it
/// cannot seek fails by `timeout`).
#[test]
fn squash_accepts_and_refuses_what_the_store_does() {
    if !need_root("layerapply --store on hostile layers") {
        return;
    }
    let t = scratch();
    let layers = t.path().join("layers");
    run(Command::new("python3")
        .arg(support("hostile_tars.py"))
        .arg(&layers)
        .arg(t.path().join("canary")));
    let base = layers.join("base.tar");
    let mut differ = Vec::new();
    for name in listing(&layers) {
        let Some(case) = name.strip_suffix(".layer") else {
            continue;
        };
        let layer = layers.join(&name);
        let store = t.path().join(format!("store-{case}"));
        let applied = Command::new("timeout")
            .arg("60")
            .arg(env!("CARGO_BIN_EXE_layerapply"))
            .arg("--store")
            .arg(&store)
            .arg(&base)
            .arg(&layer)
            .output()
            .unwrap();
        let out = t.path().join(format!("{case}.tar"));
        let squashed = Command::new("timeout")
            .args(["-s", "KILL", "60"])
            .arg(env!("CARGO_BIN_EXE_layerkit"))
            .args(["squash", "--flatten", "-o"])
            .arg(&out)
            .arg(&base)
            .arg(&layer)
            .output()
            .unwrap();
        assert!(
            matches!(squashed.status.code(), Some(0 | 1)),
            "{case}: squash ended by {:?}: {}",
            squashed.status,
            String::from_utf8_lossy(&squashed.stderr)
        );
        if applied.status.success() != squashed.status.success() {
            differ.push(format!(
                "{case}: store {}, squash {} ({})",
                applied.status,
                squashed.status,
                String::from_utf8_lossy(&squashed.stderr).trim()
            ));
        }
        let _ = std::fs::remove_dir_all(&store);
    }
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

/// Small inputs that once made squash hold or copy hundreds of megabytes (issue 11): memory per
/// member is bounded (the index keeps no xattr values), and records no reader needs are not
/// passed on.
#[test]
fn small_bombs_stay_small() {
    let t = scratch();
    // 100 members with 15 xattrs of 60 KB each: 90 MB of values in a ~100 KB zstd layer.
    let script = r#"
import io, sys, tarfile
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as tf:
    for i in range(100):
        ti = tarfile.TarInfo("x%03d" % i)
        ti.size = 1
        ti.pax_headers = {"SCHILY.xattr.user.a%02d" % k: chr(65 + k) * 60000 for k in range(15)}
        tf.addfile(ti, io.BytesIO(b"x"))
with tarfile.open(sys.argv[2], "w", format=tarfile.PAX_FORMAT) as tf:
    ti = tarfile.TarInfo("junk")
    ti.size = 5
    ti.pax_headers = {"comment": "j" * 600000}
    tf.addfile(ti, io.BytesIO(b"junk\n"))
"#;
    let (xa, junk) = (t.path().join("xattrs.tar"), t.path().join("junk.tar"));
    run(Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(&xa)
        .arg(&junk));
    run(Command::new("zstd").args(["-q", "--rm"]).arg(&xa));
    let xz = t.path().join("xattrs.tar.zst");
    let out = t.path().join("o.tar");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_layerkit"));
    cmd.args(["squash", "-j", "1", "-o"]).arg(&out).arg(&xz);
    let rss = peak_rss_kib(&cmd);
    assert!(
        rss < 64 * 1024,
        "squash of 90 MB of xattr values: peak RSS {rss} KiB"
    );
    let members = tar_members(&out);
    assert_eq!(members.len(), 100);
    assert_eq!(
        members[99].xattr("user.a14").map(str::len),
        Some(120000),
        "values kept"
    );

    // A 600 KB comment: read past, not copied into the squashed layer.
    let out = t.path().join("j.tar");
    run(Command::new(env!("CARGO_BIN_EXE_layerkit"))
        .args(["squash", "-o"])
        .arg(&out)
        .arg(&junk));
    let len = std::fs::metadata(&out).unwrap().len();
    assert!(len < 64 * 1024, "junk copied along: {len} bytes");
    let m = tar_members(&out);
    assert!(
        m.len() == 1 && m[0].name == "junk" && m[0].size == 5,
        "{m:?}"
    );
}

/// The archives the fuzz targets found that the readers disagree on (`testdata/fuzz-regressions`,
/// see its README): each is refused, with one line, by `layerapply` and by `layerkit squash`
/// alike, unless its id is still listed in `KNOWN` (reported, not fixed).
#[test]
fn fuzz_found_reader_differentials_are_refused() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/fuzz-regressions");
    let known: Vec<String> = std::fs::read_to_string(dir.join("KNOWN"))
        .unwrap_or_default()
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|l| l.trim().to_string())
        .collect();
    let t = scratch();
    let mut checked = 0;
    for sub in ["differential", "tar_reader", "squash_index"] {
        for name in listing(&dir.join(sub)) {
            if known.iter().any(|k| name.starts_with(&format!("{k}."))) {
                continue;
            }
            let layer = dir.join(sub).join(&name);
            let into = t.path().join(format!("into-{name}"));
            let out = t.path().join(format!("out-{name}"));
            for mut cmd in [
                {
                    let mut c = layerapply();
                    c.arg("--into").arg(&into).arg(&layer);
                    c
                },
                {
                    let mut c = Command::new("timeout");
                    c.args(["-s", "KILL", "60"])
                        .arg(env!("CARGO_BIN_EXE_layerkit"))
                        .args(["squash", "-o"])
                        .arg(&out)
                        .arg(&layer);
                    c
                },
            ] {
                let r = cmd.output().unwrap();
                let err = String::from_utf8_lossy(&r.stderr);
                assert_eq!(r.status.code(), Some(1), "{sub}/{name}: {cmd:?}: {err}");
                assert_eq!(err.lines().count(), 1, "{sub}/{name}: {err}");
                assert!(err.contains(&name), "{sub}/{name}: names the layer: {err}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 10, "only {checked} regression files checked");
}
