//! The `layerdiff` / `layerkit diff` contract on hand-made uppers (no mount needed): bad input
//! gives one stderr line naming the path and no output; output is byte-deterministic; `--json`
//! digests match the bytes (checked with sha256sum, gzip and zstd, never with our code);
//! compression follows the extension unless `-c` says otherwise; mtimes clamp; the per-entry
//! rules (whiteouts, opaque markers, xattr filtering, hardlinks, sockets) hold.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::*;

/// A plain upper: 300 small files, a 3 MiB file, a symlink, a hardlink pair, an xattr; as root
/// also a whiteout and an opaque dir made the way the kernel makes them.
fn plain_upper(root: &Path) -> PathBuf {
    let u = root.join("upper");
    std::fs::create_dir_all(u.join("d/e")).unwrap();
    for i in 0..300 {
        let body = format!("content {i}\n").repeat(i % 50 + 1);
        std::fs::write(u.join(format!("d/e/f{i}")), body).unwrap();
    }
    std::fs::write(u.join("big"), vec![42u8; 3 << 20]).unwrap();
    sh(
        &u,
        "ln -s d/e/f1 s; ln d/e/f2 hard; touch -d @1700000000 big; touch -d @1000000000 d/e/f7
         setfattr -n user.k -v v big",
    );
    if need_root("whiteouts in the CLI upper") {
        sh(
            &u,
            "mknod gone c 0 0; setfattr -n trusted.overlay.opaque -v y d",
        );
    }
    u
}

#[test]
fn bad_inputs_fail_with_one_line_and_no_output() {
    let t = scratch();
    let out = t.path().join("o.tar");
    let missing = t.path().join("missing");
    assert_fails_cleanly(
        layerdiff().arg(&missing).arg("-o").arg(&out),
        &["missing"],
        &out,
    );

    let file = t.path().join("afile");
    std::fs::write(&file, b"x").unwrap();
    assert_fails_cleanly(layerdiff().arg(&file).arg("-o").arg(&out), &["afile"], &out);

    let wh = t.path().join("wh");
    std::fs::create_dir_all(wh.join("sub")).unwrap();
    std::fs::write(wh.join("sub/ok"), b"ok").unwrap();
    std::fs::write(wh.join("sub/.wh.foo"), b"").unwrap();
    assert_fails_cleanly(
        layerdiff().arg(&wh).arg("-o").arg(&out),
        &["sub/.wh.foo"],
        &out,
    );
    assert_fails_cleanly(
        layerkit_diff().arg(&wh).arg("-o").arg(&out),
        &["sub/.wh.foo"],
        &out,
    );

    // A whiteout (char 0/0) whose own name starts with .wh. cannot be said in a tar either:
    // `.wh..opq` would come out as `.wh..wh..opq`, an opaque marker for the whole dir.
    if need_root("mknod") {
        for name in [".wh..opq", ".wh.x"] {
            let wd = t.path().join(format!("whdev{}", name.len()));
            std::fs::create_dir_all(wd.join("sub")).unwrap();
            sh(&wd, &format!("mknod 'sub/{name}' c 0 0"));
            let want = format!("sub/{name}");
            assert_fails_cleanly(
                layerdiff().arg(&wd).arg("-o").arg(&out),
                &[want.as_str(), "cannot be represented"],
                &out,
            );
        }
    }

    let ok = t.path().join("ok");
    std::fs::create_dir(&ok).unwrap();
    std::fs::write(ok.join("a"), b"a").unwrap();
    let nowhere = Path::new("/nonexistent-layerkit-it/dir/x.tar");
    assert_fails_cleanly(
        layerdiff().arg(&ok).arg("-o").arg(nowhere),
        &["/nonexistent-layerkit-it/dir/x.tar"],
        nowhere,
    );

    if need_root("metacopy and redirect markers") {
        let m = t.path().join("m");
        std::fs::create_dir_all(m.join("sub")).unwrap();
        sh(
            &m,
            "truncate -s 100 sub/data; setfattr -n trusted.overlay.metacopy sub/data
             setfattr -n trusted.overlay.redirect -v /lower/path sub/data",
        );
        for j in ["1", "2"] {
            assert_fails_cleanly(
                layerdiff().arg(&m).arg("-o").arg(&out).args(["-j", j]),
                &["sub/data"],
                &out,
            );
        }
        let r = t.path().join("r");
        std::fs::create_dir_all(r.join("renamed")).unwrap();
        sh(
            &r,
            "setfattr -n trusted.overlay.redirect -v original renamed",
        );
        assert_fails_cleanly(layerdiff().arg(&r).arg("-o").arg(&out), &["renamed"], &out);
    }

    // A failed run leaves an existing output file untouched.
    std::fs::write(&out, b"precious").unwrap();
    let r = layerdiff().arg(&wh).arg("-o").arg(&out).output().unwrap();
    assert!(!r.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
}

/// Incompressible data, so even gzip/zstd output overflows a small disk.
fn noisy_upper(root: &Path) -> PathBuf {
    let many = root.join("many");
    noise_files(&many, 40, 0x9e37_79b9_7f4a_7c15);
    many
}

#[test]
fn failing_last_stage_ends_the_run() {
    // Regression: a failure in the last stage, on an upper bigger than the pipeline's buffers,
    // once left the tar stage blocked forever on a full channel.
    let t = scratch();
    let many = noisy_upper(t.path());
    let zst = t.path().join("o.tar.zst");
    let mut cmd = Command::new("timeout");
    cmd.arg("60")
        .arg(env!("CARGO_BIN_EXE_layerdiff"))
        .arg(&many)
        .arg("-o")
        .arg(&zst)
        .args(["--level", "40"]);
    let r = assert_fails_cleanly(&mut cmd, &["level", "40"], &zst);
    assert_eq!(r.status.code(), Some(2), "a usage error, not a hang: {r:?}");

    // A full disk: the error names the output, nothing is left behind, the run ends.
    if need_root("a tiny tmpfs for ENOSPC") {
        let full = t.path().join("full");
        std::fs::create_dir(&full).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&full));
        let _unmount = Mount::guard(&full);
        for c in ["none", "gzip", "zstd"] {
            let o = full.join("x.tar");
            let mut cmd = Command::new("timeout");
            cmd.arg("60")
                .arg(env!("CARGO_BIN_EXE_layerdiff"))
                .arg(&many)
                .arg("-o")
                .arg(&o)
                .args(["-c", c]);
            let r = assert_fails_cleanly(&mut cmd, &["x.tar"], &o);
            assert_eq!(r.status.code(), Some(1), "{c}: {r:?}");
            assert!(
                listing(&full).is_empty(),
                "{c}: nothing left on the full disk"
            );
        }
    }
}

