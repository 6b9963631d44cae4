//! Kernel truth for `layerapply`: layer tars written by an independent writer (`gen_layers.py`,
//! Python tarfile) are applied with `layerapply --store`; then the store layout is checked
//! exactly (ids are chainIDs computed here from `sha256sum`), the raw layer dirs are checked where
//! the overlay-native form matters (whiteout devices, opaque xattrs, escaped xattrs, no `.wh.`
//! names, no ghosts), and the printed `lowerdir=` value is mounted read-only by the real kernel:
//! its merged view must equal the tree a flat, independent applier (`apply_flat.py`) builds from
//! the same tars, for every prefix of the stack, nanosecond mtimes included.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Helpers

/// OCI chainIDs (`sha256:` prefixed) of a stack, bottom first, from its diffIDs.
fn chain_ids(diff_ids: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for d in diff_ids {
        let c = match out.last() {
            None => d.clone(),
            Some(parent) => format!("sha256:{}", sha256_hex(format!("{parent} {d}").as_bytes())),
        };
        out.push(c);
    }
    out
}

fn hex_of(id: &str) -> String {
    id.strip_prefix("sha256:")
        .unwrap_or_else(|| panic!("{id}: no sha256: prefix"))
        .to_string()
}

/// A scenario: a scratch dir and the plain layer tars `gen_layers.py` wrote from a spec.
struct Case {
    tmp: tempfile::TempDir,
    tars: Vec<PathBuf>,
}

impl Case {
    fn new(spec: &str) -> Case {
        let tmp = scratch();
        let tars_dir = tmp.path().join("tars");
        std::fs::create_dir(&tars_dir).unwrap();
        run_with_stdin(
            Command::new(python())
                .arg(support("gen_layers.py"))
                .arg(&tars_dir),
            spec.as_bytes(),
        );
        let tars = spec
            .lines()
            .filter_map(|l| l.trim().strip_prefix("==="))
            .map(|rest| tars_dir.join(format!("{}.tar", rest.split_whitespace().next().unwrap())))
            .collect();
        Case { tmp, tars }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }

    /// ChainIDs (hex) of the plain tars, bottom first.
    fn ids(&self, tars: &[PathBuf]) -> Vec<String> {
        let diff_ids: Vec<String> = tars.iter().map(|t| sha256_file(t)).collect();
        chain_ids(&diff_ids).iter().map(|c| hex_of(c)).collect()
    }

    /// The flat applier's tree for `tars` applied in order to the empty dir `name`.
    fn flat(&self, name: &str, tars: &[PathBuf]) -> PathBuf {
        let root = self.p(name);
        run(Command::new(python())
            .arg(support("apply_flat.py"))
            .arg(&root)
            .args(tars));
        root
    }

    /// `layerapply --store STORE ARGS LAYERS` (must succeed, stderr only warnings); then the
    /// store layout for the stack of `plain` (the uncompressed tars of `layers`). Returns the
    /// stdout line and the diff dirs, bottom first.
    fn apply_store(
        &self,
        store: &Path,
        args: &[&str],
        layers: &[PathBuf],
        plain: &[PathBuf],
    ) -> (String, Vec<PathBuf>) {
        let out = applied(
            layerapply()
                .args(args)
                .arg("--store")
                .arg(store)
                .args(layers),
        );
        let ids = self.ids(plain);
        let (lowerdir, diffs) = check_store(store, &ids);
        assert_eq!(stdout_line(&out), lowerdir, "stdout is the lowerdir value");
        (lowerdir, diffs)
    }

    /// Mount every prefix of the stack (top `k` lowerdir entries) and compare it with the flat
    /// applier's tree of the first `k` tars.
    fn check_merged_prefixes(&self, lowerdir: &str, opts: &str, plain: &[PathBuf], tag: &str) {
        let lowers: Vec<&str> = lowerdir.split(':').collect();
        assert_eq!(lowers.len(), plain.len());
        for k in 1..=plain.len() {
            let ld = lowers[plain.len() - k..].join(":");
            let flat = self.flat(&format!("flat-{tag}-{k}"), &plain[..k]);
            self.check_merged(&ld, opts, &flat, &format!("{tag}: bottom {k} layer(s)"));
        }
    }

    /// Mount `lowerdir` and compare its dump and nanosecond mtimes with the tree `want`.
    fn check_merged(&self, lowerdir: &str, opts: &str, want: &Path, what: &str) {
        let (got, got_times) = merged_view(self.tmp.path(), lowerdir, opts);
        assert_same(
            &dump_tree(want),
            &got,
            &format!("{what}: flat apply vs kernel's merged view"),
        );
        assert_same(
            &stat_list(want, "mtime"),
            &got_times,
            &format!("{what}: mtimes in ns, flat apply vs kernel's merged view"),
        );
    }
}

