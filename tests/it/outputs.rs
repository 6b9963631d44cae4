//! Outputs a user can trust (issue 10): `-o` writes where it points (through devices, FIFOs and
//! symlinks to them; a directory refused before any work), the same bytes for every run and `-j`
//! on inputs of many compression blocks, `--store` never adopts a foreign directory, a failed
//! stack shows its real cause, options never silently do nothing, errors blame what failed.
//! Every check reads the result with an independent tool (GNU tar, gzip, zstd, Python, stat).

use std::io::Read;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::support::*;

fn squash() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_layerkit"));
    c.arg("squash");
    c
}

/// Text-like files of `mib` MiB in total, written by Python (deterministic): many gzip blocks and
/// several zstd jobs, with matches across block boundaries.
fn text_tree(root: &Path, mib: usize) -> PathBuf {
    let dir = root.join("text");
    let script = r#"
import os, random, sys
root, mib = sys.argv[1], int(sys.argv[2])
rnd = random.Random(7)
words = [("w%d" % i) * (1 + i % 3) for i in range(400)]
os.makedirs(root)
for f in range(mib * 4):
    d = os.path.join(root, "d%02d" % (f % 16))
    os.makedirs(d, exist_ok=True)
    lines = []
    size = 0
    while size < 256 * 1024:
        line = " ".join(rnd.choice(words) for _ in range(rnd.randint(3, 14)))
        line += " %d\n" % rnd.getrandbits(40)
        lines.append(line)
        size += len(line)
    with open(os.path.join(d, "f%03d.txt" % f), "w") as fh:
        fh.write("".join(lines))
"#;
    run(Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(&dir)
        .arg(mib.to_string()));
    dir
}

/// A layer tar of `dir`'s contents by GNU tar.
#[test]
fn gzip_and_zstd_bytes_are_the_same_for_every_run_and_jobs() {
    // Regression: gzip blocks once depended on which blocks a worker had compressed before, so
    // -j 2 gave a new digest every run. 24 MiB is ~190 gzip blocks and 3 zstd jobs.
    let t = scratch();
    let up = text_tree(t.path(), 24);
    let layer = t.path().join("layer.tar");
    gnu_tar(&up, &layer);
    for (c, levels) in [("gzip", ["1", "6", "9"]), ("zstd", ["1", "3", "7"])] {
        for level in levels {
            let mut first: Option<(Vec<u8>, String)> = None;
            for (i, j) in ["1", "2", "4", "2", "4"].iter().enumerate() {
                let o = t.path().join(format!("d-{c}-{level}-{i}"));
                run(layerdiff()
                    .arg(&up)
                    .arg("-o")
                    .arg(&o)
                    .args(["-c", c, "--level", level, "-j", j]));
                let s = t.path().join(format!("s-{c}-{level}-{i}"));
                run(squash()
                    .arg("-o")
                    .arg(&s)
                    .args(["-c", c, "--level", level, "-j", j])
                    .arg(&layer));
                let (d, s) = (std::fs::read(&o).unwrap(), sha256_file(&s));
                match &first {
                    None => first = Some((d, s)),
                    Some((d0, s0)) => {
                        assert!(
                            d == *d0,
                            "layerdiff -c {c} --level {level} -j {j}: other bytes than -j 1"
                        );
                        assert_eq!(s, *s0, "squash -c {c} --level {level} -j {j}");
                    }
                }
                std::fs::remove_file(&o).unwrap();
            }
            let (d0, _) = first.unwrap();
            let o = t.path().join(format!("check-{c}"));
            std::fs::write(&o, &d0).unwrap();
            let tool = if c == "gzip" { "gzip" } else { "zstd" };
            run(Command::new(tool).arg("-t").arg(&o));
        }
    }
}

