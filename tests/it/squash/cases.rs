//! Hand-written stacks (gen_layers.py) checked by apply_flat.py over four bases and by the
//! kernel, and the CLI contract: bad layers, usage errors, determinism, `--json` digests.

use std::cell::OnceCell;
use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::model::{
    ancestors, base_of, clean, dirs_base, files_base, join, parent_of, parse_pax_time,
    spec_section, Attrs, Change, Fs, Kind, OPQ,
};
use super::raw::{
    assert_raw_ok, fresh_dirs, opaque_dirs, raw_from_members, raw_problems, whiteouts,
};
use super::{fresh, no_links, plain_tar, quiet, squash_cmd, squash_to, tree_text};
use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Hand-written stacks: apply_flat.py over four bases is the truth

/// A stack written by `gen_layers.py`, its bases, and cached truths.
pub(super) struct Case {
    pub(super) tmp: tempfile::TempDir,
    /// The stack's layer tars, bottom first.
    pub(super) tars: Vec<PathBuf>,
    /// (name, base tar; None = the empty base).
    pub(super) bases: Vec<(String, Option<PathBuf>)>,
    /// apply_flat's tree of base + stack, per base.
    pub(super) want: OnceCell<Vec<String>>,
}

/// Write the sections of a gen_layers.py spec into `dir`; the tars in spec order.
pub(super) fn gen_layers(dir: &Path, spec: &str) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir).unwrap();
    run_with_stdin(
        Command::new(python())
            .arg(support("gen_layers.py"))
            .arg(dir),
        spec.as_bytes(),
    );
    spec.lines()
        .filter_map(|l| l.trim().strip_prefix("==="))
        .map(|rest| dir.join(format!("{}.tar", rest.split_whitespace().next().unwrap())))
        .collect()
}

/// A layer read by Python tarfile (`tar_members`), for the bases and the stack's shape: file
/// contents are left out (zeros of the right size). The `tar` crate cannot read these: it splits
/// PAX records at newlines, and the every-type stack has a binary xattr value with one.
pub(super) fn read_layer(p: &Path) -> Vec<Change> {
    let mut out = Vec::new();
    for m in tar_members(p) {
        let path = clean(&m.name).unwrap_or_else(|e| panic!("{e}"));
        let base = base_of(&path);
        if let Some(rest) = base.strip_prefix(".wh.") {
            let dir = parent_of(&path).to_string();
            out.push(if base == OPQ {
                Change::Opaque(dir)
            } else {
                Change::Whiteout(join(&dir, rest))
            });
            continue;
        }
        if path.is_empty() {
            continue;
        }
        let hex = |k: &str| m.pax.get(k).map(|v| hex::decode(v).unwrap());
        let mtime_ns = match hex("mtime") {
            Some(v) => parse_pax_time(&v).unwrap(),
            None => m.mtime.parse::<i128>().unwrap() * 1_000_000_000,
        };
        let xattrs = m
            .pax
            .keys()
            .filter_map(|k| k.strip_prefix("SCHILY.xattr."))
            .filter(|n| *n != "security.selinux")
            .map(|n| (n.to_string(), hex(&format!("SCHILY.xattr.{n}")).unwrap()))
            .collect();
        let attrs = Attrs {
            mode: m.mode & 0o7777,
            uid: m.uid,
            gid: m.gid,
            mtime_ns,
            xattrs,
        };
        let kind = match m.typ {
            '5' => Kind::Dir,
            '2' => Kind::Symlink(m.link.clone()),
            '1' => {
                out.push(Change::Link(path, clean(&m.link).unwrap()));
                continue;
            }
            '3' => Kind::Char(m.dev.0, m.dev.1),
            '4' => Kind::Block(m.dev.0, m.dev.1),
            '6' => Kind::Fifo,
            '0' | '7' => Kind::File(vec![0; m.size as usize]),
            t => panic!("{}: {path}: type {t}", p.display()),
        };
        out.push(Change::Node(path, kind, attrs));
    }
    out
}

impl Case {
    /// The stack in `spec` over the four standard bases: empty, its own bottom layer, every
    /// mentioned path a dir with children, every mentioned path a file (where valid).
    fn new(spec: &str) -> Case {
        let tmp = scratch();
        let tars = gen_layers(&tmp.path().join("tars"), spec);
        let parsed: Vec<Vec<Change>> = tars.iter().map(|t| read_layer(t)).collect();
        let layers: Vec<&[Change]> = parsed.iter().map(|l| &l[..]).collect();
        Fs::of(&layers).unwrap_or_else(|e| panic!("the stack itself is invalid: {e}"));
        let spec = spec_section("dirs", &dirs_base(&layers))
            + &spec_section("files", &files_base(&layers));
        let b = gen_layers(&tmp.path().join("bases"), &spec);
        let bases = vec![
            ("empty".to_string(), None),
            ("bottom layer".to_string(), Some(tars[0].clone())),
            ("dirs".to_string(), Some(b[0].clone())),
            ("files".to_string(), Some(b[1].clone())),
        ];
        Case {
            tmp,
            tars,
            bases,
            want: OnceCell::new(),
        }
    }