/// Run a layerapply command that must succeed, with nothing but `warning: ` lines on stderr.
fn applied(cmd: &mut Command) -> Output {
    let out = run(cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    for l in err.lines() {
        assert!(
            l.starts_with("warning: "),
            "{cmd:?}: success, yet a stderr line is not a warning: {l:?}"
        );
    }
    out
}

/// The one line on stdout, without its newline.
fn stdout_line(out: &Output) -> String {
    let s = String::from_utf8(out.stdout.clone()).expect("stdout is UTF-8");
    assert!(
        s.ends_with('\n') && s.matches('\n').count() == 1,
        "stdout must be exactly one line: {s:?}"
    );
    s.trim_end_matches('\n').to_string()
}

/// The dump and the ns mtimes of the merged view of `lowerdir`.
fn merged_view(tmp: &Path, lowerdir: &str, opts: &str) -> (String, String) {
    let m = mount_lowers(tmp, lowerdir, opts);
    (dump_tree(&m.path), stat_list(&m.path, "mtime"))
}

/// Check the whole store against the stack `ids` (chainIDs in hex, bottom first): nothing but
/// the ids, `l` and `.layerkit`; per id exactly diff, link (+ lower, work above the bottom); link
/// names; `l/` symlinks; lower files; empty work dirs; empty staging. Returns the expected
/// lowerdir value and the diff dirs, bottom first.
fn check_store(store: &Path, ids: &[String]) -> (String, Vec<PathBuf>) {
    let s = store.canonicalize().expect("store exists");
    let mut want: BTreeSet<String> = ids.iter().cloned().collect();
    want.insert("l".into());
    let mut got: BTreeSet<String> = listing(&s).into_iter().collect();
    got.remove(".layerkit");
    assert_eq!(got, want, "{}: top-level entries", s.display());
    assert_eq!(want.len(), ids.len() + 1, "each id once");

    let mut links: Vec<String> = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        let d = s.join(id);
        let mut entries = vec!["diff", "link"];
        if i > 0 {
            entries.extend(["lower", "work"]);
        }
        entries.sort();
        assert_eq!(listing(&d), entries, "{}: entries", d.display());
        let diff_meta = std::fs::symlink_metadata(d.join("diff")).unwrap();
        assert!(diff_meta.is_dir(), "{id}/diff is a real dir");
        let link = String::from_utf8(std::fs::read(d.join("link")).unwrap()).unwrap();
        assert!(
            link.len() == 26
                && link
                    .bytes()
                    .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b)),
            "{id}/link: 26 chars of A-Z2-7, no newline: {link:?}"
        );
        assert_eq!(
            std::fs::read_link(s.join("l").join(&link)).unwrap(),
            PathBuf::from(format!("../{id}/diff")),
            "l/{link}"
        );
        if i > 0 {
            let lower = String::from_utf8(std::fs::read(d.join("lower")).unwrap()).unwrap();
            let want_lower: Vec<String> = links.iter().rev().map(|l| format!("l/{l}")).collect();
            assert_eq!(lower, want_lower.join(":"), "{id}/lower");
            let work = std::fs::symlink_metadata(d.join("work")).unwrap();
            assert!(work.is_dir(), "{id}/work is a dir");
            assert!(listing(&d.join("work")).is_empty(), "{id}/work is empty");
        }
        links.push(link);
    }
    let mut sorted_links = links.clone();
    sorted_links.sort();
    sorted_links.dedup();
    assert_eq!(sorted_links.len(), links.len(), "link names are unique");
    assert_eq!(
        listing(&s.join("l")),
        sorted_links,
        "l/: one symlink per layer"
    );
    assert_staging_empty(&s);

    let diffs: Vec<PathBuf> = ids.iter().map(|id| s.join(id).join("diff")).collect();
    let lowerdir: Vec<String> = diffs
        .iter()
        .rev()
        .map(|d| d.display().to_string())
        .collect();
    (lowerdir.join(":"), diffs)
}

fn assert_staging_empty(store: &Path) {
    let staging = store.join(".layerkit/staging");
    assert!(
        listing(&staging).is_empty(),
        "{} must be empty or absent",
        staging.display()
    );
}

/// What a raw layer dir holds, from `dump.py` (no flags): char-0/0 whiteouts, opaque dirs, and
/// each path's dump fields.
struct Raw {
    whiteouts: BTreeSet<String>,
    opaque: BTreeSet<String>,
    rows: BTreeMap<String, Vec<String>>,
}

impl Raw {
    /// The value (hex) of xattr `name` on `path`.
    fn xattr(&self, path: &str, name: &str) -> Option<String> {
        let prefix = format!("{name}=");
        self.rows
            .get(path)
            .unwrap_or_else(|| panic!("{path} missing from the layer dir"))
            .iter()
            .find_map(|f| f.strip_prefix(&prefix).map(String::from))
    }
}

/// Read a raw layer dir and check what holds for every native layer whose tar set no
/// `<ns>.overlay.*` xattr of its own: no `.wh.` name anywhere; `<ns>.overlay.*` xattrs are
/// `opaque=y` on dirs or escaped `<ns>.overlay.overlay.*`; no dir with an opaque marker of the
/// other namespace; no char-0/0 below an opaque dir of the same layer (a kernel ghost).
fn raw_layer(diff: &Path, ns: &str) -> Raw {
    let text = dump_tree(diff);
    let other = if ns == "trusted" { "user" } else { "trusted" };
    let (mut whiteouts, mut opaque, mut rows) = (BTreeSet::new(), BTreeSet::new(), BTreeMap::new());
    for line in text.lines() {
        let f: Vec<String> = line.split(' ').map(String::from).collect();
        let path = f[0].clone();
        assert!(
            !path.split('/').any(|c| c.starts_with(".wh.")),
            "{}: a .wh. name was left in the layer dir: {line}",
            diff.display()
        );
        if f[1] == "c" && f[5] == "0:0" {
            whiteouts.insert(path.clone());
        }
        for x in &f[2..] {
            let Some((name, value)) = x.split_once('=') else {
                continue;
            };
            if let Some(rest) = name.strip_prefix(&format!("{ns}.overlay.")) {
                if rest == "opaque" {
                    assert!(
                        f[1] == "d" && value == "79",
                        "{}: {ns}.overlay.opaque must be `y` on a dir: {line}",
                        diff.display()
                    );
                    opaque.insert(path.clone());
                } else {
                    assert!(
                        rest.starts_with("overlay."),
                        "{}: overlay-private xattr {name} written raw: {line}",
                        diff.display()
                    );
                }
            }
            assert!(
                f[1] != "d" || name != format!("{other}.overlay.opaque"),
                "{}: opaque marker in the wrong namespace: {line}",
                diff.display()
            );
        }
        rows.insert(path, f[1..].to_vec());
    }
    for w in &whiteouts {
        for o in &opaque {
            assert!(
                !w.starts_with(&format!("{o}/")),
                "{}: whiteout {w} below the opaque dir {o} is a kernel ghost",
                diff.display()
            );
        }
    }
    for o in &opaque {
        let v = run(Command::new("getfattr")
            .args(["-h", "--only-values", "-n", &format!("{ns}.overlay.opaque")])
            .arg(diff.join(o)));
        assert_eq!(v.stdout, b"y", "getfattr {ns}.overlay.opaque on {o}");
    }
    for w in &whiteouts {
        let m = std::fs::symlink_metadata(diff.join(w)).unwrap();
        assert!(m.file_type().is_char_device() && m.rdev() == 0, "{w}");
    }
    Raw {
        whiteouts,
        opaque,
        rows,
    }
}

fn set(v: &[&str]) -> BTreeSet<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Exact whiteouts; `opaque` all opaque; `plain` dirs present and not opaque.
fn expect_raw(r: &Raw, what: &str, whiteouts: &[&str], opaque: &[&str], plain: &[&str]) {
    assert_eq!(r.whiteouts, set(whiteouts), "{what}: char-0/0 whiteouts");
    for o in opaque {
        assert!(
            r.opaque.contains(*o),
            "{what}: {o} must be opaque: {:?}",
            r.opaque
        );
    }
    for p in plain {
        assert_eq!(
            r.rows.get(*p).map(|f| f[0].as_str()),
            Some("d"),
            "{what}: dir {p}"
        );
        assert!(!r.opaque.contains(*p), "{what}: {p} must not be opaque");
    }
}

/// The mode, uid, gid and `mtime=` fields of `path` in a dump.
fn dump_line<'a>(dump: &'a str, path: &str) -> &'a str {
    dump.lines()
        .find(|l| l.split(' ').next() == Some(path))
        .unwrap_or_else(|| panic!("{path} missing from\n{dump}"))
}