#[test]
fn o_writes_through_devices_fifos_and_symlinks_to_them() {
    let t = scratch();
    let up = t.path().join("up");
    std::fs::create_dir_all(up.join("d")).unwrap();
    std::fs::write(up.join("d/f"), "data\n".repeat(5000)).unwrap();
    let layer = t.path().join("l.tar");
    run(layerdiff().arg(&up).arg("-o").arg(&layer));
    let want = std::fs::read(&layer).unwrap();

    // What /dev/stdout is (a symlink to /proc/self/fd/1, here a pipe) is written through: the
    // bytes reach the pipe. Our own link, so a regression cannot replace the system's /dev/stdout.
    let stdout = t.path().join("stdout");
    std::os::unix::fs::symlink("/proc/self/fd/1", &stdout).unwrap();
    let out = run(layerdiff().arg(&up).arg("-o").arg(&stdout));
    assert!(
        out.stdout == want,
        "-o /dev/stdout: {} bytes",
        out.stdout.len()
    );
    assert!(std::fs::symlink_metadata(&stdout)
        .unwrap()
        .file_type()
        .is_symlink());

    // A FIFO keeps being a FIFO, and its reader gets the whole layer.
    let fifo = t.path().join("fifo");
    run(Command::new("mkfifo").arg(&fifo));
    for cmd in [
        layerdiff().arg(&up).arg("-o").arg(&fifo),
        squash().arg("-o").arg(&fifo).arg(&layer),
    ] {
        let f = fifo.clone();
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            std::fs::File::open(&f)
                .unwrap()
                .read_to_end(&mut v)
                .unwrap();
            v
        });
        run(cmd);
        assert!(reader.join().unwrap() == want, "{cmd:?}: the FIFO's reader");
        assert!(std::fs::symlink_metadata(&fifo)
            .unwrap()
            .file_type()
            .is_fifo());
    }

    // A device node (ours, so the test never touches the system's /dev/null) and a symlink to
    // it stay what they are.
    if need_root("mknod for a device output") {
        let null = t.path().join("null");
        run(Command::new("mknod").arg(&null).args(["c", "1", "3"]));
        let link = t.path().join("to-null");
        std::os::unix::fs::symlink(&null, &link).unwrap();
        for o in [&null, &link] {
            run(squash().arg("-o").arg(o).arg(&layer));
            run(layerdiff().arg(&up).arg("-o").arg(o).args(["-c", "zstd"]));
        }
        let m = std::fs::metadata(&null).unwrap();
        assert!(m.file_type().is_char_device() && m.rdev() == libc_makedev(1, 3));
        assert!(std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            listing(t.path()),
            ["fifo", "l.tar", "null", "stdout", "to-null", "up"]
        );
    }

    // A symlink to a regular file: the file gets the layer, the link stays.
    let real = t.path().join("real.tar");
    std::fs::write(&real, b"old").unwrap();
    let link = t.path().join("link.tar");
    std::os::unix::fs::symlink("real.tar", &link).unwrap();
    run(layerdiff().arg(&up).arg("-o").arg(&link));
    assert!(std::fs::read(&real).unwrap() == want);
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
}

fn libc_makedev(major: u64, minor: u64) -> u64 {
    (major << 8) | minor
}

#[test]
fn o_naming_a_directory_fails_before_any_work() {
    let t = scratch();
    let dir = t.path().join("outdir");
    std::fs::create_dir(&dir).unwrap();
    // The input is a FIFO nobody writes: opening it would block, so a run that does any work
    // before checking -o hangs and `timeout` ends it (status 124).
    let fifo = t.path().join("never");
    run(Command::new("mkfifo").arg(&fifo));
    let up = t.path().join("up");
    std::fs::create_dir(&up).unwrap();
    for mut cmd in [
        {
            let mut c = Command::new("timeout");
            c.arg("30")
                .arg(env!("CARGO_BIN_EXE_layerkit"))
                .arg("squash")
                .arg("-o")
                .arg(&dir)
                .arg(&fifo);
            c
        },
        {
            let mut c = Command::new("timeout");
            c.arg("30")
                .arg(env!("CARGO_BIN_EXE_layerdiff"))
                .arg(&up)
                .arg("-o")
                .arg(&dir);
            c
        },
    ] {
        let before = listing(t.path());
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{cmd:?}: {err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("outdir") && err.contains("is a directory"),
            "{err}"
        );
        assert_eq!(listing(t.path()), before, "{cmd:?} left something");
        assert!(listing(&dir).is_empty());
    }
}

