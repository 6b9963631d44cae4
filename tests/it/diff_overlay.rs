//! Kernel truth: build a lower, mount overlayfs over it, make real changes through the mount, and
//! record the merged view. Then `layerdiff` on the upper, applied to a copy of the lower by an
//! independent applier (`apply_oci.py`), must give exactly that view (minus the socket, which a tar
//! cannot carry). Flavours: default, redirect_dir=on, redirect_dir=on+metacopy=on, userxattr.
//! Every mount adds `index=off`, as moby and containerd do: with the index, copying up one name
//! of a lower hardlink changes the other name's content without it appearing in the upper.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// The lower: a small image with everything the changes below touch. Plain files only.
const LOWER: &str = r#"
mkdir -p etc a/b/c deldir/b opq mvdir/sub sub dir2file dir2sym keepdir/inner
echo conf > etc/conf; echo hosts > etc/hosts; echo del > delfile
echo a > deldir/a; echo c > deldir/b/c; echo x > opq/x; echo y > opq/y
echo mv > mvfile; echo m1 > mvdir/m1; echo m2 > mvdir/sub/m2; echo deep > a/b/c/deep
echo cm > chmodfile; echo co > chownfile; echo xa > xattrfile; echo su > suidfile
printf '\x7fELF' > capfile; chmod 755 capfile
echo f2d > file2dir; echo z > dir2file/z; echo q > dir2sym/q
echo k > keepdir/inner/k; echo k2 > keepdir/inner/k2; echo keep > keepfile
echo pair > pair1; ln pair1 pair2; echo tpair > tpair1; ln tpair1 tpair2
ln -s etc/conf lsym
seq 1 60000 > bigfile
setfattr -n user.lower -v kept xattrfile
setfattr -n user.dirx -v 1 keepdir
setfattr -n user.gone -v 1 keepdir/inner
find . -mindepth 1 -exec touch -h -d @1400000000 {} +
touch -d @1500000000 etc/conf keepdir/inner/k bigfile
"#;

/// Changes made through the mount, as a container would make them.
const CHANGES: &str = r#"
echo modified >> etc/conf
echo replaced > etc/hosts
echo new > newfile && touch -d @1000000000 newfile
mkdir -p newdir/deeper && echo n > newdir/deeper/n
chown 1234:5678 newdir && setfattr -n user.newdir -v 0xff00 newdir
rm delfile
rm -rf deldir
rm -rf opq && mkdir opq && touch opq/new
mv mvfile mvfile2
mv mvdir mvdir2 && echo added > mvdir2/added
mv a/b/c cmoved
chmod 0600 chmodfile
chmod 4755 suidfile
chown 1234:5678 chownfile
chown -h 1234:5678 lsym
setfattr -n user.test -v hello xattrfile
setfattr -n user.binary -v 0x000aff0a xattrfile
setfattr -x user.dirx keepdir
setfattr -x user.gone keepdir/inner
setcap cap_net_raw+ep capfile
echo more >> tpair1
echo h > hl1 && ln hl1 hl2 && ln hl1 sub/hl3
ln keepfile keepfile.ln
ln -s target-does-not-exist dangling && ln -s ../etc/conf sub/sym2 && ln -P dangling dangling.hl
mkfifo fifo
mknod chardev c 1 3
mknod blockdev b 7 9
rm file2dir && mkdir file2dir && echo x > file2dir/in
rm -rf dir2file && echo now-a-file > dir2file
rm -rf dir2sym && ln -s etc dir2sym
mkdir fresh && echo f > fresh/f && mv fresh fresh2
D=$(printf 'd%.0s' {1..59})/$(printf 'e%.0s' {1..60})
mkdir -p "$D" && echo long > "$D/$(printf 'f%.0s' {1..150})"
mkdir 'ünïcødé-dir' && echo u > 'ünïcødé-dir/名前.txt' && echo u > 'ünïcødé.txt'
truncate -s 10M sparse && echo mid | dd of=sparse bs=1 seek=5000000 conv=notrunc status=none
python3 -c "import socket; s = socket.socket(socket.AF_UNIX); s.bind('sock')"
"#;