/// Split `file` at byte `at` and compress both halves separately with `tool` (`gzip -c -n` or
/// `zstd -q -c`), concatenated: a multi-member gzip or a multi-frame zstd stream.
fn two_part(file: &Path, at: usize, tool: &[&str], out: &Path) {
    let data = std::fs::read(file).unwrap();
    assert!(at > 0 && at < data.len());
    let mut all = Vec::new();
    for part in [&data[..at], &data[at..]] {
        all.extend(run_with_stdin(Command::new(tool[0]).args(&tool[1..]), part).stdout);
    }
    std::fs::write(out, all).unwrap();
}

/// A raw layer dir as text: its dump and its ns mtimes. With `whiteout_times` false the mtimes
/// of char-0/0 whiteouts are left out (the kernel ignores them; the tar gives them none).
fn fingerprint(diff: &Path, whiteout_times: bool) -> String {
    let whiteouts = raw_layer(diff, "trusted").whiteouts;
    let tree: Vec<String> = dump_tree(diff)
        .lines()
        .map(|l| {
            let path = l.split(' ').next().unwrap();
            if whiteout_times || !whiteouts.contains(path) {
                return l.to_string();
            }
            let kept: Vec<&str> = l.split(' ').filter(|f| !f.starts_with("mtime=")).collect();
            kept.join(" ")
        })
        .collect();
    let times = stat_list(diff, "mtime");
    let times: Vec<&str> = times
        .lines()
        .filter(|l| whiteout_times || !whiteouts.contains(l.rsplit_once(' ').unwrap().0))
        .collect();
    format!("{}\n{}\n", tree.join("\n"), times.join("\n"))
}

// ---------------------------------------------------------------------------------------------
// Scenarios

/// Three layers with every entry type, deletions, re-created and opaque dirs, replacements of
/// file/dir/symlink by each other, hardlinks within a layer and to a lower file.
const STACK: &str = concat!(
    every_type_l0!(),
    "\n=== L1\n",
    every_type_l1!(),
    r#"f etc/passwd data=new-passwd mtime=1600000000.000000001
f ./dotslash data=d
f /leading data=l

"#,
    every_type_l2!()
);

#[test]
fn three_layer_stack_matches_flat_apply_at_every_depth() {
    if !need_root("layerapply --store + overlay mount") {
        return;
    }
    let c = Case::new(STACK);
    let store = c.p("store");
    let (lowerdir, diffs) = c.apply_store(&store, &[], &c.tars, &c.tars);

    let r0 = raw_layer(&diffs[0], "trusted");
    expect_raw(&r0, "L0", &[], &[], &[]);
    assert_eq!(
        r0.xattr("xattrs", "user.bin").as_deref(),
        Some("00ff0a0d"),
        "binary xattr"
    );

    let r1 = raw_layer(&diffs[1], "trusted");
    expect_raw(
        &r1,
        "L1",
        &["del", "delfile"],
        &["opq1", "opq2", "opq3", "recreate", "recreate2", "samedir"],
        &[],
    );
    // A hardlink to a lower file: the file is copied into L1 and both names share its inode.
    let (t, l) = (
        std::fs::symlink_metadata(diffs[1].join("hl-target")).unwrap(),
        std::fs::symlink_metadata(diffs[1].join("hl-lower")).unwrap(),
    );
    assert_eq!(
        t.ino(),
        l.ino(),
        "L1: hl-lower and its copied target share an inode"
    );
    assert_eq!(
        std::fs::read(diffs[1].join("hl-target")).unwrap(),
        b"shared"
    );
    assert_eq!(
        (t.mode() & 0o7777, t.uid()),
        (0o600, 5),
        "copied target keeps its metadata"
    );

    let r2 = raw_layer(&diffs[2], "trusted");
    expect_raw(
        &r2,
        "L2",
        &["ds", "etc/shadow", "hl-lower", "recreate/new"],
        &[],
        &["etc", "recreate"],
    );

    c.check_merged_prefixes(&lowerdir, "", &c.tars, "stack");
}

#[test]
fn implied_parent_keeps_the_lower_dirs_attributes() {
    if !need_root("layerapply --store + overlay mount") {
        return;
    }
    let c = Case::new(
        r#"
=== L0
d srv mode=0750 uid=7 gid=8 mtime=1234567890.987654321 x.user.k=v x.trusted.t=1
d srv/data mode=0711 uid=9 gid=9 mtime=1300000000.5
f srv/data/old data=old
d srv/data/deep mode=0700 uid=11 mtime=1310000000
=== L1
f srv/data/new data=new
f srv/data/deep/er/est/new2 data=n2
w srv/.wh.gone
"#,
    );
    let store = c.p("store");
    let (lowerdir, diffs) = c.apply_store(&store, &[], &c.tars, &c.tars);
    raw_layer(&diffs[1], "trusted");
    c.check_merged_prefixes(&lowerdir, "", &c.tars, "implied");

    // Belt and braces, independent of the flat applier: the merged view shows the lower's dirs.
    let (merged, times) = merged_view(c.tmp.path(), &lowerdir, "");
    assert_eq!(
        dump_line(&merged, "srv"),
        "srv d 0750 7 8 mtime=1234567890 trusted.t=31 user.k=76"
    );
    assert_eq!(
        dump_line(&merged, "srv/data"),
        "srv/data d 0711 9 9 mtime=1300000000"
    );
    assert_eq!(
        dump_line(&merged, "srv/data/deep/er"),
        "srv/data/deep/er d 0755 0 0 mtime=0",
        "a dir no lower has: 0755 root, mtime 0"
    );
    assert!(
        times.lines().any(|l| l == "srv 1234567890987654321"),
        "{times}"
    );
}

