//! Paths at any depth (issue 11, item 8): layerapply (`--into`, `--store` over a base holding
//! the same chain), squash and layerdiff stay linear in time and memory up to `MAX_DEPTH` (4,096)
//! components and past PATH_MAX (4,096 bytes), refuse deeper paths (named or reached through
//! symlinks) before any work, and clean up a failed deep layer. Trees are built and read by
//! Python through a chain of directory fds (`dir_fd=`), the only way past PATH_MAX; tars are
//! written by Python's tarfile and listed by GNU tar.

use std::path::Path;
use std::process::Command;

use crate::support::*;

const DEPTH: usize = 4096;

/// Python helpers: `tar OUT N WIDTH [LEAF]` writes one member `(x*WIDTH/)*N + LEAF`;
/// `read ROOT N WIDTH LEAF` prints the content of that file, walking with dir fds;
/// `upper ROOT N WIDTH` makes that chain with a file `f` at the bottom and `g` at every 500th
/// level; `count TAR` prints the member count and the deepest member's component count.
const PY: &str = r#"
import io, os, sys, tarfile
cmd = sys.argv[1]
def name(n, w, leaf):
    return ("x" * w + "/") * n + leaf
if cmd == "tar":
    out, n, w = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    leaf = sys.argv[5] if len(sys.argv) > 5 else "f"
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as t:
        ti = tarfile.TarInfo(name(n, w, leaf)); ti.size = 5
        t.addfile(ti, io.BytesIO(b"deep\n"))
elif cmd == "read":
    root, n, w, leaf = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for _ in range(n):
        nfd = os.open("x" * w, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
        os.close(fd); fd = nfd
    f = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW, dir_fd=fd)
    sys.stdout.write(os.read(f, 100).decode())
elif cmd == "upper":
    root, n, w = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    os.makedirs(root)
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    for i in range(n):
        if i % 500 == 0:
            g = os.open("g", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd); os.write(g, b"%d\n" % i); os.close(g)
        os.mkdir("x" * w, dir_fd=fd)
        nfd = os.open("x" * w, os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd); os.close(fd); fd = nfd
    f = os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd); os.write(f, b"deep\n"); os.close(f)
elif cmd == "count":
    with tarfile.open(sys.argv[2]) as t:
        names = t.getnames()
    print(len(names), max(len(n.strip("/").split("/")) for n in names))
"#;