/// The 271-byte path made by CHANGES: a 150-byte name under a 120-byte-deep dir.
fn long_path() -> String {
    format!("{}/{}/{}", "d".repeat(59), "e".repeat(60), "f".repeat(150))
}

/// A mounted-and-changed overlay, unmounted again, with the kernel's merged view recorded.
struct Scenario {
    tmp: tempfile::TempDir,
    /// `dump.py` of the merged view, socket lines removed.
    want: String,
}

impl Scenario {
    fn new(opts: &str, extra: &str) -> Scenario {
        let tmp = scratch();
        for d in ["lower", "upper", "work", "merged"] {
            std::fs::create_dir(tmp.path().join(d)).unwrap();
        }
        sh(&tmp.path().join("lower"), LOWER);
        let p = |d: &str| tmp.path().join(d);
        let opts = if opts.is_empty() {
            "index=off".to_string()
        } else {
            format!("{opts},index=off")
        };
        let merged = {
            let m = Mount::overlay(&[&p("lower")], &p("upper"), &p("work"), &p("merged"), &opts);
            sh(&m.merged, CHANGES);
            sh(&m.merged, extra);
            dump(&m.merged, &[])
        };
        assert!(
            merged.lines().any(|l| l.starts_with("sock s ")),
            "the merged view should show the socket"
        );
        let want = merged
            .lines()
            .filter(|l| !l.starts_with("sock "))
            .map(|l| format!("{l}\n"))
            .collect();
        Scenario { tmp, want }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.tmp.path().join(p)
    }

    fn lower_arg(&self) -> [String; 2] {
        ["--lower".into(), self.path("lower").display().to_string()]
    }

    /// `layerdiff UPPER -o OUT ARGS`; must succeed. Returns the output path.
    fn diff(&self, out: &str, args: &[String]) -> PathBuf {
        let p = self.path(out);
        let o = run(layerdiff()
            .arg(self.path("upper"))
            .arg("-o")
            .arg(&p)
            .args(args));
        assert!(
            String::from_utf8_lossy(&o.stderr).contains("sock"),
            "the skipped socket deserves a warning; stderr: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        p
    }

    /// cp -a lower, apply the layer independently, compare with the kernel's view.
    fn check_applied(&self, layer: &Path, tag: &str) {
        let target = self.path(&format!("applied-{tag}"));
        copy_tree(&self.path("lower"), &target);
        apply_oci(&target, layer);
        assert_same(
            &self.want,
            &dump(&target, &[]),
            &format!("{tag}: lower + layer vs the kernel's merged view"),
        );
    }

    /// Upper paths carrying `<ns>.overlay.metacopy` or `<ns>.overlay.redirect`.
    fn metacopy_or_redirect(&self, ns: &str) -> Vec<String> {
        let script = r#"
import os, sys
root, ns = sys.argv[1], sys.argv[2]
for dp, dn, fn in os.walk(root):
    for n in dn + fn:
        p = os.path.join(dp, n)
        xs = os.listxattr(p, follow_symlinks=False)
        if ns + ".overlay.metacopy" in xs or ns + ".overlay.redirect" in xs:
            print(os.path.relpath(p, root))
"#;
        let out = run(Command::new("python3")
            .arg("-c")
            .arg(script)
            .arg(self.path("upper"))
            .arg(ns));
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(String::from)
            .collect()
    }
}

/// The raw-tar rules, checked with Python's tarfile and GNU tar (`tar_members`).
fn check_tar(layer: &Path, ns: &str) -> Vec<Member> {
    let ms = tar_members(layer);
    let what = layer.display();
    let mut seen = std::collections::HashSet::new();
    for (i, m) in ms.iter().enumerate() {
        assert!(seen.insert(m.name.clone()), "{what}: duplicate {}", m.name);
        let base = m.base();
        if base.starts_with(".wh.") {
            assert_eq!(
                (m.typ, m.size, m.mode, m.uid, m.gid, m.mtime.as_str()),
                ('0', 0, 0, 0, 0, "0"),
                "{what}: whiteout {} must be a regular file, size 0, mode 0, owner 0:0, mtime 0",
                m.name
            );
        }
        if base == ".wh..wh..opq" {
            let dir = m
                .name
                .strip_suffix("/.wh..wh..opq")
                .expect("marker in a dir");
            let prev = &ms[i - 1];
            assert!(
                prev.name == dir && prev.typ == '5',
                "{what}: {} must come right after its dir entry, not after {}",
                m.name,
                prev.name
            );
        }
        for k in m.pax.keys() {
            for bad in [
                format!("SCHILY.xattr.{ns}.overlay."),
                "SCHILY.xattr.security.selinux".into(),
                "SCHILY.xattr.system.nfs4_acl".into(),
            ] {
                assert!(!k.starts_with(&bad), "{what}: {} carries {k}", m.name);
            }
        }
        let t: f64 = m.mtime.parse().unwrap();
        assert_eq!(t.fract(), 0.0, "{what}: {} mtime {t} not whole", m.name);
        if m.typ == '1' {
            assert!(
                !m.link.rsplit('/').next().unwrap().starts_with(".wh."),
                "{what}: hardlink {} -> whiteout {}",
                m.name,
                m.link
            );
            let target = ms[..i].iter().find(|x| x.name == m.link);
            assert!(
                target.is_some_and(|x| x.typ != '1' && x.typ != '5'),
                "{what}: link {} -> {} must follow its target, written in full",
                m.name,
                m.link
            );
        }
        assert!(
            m.raw.ends_with('/') == (m.typ == '5'),
            "{what}: dir names (and only they) end with '/': {:?}",
            m.raw
        );
        assert_ne!(base, "sock", "{what}: sockets must be skipped");
    }
    ms
}

fn markers(ms: &[Member]) -> Vec<String> {
    ms.iter()
        .filter(|m| m.base() == ".wh..wh..opq")
        .map(|m| m.name.clone())
        .collect()
}

fn find<'a>(ms: &'a [Member], name: &str) -> &'a Member {
    ms.iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name} missing from the layer"))
}