#[test]
fn parent_through_lower_symlink_writes_to_its_target() {
    if !need_root("layerapply --store + overlay mount") {
        return;
    }
    let c = Case::new(
        r#"
=== L0
d usr
d usr/lib mode=0750 mtime=1500000000
f usr/lib/old data=old
l lib link=usr/lib
l lib64 link=/usr/lib
l lib32 link=usr/lib32
l chain link=lib
=== L1
f lib/x data=x
f lib64/y data=y
f lib32/z data=z
f chain/c data=c
=== L2
d lib mode=0700 mtime=1600000000
f lib/own data=own
"#,
    );
    let store = c.p("store");
    let (lowerdir, diffs) = c.apply_store(&store, &[], &c.tars, &c.tars);
    for (i, d) in diffs.iter().enumerate() {
        raw_layer(d, "trusted");
        let lib = std::fs::symlink_metadata(d.join("lib")).ok();
        let kind = lib.map(|m| (m.is_symlink(), m.is_dir()));
        let want = [Some((true, false)), None, Some((false, true))][i];
        assert_eq!(
            kind, want,
            "L{i}: `lib` as (symlink, dir): L1 must not shadow the lower symlink"
        );
    }
    c.check_merged_prefixes(&lowerdir, "", &c.tars, "symlink-parent");

    let ld1 = lowerdir.split(':').skip(1).collect::<Vec<_>>().join(":");
    let (m1, _) = merged_view(c.tmp.path(), &ld1, "");
    assert_eq!(dump_line(&m1, "lib"), "lib l 0777 0 0 -> usr/lib");
    for p in ["usr/lib/x", "usr/lib/y", "usr/lib/c", "usr/lib32/z"] {
        dump_line(&m1, p);
    }
    let (m2, _) = merged_view(c.tmp.path(), &lowerdir, "");
    assert_eq!(
        dump_line(&m2, "lib"),
        "lib d 0700 0 0 mtime=1600000000",
        "an explicit dir entry replaces the lower symlink"
    );
    assert!(
        !m2.contains("\nlib/x "),
        "lib is a new dir, not merged with usr/lib"
    );
}

#[test]
fn whiteout_and_hardlink_through_lower_symlink_resolve_like_a_flat_apply() {
    if !need_root("layerapply --store + overlay mount") {
        return;
    }
    // Entries other than plain files through a lower `lib -> usr/lib`: a whiteout deletes
    // usr/lib/old, a hardlink target `lib/keep` is usr/lib/keep (copied up and linked).
    let c = Case::new(
        r#"
=== L0
d usr
d usr/lib mode=0750 mtime=1500000000
f usr/lib/old data=old
f usr/lib/keep data=keep mode=0600 uid=4 mtime=1400000000.5
l lib link=usr/lib
=== L1
w lib/.wh.old
h kept link=lib/keep
"#,
    );
    let store = c.p("store");
    let (lowerdir, diffs) = c.apply_store(&store, &[], &c.tars, &c.tars);
    let r1 = raw_layer(&diffs[1], "trusted");
    assert!(
        std::fs::symlink_metadata(diffs[1].join("lib")).is_err(),
        "L1 must not shadow the lower symlink `lib`"
    );
    assert_eq!(r1.whiteouts, set(&["usr/lib/old"]));
    c.check_merged_prefixes(&lowerdir, "", &c.tars, "symlink-whiteout");
}

#[test]
fn root_level_opaque_marker_hides_every_lower_top_level_name() {
    if !need_root("layerapply --store + overlay mount") {
        return;
    }
    let c = Case::new(
        r#"
=== L0
f a data=a
d b
f b/old data=old
d c
f c/x data=x
l s link=a
=== L1
f e data=e
w .wh..wh..opq
d b mtime=1600000000
f b/new data=new
=== L2
f z data=z
w ./.wh..wh..opq
"#,
    );
    let store = c.p("store");
    let (lowerdir, diffs) = c.apply_store(&store, &[], &c.tars, &c.tars);
    let r1 = raw_layer(&diffs[1], "trusted");
    assert_eq!(
        r1.whiteouts,
        set(&["a", "c", "s"]),
        "L1: one whiteout per hidden top-level name"
    );
    let r2 = raw_layer(&diffs[2], "trusted");
    assert_eq!(
        r2.whiteouts,
        set(&["b", "e"]),
        "L2: one whiteout per hidden top-level name"
    );
    c.check_merged_prefixes(&lowerdir, "", &c.tars, "root-opaque");
    let (m, _) = merged_view(c.tmp.path(), &lowerdir, "");
    assert_eq!(m.lines().count(), 1, "only z is left:\n{m}");
}

#[test]
fn whiteouts_below_a_same_layer_opaque_dir_leave_no_ghosts() {
    if !need_root("layerapply --store + overlay mount") {
        return;
    }
    let c = Case::new(
        r#"
=== L0
d g
f g/a data=a
f g/b data=b
d g/sub
f g/sub/c data=c
d h
f h/a data=a
f h/b data=b
=== L1
w g/.wh.a
d g mtime=1600000000
w g/.wh..wh..opq
w g/.wh.b
f g/new data=new
d h mtime=1600000000
f h/x data=x
w h/.wh.a
w h/.wh..wh..opq
"#,
    );
    let store = c.p("store");
    let (lowerdir, diffs) = c.apply_store(&store, &[], &c.tars, &c.tars);
    let r1 = raw_layer(&diffs[1], "trusted");
    expect_raw(&r1, "L1", &[], &["g", "h"], &[]);
    c.check_merged_prefixes(&lowerdir, "", &c.tars, "ghosts");
    // readdir through the kernel: nothing but this layer's own entries.
    let t = tempfile::Builder::new()
        .prefix("mnt-")
        .tempdir_in(c.tmp.path())
        .unwrap();
    let merged = t.path().join("m");
    std::fs::create_dir(&merged).unwrap();
    run(Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o"])
        .arg(format!("lowerdir={lowerdir}"))
        .arg(&merged));
    let _g = Mount::guard(&merged);
    assert_eq!(listing(&merged.join("g")), ["new"]);
    assert_eq!(listing(&merged.join("h")), ["x"]);
}

#[test]
fn whiteouts_in_missing_subdirs_of_an_opaque_dir_create_no_dirs() {
    if !need_root("layerapply --store + overlay mount") {
        return;
    }
    // g/sub/.wh.c below the opaque g: no whiteout (a ghost) and no implied g/sub either, since
    // the opaque g already hides the lower g/sub and this layer has nothing in it.
    let c = Case::new(
        r#"
=== L0
d g
f g/a data=a
d g/sub
f g/sub/c data=c
=== L1
d g mtime=1600000000
w g/.wh..wh..opq
f g/new data=new
w g/sub/.wh.c
w g/sub/deeper/.wh.d
"#,
    );
    let store = c.p("store");
    let (lowerdir, diffs) = c.apply_store(&store, &[], &c.tars, &c.tars);
    expect_raw(&raw_layer(&diffs[1], "trusted"), "L1", &[], &["g"], &[]);
    c.check_merged_prefixes(&lowerdir, "", &c.tars, "opaque-subdir");
    assert_eq!(
        listing(&diffs[1].join("g")),
        ["new"],
        "L1 g/ holds only g/new"
    );
}