/// A gzip layer of `mib` MiB of incompressible data (so its first 3 MB end mid-stream).
fn noisy_layer(root: &Path, name: &str, mib: usize) -> PathBuf {
    let src = root.join(format!("{name}-src"));
    noise_files(&src, mib, 0x2545_f491_4f6c_dd1d ^ mib as u64);
    let tar = root.join(format!("{name}.tar"));
    gnu_tar(&src, &tar);
    let gz = root.join(format!("{name}.tar.gz"));
    // Through files, not pipes: `compress` writes all of stdin before reading stdout.
    run(Command::new("gzip").args(["-1", "-k"]).arg(&tar));
    gz
}

#[test]
fn a_failed_stack_names_the_layer_that_broke() {
    if !need_root("layerapply --store") {
        return;
    }
    // Regression: a truncated top layer stopped the bottom one, and the user saw only "stopped
    // because another stage failed".
    let t = scratch();
    let up = text_tree(t.path(), 12);
    let l0 = t.path().join("L0.tar");
    gnu_tar(&up, &l0);
    let l0z = t.path().join("L0.tar.zst");
    run(Command::new("zstd").args(["-q", "-k"]).arg(&l0));
    let big = noisy_layer(t.path(), "big", 8);
    let trunc = t.path().join("trunc.tar.gz");
    std::fs::write(&trunc, &std::fs::read(&big).unwrap()[..3_000_000]).unwrap();
    for (i, stack) in [
        [&l0z, &trunc],
        [&trunc, &l0z],
        [&l0z, &trunc],
        [&l0z, &trunc],
    ]
    .iter()
    .enumerate()
    {
        let store = t.path().join(format!("store{i}"));
        let out = layerapply()
            .arg("--store")
            .arg(&store)
            .args(stack)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains("trunc.tar.gz") && err.contains("corrupt gzip stream"),
            "run {i}: the cause, naming the layer: {err}"
        );
        assert!(!err.contains("stopped"), "{err}");
    }
}