#[test]
fn output_is_deterministic_across_jobs_and_runs() {
    let t = scratch();
    let u = plain_upper(t.path());
    for c in ["none", "gzip", "zstd"] {
        let mut seen = Vec::new();
        for (i, j) in ["1", "2", "1", "2"].iter().enumerate() {
            let p = t.path().join(format!("{c}-{i}.out"));
            run(layerdiff()
                .arg(&u)
                .arg("-o")
                .arg(&p)
                .args(["-c", c, "-j", j]));
            seen.push(std::fs::read(&p).unwrap());
        }
        for (i, s) in seen.iter().enumerate().skip(1) {
            if *s != seen[0] {
                let at = s.iter().zip(&seen[0]).position(|(a, b)| a != b);
                panic!(
                    "-c {c}: run {i} differs from run 0 (-j {} vs -j 1): lengths {} vs {}, first \
                     difference at byte {at:?}; outputs in {}",
                    ["1", "2", "1", "2"][i],
                    s.len(),
                    seen[0].len(),
                    t.keep().display()
                );
            }
        }
        let expect = match c {
            "none" => "tar",
            other => other,
        };
        assert_eq!(kind(&seen[0]), expect, "-c {c}");
    }
}

#[test]
fn stdout_and_layerkit_diff_give_the_same_bytes() {
    let t = scratch();
    let u = plain_upper(t.path());
    let file = t.path().join("f.tar");
    run(layerdiff().arg(&u).arg("-o").arg(&file));
    let file = std::fs::read(&file).unwrap();
    let plain = run(layerdiff().arg(&u)).stdout;
    let dash = run(layerdiff().arg(&u).args(["-o", "-"])).stdout;
    let sub = run(layerkit_diff().arg(&u)).stdout;
    assert_eq!(kind(&plain), "tar", "stdout defaults to no compression");
    assert!(
        plain == file && dash == file && sub == file,
        "stdout, -o -, layerkit diff, -o FILE"
    );

    let z = run(layerdiff().arg(&u).args(["-c", "zstd"])).stdout;
    assert_eq!(kind(&z), "zstd", "-c applies to stdout");
    let zp = t.path().join("z.tzst");
    run(layerkit_diff().arg(&u).arg("--output").arg(&zp));
    assert_eq!(
        z,
        std::fs::read(&zp).unwrap(),
        "layerkit diff, --output, .tzst"
    );
}