fn py(args: &[&str]) -> String {
    let out = run(Command::new(python()).arg("-c").arg(PY).args(args));
    String::from_utf8(out.stdout).unwrap()
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// One member 4,095 levels deep, each name 240 bytes: a 1 MB path (PATH_MAX is 4 KB). Applied
/// `--into`, and `--store` over a base holding the same chain (so every implied dir takes its
/// attributes from the lower), squashed and flattened; each result read back through dir fds.
/// Memory stays small: the dirs' keys share one buffer (before: 2 x 4,095 separate prefixes of
/// up to 1 MB, gigabytes) and each walk is linear (before: 35 s for 4,000 one-byte levels, 54 s
/// in a store over a deep base).
#[test]
fn a_member_at_the_depth_limit_is_cheap_everywhere() {
    if !need_root("layerapply --store (trusted xattrs, chown)") {
        return;
    }
    let t = scratch();
    let n = DEPTH - 1;
    let (base, top) = (t.path().join("base.tar"), t.path().join("top.tar"));
    py(&["tar", s(&base), &n.to_string(), "240", "b"]);
    py(&["tar", s(&top), &n.to_string(), "240", "f"]);
    let into = t.path().join("into");
    let rss = peak_rss_kib(layerapply().arg("--into").arg(&into).arg(&top));
    assert_eq!(
        py(&["read", s(&into), &n.to_string(), "240", "f"]),
        "deep\n"
    );
    assert!(rss < 100 * 1024, "layerapply --into: peak RSS {rss} KiB");

    let store = t.path().join("store");
    let out = run(layerapply()
        .args(["--store"])
        .arg(&store)
        .args(["--json"])
        .arg(&base)
        .arg(&top));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("one JSON object");
    let top_diff = std::path::PathBuf::from(v["layers"][1]["path"].as_str().expect("path"));
    assert_eq!(
        py(&["read", s(&top_diff), &n.to_string(), "240", "f"]),
        "deep\n"
    );

    // Squashed: the base's and the top's member, their dirs implied (2 MB).
    let sq = t.path().join("sq.tar");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_layerkit"));
    cmd.args(["squash", "-o"]).arg(&sq).arg(&base).arg(&top);
    let rss = peak_rss_kib(&cmd);
    assert!(rss < 100 * 1024, "squash: peak RSS {rss} KiB");
    assert_eq!(py(&["count", s(&sq)]).trim(), format!("2 {DEPTH}"));
    let back = t.path().join("back");
    run(layerapply().arg("--into").arg(&back).arg(&sq));
    assert_eq!(
        py(&["read", s(&back), &n.to_string(), "240", "f"]),
        "deep\n"
    );
    assert_eq!(
        py(&["read", s(&back), &n.to_string(), "240", "b"]),
        "deep\n"
    );
    // Flattened, every dir is named: 4,095 headers whose paths add up to 2 GB, written to
    // /dev/null in small memory (the plan names each dir by one component, see
    // `stack::merge::Step::Enter`; before, it held all 2 GB of paths).
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_layerkit"));
    cmd.args(["squash", "--flatten", "-o", "/dev/null"])
        .arg(&base)
        .arg(&top);
    let rss = peak_rss_kib(&cmd);
    assert!(rss < 150 * 1024, "squash --flatten: peak RSS {rss} KiB");
    // The same shape with 1-byte names, to read back: 4,095 dirs named, 2 files.
    let (b1, t1) = (t.path().join("b1.tar"), t.path().join("t1.tar"));
    py(&["tar", s(&b1), &n.to_string(), "1", "b"]);
    py(&["tar", s(&t1), &n.to_string(), "1", "f"]);
    let fl = t.path().join("flat.tar");
    run(Command::new(env!("CARGO_BIN_EXE_layerkit"))
        .args(["squash", "--flatten", "-o"])
        .arg(&fl)
        .arg(&b1)
        .arg(&t1));
    assert_eq!(py(&["count", s(&fl)]).trim(), format!("{} {DEPTH}", n + 2));
    let back = t.path().join("back-flat");
    run(layerapply().arg("--into").arg(&back).arg(&fl));
    assert_eq!(py(&["read", s(&back), &n.to_string(), "1", "f"]), "deep\n");
}

/// Deeper than `MAX_DEPTH`, by name or through a symlink, is refused before any work, by
/// layerapply and squash alike, with one line naming the rule; nothing is left behind. So is a
/// symlink target longer than Linux can hold (apply could not make it; squash passed it on).
#[test]
fn deeper_than_the_limit_is_refused_before_any_work() {
    let t = scratch();
    let named = t.path().join("named.tar");
    py(&["tar", s(&named), &DEPTH.to_string(), "1", "f"]);
    // `s -> a/a/.../a` (2,000 levels, 4 KB: the most a symlink holds), then `s/x/.../f`
    // (2,500 more): 4,501 once resolved, 2,502 as named.
    let linked = t.path().join("linked.tar");
    let script = r#"
import io, sys, tarfile
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as t:
    ti = tarfile.TarInfo("s"); ti.type = tarfile.SYMTYPE; ti.linkname = "a/" * 1999 + "a"
    t.addfile(ti)
    ti = tarfile.TarInfo("s/" + "x/" * 2500 + "f"); ti.size = 1
    t.addfile(ti, io.BytesIO(b"x"))
"#;
    run(Command::new(python()).arg("-c").arg(script).arg(&linked));
    // A symlink no Linux filesystem can hold (symlink(2): at most 4,095 bytes).
    let long_link = t.path().join("long-link.tar");
    let script = r#"
import sys, tarfile
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as t:
    ti = tarfile.TarInfo("s"); ti.type = tarfile.SYMTYPE; ti.linkname = "a/" * 2500
    t.addfile(ti)
"#;
    run(Command::new(python()).arg("-c").arg(script).arg(&long_link));
    for (tar, want) in [
        (&named, "path too deep (4097 components, at most 4096)"),
        (&linked, "path too deep"),
        (
            &long_link,
            "symlink target of 5000 bytes (Linux holds at most 4095)",
        ),
    ] {
        // Exit 1 and one short line naming the rule; `target` not made.
        let refused = |cmd: &mut Command, target: &Path| {
            let r = cmd.arg(tar).output().unwrap();
            let err = String::from_utf8_lossy(&r.stderr).into_owned();
            assert_eq!(r.status.code(), Some(1), "{err}");
            assert!(err.contains(want), "{err}");
            assert_eq!(err.trim().lines().count(), 1, "{err}");
            assert!(
                err.len() < 2000,
                "an error about a deep path stays short: {err}"
            );
            assert!(!target.exists(), "{} was made", target.display());
        };
        let out = t.path().join("out");
        refused(layerapply().arg("--into").arg(&out), &out);
        let store = t.path().join("store");
        refused(layerapply().arg("--store").arg(&store), &store);
        let sq = t.path().join("sq.tar");
        refused(
            Command::new(env!("CARGO_BIN_EXE_layerkit"))
                .args(["squash", "-o"])
                .arg(&sq),
            &sq,
        );
    }
}

/// A deep layer that fails after its chain is made is removed, at any depth (one fd, climbing
/// `..`): nothing is left beside the input.
#[test]
fn a_failed_deep_layer_is_cleaned_up() {
    let t = scratch();
    let bad = t.path().join("bad.tar");
    let script = r#"
import io, sys, tarfile
with tarfile.open(sys.argv[1], "w", format=tarfile.PAX_FORMAT) as t:
    ti = tarfile.TarInfo("x/" * 4000 + "f"); ti.size = 5
    t.addfile(ti, io.BytesIO(b"deep\n"))
    ti = tarfile.TarInfo("x/" * 4000 + "f/g"); ti.size = 1
    t.addfile(ti, io.BytesIO(b"g"))
"#;
    run(Command::new(python()).arg("-c").arg(script).arg(&bad));
    let out = t.path().join("out");
    let r = layerapply()
        .arg("--into")
        .arg(&out)
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(1), "{err}");
    assert!(err.contains("not a directory"), "{err}");
    assert_eq!(listing(t.path()), vec!["bad.tar".to_string()]);
}

/// layerdiff walks an upper past PATH_MAX (3,000 levels of 3-byte names, 12 KB paths) by
/// descriptor, xattrs included (before: "File name too long"); GNU tar and Python read the
/// layer, and layerapply gives the tree back.
#[test]
fn layerdiff_walks_past_path_max() {
    let t = scratch();
    let upper = t.path().join("upper");
    let n = 3000;
    py(&["upper", s(&upper), &n.to_string(), "3"]);
    let layer = t.path().join("layer.tar");
    run(layerdiff().arg(&upper).arg("-o").arg(&layer));
    let c = py(&["count", s(&layer)]);
    // The root entry is not in a layer; every dir, `f` and the six `g`s are.
    assert_eq!(c.trim(), format!("{} {}", n + 1 + 6, n + 1), "{c}");
    let gnu = run(Command::new("tar").arg("-tf").arg(&layer));
    assert_eq!(String::from_utf8_lossy(&gnu.stdout).lines().count(), n + 7);
    let back = t.path().join("back");
    run(layerapply().arg("--into").arg(&back).arg(&layer));
    assert_eq!(py(&["read", s(&back), &n.to_string(), "3", "f"]), "deep\n");
}