#[test]
fn whiteouts_that_hide_nothing_below_leave_no_ghosts() {
    if !need_root("layerapply --store + overlay mount") {
        return;
    }
    // Overlayfs hides whiteouts only in dirs it merges; anywhere else readdir lists them as
    // names that cannot be opened. A whiteout of a path no lower has (at the root, in a lower
    // dir, below a missing dir, below a lower file) hides nothing: a flat extraction makes
    // nothing for it, so the layer keeps no whiteout and no dir made only to hold one; the lower
    // file `a` stays a file. The whiteout of the lower `d/old` stays.
    let c = Case::new(
        r#"
=== L0
f a data=file-a
d d
f d/keep data=k
f d/old data=o
=== L1
w .wh.gone
w a/.wh.b
w nodir/.wh.x
w nodir/deeper/.wh.y
w d/.wh.missing
w d/.wh.old
f z data=z
"#,
    );
    let store = c.p("store");
    let (lowerdir, diffs) = c.apply_store(&store, &[], &c.tars, &c.tars);
    expect_raw(&raw_layer(&diffs[1], "trusted"), "L1", &["d/old"], &[], &[]);
    c.check_merged_prefixes(&lowerdir, "", &c.tars, "ghost-whiteouts");
    assert_eq!(
        listing(&diffs[1]),
        ["d", "z"],
        "L1 holds d (for d/old) and z"
    );

    // The same layer alone: nothing below, so every whiteout goes.
    let alone = c.p("alone");
    let (lowerdir, diffs) = c.apply_store(&alone, &[], &c.tars[1..], &c.tars[1..]);
    assert_eq!(listing(&diffs[0]), ["z"], "L1 alone holds only z");
    c.check_merged_prefixes(&lowerdir, "", &c.tars[1..], "ghost-whiteouts-alone");
}

#[test]
fn same_layer_replacements_match_a_flat_apply() {
    if !need_root("layerapply --store + overlay mount") {
        return;
    }
    // Found by the random kernel law made strict (issue 11): a file (or a hardlink to a lower
    // file) then a dir of the same name in one layer once let the lower `ff/old` show through; a
    // whiteout below a dir the same layer then replaced by a symlink failed the run; `.wh.a`
    // after `a/.wh.a` left an empty dir `a`; a file after a hardlink to a lower file lost to the
    // link, settled last.
    let c = Case::new(
        r#"
=== L0
d ff
f ff/old data=old
d gg
f gg/old data=old
d a
f a/a data=lower-a
f k data=k
d hl
f hl/old data=old
=== L1
f ff data=file
d ff
f ff/k data=k
d gg
f gg data=file-replaces-dir
d hh
l hh data=x link=k
d hh
w b/c/.wh.d
l b link=/b/c
w a/.wh.a
w .wh.a
h hl link=k
d hl
f hl/in data=in
h k2 link=k
f k2 data=later-wins
"#,
    );
    let store = c.p("store");
    let (lowerdir, _) = c.apply_store(&store, &[], &c.tars, &c.tars);
    c.check_merged_prefixes(&lowerdir, "", &c.tars, "same-layer-replacements");
}

#[test]
fn whited_out_dir_recreated_as_implied_parent_gets_fresh_attributes() {
    if !need_root("layerapply --store + overlay mount") {
        return;
    }
    // The lower x and y are deleted by L1 before L1 writes into them again without a dir entry:
    // the old dirs' attributes must not come back (OCI: whiteouts first, then the entries).
    let c = Case::new(
        r#"
=== L0
d x mode=0700 uid=5 gid=6 mtime=1400000000 x.user.old=1
f x/old data=old
d y mode=0700 uid=5 gid=6 mtime=1400000000 x.user.old=1
f y/old data=old
=== L1
w .wh.x
f x/child data=child
=== L2
w .wh..wh..opq
f y/child data=child
"#,
    );
    let store = c.p("store");
    let (lowerdir, diffs) = c.apply_store(&store, &[], &c.tars, &c.tars);
    expect_raw(&raw_layer(&diffs[1], "trusted"), "L1", &[], &["x"], &[]);
    raw_layer(&diffs[2], "trusted");
    c.check_merged_prefixes(&lowerdir, "", &c.tars, "fresh-implied");
}

#[test]
fn overlay_xattrs_from_the_tar_are_escaped_and_selinux_skipped() {
    if !need_root("layerapply --store + overlay mount") {
        return;
    }
    let c = Case::new(
        r#"
=== L0
d inj
f inj/lower data=lower
f f0 data=f0
=== L1
d inj mtime=1600000000 x.trusted.overlay.opaque=y
f f1 data=f1 x.trusted.overlay.redirect=/f0 x.trusted.overlay.foo=bar x.user.overlay.opaque=y x.security.selinux=system_u:object_r:etc_t:s0 x.user.keep=1
"#,
    );
    let store = c.p("store");
    let out = applied(layerapply().arg("--store").arg(&store).args(&c.tars));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines()
            .any(|l| l.starts_with("warning: ") && l.contains("security.selinux")),
        "skipping security.selinux deserves a warning; stderr: {err}"
    );
    let (lowerdir, diffs) = check_store(&store, &c.ids(&c.tars));
    assert_eq!(stdout_line(&out), lowerdir);

    let r1 = raw_layer(&diffs[1], "trusted");
    expect_raw(&r1, "L1", &[], &[], &["inj"]);
    assert_eq!(
        r1.xattr("inj", "trusted.overlay.overlay.opaque").as_deref(),
        Some("79")
    );
    assert_eq!(
        r1.xattr("f1", "trusted.overlay.overlay.redirect")
            .as_deref(),
        Some("2f6630")
    );
    assert_eq!(
        r1.xattr("f1", "trusted.overlay.overlay.foo").as_deref(),
        Some("626172")
    );
    assert_eq!(r1.xattr("f1", "trusted.overlay.redirect"), None);
    assert_eq!(
        r1.xattr("f1", "user.overlay.opaque").as_deref(),
        Some("79"),
        "the other namespace is ordinary data"
    );
    assert_eq!(r1.xattr("f1", "security.selinux"), None);
    assert_eq!(r1.xattr("f1", "user.keep").as_deref(), Some("31"));

    // Through the kernel (>= 6.7): the escaped names show unescaped, inj is not opaque.
    c.check_merged_prefixes(&lowerdir, "", &c.tars, "escaped");
    let (m, _) = merged_view(c.tmp.path(), &lowerdir, "");
    assert!(
        dump_line(&m, "inj").contains("trusted.overlay.opaque=79"),
        "{m}"
    );
    dump_line(&m, "inj/lower");
}

