//! The `layerdiff` / `layerkit diff` contract: bad input gives one line naming the path and no
//! output file; output is deterministic; `--json` digests match the bytes (checked with sha256sum,
//! gzip and zstd, not with our code); compression follows the extension; mtimes clamp.

use std::path::Path;
use std::process::{Command, Output};

use crate::kernel::*;

/// A plain upper (no mount needed): files, a dir, a symlink, xattrs; with root also a whiteout and an
/// opaque dir made the way the kernel makes them.
fn upper(root: &Path) -> std::path::PathBuf {
    let u = root.join("upper");
    std::fs::create_dir_all(u.join("d/e")).unwrap();
    for i in 0..300 {
        std::fs::write(
            u.join(format!("d/e/f{i}")),
            format!("content {i}\n").repeat(i % 50 + 1),
        )
        .unwrap();
    }
    std::fs::write(u.join("big"), vec![42u8; 3 << 20]).unwrap();
    std::os::unix::fs::symlink("d/e/f1", u.join("s")).unwrap();
    sh(&u, "touch -d @1700000000 big; setfattr -n user.k -v v big");
    if need_root("whiteouts in the CLI upper") {
        sh(
            &u,
            "mknod gone c 0 0; setfattr -n trusted.overlay.opaque -v y d",
        );
    }
    u
}

fn fails_cleanly(out: &Output, must_name: &str, outfile: &Path) {
    assert_fails_cleanly(out, &[must_name], outfile);
}

#[test]
fn bad_inputs_fail_with_one_line_and_no_output() {
    let t = scratch();
    let out = t.path().join("o.tar");
    let missing = t.path().join("missing");
    fails_cleanly(
        &layerdiff()
            .arg(&missing)
            .arg("-o")
            .arg(&out)
            .output()
            .unwrap(),
        "missing",
        &out,
    );
    let file = t.path().join("afile");
    std::fs::write(&file, b"x").unwrap();
    fails_cleanly(
        &layerdiff().arg(&file).arg("-o").arg(&out).output().unwrap(),
        "afile",
        &out,
    );
    let u = t.path().join("u");
    std::fs::create_dir_all(u.join("sub")).unwrap();
    std::fs::write(u.join("sub/.wh.foo"), b"").unwrap();
    fails_cleanly(
        &layerdiff().arg(&u).arg("-o").arg(&out).output().unwrap(),
        "sub/.wh.foo",
        &out,
    );
    let nowhere = Path::new("/nonexistent-layerkit/dir/x.tar");
    fails_cleanly(
        &layerdiff()
            .arg(t.path())
            .arg("-o")
            .arg(nowhere)
            .output()
            .unwrap(),
        "/nonexistent-layerkit/dir/x.tar",
        nowhere,
    );
    if need_root("metacopy marker") {
        let m = t.path().join("m");
        std::fs::create_dir_all(&m).unwrap();
        sh(
            &m,
            "truncate -s 100 data; setfattr -n trusted.overlay.metacopy data",
        );
        fails_cleanly(
            &layerdiff().arg(&m).arg("-o").arg(&out).output().unwrap(),
            "data",
            &out,
        );
    }
    // A failure in the last stage, on an upper bigger than the pipeline's buffers, must end the
    // run (regression: the tar stage once blocked forever on a full channel).
    let many = t.path().join("many");
    std::fs::create_dir(&many).unwrap();
    // Incompressible, so even gzip/zstd output overflows the small disk below.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in 0..40 {
        let data: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(many.join(format!("f{i}")), data).unwrap();
    }
    let zst = t.path().join("o.tar.zst");
    let r = Command::new("timeout")
        .arg("60")
        .arg(env!("CARGO_BIN_EXE_layerdiff"))
        .arg(&many)
        .arg("-o")
        .arg(&zst)
        .args(["--level", "40"])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2), "usage error, not a hang: {r:?}");
    fails_cleanly(&r, "level 40", &zst);
    // A full disk: the error names the output, nothing is left behind, and the run ends.
    if need_root("a tiny tmpfs for ENOSPC") {
        let full = t.path().join("full");
        std::fs::create_dir(&full).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(&full));
        let _unmount = Mount {
            merged: full.clone(),
        };
        for c in ["none", "gzip", "zstd"] {
            let o = full.join("x.tar");
            let r = Command::new("timeout")
                .arg("60")
                .arg(env!("CARGO_BIN_EXE_layerdiff"))
                .arg(&many)
                .arg("-o")
                .arg(&o)
                .args(["-c", c])
                .output()
                .unwrap();
            assert_eq!(r.status.code(), Some(1), "{c}: {r:?}");
            fails_cleanly(&r, "x.tar", &o);
            assert_eq!(
                std::fs::read_dir(&full).unwrap().count(),
                0,
                "{c}: nothing left on the full disk"
            );
        }
    }
    // An existing output file survives a failed run untouched.
    std::fs::write(&out, b"precious").unwrap();
    let r = layerdiff().arg(&u).arg("-o").arg(&out).output().unwrap();
    assert!(!r.status.success());
    assert_eq!(std::fs::read(&out).unwrap(), b"precious");
}