#[test]
fn compression_follows_extension_unless_forced() {
    let t = scratch();
    let u = plain_upper(t.path());
    for (name, forced, want) in [
        ("a.tar", None, "tar"),
        ("a.tar.gz", None, "gzip"),
        ("a.tgz", None, "gzip"),
        ("a.tar.zst", None, "zstd"),
        ("a.tzst", None, "zstd"),
        ("b.tar", Some("zstd"), "zstd"),
        ("b.tar.gz", Some("none"), "tar"),
        ("b.tar.zst", Some("gzip"), "gzip"),
        ("b.tgz", Some("zstd"), "zstd"),
    ] {
        let p = t.path().join(name);
        let mut cmd = layerdiff();
        cmd.arg(&u).arg("-o").arg(&p);
        if let Some(c) = forced {
            cmd.args(["--compression", c]);
        }
        run(&mut cmd);
        assert_eq!(
            kind(&std::fs::read(&p).unwrap()),
            want,
            "{name} -c {forced:?}"
        );
        match want {
            "gzip" => drop(run(Command::new("gzip").arg("-t").arg(&p))),
            "zstd" => drop(run(Command::new("zstd").arg("-qt").arg(&p))),
            _ => {}
        }
        assert!(tar_members(&p).iter().any(|m| m.name == "big"), "{name}");
    }
}

#[test]
fn json_descriptor_matches_independent_digests() {
    let t = scratch();
    let u = plain_upper(t.path());
    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
    for (name, args, media, decomp) in [
        ("l.tar", &[][..], TAR.to_string(), None),
        ("l.tar.gz", &[][..], format!("{TAR}+gzip"), Some("gzip")),
        ("l.tgz", &[][..], format!("{TAR}+gzip"), Some("gzip")),
        ("l.tar.zst", &[][..], format!("{TAR}+zstd"), Some("zstd")),
        ("l.tzst", &[][..], format!("{TAR}+zstd"), Some("zstd")),
        (
            "f.tar",
            &["-c", "zstd"][..],
            format!("{TAR}+zstd"),
            Some("zstd"),
        ),
        ("f.tar.gz", &["-c", "none"][..], TAR.to_string(), None),
    ] {
        let p = t.path().join(name);
        let out = run(layerdiff()
            .arg(&u)
            .arg("-o")
            .arg(&p)
            .args(args)
            .arg("--json"));
        let (mt, digest, size, diff_id) = descriptor(&out.stdout);
        assert_eq!(mt, media, "{name} {args:?}");
        assert_eq!(digest, sha256_file(&p), "{name}: digest of the file");
        assert_eq!(size, std::fs::metadata(&p).unwrap().len(), "{name}: size");
        let plain = t.path().join(format!("{name}.plain"));
        match decomp {
            None => drop(std::fs::copy(&p, &plain).unwrap()),
            Some(tool) => {
                let o = run(Command::new(tool).arg("-dc").arg(&p));
                std::fs::write(&plain, o.stdout).unwrap();
            }
        }
        assert_eq!(
            diff_id,
            sha256_file(&plain),
            "{name}: diffID is the uncompressed digest"
        );
    }
}