#[test]
fn duplicates_last_one_wins_with_a_warning() {
    if !need_root("layerapply --store + overlay mount") {
        return;
    }
    let c = Case::new(
        r#"
=== L0
f lowerdup data=low
=== L1
f dup data=one mode=0644
f dup data=two mode=0600 uid=3
d dd mode=0700 uid=1 mtime=1500000000 x.user.first=1
f dd/c data=c
d dd mode=0750 uid=2 mtime=1600000000 x.user.second=2
f y data=file
d y
f y/in data=in
d z
f z/c data=c
f z data=z-file
l s link=dup
f s data=s-file
f ./dup2 data=first
f dup2 data=second
f lowerdup data=mid
l lowerdup link=dup
"#,
    );
    let store = c.p("store");
    let out = applied(layerapply().arg("--store").arg(&store).args(&c.tars));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.lines().any(|l| l.starts_with("warning: ")),
        "duplicates deserve a warning; stderr: {err}"
    );
    let (lowerdir, diffs) = check_store(&store, &c.ids(&c.tars));
    assert_eq!(stdout_line(&out), lowerdir);
    raw_layer(&diffs[1], "trusted");
    c.check_merged_prefixes(&lowerdir, "", &c.tars, "dups");
}

/// Layers for the compression and stdin tests: enough data that the split points fall inside
/// file data and headers.
const SMALL_STACK: &str = r#"
=== L0
d etc mtime=1500000000.5
f etc/a size=3000 mtime=1500000001.25
f etc/b size=70000 mode=0600
l etc/c link=a
d opq
f opq/x data=x
=== L1
w etc/.wh.a
f etc/d size=5000
w opq/.wh..wh..opq
f opq/y data=y
=== L2
f etc/a data=back mtime=1600000000.999999999
h etc/e link=etc/b
"#;

#[test]
fn gzip_multi_member_zstd_multi_frame_and_stdin() {
    if !need_root("layerapply --store + overlay mount") {
        return;
    }
    let c = Case::new(SMALL_STACK);
    let (l0, l1, l2) = (c.p("L0.tar.gz"), c.p("L1.tar.zst"), c.p("L2.tar.gz"));
    two_part(&c.tars[0], 1000, &["gzip", "-c", "-n"], &l0);
    two_part(&c.tars[1], 777, &["zstd", "-q", "-c"], &l1);
    compress(&c.tars[2], &["gzip", "-c", "-9"], &l2);
    // Sanity: the test really made two members / two frames.
    let gz = std::fs::read(&l0).unwrap();
    assert!(
        gz.windows(3).filter(|w| *w == [0x1f, 0x8b, 0x08]).count() >= 2,
        "two gzip members"
    );
    let zs = std::fs::read(&l1).unwrap();
    assert!(
        zs.windows(4)
            .filter(|w| *w == [0x28, 0xb5, 0x2f, 0xfd])
            .count()
            >= 2,
        "two zstd frames"
    );

    // L1 from stdin, given as `-` between two files.
    let store = c.p("store");
    let out = applied(
        layerapply()
            .arg("--store")
            .arg(&store)
            .arg(&l0)
            .arg("-")
            .arg(&l2)
            .stdin(std::fs::File::open(&l1).unwrap()),
    );
    let (lowerdir, diffs) = check_store(&store, &c.ids(&c.tars));
    assert_eq!(
        stdout_line(&out),
        lowerdir,
        "ids are chainIDs of the uncompressed tars"
    );
    for d in &diffs {
        raw_layer(d, "trusted");
    }
    c.check_merged_prefixes(&lowerdir, "", &c.tars, "compressed");

    // The same layers uncompressed give the same layer dirs.
    let plain_store = c.p("plain-store");
    let (_, plain_diffs) = c.apply_store(&plain_store, &[], &c.tars, &c.tars);
    for (a, b) in diffs.iter().zip(&plain_diffs) {
        assert_same(
            &fingerprint(b, false),
            &fingerprint(a, false),
            "compressed vs plain layer dir (whiteout mtimes aside)",
        );
    }
}

#[test]
fn single_layer_from_stdin() {
    if !need_root("layerapply --store + overlay mount") {
        return;
    }
    let c = Case::new(SMALL_STACK);
    let gz = c.p("L0.tar.gz");
    compress(&c.tars[0], &["gzip", "-c"], &gz);
    let store = c.p("store");
    let out = applied(
        layerapply()
            .arg("--store")
            .arg(&store)
            .arg("-")
            .stdin(std::fs::File::open(&gz).unwrap()),
    );
    let (lowerdir, diffs) = check_store(&store, &c.ids(&c.tars[..1]));
    assert_eq!(stdout_line(&out), lowerdir);
    assert!(!lowerdir.contains(':'));
    raw_layer(&diffs[0], "trusted");
    c.check_merged_prefixes(&lowerdir, "", &c.tars[..1], "stdin");
}

#[test]
fn into_dir_equals_flat_apply_and_writes_native_markers() {
    if !need_root("layerapply --into") {
        return;
    }
    let c = Case::new(
        r#"
=== plain
d etc mode=0750 uid=1 gid=2 mtime=1500000000.123456789 x.user.d=1
f etc/conf data=conf mtime=1500000000.000000007 x.user.a=hello xh.user.bin=000aff x.security.selinux=x_t
f deep/implied/file data=f
l etc/link link=conf
l abs link=/etc/conf
h etc/hard link=etc/conf
h abs-hard link=abs
f usr/bin/su data=su mode=04755
f usr/bin/sg data=sg mode=02711 gid=50
d tmp mode=01777
p fifo mode=0600
c null dev=1:3 mode=0666
b loop dev=7:9 mode=0660 gid=6
f {n*250} data=long
f ./dup data=one
f dup data=two
=== marked
f keep data=keep
w .wh.gone
w dir/.wh..wh..opq
f dir/new data=new
w dir/.wh.inside
w .wh.re
d re mtime=1600000000
f re/x data=x
d same mtime=1600000000
w .wh.same
=== rootopq
f a data=a
w .wh..wh..opq
"#,
    );
    // A single layer without markers: the raw dir is exactly the flat tree.
    let into = c.p("into-plain");
    let out = applied(layerapply().arg("--into").arg(&into).arg(&c.tars[0]));
    assert!(
        out.stdout.is_empty(),
        "--into without --json prints nothing"
    );
    let flat = c.flat("flat-plain", &c.tars[..1]);
    assert_same(&dump_tree(&flat), &dump_tree(&into), "--into vs flat apply");
    assert_same(
        &stat_list(&flat, "mtime"),
        &stat_list(&into, "mtime"),
        "--into vs flat apply: mtimes in ns",
    );

    // Markers become native whiteouts and opaque dirs; DIR may exist if empty.
    let marked = c.p("into-marked");
    std::fs::create_dir(&marked).unwrap();
    applied(layerapply().arg("--into").arg(&marked).arg(&c.tars[1]));
    let r = raw_layer(&marked, "trusted");
    expect_raw(&r, "--into", &["gone"], &["dir", "re", "same"], &[]);
    assert_eq!(
        listing(&marked.join("dir")),
        ["new"],
        "no ghost whiteout in dir"
    );

    // A root-level opaque marker cannot be written with --into: error, DIR stays absent.
    let absent = c.p("into-rootopq");
    let arg = c.tars[2].display().to_string();
    let err = expect_failure(
        layerapply().arg("--into").arg(&absent).arg(&arg),
        "layerapply: ",
    );
    assert!(err.contains(&arg), "the error names the layer: {err}");
    assert!(
        std::fs::symlink_metadata(&absent).is_err(),
        "--into DIR left absent"
    );
}