fn sha256_of(p: &Path) -> String {
    let o = run(Command::new("sha256sum").arg(p));
    format!(
        "sha256:{}",
        String::from_utf8_lossy(&o.stdout)
            .split_whitespace()
            .next()
            .unwrap()
    )
}

fn json_field(json: &str, key: &str) -> String {
    let o = run(Command::new("python3")
        .arg("-c")
        .arg("import json,sys; v=json.loads(sys.argv[1])[sys.argv[2]]; print(v)")
        .arg(json)
        .arg(key));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

#[test]
fn json_descriptor_matches_independent_digests() {
    let t = scratch();
    let u = upper(t.path());
    for (name, media, decomp) in [
        ("l.tar", "application/vnd.oci.image.layer.v1.tar", None),
        (
            "l.tar.gz",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Some("gzip"),
        ),
        (
            "l.tgz",
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Some("gzip"),
        ),
        (
            "l.tar.zst",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            Some("zstd"),
        ),
        (
            "l.tzst",
            "application/vnd.oci.image.layer.v1.tar+zstd",
            Some("zstd"),
        ),
    ] {
        let p = t.path().join(name);
        let out = run(layerdiff().arg(&u).arg("-o").arg(&p).arg("--json"));
        let json = String::from_utf8(out.stdout).unwrap();
        assert_eq!(json_field(&json, "mediaType"), media, "{name}");
        assert_eq!(json_field(&json, "digest"), sha256_of(&p), "{name}");
        assert_eq!(
            json_field(&json, "size"),
            std::fs::metadata(&p).unwrap().len().to_string()
        );
        let plain = t.path().join(format!("{name}.plain"));
        match decomp {
            None => {
                std::fs::copy(&p, &plain).unwrap();
            }
            Some(tool) => {
                let o = run(Command::new(tool).arg("-dc").arg(&p));
                std::fs::write(&plain, o.stdout).unwrap();
            }
        }
        assert_eq!(
            json_field(&json, "diffID"),
            sha256_of(&plain),
            "{name}: diffID is the uncompressed digest"
        );
    }
    // Explicit -c wins over the extension.
    let p = t.path().join("forced.tar");
    let out = run(layerdiff()
        .arg(&u)
        .arg("-o")
        .arg(&p)
        .args(["-c", "zstd", "--json"]));
    assert!(String::from_utf8_lossy(&out.stdout).contains("+zstd"));
    run(Command::new("zstd").arg("-q").arg("-t").arg(&p));
}

#[test]
fn output_is_deterministic_across_jobs_and_runs() {
    let t = scratch();
    let u = upper(t.path());
    for ext in ["tar", "tar.gz", "tar.zst"] {
        let mut seen = Vec::new();
        for (i, j) in ["1", "2", "2", "4"].iter().enumerate() {
            let p = t.path().join(format!("d{i}.{ext}"));
            run(layerdiff().arg(&u).arg("-o").arg(&p).args(["-j", j]));
            seen.push(std::fs::read(&p).unwrap());
        }
        assert!(
            seen.windows(2).all(|w| w[0] == w[1]),
            "{ext}: bytes differ between runs or -j"
        );
    }
    // stdout and `layerkit diff` give the same bytes as -o.
    let a = run(layerdiff().arg(&u)).stdout;
    let b = run(Command::new(env!("CARGO_BIN_EXE_layerkit"))
        .arg("diff")
        .arg(&u)
        .arg("-o")
        .arg("-"))
    .stdout;
    assert_eq!(a, b);
    assert_eq!(a, std::fs::read(t.path().join("d0.tar")).unwrap());
}

#[test]
fn source_date_epoch_clamps_mtimes() {
    let t = scratch();
    let u = upper(t.path());
    let p = t.path().join("c.tar");
    run(layerdiff()
        .arg(&u)
        .arg("-o")
        .arg(&p)
        .args(["--source-date-epoch", "1600000000"]));
    let m = tar_members(&p);
    assert!(m.iter().all(|m| m.mtime <= 1_600_000_000));
    assert!(m.iter().any(|m| m.mtime == 1_600_000_000));
    let q = t.path().join("e.tar");
    run(layerdiff()
        .arg(&u)
        .arg("-o")
        .arg(&q)
        .env("SOURCE_DATE_EPOCH", "1600000000"));
    assert_eq!(std::fs::read(&p).unwrap(), std::fs::read(&q).unwrap());
    let big = tar_members(&q)
        .into_iter()
        .find(|m| m.name == "big")
        .unwrap();
    assert_eq!(big.mtime, 1_600_000_000);
    assert!(big.pax.contains(&"SCHILY.xattr.user.k".to_string()));
}

#[test]
fn sockets_are_skipped_with_a_warning() {
    let t = scratch();
    let u = t.path().join("u");
    std::fs::create_dir(&u).unwrap();
    sh(&u, "python3 -c \"import socket; s = socket.socket(socket.AF_UNIX); s.bind('sock')\"; echo a > a");
    let p = t.path().join("s.tar");
    let out = run(layerdiff().arg(&u).arg("-o").arg(&p));
    assert!(String::from_utf8_lossy(&out.stderr).contains("sock"));
    let names: Vec<String> = tar_members(&p).into_iter().map(|m| m.name).collect();
    assert_eq!(names, vec!["a"]);
}
