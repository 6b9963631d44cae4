//! Kernel truth: real overlayfs mounts, real changes through them, then `layerdiff` on the upper,
//! applied to a copy of the lower by an independent applier, must equal the merged view the kernel
//! showed. Covers the default mount, redirect_dir=on, metacopy=on and userxattr.

use std::path::Path;
use std::process::Command;

use crate::kernel::*;

/// The lower: a small image with everything the changes below touch.
const LOWER: &str = r#"
mkdir -p etc deldir/b opq mvdir/sub sub dir2file dir2sym keepdir/inner
echo conf > etc/conf; echo del > delfile; echo a > deldir/a; echo c > deldir/b/c
echo x > opq/x; echo y > opq/y; echo mv > mvfile; echo m1 > mvdir/m1; echo m2 > mvdir/sub/m2
echo cm > chmodfile; echo co > chownfile; echo xa > xattrfile; printf '\x7fELF' > capfile; chmod 755 capfile
echo f2d > file2dir; echo z > dir2file/z; echo q > dir2sym/q; echo su > suidfile; echo keep > keepdir/inner/k
head -c 300000 /dev/urandom > bigfile
setfattr -n user.lower -v kept keepdir/inner/k
touch -d @1500000000 etc/conf keepdir/inner/k bigfile
"#;

/// Changes made through the mount, as a container would make them.
const CHANGES: &str = r#"
echo modified >> etc/conf
echo new > newfile
rm delfile
rm -rf deldir
rm -rf opq && mkdir opq && echo n > opq/new
mv mvfile mvfile2
mv mvdir mvdir2 && echo added > mvdir2/added
chmod 0600 chmodfile
chown 1234:5678 chownfile
setfattr -n user.test -v hello xattrfile
setfattr -n user.binary -v 0x000aff0a xattrfile
setcap cap_net_raw+ep capfile
echo h > hl1 && ln hl1 hl2 && ln hl1 sub/hl3
ln -s target-does-not-exist sym && ln -s ../etc/conf sub/sym2
mkfifo fifo
mknod chardev c 1 3
mknod blockdev b 7 9
rm file2dir && mkdir file2dir && echo x > file2dir/in
rm -rf dir2file && echo now-a-file > dir2file
rm -rf dir2sym && ln -s etc dir2sym
L=$(printf 'd%.0s' $(seq 60))/$(printf 'e%.0s' $(seq 60)); mkdir -p "$L" && echo long > "$L/$(printf 'f%.0s' $(seq 150))"
echo u > 'ünïcødé-名前.txt'
truncate -s 10M sparse && echo mid | dd of=sparse bs=1 seek=5000000 conv=notrunc status=none
chmod 4755 suidfile
touch -d @1000000000 newfile
python3 -c "import socket; s = socket.socket(socket.AF_UNIX); s.bind('sock')"
"#;

struct Outcome {
    tmp: tempfile::TempDir,
    merged_dump: String,
}

impl Outcome {
    fn path(&self, p: &str) -> std::path::PathBuf {
        self.tmp.path().join(p)
    }
}

/// Build the lower, mount with `opts`, make the changes, record the merged view, unmount.
fn scenario(opts: &str, extra_changes: &str) -> Outcome {
    let tmp = scratch();
    for d in ["lower", "upper", "work", "merged"] {
        std::fs::create_dir(tmp.path().join(d)).unwrap();
    }
    sh(&tmp.path().join("lower"), LOWER);
    let merged_dump = {
        let m = Mount::new(
            &tmp.path().join("lower"),
            &tmp.path().join("upper"),
            &tmp.path().join("work"),
            &tmp.path().join("merged"),
            opts,
        );
        sh(&m.merged, CHANGES);
        sh(&m.merged, extra_changes);
        dump(&m.merged)
    };
    Outcome { tmp, merged_dump }
}

/// The layer applied to a copy of the lower must show exactly the merged view (minus the socket,
/// which a tar cannot carry).
fn check_applied(o: &Outcome, layer: &Path, tag: &str) {
    let target = o.path(&format!("applied-{tag}"));
    copy_tree(&o.path("lower"), &target);
    oci_apply(&target, layer);
    let want: String = o
        .merged_dump
        .lines()
        .filter(|l| !l.ends_with("socket ") && !l.contains(" socket"))
        .map(|l| format!("{l}\n"))
        .collect();
    let got = dump(&target);
    assert!(
        want == got,
        "{tag}: lower + layer differs from the kernel's merged view:\n{}",
        diff_lines(&want, &got)
    );
}