/// The same check with a peer applier: umoci unpacks an OCI image made of GNU tar's copy of the
/// lower and our layer. Skipped if umoci is not installed (CI installs it and forbids skipping).
fn check_umoci(s: &Scenario, layer: &Path) {
    if Command::new("umoci").arg("--version").output().is_err() {
        let msg = "umoci not installed (apt-get install umoci)";
        assert!(
            std::env::var("LAYERKIT_REQUIRE_ROOT").as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("skipping the umoci cross-check: {msg}");
        return;
    }
    let base = s.path("base.tar");
    run(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"])
        .arg(s.path("lower"))
        .arg("-cf")
        .arg(&base)
        .arg("."));
    let img = s.path("img");
    run(Command::new("python3")
        .arg(support("oci_image.py"))
        .arg(&img)
        .arg(&base)
        .arg(layer));
    let rootfs = s.path("umoci-rootfs");
    run(Command::new("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:t", img.display()))
        .arg(&rootfs));
    assert_same(
        &s.want,
        &dump(&rootfs, &[]),
        "umoci: base + layer vs the kernel's merged view",
    );
}

#[test]
fn default_mount_every_compression() {
    if !need_root("overlay default mount") {
        return;
    }
    let s = Scenario::new("", "");
    for out in ["l.tar", "l.tar.gz", "l.tar.zst"] {
        let layer = s.diff(out, &[]);
        check_tar(&layer, "trusted");
        s.check_applied(&layer, out);
    }
    run(Command::new("gzip").arg("-t").arg(s.path("l.tar.gz")));
    run(Command::new("zstd").arg("-qt").arg(s.path("l.tar.zst")));

    let ms = tar_members(&s.path("l.tar"));
    for w in [".wh.delfile", ".wh.deldir"] {
        assert_eq!(find(&ms, w).typ, '0');
    }
    assert!(markers(&ms).contains(&"opq/.wh..wh..opq".to_string()));
    assert_eq!(
        find(&ms, "xattrfile").xattr("user.binary"),
        Some("000aff0a"),
        "binary xattr value kept byte for byte"
    );
    assert!(find(&ms, "capfile").xattr("security.capability").is_some());
    let c = find(&ms, "chardev");
    assert_eq!((c.typ, c.dev), ('3', (1, 3)));
    let sparse = find(&ms, "sparse");
    assert_eq!(
        (sparse.typ, sparse.size),
        ('0', 10 << 20),
        "sparse file in full"
    );
    find(&ms, &long_path());
    find(&ms, "ünïcødé-dir/名前.txt");
    // hl1, hl2, sub/hl3: one file, two links to it (check_tar: to an earlier full entry).
    let hl: Vec<char> = ["hl1", "hl2", "sub/hl3"]
        .iter()
        .map(|n| find(&ms, n).typ)
        .collect();
    assert_eq!(hl.iter().filter(|t| **t == '0').count(), 1, "{hl:?}");
    assert_eq!(hl.iter().filter(|t| **t == '1').count(), 2, "{hl:?}");

    // Deterministic on a real upper, whatever the thread count.
    let j1 = s.diff("j1.tar", &["-j".into(), "1".into()]);
    let j2 = s.diff("j2.tar", &["-j".into(), "2".into()]);
    assert!(
        std::fs::read(j1).unwrap() == std::fs::read(j2).unwrap(),
        "-j 1 vs -j 2"
    );

    check_umoci(&s, &s.path("l.tar"));
}

