//! Test support: root/overlay probes, real overlay mounts, the independent applier and tree dump.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// True when this process can mount overlayfs and set trusted xattrs. Otherwise prints why the test
/// is skipped, or panics when `LAYERKIT_REQUIRE_ROOT=1` (CI), so a skip can never pass silently.
pub fn need_root(what: &str) -> bool {
    let root = rustix_is_root();
    if root {
        return true;
    }
    let msg = format!("skipping {what}: needs root (overlay mounts, trusted.* xattrs, mknod)");
    if std::env::var("LAYERKIT_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("{msg}, and LAYERKIT_REQUIRE_ROOT=1");
    }
    eprintln!("{msg}");
    false
}

fn rustix_is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// A scratch dir on a filesystem that supports trusted xattrs and overlay uppers (not tmpfs).
pub fn scratch() -> tempfile::TempDir {
    let base = Path::new(env!("CARGO_TARGET_TMPDIR"));
    tempfile::Builder::new()
        .prefix("lk-")
        .tempdir_in(base)
        .expect("tempdir")
}

/// Run a command, panic with its output if it fails.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run a bash script with `cd` into `dir`.
pub fn sh(dir: &Path, script: &str) {
    run(Command::new("bash")
        .arg("-euo")
        .arg("pipefail")
        .arg("-c")
        .arg(script)
        .current_dir(dir));
}

/// An overlay mount, unmounted on drop.
pub struct Mount {
    /// The merged view.
    pub merged: PathBuf,
}

impl Mount {
    /// `mount -t overlay` with `lower` (one dir), `upper`, `work` and extra options.
    pub fn new(lower: &Path, upper: &Path, work: &Path, merged: &Path, extra: &str) -> Mount {
        let mut o = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        if !extra.is_empty() {
            o.push(',');
            o.push_str(extra);
        }
        run(Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &o])
            .arg(merged));
        Mount {
            merged: merged.to_path_buf(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.merged).status();
    }
}

fn support(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/support")
        .join(name)
}

/// The canonical dump of a tree (tests/it/support/tree_dump.py).
pub fn dump(root: &Path) -> String {
    let out = run(Command::new("python3")
        .arg(support("tree_dump.py"))
        .arg(root));
    String::from_utf8(out.stdout).expect("utf-8 dump")
}

/// Apply an OCI layer onto `root` with the independent Python applier.
pub fn oci_apply(root: &Path, layer: &Path) {
    run(Command::new("python3")
        .arg(support("oci_apply.py"))
        .arg(root)
        .arg(layer));
}

/// `cp -a` (xattrs, owners, times, hardlinks, devices).
pub fn copy_tree(from: &Path, to: &Path) {
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// Line diff of two dumps, for assertion messages.
pub fn diff_lines(want: &str, got: &str) -> String {
    let w: std::collections::BTreeSet<&str> = want.lines().collect();
    let g: std::collections::BTreeSet<&str> = got.lines().collect();
    let mut s = String::new();
    for l in w.difference(&g) {
        s.push_str(&format!("- {l}\n"));
    }
    for l in g.difference(&w) {
        s.push_str(&format!("+ {l}\n"));
    }
    s
}

/// The `layerdiff` binary.
pub fn layerdiff() -> Command {
    Command::new(env!("CARGO_BIN_EXE_layerdiff"))
}

/// Members of a tar as Python's tarfile reads them: (name, type, size, mode, uid, gid, mtime, pax keys).
pub fn tar_members(tar: &Path) -> Vec<Member> {
    let script = r#"
import io, subprocess, sys, tarfile
p = sys.argv[1]
if p.endswith(".zst"):
    tf = tarfile.open(fileobj=io.BytesIO(subprocess.run(["zstd", "-dc", p], check=True, capture_output=True).stdout), mode="r:", encoding="utf-8", errors="surrogateescape")
else:
    tf = tarfile.open(p, "r:*", encoding="utf-8", errors="surrogateescape")
for m in tf:
    keys = ",".join(sorted(m.pax_headers))
    print("\t".join([m.name, m.type.decode(), str(m.size), "%o" % m.mode, str(m.uid), str(m.gid), str(int(m.mtime)), m.linkname, keys]))
"#;
    let out = run(Command::new("python3").arg("-c").arg(script).arg(tar));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split('\t').collect();
            Member {
                name: f[0].to_string(),
                typ: f[1].chars().next().unwrap_or('0'),
                size: f[2].parse().unwrap(),
                mode: u32::from_str_radix(f[3], 8).unwrap(),
                uid: f[4].parse().unwrap(),
                gid: f[5].parse().unwrap(),
                mtime: f[6].parse().unwrap(),
                link: f[7].to_string(),
                pax: f[8]
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(String::from)
                    .collect(),
            }
        })
        .collect()
}

/// One tar member as Python sees it.
#[derive(Debug, Clone)]
pub struct Member {
    pub name: String,
    pub typ: char,
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: i64,
    pub link: String,
    pub pax: Vec<String>,
}

/// A failed run: non-zero exit, exactly one stderr line naming one of `names`, and no output file
/// (nor a staging file) left behind.
pub fn assert_fails_cleanly(out: &Output, names: &[&str], outfile: &Path) {
    assert!(!out.status.success(), "must fail");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim_end().lines().count(),
        1,
        "exactly one line: {err:?}"
    );
    assert!(
        names.iter().any(|n| err.contains(n)),
        "{err:?} should name one of {names:?}"
    );
    assert!(
        !outfile.exists(),
        "no partial output left at {}",
        outfile.display()
    );
    if let Some(dir) = outfile.parent().filter(|d| d.exists()) {
        let leftovers: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("layerkit-tmp"))
            .collect();
        assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    }
}