/// The same check with a peer applier: umoci (Debian's package) unpacks an OCI image whose layers
/// are GNU tar's copy of the lower and our layer.
fn check_umoci(o: &Outcome, layer: &Path) {
    if Command::new("umoci").arg("--version").output().is_err() {
        let msg = "umoci not installed (apt-get install umoci)";
        assert!(
            std::env::var("LAYERKIT_REQUIRE_ROOT").as_deref() != Ok("1"),
            "{msg}"
        );
        eprintln!("skipping the umoci cross-check: {msg}");
        return;
    }
    let base = o.path("base.tar");
    run(Command::new("tar")
        .args(["--xattrs", "--xattrs-include=*", "--numeric-owner", "-C"])
        .arg(o.path("lower"))
        .arg("-cf")
        .arg(&base)
        .arg("."));
    let img = o.path("img");
    run(Command::new("python3")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/it/support/oci_image.py"))
        .arg(&img)
        .arg(&base)
        .arg(layer));
    let rootfs = o.path("umoci-rootfs");
    run(Command::new("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:t", img.display()))
        .arg(&rootfs));
    let want: String = o
        .merged_dump
        .lines()
        .filter(|l| !l.contains(" socket"))
        .map(|l| format!("{l}\n"))
        .collect();
    let got = dump(&rootfs);
    assert!(
        want == got,
        "umoci: base + layer differs from the kernel's merged view:\n{}",
        diff_lines(&want, &got)
    );
}

fn diff_upper(o: &Outcome, out: &str, args: &[&str]) -> std::path::PathBuf {
    let p = o.path(out);
    run(layerdiff()
        .arg(o.path("upper"))
        .arg("-o")
        .arg(&p)
        .args(args));
    p
}

/// Raw-tar rules, checked with Python's reader: whiteouts and markers have fixed metadata, no
/// overlay-private xattr leaks, no hardlink to a whiteout, no socket; GNU tar lists it cleanly.
fn check_tar(layer: &Path, ns: &str) {
    let members = tar_members(layer);
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    for (i, m) in members.iter().enumerate() {
        let base = m.name.rsplit('/').next().unwrap();
        if base.starts_with(".wh.") {
            assert_eq!(
                (m.typ, m.size, m.mode, m.uid, m.gid, m.mtime),
                ('0', 0, 0, 0, 0, 0),
                "{}",
                m.name
            );
        }
        if base == ".wh..wh..opq" {
            let dir = &m.name[..m.name.len() - base.len() - 1];
            assert_eq!(
                members[i - 1].name,
                dir,
                "opaque marker must follow its dir"
            );
        }
        for k in &m.pax {
            assert!(
                !k.starts_with(&format!("SCHILY.xattr.{ns}.overlay.")),
                "{}: leaked {k}",
                m.name
            );
            assert_ne!(k, "SCHILY.xattr.security.selinux");
        }
        if m.typ == '1' {
            assert!(
                !m.link.rsplit('/').next().unwrap().starts_with(".wh."),
                "hardlink to a whiteout: {}",
                m.name
            );
            let t = names
                .iter()
                .position(|n| *n == m.link)
                .expect("link target present");
            assert!(t < i, "link {} before its target", m.name);
        }
        assert_ne!(base, "sock", "sockets must be skipped");
    }
    let st = Command::new("tar")
        .arg("--xattrs")
        .arg("-tf")
        .arg(layer)
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "GNU tar cannot list {}", layer.display());
}

#[test]
fn default_mount_all_compressions() {
    if !need_root("overlay default mount") {
        return;
    }
    let o = scenario("", "");
    for out in ["l.tar", "l.tar.gz", "l.tar.zst"] {
        let layer = diff_upper(&o, out, &[]);
        check_tar(&layer, "trusted");
        check_applied(&o, &layer, out);
    }
    check_umoci(&o, &o.path("l.tar"));
    run(Command::new("gzip").arg("-t").arg(o.path("l.tar.gz")));
    run(Command::new("zstd")
        .arg("-q")
        .arg("-t")
        .arg(o.path("l.tar.zst")));
    let m = tar_members(&o.path("l.tar"));
    let find = |n: &str| {
        m.iter()
            .find(|x| x.name == n)
            .unwrap_or_else(|| panic!("{n} missing"))
    };
    assert_eq!(find(".wh.delfile").typ, '0');
    assert_eq!(find(".wh.deldir").typ, '0');
    find("opq/.wh..wh..opq");
    assert!(find("capfile")
        .pax
        .iter()
        .any(|k| k == "SCHILY.xattr.security.capability"));
    assert!(m.iter().any(|x| x.name.starts_with("hl") && x.typ == '1'));
    assert!(m.iter().any(|x| x.name.len() > 250), "long name survives");
}