#[test]
fn lowers_drop_only_redundant_opaque_markers() {
    if !need_root("overlay default mount") {
        return;
    }
    // opq hides lower content. file2dir replaced a lower *file* and fresh2 never existed below:
    // the kernel marks both opaque, but with the lowers known no marker is needed there.
    let s = Scenario::new("", "");
    for d in ["opq", "file2dir", "fresh2"] {
        let v = run(Command::new("getfattr")
            .args(["--only-values", "-n", "trusted.overlay.opaque"])
            .arg(s.path("upper").join(d)));
        assert_eq!(v.stdout, b"y", "the kernel should have made {d} opaque");
    }
    let with = s.diff("with.tar", &s.lower_arg());
    let without = s.diff("without.tar", &[]);
    let (mw, mo) = (check_tar(&with, "trusted"), check_tar(&without, "trusted"));
    assert_eq!(markers(&mw), vec!["opq/.wh..wh..opq"], "with --lower");
    for m in markers(&mw) {
        assert!(markers(&mo).contains(&m), "without --lower: {m} missing");
    }
    s.check_applied(&with, "with-lower");
    s.check_applied(&without, "without-lower");
}

#[test]
fn redirect_dir_needs_lower_and_then_matches() {
    if !need_root("overlay redirect_dir=on") {
        return;
    }
    let s = Scenario::new(
        "redirect_dir=on",
        "mv keepdir keepdir-renamed && echo added > keepdir-renamed/added && rm keepdir-renamed/inner/k2",
    );
    let special = s.metacopy_or_redirect("trusted");
    for d in ["mvdir2", "keepdir-renamed", "cmoved"] {
        assert!(
            special.iter().any(|p| p == d),
            "kernel should redirect {d}: {special:?}"
        );
    }
    let names: Vec<&str> = special.iter().map(String::as_str).collect();
    let out = s.path("r.tar");
    assert_fails_cleanly(
        layerdiff().arg(s.path("upper")).arg("-o").arg(&out),
        &names,
        &out,
    );

    let layer = s.diff("r.tar", &s.lower_arg());
    let ms = check_tar(&layer, "trusted");
    for n in [
        "keepdir-renamed/inner/k",
        "keepdir-renamed/added",
        "mvdir2/m1",
        "mvdir2/sub/m2",
        "cmoved/deep",
    ] {
        find(&ms, n);
    }
    assert!(
        !ms.iter()
            .any(|m| m.name.ends_with("keepdir-renamed/inner/k2")),
        "a whiteout inside a renamed dir hides the lower entry"
    );
    assert_eq!(markers(&ms), vec!["opq/.wh..wh..opq"]);
    s.check_applied(&layer, "redirect");
}