    /// The first section of `spec` is the only base; the others are the stack.
    fn on_base(spec: &str) -> Case {
        let tmp = scratch();
        let mut tars = gen_layers(&tmp.path().join("tars"), spec);
        let base = tars.remove(0);
        Case {
            tmp,
            tars,
            bases: vec![("given".to_string(), Some(base))],
            want: OnceCell::new(),
        }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// `layerkit squash ARGS` of the stack into a fresh `.tar`.
    fn squash(&self, args: &[&str]) -> PathBuf {
        let out = self.p(&format!("{}.tar", fresh("sq")));
        squash_to(&self.tars, &out, args);
        out
    }

    /// apply_flat's tree (dump + ns mtimes) of `layers` applied to an empty dir.
    pub(super) fn flat(&self, layers: &[&Path]) -> Result<String, String> {
        let root = self.p(&fresh("flat"));
        let out = Command::new(python())
            .arg(support("apply_flat.py"))
            .arg(&root)
            .args(layers)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(format!(
                "apply_flat.py {layers:?} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(tree_text(&root))
    }

    pub(super) fn with_base<'a>(base: &'a Option<PathBuf>, layers: &[&'a Path]) -> Vec<&'a Path> {
        base.iter()
            .map(|b| b.as_path())
            .chain(layers.iter().copied())
            .collect()
    }

    /// The trees the stack gives over each base.
    fn want(&self) -> &[String] {
        self.want.get_or_init(|| {
            let stack: Vec<&Path> = self.tars.iter().map(|p| p.as_path()).collect();
            self.bases
                .iter()
                .map(|(name, b)| {
                    self.flat(&Case::with_base(b, &stack))
                        .unwrap_or_else(|e| panic!("base {name} + stack: {e}"))
                })
                .collect()
        })
    }

    /// The law over every base: apply_flat(B + squashed) == apply_flat(B + stack).
    fn law(&self, squashed: &Path) -> Result<(), String> {
        for ((name, b), want) in self.bases.iter().zip(self.want()) {
            let got = self.flat(&Case::with_base(b, &[squashed]))?;
            if &got != want {
                return Err(format!(
                    "base {name}: base + squash differs from base + stack\n{}",
                    unified_diff(want, &got)
                ));
            }
        }
        Ok(())
    }

    /// The flatten law: apply_flat(flattened) == apply_flat(stack), except where apply_flat
    /// reads a lone opaque marker for a missing dir as nothing: semantics.md A2.2, the kernel
    /// and moby make the dir (empty, 0755 root, mtime 0), so the flatten output may have it.
    fn law_flatten(&self, flattened: &Path) -> Result<(), String> {
        let i = self.bases.iter().position(|(_, b)| b.is_none()).unwrap();
        let want = &self.want()[i];
        let got = self.flat(&[flattened])?;
        let mut marker_dirs = BTreeSet::new();
        for t in &self.tars {
            for c in read_layer(t) {
                if let Change::Opaque(d) = c {
                    marker_dirs.extend(ancestors(&d).into_iter().map(String::from));
                    marker_dirs.insert(d);
                }
            }
        }
        let in_want: BTreeSet<&str> = want.lines().filter_map(|l| l.split(' ').next()).collect();
        let made = |l: &str| {
            let f: Vec<&str> = l.split(' ').collect();
            marker_dirs.contains(f[0])
                && !in_want.contains(f[0])
                && (f[1..] == ["d", "0755", "0", "0", "mtime=0"] || f[1..] == ["0"])
        };
        let got: String = got
            .lines()
            .filter(|l| !made(l))
            .map(|l| format!("{l}\n"))
            .collect();
        if &got != want {
            return Err(format!(
                "flatten: apply(squash --flatten) differs from apply(stack)\n{}",
                unified_diff(want, &got)
            ));
        }
        Ok(())
    }

    /// Squash (plain and --flatten), check the raw output and both laws; the plain output.
    fn check(&self) -> PathBuf {
        let sq = self.squash(&[]);
        assert_raw_ok(&sq, false);
        self.law(&sq).unwrap_or_else(|e| panic!("{e}"));
        let fl = self.squash(&["--flatten"]);
        assert_raw_ok(&fl, true);
        self.law_flatten(&fl).unwrap_or_else(|e| panic!("{e}"));
        sq
    }

    /// `layerapply --store` the layers into a fresh store; the lowerdir value.
    pub(super) fn store(&self, layers: &[&Path]) -> String {
        self.try_store(layers).unwrap_or_else(|e| panic!("{e}"))
    }

    pub(super) fn try_store(&self, layers: &[&Path]) -> Result<String, String> {
        let out = layerapply()
            .arg("--store")
            .arg(self.p(&fresh("store")))
            .args(layers)
            .output()
            .unwrap();
        if !out.status.success() {
            return Err(format!(
                "layerapply --store {layers:?}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(String::from_utf8(out.stdout).unwrap().trim().to_string())
    }

    /// The kernel: for each base in `law_bases`, the merged view of base + squashed equals the
    /// merged view of base + stack (`layerapply --store`), except for hardlink groups: a link in
    /// a layer to a lower file gets its own copy of the file (overlay cannot link across layers,
    /// semantics.md A4), which the squash output does not need. For each base in `flat_bases`
    /// the merged view of base + squashed is exactly apply_flat's tree of base + stack.
    fn kernel(
        &self,
        squashed: &Path,
        law_bases: &[&str],
        flat_bases: &[&str],
    ) -> Result<(), String> {
        let stack: Vec<&Path> = self.tars.iter().map(|p| p.as_path()).collect();
        for ((name, b), want) in self.bases.iter().zip(self.want()) {
            let (law, flat) = (
                law_bases.contains(&name.as_str()),
                flat_bases.contains(&name.as_str()),
            );
            if !law && !flat {
                continue;
            }
            let k_squash = merged_view(
                self.tmp.path(),
                &self.store(&Case::with_base(b, &[squashed])),
            )?;
            if flat && &k_squash != want {
                return Err(format!(
                    "base {name}: kernel view of base + squash differs from apply_flat's \
                     base + stack\n{}",
                    unified_diff(want, &k_squash)
                ));
            }
            if law {
                let k_stack =
                    merged_view(self.tmp.path(), &self.store(&Case::with_base(b, &stack)))?;
                if no_links(&k_stack) != no_links(&k_squash) {
                    return Err(format!(
                        "base {name}: kernel view of base + squash differs from base + stack\n{}",
                        unified_diff(&no_links(&k_stack), &no_links(&k_squash))
                    ));
                }
            }
        }
        Ok(())
    }
}

/// All four standard bases.
const ALL_BASES: &[&str] = &["empty", "bottom layer", "dirs", "files"];

/// The tree text of the merged view of `lowerdir`, or why it cannot be dumped.
pub(super) fn merged_view(tmp: &Path, lowerdir: &str) -> Result<String, String> {
    let m = mount_lowers(tmp, lowerdir, "");
    let merged = &m.path;
    let d = Command::new(python())
        .arg(support("dump.py"))
        .arg(merged)
        .output()
        .unwrap();
    if !d.status.success() {
        return Err(format!(
            "dump.py of the merged view {lowerdir} failed: {}",
            String::from_utf8_lossy(&d.stderr).trim()
        ));
    }
    Ok(format!(
        "{}--- mtimes (ns)\n{}",
        String::from_utf8(d.stdout).unwrap(),
        stat_list(merged, "mtime")
    ))
}

/// Filter a plain tar with Python tarfile: `drop-opaque`, `drop-whiteouts` (not the opaque
/// markers) or `links-first` (every hardlink moved to the front).
const TAMPER: &str = r#"
import io, sys, tarfile
src, dst, mode = sys.argv[1:4]
enc = dict(encoding="utf-8", errors="surrogateescape")
members = []
with tarfile.open(src, "r:", **enc) as tf:
    for m in tf:
        members.append((m, tf.extractfile(m).read() if m.isreg() else None))
base = lambda m: m.name.rstrip("/").rsplit("/", 1)[-1]
opq = lambda m: base(m) == ".wh..wh..opq"
if mode == "drop-opaque":
    members = [x for x in members if not opq(x[0])]
elif mode == "drop-whiteouts":
    members = [x for x in members if opq(x[0]) or not base(x[0]).startswith(".wh.")]
elif mode == "links-first":
    members = [x for x in members if x[0].islnk()] + [x for x in members if not x[0].islnk()]
else:
    sys.exit("unknown mode " + mode)
with tarfile.open(dst, "w", format=tarfile.PAX_FORMAT, **enc) as out:
    for m, data in members:
        out.addfile(m, io.BytesIO(data) if data is not None else None)
"#;

pub(super) fn tamper(src: &Path, mode: &str) -> PathBuf {
    let dst = src.with_file_name(format!("{}.tar", fresh(mode)));
    run(Command::new(python())
        .arg("-c")
        .arg(TAMPER)
        .arg(src)
        .arg(&dst)
        .arg(mode));
    dst
}

// ---------------------------------------------------------------------------------------------
// Hand-written cases

/// Dirs deleted (whiteout, opaque parent, replaced by a file) and re-created later, explicitly
/// or as an implied parent, in a later layer or the same one.
pub(super) const RECREATE: &str = r#"
=== L1
d x mode=0700 mtime=1500000000 x.user.old=1
f x/old data=old
d x/sub
f x/sub/deep data=deep
d y mode=0700 mtime=1500000001
f y/old data=old
d z
f z/old data=old
d w mode=0711
f w/old data=old
d v
f v/old data=old
d in/u
f in/u/old data=old
=== L2
w .wh.x
w .wh.y
w .wh.z
w .wh.base
w .wh.w
d w mode=0750 mtime=1600000200
f w/new data=new
w .wh.v
f v/new data=new
d in mtime=1600000201
w in/.wh..wh..opq
=== L3
d x mode=0750 mtime=1600000300.5
f x/new data=new
f y/new data=new
d base mode=0711 mtime=1600000301
f base/new data=new
d in/u mtime=1600000302
f in/u/new data=new
f z data=z-now-a-file
=== L4
d z mtime=1600000400
f z/new data=new
"#;

#[test]
fn deleted_and_recreated_dirs_come_out_opaque() {
    if !need_root("apply_flat.py (chown) and overlay mounts") {
        return;
    }
    let c = Case::new(RECREATE);
    let sq = c.check();
    let opq = fresh_dirs(&sq);
    for d in ["x", "z", "w", "base"] {
        assert!(
            opq.contains(d),
            "{d} was deleted and re-created as a dir: it must be opaque in the output, \
             opaque: {opq:?}"
        );
    }
    c.kernel(&sq, ALL_BASES, ALL_BASES)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Every replacement between file, dir and symlink, across layers, with the base's view.
const REPLACE: &str = r#"
=== L1
f p data=p-file mode=0600
d q mode=0700
f q/in data=in
d r
f r/in data=in
l s link=q
d t
f t/in data=in
f u data=u
d v
f v/in data=in
l k link=q
=== L2
d p mode=0750 mtime=1600000200
f p/in data=p-in
f q data=q-file
l r link=q
d s mtime=1600000201
f s/in data=s-in
l t link=nowhere
w .wh.u
l v link=/abs/target
f k data=k-file
=== L3
d t mode=0705 mtime=1600000300
f t/new data=t-new
d u
f u/x data=u
f v data=v-file
l k link=p/in
"#;

#[test]
fn file_dir_and_symlink_replace_each_other() {
    if !need_root("apply_flat.py (chown) and overlay mounts") {
        return;
    }
    let c = Case::new(REPLACE);
    let sq = c.check();
    let opq = fresh_dirs(&sq);
    for d in ["p", "s", "t", "u"] {
        assert!(
            opq.contains(d),
            "{d} was a non-dir earlier in the range and is a dir now: it must be opaque, \
             opaque: {opq:?}"
        );
    }
    c.kernel(&sq, ALL_BASES, ALL_BASES)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Opaque markers in every layer: on a base-only dir, on a dir of an earlier layer (with and
/// without a dir entry), with same-layer children and whiteouts, below a later opaque dir.
const OPAQUE: &str = r#"
=== L1
d m1 mtime=1500000000
f m1/a data=a
d m1/sub
f m1/sub/b data=b
w base-dir/.wh..wh..opq
d m3
f m3/a data=a
f m5/sub/x data=x
=== L2
f m1/new data=new
w m1/.wh..wh..opq
d m1 mtime=1600000200
d m1/sub
f m1/sub/c data=c
w m2/.wh..wh..opq
w m3/.wh..wh..opq
f m3/after data=after
=== L3
f m1/late data=late
w m4/.wh.x
d m4 mtime=1600000300
w m4/.wh..wh..opq
f m4/new data=new
w m5/sub/.wh.x
=== L4
d m5 mtime=1600000400
w m5/.wh..wh..opq
f m5/y data=y
"#;

#[test]
fn opaque_markers_in_every_layer() {
    if !need_root("apply_flat.py (chown) and overlay mounts") {
        return;
    }
    let c = Case::new(OPAQUE);
    let sq = c.check();
    let opq = opaque_dirs(&sq);
    for d in ["m1", "base-dir", "m2", "m3", "m4", "m5"] {
        assert!(opq.contains(d), "{d} must stay opaque: {opq:?}");
    }
    c.kernel(&sq, ALL_BASES, &["dirs"])
        .unwrap_or_else(|e| panic!("{e}"));
}

#[test]
fn root_level_opaque_marker_in_a_middle_layer() {
    if !need_root("apply_flat.py (chown)") {
        return;
    }
    let c = Case::new(
        r#"
=== L1
f top data=top
d keep
f keep/a data=a
w .wh.gone
=== L2
w .wh..wh..opq
f after data=after
d keep mtime=1600000200
=== L3
f late data=late
w .wh.after
"#,
    );
    let sq = c.check();
    assert!(opaque_dirs(&sq).contains(""), "the root must stay opaque");
}

/// Whiteouts of paths only the base has must survive the squash.
pub(super) const BASE_ONLY: &str = r#"
=== L1
w .wh.gone-file
w gone-dir/.wh.child
w deep/er/.wh.x
f other data=o
=== L2
w .wh.gone-dir2
f other2 data=o2
w ./.wh.dotted
w /.wh.rooted
"#;

#[test]
fn whiteouts_of_base_only_paths_survive() {
    if !need_root("apply_flat.py (chown) and overlay mounts") {
        return;
    }
    let c = Case::new(BASE_ONLY);
    let sq = c.check();
    let wh: BTreeSet<String> = whiteouts(&sq).into_iter().collect();
    for p in [
        "gone-file",
        "gone-dir/child",
        "deep/er/x",
        "gone-dir2",
        "dotted",
        "rooted",
    ] {
        assert!(wh.contains(p), "whiteout of {p} lost: {wh:?}");
    }
    c.kernel(&sq, ALL_BASES, ALL_BASES)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Markers that later layers make redundant: whiteouts of paths re-created as non-dirs or dirs,
/// whiteouts below dirs later made opaque or deleted, repeated whiteouts and opaque markers.
const REDUNDANT: &str = r#"
=== L1
w .wh.a
w .wh.b
w c/.wh.x
w .wh.d
w e/.wh.f
d g
w g/.wh..wh..opq
f g/one data=1
w i/.wh.j
=== L2
f a data=a
l b link=a
d c mtime=1600000200
w c/.wh..wh..opq
w .wh.d
w .wh.e
w g/.wh..wh..opq
d g mtime=1600000201
f g/two data=2
w .wh.i
=== L3
w .wh.h
f i data=i-file
=== L4
d h
f h/x data=x
"#;

#[test]
fn markers_made_redundant_by_upper_layers() {
    if !need_root("apply_flat.py (chown)") {
        return;
    }
    let c = Case::new(REDUNDANT);
    let sq = c.check();
    let wh = whiteouts(&sq);
    for p in ["a", "b", "c/x", "e/f", "i", "i/j"] {
        assert!(
            !wh.iter().any(|w| w == p),
            "whiteout of {p} is redundant in the output: {wh:?}"
        );
    }
    // `h`, deleted by L3 and re-made as a dir by L4, is fresh in the output by exactly one marker:
    // `.wh.h` + `h/` (the form that never resolves a marker through a base symlink at `h`).
    assert!(fresh_dirs(&sq).contains("h"), "h is not fresh: {wh:?}");
    assert!(
        !opaque_dirs(&sq).contains("h"),
        "h is both whited out and opaque: {wh:?}"
    );
    assert_eq!(
        wh.iter().filter(|w| *w == "d").count(),
        1,
        "d: one whiteout: {wh:?}"
    );
}

/// Hardlinks whose targets later layers overwrite or delete, links to lower layers of the range,
/// a link that sorts before its target, links to symlinks, links to the new and old inode.
pub(super) const HARDLINKS: &str = r#"
=== L1
f x data=A mode=0600 uid=5 mtime=1300000000.5 x.user.k=v
h y link=x
h z link=x
f p data=P
h q link=p
f m data=M
f zz-target data=Z mode=0640
h aa-link link=zz-target
d dd
f dd/t data=T
h dd-link link=dd/t
f s-target data=S
l sym link=s-target
h sym-hl link=sym
f keep data=K
h keep2 link=keep
=== L2
f x data=B
w .wh.p
h n link=m
w dd/.wh..wh..opq
w .wh.zz-target
w .wh.sym
h keep3 link=keep2
=== L3
f m data=M2
h x2 link=x
h y2 link=y
w .wh.keep
"#;

#[test]
fn hardlinks_show_what_the_stack_shows() {
    if !need_root("apply_flat.py (chown) and overlay mounts") {
        return;
    }
    let c = Case::new(HARDLINKS);
    let sq = c.check();
    c.kernel(&sq, ALL_BASES, ALL_BASES)
        .unwrap_or_else(|e| panic!("{e}"));
}

/// Dir attributes: the latest header in the range wins (mode, owner, mtime, xattrs, which go
/// when the latest header has none); implied parents change nothing; dirs without any header
/// in the range keep the base's attributes.
const DIR_HEADERS: &str = r#"
=== L1
d a mode=0700 uid=1 gid=1 mtime=1500000000 x.user.a=1
f a/f1 data=1
d b mode=0700 mtime=1500000001 x.user.b=1
d c mode=0711 mtime=1500000002.25
=== L2
f a/f2 data=2
d b mode=0755 uid=2 mtime=1600000000.5
f b/f data=f
f c/deep/f data=f
f n/m/f data=f
=== L3
d a mode=0750 uid=3 gid=4 mtime=1700000000.123456789
f a/f3 data=3
d b mode=0755 uid=2 mtime=1600000000.5 x.user.again=2
=== L4
f a/f4 data=4
"#;

#[test]
fn latest_dir_header_wins() {
    if !need_root("apply_flat.py (chown)") {
        return;
    }
    Case::new(DIR_HEADERS).check();
}

/// Every entry type, long names, xattrs, nanosecond mtimes, setuid bits, devices, deletions,
/// opaque and re-created dirs, replacements, hardlinks within and across layers.
const KITCHEN: &str = concat!(
    every_type_l0!(),
    r#"f big size=70000 mtime=1600000000.75

=== L1 fmt=gnu
"#,
    every_type_l1!(),
    r#"f etc/passwd data=new-passwd mtime=1600000000
f ./dotslash data=d
f /leading data=l
f big size=5000

"#,
    every_type_l2!(),
    r#"h big-link link=big
"#
);

#[test]
fn every_entry_type_stack_obeys_the_law_and_the_kernel() {
    if !need_root("apply_flat.py (chown) and overlay mounts") {
        return;
    }
    let c = Case::new(KITCHEN);
    let sq = c.check();
    // The output whites out etc/shadow (a base may have it); over a base without etc,
    // layerapply drops that whiteout rather than leave a ghost in a dir the kernel does not merge.
    c.kernel(&sq, ALL_BASES, ALL_BASES)
        .unwrap_or_else(|e| panic!("{e}"));

    // A single layer squashed: the same tree over every base.
    let one = Case::new(&KITCHEN[..KITCHEN.find("=== L1").unwrap()]);
    one.check();
}

/// The base for the hardlink-below-the-range cases.
const LINK_BASE: &str = r#"
=== base
f base-target data=old mode=0640 uid=7 mtime=1200000000
d bd
f bd/base-target data=old-in-dir
f other-base data=other
"#;

#[test]
fn link_to_a_base_file_the_range_changes_is_refused() {
    // The link shows the base file's inode; once the range changes that path, no layer can say
    // "link to what the base had there" (semantics.md A9.6): exit 1, one line, no output.
    let refused = [
        ("overwritten", "=== L1\nh link-to-base link=base-target\n=== L2\nf base-target data=new\n"),
        ("deleted", "=== L1\nh link-to-base link=base-target\n=== L2\nw .wh.base-target\n"),
        ("parent deleted", "=== L1\nh link-to-base link=bd/base-target\n=== L2\nw .wh.bd\n"),
        ("parent opaque", "=== L1\nh link-to-base link=bd/base-target\n=== L2\nw bd/.wh..wh..opq\n"),
        ("replaced by a symlink", "=== L1\nh link-to-base link=base-target\n=== L2\nl base-target link=x\n"),
        ("replaced by a dir", "=== L1\nh link-to-base link=base-target\n=== L2\nd base-target\n"),
        ("same layer, after the link", "=== L1\nh link-to-base link=base-target\nf base-target data=new\n"),
        ("two layers up", "=== L1\nh link-to-base link=base-target\n=== L2\nf x data=x\n=== L3\nf base-target data=new\n"),
        ("link of the link", "=== L1\nh link-to-base link=base-target\n=== L2\nh link2 link=link-to-base\n=== L3\nw .wh.link-to-base\nf base-target data=new\n"),
    ];
    for (what, stack) in refused {
        let c = Case::on_base(&format!("{LINK_BASE}{stack}"));
        let out = c.p("out/sq.tar");
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let o = assert_fails_cleanly(
            squash_cmd().arg("-o").arg(&out).args(&c.tars),
            &["link-to-base", "link2", "base-target"],
            &out,
        );
        assert_eq!(o.status.code(), Some(1), "{what}: exit code");
    }

    // With --flatten the base is empty: any link to a file the range does not have fails.
    let c = Case::on_base(&format!(
        "{LINK_BASE}=== L1\nh link-to-base link=base-target\n"
    ));
    let out = c.p("out/fl.tar");
    std::fs::create_dir_all(out.parent().unwrap()).unwrap();
    let o = assert_fails_cleanly(
        squash_cmd()
            .arg("--flatten")
            .arg("-o")
            .arg(&out)
            .args(&c.tars),
        &["link-to-base", "base-target"],
        &out,
    );
    assert_eq!(o.status.code(), Some(1), "--flatten: exit code");
}

#[test]
fn link_to_a_base_file_the_range_keeps_is_kept() {
    if !need_root("apply_flat.py (chown)") {
        return;
    }
    // The range leaves the target alone (or re-creates it before linking): a valid layer exists.
    for stack in [
        "=== L1\nh link-to-base link=base-target\n=== L2\nf other data=o\nh link2 link=link-to-base\n",
        "=== L1\nh link-to-base link=bd/base-target\n=== L2\nw bd/.wh.nothing\nf bd/new data=n\n",
        "=== L1\nf base-target data=new\n=== L2\nh link-to-base link=base-target\n",
        "=== L1\nw .wh.base-target\n=== L2\nf base-target data=new\nh link-to-base link=base-target\n",
    ] {
        let c = Case::on_base(&format!("{LINK_BASE}{stack}"));
        let sq = c.squash(&[]);
        assert_raw_ok(&sq, false);
        c.law(&sq).unwrap_or_else(|e| panic!("{stack}: {e}"));
    }
    // The link is gone by the top of the range: nothing needs the base inode any more. Refusing
    // would be safe but needless; a result must be right.
    let c = Case::on_base(&format!(
        "{LINK_BASE}=== L1\nh link-to-base link=base-target\n=== L2\nf base-target data=new\n\
         === L3\nw .wh.link-to-base\n"
    ));
    let out = c.p("gone.tar");
    let o = squash_cmd()
        .arg("-o")
        .arg(&out)
        .args(&c.tars)
        .output()
        .unwrap();
    if o.status.success() {
        assert_raw_ok(&out, false);
        c.law(&out).unwrap_or_else(|e| panic!("link gone: {e}"));
    } else {
        eprintln!(
            "note: squash refuses a link to a changed base file even when the link is deleted: {}",
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
}

#[test]
fn dir_replacing_a_base_symlink_does_not_touch_its_target() {
    if !need_root("apply_flat.py (chown)") {
        return;
    }
    // The range replaces the base's symlink `s` by a file, then by a dir: the new dir must hide
    // nothing but what was at `s`. An opaque marker `s/.wh..wh..opq` would be resolved through
    // the base's symlink by appliers that resolve a marker's dir like a parent path (apply_flat,
    // containerd's RootPath) and empty `t`; `.wh.s` + `s/` says the same without that risk.
    for stack in [
        "=== L1\nf s data=file\n=== L2\nd s mtime=1600000200\nf s/new data=new\n",
        "=== L1\nw .wh.s\n=== L2\nd s mtime=1600000200\nf s/new data=new\n",
        "=== L1\nw .wh.s\nd s mtime=1600000200\nf s/new data=new\n",
    ] {
        let c = Case::on_base(&format!(
            "=== base\nd t mode=0750\nf t/child data=child\nl s link=t\n{stack}"
        ));
        let sq = c.squash(&[]);
        assert_raw_ok(&sq, false);
        c.law(&sq).unwrap_or_else(|e| panic!("{stack}: {e}"));
    }
}

#[test]
fn opaque_marker_below_a_same_layer_file() {
    if !need_root("apply_flat.py (chown)") {
        return;
    }
    // A layer with a file `a` and a marker in `a` (or below): ill-formed. Opaque markers act
    // before the layer's other entries (layer.md), so a flat applier keeps the file; layerapply
    // refuses the layer. A squash may do either, but must not turn `a` into a dir.
    for layer in [
        "f a data=file-a\nw a/.wh..wh..opq\n",
        "f a data=file-a\nw a/a/.wh..wh..opq\n",
        "l a link=x\nw a/.wh..wh..opq\n",
    ] {
        let c = Case::new(&format!("=== L1\n{layer}=== L2\nf z data=z\n"));
        let out = c.p("out/sq.tar");
        std::fs::create_dir_all(out.parent().unwrap()).unwrap();
        let r = squash_cmd()
            .arg("-o")
            .arg(&out)
            .args(&c.tars)
            .output()
            .unwrap();
        if r.status.success() {
            assert_raw_ok(&out, false);
            c.law(&out).unwrap_or_else(|e| panic!("{layer}: {e}"));
        } else {
            assert_fails_cleanly(
                squash_cmd().arg("-o").arg(&out).args(&c.tars),
                &["a/"],
                &out,
            );
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The CLI contract: bad input, usage, determinism, --json, compression

/// A small valid stack (no root needed) for the CLI tests.
const SMALL: &str = r#"
=== L1
d a mode=0750 mtime=1500000000
f a/x size=3000
f a/y data=y
h a/z link=a/x
l s link=a/x
=== L2
w .wh.s
d a mtime=1600000000
w a/.wh..wh..opq
f a/new size=9000 mtime=1600000001.5
f b data=b x.user.k=v
"#;

#[test]
fn bad_layers_fail_with_one_line_and_leave_nothing() {
    let t = scratch();
    let good = gen_layers(&t.path().join("tars"), SMALL);
    let bad = t.path().join("bad");
    std::fs::create_dir(&bad).unwrap();
    let data = std::fs::read(&good[1]).unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = bad.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    };
    let gz = run_with_stdin(Command::new("gzip").args(["-c", "-n"]), &data).stdout;
    let zst = run_with_stdin(Command::new("zstd").args(["-q", "-c"]), &data).stdout;
    let flip = |mut v: Vec<u8>| {
        let n = v.len();
        for b in &mut v[n / 3..n / 3 + 64] {
            *b ^= 0x5a;
        }
        v
    };
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i * 7919 % 251) as u8 | 1).collect();
    let cases: Vec<PathBuf> = vec![
        write("truncated-tar", &data[..data.len() / 2 + 100]),
        write("truncated-gzip.gz", &gz[..gz.len() / 2]),
        write("corrupt-gzip.gz", &flip(gz.clone())),
        write("truncated-zstd.zst", &zst[..zst.len() / 2]),
        write("corrupt-zstd.zst", &flip(zst.clone())),
        write("garbage", &garbage),
        write("empty", b""),
        bad.join("missing"),
        {
            let d = bad.join("a-directory");
            std::fs::create_dir(&d).unwrap();
            d
        },
    ];
    let outdir = t.path().join("out");
    std::fs::create_dir(&outdir).unwrap();
    for layer in &cases {
        let name = layer.file_name().unwrap().to_str().unwrap();
        for (pos, out) in [(0, "o.tar"), (1, "o.tar.gz"), (2, "o.tar.zst")] {
            let mut layers = good.clone();
            layers.insert(pos, layer.clone());
            let out = outdir.join(out);
            let o = assert_fails_cleanly(
                squash_cmd().arg("-o").arg(&out).args(&layers),
                &[name],
                &out,
            );
            assert_eq!(o.status.code(), Some(1), "{name} at {pos}: exit code");
        }
        let out = outdir.join("flat.tar");
        let mut layers = good.clone();
        layers.push(layer.clone());
        assert_fails_cleanly(
            squash_cmd()
                .args(["--flatten", "-j", "2", "-o"])
                .arg(&out)
                .args(&layers),
            &[name],
            &out,
        );
    }
    assert!(listing(&outdir).is_empty(), "{:?}", listing(&outdir));

    // A failed run leaves an existing output file as it was.
    let out = outdir.join("precious.tar");
    std::fs::write(&out, b"precious").unwrap();
    let r = squash_cmd()
        .arg("-o")
        .arg(&out)
        .arg(&good[0])
        .arg(&cases[0])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(1));
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
    assert_eq!(listing(&outdir), ["precious.tar"]);

    // An output dir that does not exist.
    let nowhere = t.path().join("no/such/dir/o.tar");
    let o = assert_fails_cleanly(
        squash_cmd().arg("-o").arg(&nowhere).args(&good),
        &["no/such/dir"],
        &nowhere,
    );
    assert_eq!(o.status.code(), Some(1));
}

#[test]
fn usage_errors_exit_2() {
    let t = scratch();
    let good = gen_layers(&t.path().join("tars"), SMALL);
    let out = t.path().join("o.tar");
    let l: Vec<&str> = good.iter().map(|p| p.to_str().unwrap()).collect();
    let o = out.to_str().unwrap();
    for args in [
        vec![],
        vec!["-o", o],
        l.clone(),
        [&["-c", "bzip2", "-o", o][..], &l].concat(),
        [&["--no-such-flag", "-o", o][..], &l].concat(),
        [&["-j", "many", "-o", o][..], &l].concat(),
    ] {
        let r = squash_cmd().args(&args).output().unwrap();
        assert_eq!(
            r.status.code(),
            Some(2),
            "squash {args:?}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(!r.stderr.is_empty(), "squash {args:?}: says why");
        assert_eq!(listing(t.path()), ["tars"], "squash {args:?}: no output");
    }
}

#[test]
fn output_is_deterministic_across_jobs_compressions_and_input_forms() {
    let t = scratch();
    let tars = gen_layers(&t.path().join("tars"), KITCHEN);
    let o = |n: &str| t.path().join(n);
    for (flags, tag) in [(&[][..], "sq"), (&["--flatten"][..], "fl")] {
        let mut plain: Option<Vec<u8>> = None;
        for ext in ["tar", "tar.gz", "tar.zst"] {
            let mut bytes: Option<Vec<u8>> = None;
            for j in ["1", "2", "4", "4"] {
                let out = o(&format!("{tag}-{j}.{ext}"));
                squash_to(&tars, &out, &[flags, &["-j", j]].concat());
                let b = std::fs::read(&out).unwrap();
                match &bytes {
                    None => bytes = Some(b),
                    Some(want) => {
                        assert!(*want == b, "{tag} .{ext}: -j {j} output differs from -j 1")
                    }
                }
                let p = plain_tar(&out);
                match &plain {
                    None => plain = Some(p),
                    Some(want) => assert!(
                        *want == p,
                        "{tag} .{ext} -j {j}: the tar inside differs from the plain output"
                    ),
                }
            }
        }
        let plain = plain.unwrap();

        // Compressed inputs (gzip, zstd, multi-member gzip) give the same tar.
        let mut mixed = Vec::new();
        for (i, tar) in tars.iter().enumerate() {
            let p = o(&format!("in-{tag}-{i}"));
            match i % 3 {
                0 => compress(tar, &["gzip", "-c", "-n"], &p),
                1 => compress(tar, &["zstd", "-q", "-c"], &p),
                _ => {
                    let data = std::fs::read(tar).unwrap();
                    let mut all = Vec::new();
                    for part in [&data[..1024], &data[1024..]] {
                        all.extend(
                            run_with_stdin(Command::new("gzip").args(["-c", "-n"]), part).stdout,
                        );
                    }
                    std::fs::write(&p, all).unwrap();
                }
            }
            mixed.push(p);
        }
        let out = o(&format!("{tag}-mixed.tar"));
        squash_to(&mixed, &out, flags);
        assert!(
            std::fs::read(&out).unwrap() == plain,
            "{tag}: compressed inputs give another tar"
        );

        // `-o -` writes the same bytes to stdout.
        let r = quiet(
            squash_cmd()
                .args(flags)
                .args(["-c", "zstd", "-o", "-"])
                .args(&tars),
        );
        let file = std::fs::read(o(&format!("{tag}-1.tar.zst"))).unwrap();
        assert!(
            r.stdout == file,
            "{tag}: -o - -c zstd differs from .tar.zst"
        );
        let r = quiet(squash_cmd().args(flags).args(["-o", "-"]).args(&tars));
        assert!(r.stdout == plain, "{tag}: -o - (plain) differs from .tar");
    }
}

#[test]
fn json_descriptor_matches_independent_digests() {
    let t = scratch();
    let tars = gen_layers(&t.path().join("tars"), SMALL);
    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    for (name, args, media, magic) in [
        ("l.tar", &[][..], TAR.to_string(), "tar"),
        ("l.tar.gz", &[][..], format!("{TAR}+gzip"), "gzip"),
        ("l.tgz", &[][..], format!("{TAR}+gzip"), "gzip"),
        ("l.tar.zst", &[][..], format!("{TAR}+zstd"), "zstd"),
        ("l.tzst", &[][..], format!("{TAR}+zstd"), "zstd"),
        (
            "c-gzip.tar",
            &["-c", "gzip"][..],
            format!("{TAR}+gzip"),
            "gzip",
        ),
        (
            "c-none.tar.zst",
            &["-c", "none"][..],
            TAR.to_string(),
            "tar",
        ),
        (
            "c-zstd.tar.gz",
            &["--compression", "zstd"][..],
            format!("{TAR}+zstd"),
            "zstd",
        ),
        (
            "flat.tar.gz",
            &["--flatten"][..],
            format!("{TAR}+gzip"),
            "gzip",
        ),
    ] {
        let out = t.path().join(name);
        let r = squash_to(&tars, &out, &[args, &["--json"]].concat());
        let (m, digest, size, diff_id) = descriptor(&r.stdout);
        let bytes = std::fs::read(&out).unwrap();
        assert_eq!(kind(&bytes), magic, "{name}: compression");
        assert_eq!(m, media, "{name}: mediaType");
        assert_eq!(digest, sha256_file(&out), "{name}: digest");
        assert_eq!(
            size,
            std::fs::metadata(&out).unwrap().size(),
            "{name}: size"
        );
        assert_eq!(
            diff_id,
            format!("sha256:{}", sha256_hex(&plain_tar(&out))),
            "{name}: diffID"
        );
        // Without --json nothing on stdout.
        let again = t.path().join(format!("again-{name}"));
        let r = squash_to(&tars, &again, args);
        assert!(r.stdout.is_empty(), "{name}: stdout without --json");
        assert!(
            std::fs::read(&again).unwrap() == bytes,
            "{name}: same bytes"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The checks can fail: tampered squash outputs are rejected

#[test]
fn tampered_outputs_fail_apply_flat_and_the_kernel() {
    if !need_root("apply_flat.py (chown) and overlay mounts") {
        return;
    }
    let c = Case::new(RECREATE);
    let sq = c.squash(&[]);
    c.law(&sq).unwrap_or_else(|e| panic!("untampered: {e}"));
    let bad = tamper(&sq, "drop-opaque");
    assert!(tar_members(&bad).len() < tar_members(&sq).len());
    let e = c
        .law(&bad)
        .expect_err("apply_flat law must see the dropped opaque markers");
    assert!(e.contains("base + squash differs"), "{e}");
    let e = c
        .kernel(&bad, &["dirs"], &["dirs"])
        .expect_err("the kernel must see the dropped opaque markers");
    assert!(e.contains("base dirs: kernel view of base + squash"), "{e}");

    let c = Case::new(BASE_ONLY);
    let sq = c.squash(&[]);
    let bad = tamper(&sq, "drop-whiteouts");
    assert!(tar_members(&bad).len() < tar_members(&sq).len());
    let e = c
        .law(&bad)
        .expect_err("apply_flat law must see the dropped whiteouts");
    assert!(e.contains("base dirs: base + squash differs"), "{e}");

    let c = Case::new(HARDLINKS);
    let sq = c.squash(&[]);
    let bad = tamper(&sq, "links-first");
    let probs = raw_problems(&raw_from_members(&tar_members(&bad)), false);
    assert!(
        probs
            .iter()
            .any(|p| p.contains("does not follow its target")),
        "{probs:?}"
    );
}