#[test]
fn into_a_non_empty_dir_fails_and_leaves_it_untouched() {
    if !need_root("layerapply --into") {
        return;
    }
    let c = Case::new("=== L\nf a data=a\n");
    // A non-empty DIR is an error and stays as it was.
    let full = c.p("into-full");
    std::fs::create_dir(&full).unwrap();
    std::fs::write(full.join("x"), "x").unwrap();
    let before = dump_tree(&full);
    expect_failure(
        layerapply().arg("--into").arg(&full).arg(&c.tars[0]),
        "layerapply: ",
    );
    assert_eq!(dump_tree(&full), before, "non-empty --into DIR untouched");
}

/// Run a command that must fail with exit 1 and exactly one stderr line (not a warning) that
/// starts with `prefix`; returns that line.
fn expect_failure(cmd: &mut Command, prefix: &str) -> String {
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(1), "{cmd:?}: exit 1; stderr: {err}");
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.starts_with("warning: "))
        .collect();
    assert_eq!(lines.len(), 1, "{cmd:?}: one error line: {err:?}");
    assert!(lines[0].starts_with(prefix), "{cmd:?}: {err:?}");
    lines[0].to_string()
}

#[test]
fn userxattr_store_mounts_with_userxattr() {
    if !need_root("layerapply --userxattr + overlay userxattr mount") {
        return;
    }
    let c = Case::new(
        r#"
=== L0
d o
f o/old data=old
d w
f w/gone data=gone
f w/stay data=stay
d re
f re/old data=old
d inj
f inj/lower data=lower
=== L1
d o mtime=1600000000
w o/.wh..wh..opq
f o/new data=new
w w/.wh.gone
w .wh.re
d re mtime=1600000000
f re/new data=new
d inj mtime=1600000000 x.user.overlay.opaque=y
f f1 data=f1 x.trusted.overlay.foo=bar x.user.overlay.redirect=/w
"#,
    );
    let store = c.p("store");
    let (lowerdir, diffs) = c.apply_store(&store, &["--userxattr"], &c.tars, &c.tars);
    raw_layer(&diffs[0], "user");
    let r1 = raw_layer(&diffs[1], "user");
    expect_raw(&r1, "L1", &["w/gone"], &["o", "re"], &["inj", "w"]);
    assert_eq!(
        r1.xattr("inj", "user.overlay.overlay.opaque").as_deref(),
        Some("79")
    );
    assert_eq!(
        r1.xattr("f1", "user.overlay.overlay.redirect").as_deref(),
        Some("2f77")
    );
    assert_eq!(r1.xattr("f1", "user.overlay.redirect"), None);
    assert_eq!(
        r1.xattr("f1", "trusted.overlay.foo").as_deref(),
        Some("626172"),
        "with --userxattr, trusted.overlay.* is ordinary data"
    );
    c.check_merged_prefixes(&lowerdir, "userxattr", &c.tars, "userxattr");
}

#[test]
fn json_reports_digests_paths_and_lowerdir() {
    if !need_root("layerapply --store") {
        return;
    }
    let c = Case::new(SMALL_STACK);
    compress(&c.tars[1], &["zstd", "-q", "-c"], &c.p("tars/L1.tar.zst"));
    // Relative arguments: "layer" is the argument as given.
    let args = ["tars/L0.tar", "tars/L1.tar.zst", "tars/L2.tar"];
    let out = applied(
        layerapply()
            .current_dir(c.tmp.path())
            .args(["--json", "--store", "store"])
            .args(args),
    );
    let v: serde_json::Value = serde_json::from_str(&stdout_line(&out)).expect("one JSON object");
    let diff_ids: Vec<String> = c.tars.iter().map(|t| sha256_file(t)).collect();
    let chains = chain_ids(&diff_ids);
    let (lowerdir, diffs) = check_store(&c.p("store"), &c.ids(&c.tars));
    let layers = v["layers"].as_array().expect("layers array");
    assert_eq!(layers.len(), 3, "{v}");
    for (i, l) in layers.iter().enumerate() {
        assert_eq!(l["layer"], args[i], "{l}");
        assert_eq!(l["diffID"], diff_ids[i].as_str(), "{l}");
        assert_eq!(l["chainID"], chains[i].as_str(), "{l}");
        assert_eq!(l["path"], diffs[i].display().to_string().as_str(), "{l}");
        assert_eq!(l["reused"], false, "{l}");
    }
    assert_eq!(v["lowerdir"], lowerdir.as_str(), "{v}");
    assert_eq!(
        v.as_object().unwrap().keys().collect::<Vec<_>>(),
        ["layers", "lowerdir"]
    );

    // --into --json: one layer, path and lowerdir = the absolute DIR, chainID = diffID.
    let out = applied(layerapply().current_dir(c.tmp.path()).args([
        "--json",
        "--into",
        "into",
        "tars/L0.tar",
    ]));
    let v: serde_json::Value = serde_json::from_str(&stdout_line(&out)).expect("one JSON object");
    let into = c.p("into").canonicalize().unwrap().display().to_string();
    assert_eq!(v["lowerdir"], into.as_str(), "{v}");
    let l = &v["layers"][0];
    assert_eq!(v["layers"].as_array().map(Vec::len), Some(1), "{v}");
    assert_eq!(
        (&l["layer"], &l["path"], &l["diffID"], &l["chainID"]),
        (
            &serde_json::json!("tars/L0.tar"),
            &serde_json::json!(into),
            &serde_json::json!(diff_ids[0]),
            &serde_json::json!(diff_ids[0])
        ),
        "{v}"
    );
}

/// Apply STACK with each command into its own store; the store layouts must be valid and the
/// layer dirs the same (`fingerprint`).
fn same_layers(runs: Vec<(&str, Command)>, whiteout_times: bool) {
    let c = Case::new(STACK);
    let mut dumps: Vec<(String, Vec<String>)> = Vec::new();
    for (i, (name, mut cmd)) in runs.into_iter().enumerate() {
        let store = c.p(&format!("store{i}"));
        let out = applied(cmd.arg("--store").arg(&store).args(&c.tars));
        let (lowerdir, diffs) = check_store(&store, &c.ids(&c.tars));
        assert_eq!(stdout_line(&out), lowerdir, "{name}");
        let layers = diffs
            .iter()
            .map(|d| fingerprint(d, whiteout_times))
            .collect();
        dumps.push((name.to_string(), layers));
    }
    for (name, layers) in &dumps[1..] {
        for (i, (a, b)) in dumps[0].1.iter().zip(layers).enumerate() {
            assert_same(a, b, &format!("L{i}: {} vs {name}", dumps[0].0));
        }
    }
}