#[test]
fn store_refuses_what_is_not_a_store_and_a_failed_first_run_leaves_nothing() {
    let t = scratch();
    let garbage = t.path().join("garbage.tar");
    std::fs::write(&garbage, vec![7u8; 4096]).unwrap();
    let good = t.path().join("good.tar");
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), b"a").unwrap();
    gnu_tar(&src, &good);

    // A directory holding other things (a docker or containers-storage root, a home dir).
    let foreign = t.path().join("foreign");
    std::fs::create_dir_all(foreign.join("overlay/l")).unwrap();
    std::fs::write(foreign.join("overlay-layers.json"), b"[]").unwrap();
    let out = layerapply()
        .arg("--store")
        .arg(&foreign)
        .arg(&good)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("not a layerkit store") && err.lines().count() == 1,
        "{err}"
    );
    assert_eq!(listing(&foreign), ["overlay", "overlay-layers.json"]);

    // A file.
    let file = t.path().join("afile");
    std::fs::write(&file, b"keep").unwrap();
    let out = layerapply()
        .arg("--store")
        .arg(&file)
        .arg(&good)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("afile: not a directory") && !out.status.success(),
        "{err}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), b"keep");

    // A failed first run into a new name leaves no directory; into an empty one, an empty one.
    let new = t.path().join("new");
    let out = layerapply()
        .arg("--store")
        .arg(&new)
        .arg(&garbage)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(std::fs::symlink_metadata(&new).is_err(), "no skeleton left");
    let empty = t.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let out = layerapply()
        .arg("--store")
        .arg(&empty)
        .arg(&garbage)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(listing(&empty).is_empty(), "{:?}", listing(&empty));

    if need_root("a committed layer in a store") {
        // A store that has layers keeps them when a later run fails.
        run(layerapply().arg("--store").arg(&empty).arg(&good));
        let before = dump_tree(&empty);
        let out = layerapply()
            .arg("--store")
            .arg(&empty)
            .arg(&good)
            .arg(&garbage)
            .output()
            .unwrap();
        assert!(!out.status.success());
        // The failed run made and removed its own dir in .layerkit/staging: that dir's mtime
        // may move (to the next second), nothing else may.
        let staging_time = |d: String| -> String {
            d.lines()
                .map(|l| match l.strip_prefix(".layerkit/staging d ") {
                    Some(rest) => format!(
                        ".layerkit/staging d {}",
                        rest.split(" mtime=").next().unwrap()
                    ),
                    None => l.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_same(
            &staging_time(before),
            &staging_time(dump_tree(&empty)),
            "store after a failed run",
        );
    }
}

#[test]
fn layerdiff_without_trusted_xattr_rights_refuses_instead_of_dropping_markers() {
    if !need_root("an opaque dir, then a run as nobody") {
        return;
    }
    let t = scratch();
    let up = t.path().join("up");
    std::fs::create_dir_all(up.join("opq")).unwrap();
    std::fs::write(up.join("opq/f"), b"f").unwrap();
    sh(
        &up,
        "setfattr -n trusted.overlay.opaque -v y opq; setfattr -n user.overlay.opaque -v y opq",
    );
    run(Command::new("chmod").args(["-R", "a+rX"]).arg(t.path()));
    let as_nobody = |args: &[&str]| {
        Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
            .arg(env!("CARGO_BIN_EXE_layerdiff"))
            .arg(&up)
            .args(args)
            .stdout(Stdio::piped())
            .output()
            .unwrap()
    };
    // Regression: exit 0 and a layer without the opaque marker.
    let out = as_nobody(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty(), "no layer at all");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("trusted.overlay") && err.contains("--userxattr") && err.contains("root"),
        "{err}"
    );
    // A userxattr upper needs no privilege, and its marker is kept.
    let out = as_nobody(&["--userxattr"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tar = t.path().join("u.tar");
    std::fs::write(&tar, &out.stdout).unwrap();
    let names: Vec<String> = tar_members(&tar).into_iter().map(|m| m.name).collect();
    assert!(names.contains(&"opq/.wh..wh..opq".to_string()), "{names:?}");
}

#[test]
fn options_that_would_do_nothing_are_refused() {
    let t = scratch();
    let up = t.path().join("up");
    std::fs::create_dir(&up).unwrap();
    std::fs::write(up.join("a"), b"a").unwrap();
    let layer = t.path().join("l.tar");
    run(layerdiff().arg(&up).arg("-o").arg(&layer));
    let xz = t.path().join("x.tar.xz");
    let plain = t.path().join("x.tar");
    type Case<'a> = (Command, &'a [&'a str], &'a Path);
    let cases: Vec<Case> = vec![
        (
            {
                let mut c = layerdiff();
                c.arg(&up).arg("-o").arg(&xz);
                c
            },
            &["x.tar.xz", "-c"],
            &xz,
        ),
        (
            {
                let mut c = squash();
                c.arg("-o").arg(&xz).arg(&layer);
                c
            },
            &["x.tar.xz", "-c"],
            &xz,
        ),
        (
            {
                let mut c = layerdiff();
                c.arg(&up).arg("-o").arg(&plain).args(["--level", "3"]);
                c
            },
            &["--level"],
            &plain,
        ),
        (
            {
                let mut c = squash();
                c.arg("-o")
                    .arg(&plain)
                    .args(["--level", "9", "-c", "none"])
                    .arg(&layer);
                c
            },
            &["--level"],
            &plain,
        ),
        (
            {
                let mut c = squash();
                c.arg("-o")
                    .arg(&plain)
                    .args(["--level", "20", "-c", "zstd"])
                    .arg(&layer);
                c
            },
            &["level 20"],
            &plain,
        ),
    ];
    for (mut cmd, names, out) in cases {
        let r = assert_fails_cleanly(&mut cmd, names, out);
        assert_eq!(r.status.code(), Some(2), "{cmd:?}: a usage error");
    }
    // Named explicitly, any name works; no extension at all is a plain tar.
    run(layerdiff().arg(&up).arg("-o").arg(&xz).args(["-c", "zstd"]));
    assert_eq!(kind(&std::fs::read(&xz).unwrap()), "zstd");
    let bare = t.path().join("layer");
    run(squash().arg("-o").arg(&bare).arg(&layer));
    assert_eq!(kind(&std::fs::read(&bare).unwrap()), "tar");
}

#[test]
fn errors_name_what_failed() {
    let t = scratch();
    // An xattr with an empty name: the member and the rule, not the kernel's ERANGE.
    let tar = t.path().join("x.tar");
    let script = r#"
import io, sys, tarfile
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as tf:
    ti = tarfile.TarInfo("etc/conf")
    ti.size = 2
    ti.pax_headers = {"SCHILY.xattr.": "v"}
    tf.addfile(ti, io.BytesIO(b"hi"))
"#;
    run(Command::new(python()).arg("-c").arg(script).arg(&tar));
    let into = t.path().join("into");
    let r = assert_fails_cleanly(
        layerapply().arg("--into").arg(&into).arg(&tar),
        &["etc/conf"],
        &into,
    );
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(
        err.contains("empty xattr name") && !err.contains("range"),
        "{err}"
    );
    let o = t.path().join("o.tar");
    let r = assert_fails_cleanly(squash().arg("-o").arg(&o).arg(&tar), &["etc/conf"], &o);
    assert!(String::from_utf8_lossy(&r.stderr).contains("empty xattr name"));

    // A full $TMPDIR: squash blames the spool, not the layer it was reading.
    if need_root("a tiny tmpfs as TMPDIR") {
        let tmp = t.path().join("tmp");
        std::fs::create_dir(&tmp).unwrap();
        run(Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "tmpfs"])
            .arg(&tmp));
        let _unmount = Mount::guard(&tmp);
        let gz = noisy_layer(t.path(), "L0", 4);
        let r = assert_fails_cleanly(
            squash().env("TMPDIR", &tmp).arg("-o").arg(&o).arg(&gz),
            &["tmp"],
            &o,
        );
        let err = String::from_utf8_lossy(&r.stderr);
        assert!(
            err.starts_with(&format!("layerkit squash: {}: ", tmp.display()))
                && err.contains("No space left on device")
                && err.contains("TMPDIR"),
            "{err}"
        );
        assert!(
            !err.contains("L0.tar.gz"),
            "the layer is not to blame: {err}"
        );
    }
}

/// Descriptors this process holds on `dir` or anything under it (other tests run in the same
/// process, so only descriptors into this test's own scratch dir count).
fn fds_under(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter(|t| t.starts_with(dir))
        .collect()
}

/// A long-lived library caller must not run out of descriptors one result at a time: every job
/// that publishes a result (`apply_into`, the store, `diff_to_file`, `squash_to_file`) closes
/// what it opened, whether it succeeds or fails. Failed before: each publish leaked its parent
/// dir's fd (found by the `apply` fuzz target after ~650k runs, as EMFILE).
#[test]
fn library_calls_leave_no_descriptor_open() {
    use layerkit::{apply_into, ApplyOptions, Input};
    let tmp = scratch();
    let root = std::fs::canonicalize(tmp.path()).unwrap();
    let src = root.join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), b"data").unwrap();
    let layer = root.join("layer.tar");
    gnu_tar(&src, &layer);
    let bad = root.join("bad.tar");
    std::fs::write(&bad, b"not a tar, not 512 bytes").unwrap();
    let opts = ApplyOptions {
        jobs: 1,
        ..Default::default()
    };
    for i in 0..3 {
        let out = root.join(format!("out{i}"));
        std::fs::create_dir_all(&out).unwrap();
        apply_into(&out.join("layer"), &Input::from_arg(&layer), &opts).unwrap();
        apply_into(&out.join("bad"), &Input::from_arg(&bad), &opts).unwrap_err();
        layerkit::apply_store(&out.join("store"), &[Input::from_arg(&layer)], &opts).unwrap();
        layerkit::diff_to_file(&src, &out.join("diff.tar"), &Default::default()).unwrap();
        layerkit::squash_to_file(
            &[Input::from_arg(&layer)],
            &out.join("squash.tar.gz"),
            &Default::default(),
        )
        .unwrap();
        assert_eq!(
            fds_under(&root),
            Vec::<PathBuf>::new(),
            "descriptors left open after round {i}"
        );
    }
}