#[test]
fn metacopy_needs_lower_and_then_matches() {
    if !need_root("overlay metacopy=on") {
        return;
    }
    let s = Scenario::new(
        "redirect_dir=on,metacopy=on",
        "chmod 600 bigfile && mv keepdir/inner/k keepdir/k-moved",
    );
    let special = s.metacopy_or_redirect("trusted");
    for f in ["bigfile", "chmodfile", "keepdir/k-moved"] {
        assert!(
            special.iter().any(|p| p == f),
            "kernel should metacopy {f}: {special:?}"
        );
    }
    let names: Vec<&str> = special.iter().map(String::as_str).collect();
    let out = s.path("m.tar.zst");
    assert_fails_cleanly(
        layerdiff().arg(s.path("upper")).arg("-o").arg(&out),
        &names,
        &out,
    );

    let layer = s.diff("m.tar.zst", &s.lower_arg());
    let ms = check_tar(&layer, "trusted");
    assert_eq!(
        find(&ms, "bigfile").size,
        348_894,
        "metacopy file carries its full data"
    );
    assert_eq!(find(&ms, "keepdir/k-moved").size, 2);
    s.check_applied(&layer, "metacopy");
}

#[test]
fn userxattr_mount() {
    if !need_root("overlay userxattr") {
        return;
    }
    let s = Scenario::new("userxattr", "");
    let layer = s.diff("u.tar.gz", &["--userxattr".into()]);
    let ms = check_tar(&layer, "user");
    assert!(markers(&ms).contains(&"opq/.wh..wh..opq".to_string()));
    assert_eq!(find(&ms, ".wh.delfile").typ, '0');
    s.check_applied(&layer, "userxattr");
}

#[test]
fn two_lowers_topmost_first() {
    if !need_root("overlay metacopy=on over two lowers") {
        return;
    }
    // `-l` follows `lowerdir=` order: a metacopy file's data comes from the topmost lower that has
    // it, a redirected dir merges its source from every lower.
    let t = scratch();
    let p = |d: &str| t.path().join(d);
    for d in ["top", "bottom", "upper", "work", "merged"] {
        std::fs::create_dir(p(d)).unwrap();
    }
    sh(
        &p("bottom"),
        "echo bottom > f; echo g > g; mkdir d; echo b > d/b; echo shadowed > d/s",
    );
    sh(
        &p("top"),
        "echo top-version > f; mkdir d; echo t > d/t; echo s > d/s",
    );
    let want = {
        let m = Mount::overlay(
            &[&p("top"), &p("bottom")],
            &p("upper"),
            &p("work"),
            &p("merged"),
            "redirect_dir=on,metacopy=on,index=off",
        );
        sh(&m.merged, "chmod 600 f g && mv d d2 && chown 7:7 d2/b");
        dump(&m.merged, &[])
    };
    let layer = p("l.tar");
    run(layerdiff()
        .arg(p("upper"))
        .arg("-o")
        .arg(&layer)
        .arg("-l")
        .arg(p("top"))
        .arg("--lower")
        .arg(p("bottom")));
    let ms = check_tar(&layer, "trusted");
    assert_eq!(find(&ms, "f").size, 12, "f's data from the top lower");
    for n in ["d2/b", "d2/t", "d2/s"] {
        find(&ms, n);
    }
    // The image below this layer: bottom, then top over it (neither has whiteouts).
    copy_tree(&p("bottom"), &p("base"));
    run(Command::new("cp").arg("-a").arg(p("top/.")).arg(p("base")));
    apply_oci(&p("base"), &layer);
    assert_same(
        &want,
        &dump(&p("base"), &[]),
        "two lowers + layer vs merged view",
    );
}