#[test]
fn layerkit_apply_builds_the_same_store_as_layerapply() {
    if !need_root("layerapply --store") {
        return;
    }
    same_layers(
        vec![
            ("layerapply", layerapply()),
            ("layerkit apply", layerkit_apply()),
        ],
        false,
    );
}

fn jobs(n: &str) -> Command {
    let mut c = layerapply();
    c.args(["-j", n]);
    c
}

#[test]
fn jobs_1_and_2_give_the_same_layer_content() {
    if !need_root("layerapply --store") {
        return;
    }
    same_layers(vec![("-j 1", jobs("1")), ("-j 2", jobs("2"))], false);
}

#[test]
fn jobs_1_and_2_give_identical_layer_dirs_whiteout_mtimes_included() {
    if !need_root("layerapply --store") {
        return;
    }
    same_layers(vec![("-j 1", jobs("1")), ("-j 2", jobs("2"))], true);
}

#[test]
fn reuse_leaves_existing_layers_untouched() {
    if !need_root("layerapply --store") {
        return;
    }
    let c = Case::new(SMALL_STACK);
    let store = c.p("store");
    let (first, diffs) = c.apply_store(&store, &[], &c.tars[..2], &c.tars[..2]);
    let id_dir = |d: &PathBuf| d.parent().unwrap().to_path_buf();
    let before: Vec<(String, String, Vec<u8>)> = diffs
        .iter()
        .map(|d| {
            (
                stat_list(&id_dir(d), "inode"),
                dump_tree(d),
                std::fs::read(id_dir(d).join("link")).unwrap(),
            )
        })
        .collect();
    let diff_dirs: Vec<(u64, i64, i64)> = diffs
        .iter()
        .map(|d| {
            let m = std::fs::symlink_metadata(d).unwrap();
            (m.ino(), m.mtime(), m.mtime_nsec())
        })
        .collect();

    let out = applied(
        layerapply()
            .args(["--json", "--store"])
            .arg(&store)
            .args(&c.tars),
    );
    let v: serde_json::Value = serde_json::from_str(&stdout_line(&out)).unwrap();
    let reused: Vec<&serde_json::Value> = v["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| &l["reused"])
        .collect();
    assert_eq!(reused, [true, true, false], "{v}");
    let (second, diffs2) = check_store(&store, &c.ids(&c.tars));
    assert_eq!(v["lowerdir"], second.as_str());
    assert_eq!(
        second,
        format!("{}:{first}", diffs2[2].display()),
        "same lowerdir prefix"
    );
    for (i, d) in diffs.iter().enumerate() {
        let m = std::fs::symlink_metadata(d).unwrap();
        assert_eq!(
            (m.ino(), m.mtime(), m.mtime_nsec()),
            diff_dirs[i],
            "L{i}/diff: same inode and mtime"
        );
        let (inodes, tree, link) = &before[i];
        assert_same(
            inodes,
            &stat_list(&id_dir(d), "inode"),
            &format!("L{i}: ino mtime ctime of every entry"),
        );
        assert_same(tree, &dump_tree(d), &format!("L{i}: reused layer dir"));
        assert_eq!(
            &std::fs::read(id_dir(d).join("link")).unwrap(),
            link,
            "L{i}/link"
        );
    }
    c.check_merged_prefixes(&second, "", &c.tars, "reuse");
}

#[test]
fn two_concurrent_runs_share_one_store() {
    if !need_root("layerapply --store") {
        return;
    }
    let c = Case::new(&format!(
        "{SMALL_STACK}\nf big1 size=8000000\nf big2 size=8000000\n"
    ));
    let store = c.p("store");
    let spawn = || {
        layerapply()
            .arg("--store")
            .arg(&store)
            .args(&c.tars)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (a.wait_with_output().unwrap(), b.wait_with_output().unwrap());
    for o in [&a, &b] {
        assert!(
            o.status.success(),
            "both runs succeed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
    assert_eq!(stdout_line(&a), stdout_line(&b), "same stdout");
    let (lowerdir, diffs) = check_store(&store, &c.ids(&c.tars));
    assert_eq!(stdout_line(&a), lowerdir);
    for d in &diffs {
        raw_layer(d, "trusted");
    }
    c.check_merged_prefixes(&lowerdir, "", &c.tars, "concurrent");
}

#[test]
fn leftover_staging_from_a_crash_is_cleaned_up() {
    if !need_root("layerapply --store") {
        return;
    }
    let c = Case::new(SMALL_STACK);
    let store = c.p("store");
    sh(
        c.tmp.path(),
        "mkdir -p store/.layerkit/staging/crashed-1234/diff/etc/deep && \
         echo half > store/.layerkit/staging/crashed-1234/diff/etc/deep/f && \
         mkfifo store/.layerkit/staging/crashed-1234/diff/p && \
         chmod 0 store/.layerkit/staging/crashed-1234/diff/etc && \
         echo x > store/.layerkit/staging/stray-file",
    );
    let (lowerdir, _) = c.apply_store(&store, &[], &c.tars, &c.tars);
    assert_staging_empty(&store);
    c.check_merged_prefixes(&lowerdir, "", &c.tars, "staging");
}

#[test]
fn a_store_keeps_one_marker_namespace() {
    if !need_root("layerapply --store") {
        return;
    }
    // Regression (issue 11): ids ignored the namespace, so a --userxattr layer was reused by a
    // normal run and its user.overlay.opaque did not hide the lower `d/old` in a normal mount.
    let c = Case::new(
        r#"
=== L0
d d
f d/old data=old
=== L1
d d
w d/.wh..wh..opq
f d/new data=new
"#,
    );
    for (first, second) in [
        (&["--userxattr"][..], &[][..]),
        (&[][..], &["--userxattr"][..]),
    ] {
        let store = c.p(&format!("store{}", first.len()));
        run(layerapply()
            .arg("--store")
            .arg(&store)
            .args(first)
            .args(&c.tars));
        let before = dump_tree(&store);
        let out = layerapply()
            .arg("--store")
            .arg(&store)
            .args(second)
            .args(&c.tars)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(
            out.status.code(),
            Some(1),
            "{first:?} then {second:?}: {err}"
        );
        assert!(
            err.lines().count() == 1 && err.contains("overlay.*") && err.contains("--userxattr"),
            "{err}"
        );
        assert_same(
            &before,
            &dump_tree(&store),
            "the store after the refused run",
        );
    }
}