#[test]
fn source_date_epoch_clamps_mtimes() {
    let t = scratch();
    let u = plain_upper(t.path());
    const N: i64 = 1_600_000_000;
    let p = t.path().join("c.tar");
    run(layerdiff()
        .arg(&u)
        .arg("-o")
        .arg(&p)
        .args(["--source-date-epoch", &N.to_string()])
        .env_remove("SOURCE_DATE_EPOCH"));
    let ms = tar_members(&p);
    let mtime = |n: &str| -> i64 {
        let m = ms
            .iter()
            .find(|m| m.name == n)
            .unwrap_or_else(|| panic!("{n}"));
        m.mtime.parse::<f64>().unwrap() as i64
    };
    assert!(ms
        .iter()
        .all(|m| m.mtime.parse::<f64>().unwrap() <= N as f64));
    assert_eq!(mtime("big"), N, "newer mtimes clamp down");
    assert_eq!(mtime("d/e/f7"), 1_000_000_000, "older mtimes stay");
    let q = t.path().join("e.tar");
    run(layerdiff()
        .arg(&u)
        .arg("-o")
        .arg(&q)
        .env("SOURCE_DATE_EPOCH", N.to_string()));
    assert!(
        std::fs::read(&p).unwrap() == std::fs::read(&q).unwrap(),
        "SOURCE_DATE_EPOCH env == --source-date-epoch"
    );
    let unclamped = t.path().join("u.tar");
    run(layerdiff()
        .arg(&u)
        .arg("-o")
        .arg(&unclamped)
        .env_remove("SOURCE_DATE_EPOCH"));
    let big = tar_members(&unclamped)
        .into_iter()
        .find(|m| m.name == "big")
        .unwrap();
    assert_eq!(big.mtime, "1700000000");
    assert_eq!(big.xattr("user.k"), Some("76"));
}

#[test]
fn sockets_are_skipped_with_a_warning() {
    let t = scratch();
    let u = t.path().join("u");
    std::fs::create_dir(&u).unwrap();
    sh(
        &u,
        "python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); s.bind('sock')\"; echo a > a",
    );
    let p = t.path().join("s.tar");
    let out = run(layerdiff().arg(&u).arg("-o").arg(&p));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("sock"),
        "warning names the socket"
    );
    let names: Vec<String> = tar_members(&p).into_iter().map(|m| m.name).collect();
    assert_eq!(names, vec!["a"]);
}

/// Per-entry rules on an upper made by hand the way the kernel would make it.
#[test]
fn entry_rules_on_a_hand_made_upper() {
    if !need_root("whiteouts, trusted.* and security.* xattrs") {
        return;
    }
    let t = scratch();
    let u = t.path().join("u");
    std::fs::create_dir(&u).unwrap();
    sh(
        &u,
        "mkdir -p opq/sub plain
         echo x > opq/sub/x; setfattr -n trusted.overlay.opaque -v y opq
         setfattr -n trusted.overlay.opaque -v x plain
         mknod gone c 0 0; chmod 644 gone; chown 5:6 gone; touch -d @1700000000 gone; ln gone gone2
         mknod plain/gone3 c 0 0
         echo f > f; ln f g; ln f plain/h
         setfattr -n user.k -v 0x0aff f
         setfattr -n trusted.custom -v t f
         setfattr -n security.selinux -v system_u:object_r:x f
         setfattr -n trusted.overlay.origin -v 0x00 f
         setfattr -n trusted.overlay.impure -v y plain
         mknod null c 1 3
         touch -d @1700000000.75 frac",
    );
    let p = t.path().join("e.tar");
    run(layerdiff().arg(&u).arg("-o").arg(&p));
    let ms = tar_members(&p);
    let get = |n: &str| -> &Member {
        ms.iter()
            .find(|m| m.name == n)
            .unwrap_or_else(|| panic!("{n} missing: {ms:#?}"))
    };
    for w in [".wh.gone", ".wh.gone2", "plain/.wh.gone3"] {
        let m = get(w);
        assert_eq!(
            (m.typ, m.size, m.mode, m.uid, m.gid, m.mtime.as_str()),
            ('0', 0, 0, 0, 0, "0"),
            "{w}: whiteouts are plain empty files, whatever the device node's metadata or links"
        );
    }
    let i = ms.iter().position(|m| m.name == "opq").unwrap();
    assert_eq!(ms[i].raw, "opq/");
    assert_eq!(
        ms[i + 1].name,
        "opq/.wh..wh..opq",
        "marker right after its dir"
    );
    assert!(
        !ms.iter().any(|m| m.name == "plain/.wh..wh..opq"),
        "opaque=x is not opaque"
    );
    let f = get("f");
    assert_eq!(f.typ, '0');
    assert_eq!(f.xattr("user.k"), Some("0aff"));
    assert_eq!(f.xattr("trusted.custom"), Some("74"));
    for m in &ms {
        for k in m.pax.keys() {
            assert!(
                !k.starts_with("SCHILY.xattr.trusted.overlay.") && !k.contains("selinux"),
                "{}: {k} must be dropped",
                m.name
            );
        }
    }
    for l in ["g", "plain/h"] {
        assert_eq!((get(l).typ, get(l).link.as_str()), ('1', "f"), "{l}");
    }
    assert_eq!((get("null").typ, get("null").dev), ('3', (1, 3)));
    assert_eq!(get("frac").mtime, "1700000000", "whole seconds");

    // --userxattr: user.overlay.* are the markers, trusted.overlay.* is not ours to interpret.
    let v = t.path().join("v");
    std::fs::create_dir_all(v.join("opq")).unwrap();
    sh(
        &v,
        "setfattr -n user.overlay.opaque -v y opq; setfattr -n user.overlay.origin -v 0x00 opq
         mknod gone c 0 0",
    );
    let p = t.path().join("v.tar");
    run(layerdiff().arg(&v).arg("-o").arg(&p).arg("--userxattr"));
    let names: Vec<(String, Vec<String>)> = tar_members(&p)
        .into_iter()
        .map(|m| (m.raw, m.pax.into_keys().collect()))
        .collect();
    let plain = |n: &str| (n.to_string(), Vec::<String>::new());
    assert_eq!(
        names,
        vec![plain(".wh.gone"), plain("opq/"), plain("opq/.wh..wh..opq")]
    );
}