#[test]
fn lowers_drop_redundant_opaque_markers() {
    if !need_root("overlay default mount") {
        return;
    }
    // file2dir replaced a lower *file* by a dir and `fresh` never existed below: the kernel may mark
    // them opaque, but no lower dir sits there, so with --lower no marker is needed.
    let o = scenario("", "mkdir fresh && echo f > fresh/f && mv fresh fresh2");
    let with = diff_upper(
        &o,
        "with.tar",
        &["--lower", o.path("lower").to_str().unwrap()],
    );
    let without = diff_upper(&o, "without.tar", &[]);
    let markers = |p: &Path| -> Vec<String> {
        tar_members(p)
            .into_iter()
            .map(|m| m.name)
            .filter(|n| n.ends_with(".wh..wh..opq"))
            .collect()
    };
    assert_eq!(
        markers(&with),
        vec!["opq/.wh..wh..opq".to_string()],
        "only the dir that hides lower content"
    );
    assert!(markers(&without).len() >= markers(&with).len());
    check_applied(&o, &with, "with-lower");
    check_applied(&o, &without, "without-lower");
}

#[test]
fn redirect_dir_needs_lower_and_then_matches() {
    if !need_root("overlay redirect_dir=on") {
        return;
    }
    let o = scenario("redirect_dir=on,index=off", "mv keepdir keepdir-renamed");
    let out = layerdiff()
        .arg(o.path("upper"))
        .arg("-o")
        .arg(o.path("r.tar"))
        .output()
        .unwrap();
    assert_fails_cleanly(&out, &["keepdir-renamed", "mvdir2"], &o.path("r.tar"));
    let layer = diff_upper(&o, "r.tar", &["-l", o.path("lower").to_str().unwrap()]);
    check_tar(&layer, "trusted");
    check_applied(&o, &layer, "redirect");
    let names: Vec<String> = tar_members(&layer).into_iter().map(|m| m.name).collect();
    assert!(
        names.iter().any(|n| n == "keepdir-renamed/inner/k"),
        "renamed dir carries its content: {names:?}"
    );
}

#[test]
fn metacopy_needs_lower_and_then_matches() {
    if !need_root("overlay metacopy=on") {
        return;
    }
    let o = scenario(
        "redirect_dir=on,metacopy=on,index=off",
        "chmod 600 bigfile && mv keepdir/inner/k keepdir/k-moved",
    );
    let out = layerdiff()
        .arg(o.path("upper"))
        .arg("-o")
        .arg(o.path("m.tar.zst"))
        .output()
        .unwrap();
    assert_fails_cleanly(&out, &["bigfile", "keepdir"], &o.path("m.tar.zst"));
    let layer = diff_upper(&o, "m.tar.zst", &["-l", o.path("lower").to_str().unwrap()]);
    check_tar(&layer, "trusted");
    check_applied(&o, &layer, "metacopy");
    let big = tar_members(&layer)
        .into_iter()
        .find(|m| m.name == "bigfile")
        .expect("bigfile");
    assert_eq!(big.size, 300_000, "metacopy file carries its full data");
}

#[test]
fn userxattr_mount() {
    if !need_root("overlay userxattr") {
        return;
    }
    let o = scenario("userxattr", "");
    let layer = diff_upper(&o, "u.tar", &["--userxattr"]);
    check_tar(&layer, "user");
    check_applied(&o, &layer, "userxattr");
    // Without --userxattr the markers are not recognised: user.overlay.opaque would leak as data.
    let wrong = diff_upper(&o, "wrong.tar", &[]);
    assert!(tar_members(&wrong).iter().any(|m| m
        .pax
        .iter()
        .any(|k| k.starts_with("SCHILY.xattr.user.overlay."))));
}