/// Regression: the writer's 1 MiB output buffer used to be flushed in the middle of a file's data,
/// after which the padding was computed from the buffer instead of the stream: a file ending past
/// the flush point lost its padding and every later member was unreadable. Sizes are chosen so
/// that the second file starts past 512 KiB into the buffer and ends beyond 1 MiB, unaligned.
#[test]
fn data_crossing_the_buffer_boundary_keeps_its_padding() {
    let tmp = scratch();
    let u = tmp.path().join("u");
    std::fs::create_dir_all(&u).unwrap();
    let a: Vec<u8> = (0..614_400u32).map(|i| (i * 7 % 251) as u8).collect();
    let b: Vec<u8> = (0..512_003u32).map(|i| (i * 13 % 253) as u8).collect();
    std::fs::write(u.join("a"), &a).unwrap();
    std::fs::write(u.join("b"), &b).unwrap();
    std::fs::write(u.join("c"), b"after\n").unwrap();
    for name in ["l.tar", "l.tar.zst"] {
        let out = tmp.path().join(name);
        run(layerdiff().arg(&u).arg("-o").arg(&out));
        let out = if name.ends_with(".zst") {
            let plain = tmp.path().join("unzstd.tar");
            sh(tmp.path(), &format!("zstd -qdc {name} > unzstd.tar"));
            plain
        } else {
            out
        };
        // Python reads every member back, checking sizes and content.
        let check = Command::new("python3")
            .args([
                "-c",
                "import sys,tarfile,hashlib\n\
                 t=tarfile.open(sys.argv[1])\n\
                 for m in t:\n\
                 \x20   print(m.name, m.size, hashlib.sha256(t.extractfile(m).read()).hexdigest())",
            ])
            .arg(&out)
            .output()
            .unwrap();
        assert!(
            check.status.success(),
            "{name}: {}",
            String::from_utf8_lossy(&check.stderr)
        );
        let sha = |d: &[u8]| {
            let o = Command::new("sha256sum")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .spawn()
                .and_then(|mut c| {
                    use std::io::Write;
                    c.stdin.take().unwrap().write_all(d)?;
                    c.wait_with_output()
                })
                .unwrap();
            String::from_utf8_lossy(&o.stdout)[..64].to_string()
        };
        let want = format!(
            "a 614400 {}\nb 512003 {}\nc 6 {}\n",
            sha(&a),
            sha(&b),
            sha(b"after\n")
        );
        assert_eq!(String::from_utf8_lossy(&check.stdout), want, "{name}");
    }
}
