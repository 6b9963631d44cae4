//! Test support: the root/overlay probe, real overlay mounts with an unmount guard, command
//! runners, the canonical tree dump (`dump.py`), the independent OCI applier (`apply_oci.py`) and
//! a tar listing read by Python's `tarfile` and GNU tar (never by layerkit).

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

/// True when this process is root and can mount overlayfs with trusted xattrs on the scratch
/// filesystem. Otherwise prints why the test is skipped and returns false, or panics when
/// `LAYERKIT_REQUIRE_ROOT=1` (CI), so a skip can never pass silently.
pub fn need_root(what: &str) -> bool {
    static PROBE: OnceLock<Result<(), String>> = OnceLock::new();
    let Err(why) = PROBE.get_or_init(probe_overlay) else {
        return true;
    };
    let msg = format!("skipping {what}: {why}");
    if std::env::var("LAYERKIT_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("{msg} (LAYERKIT_REQUIRE_ROOT=1)");
    }
    eprintln!("{msg}");
    false
}

fn probe_overlay() -> Result<(), String> {
    if !rustix::process::geteuid().is_root() {
        return Err("needs root (overlay mounts, trusted.* xattrs, mknod)".into());
    }
    let t = scratch();
    for d in ["l", "u", "w", "m"] {
        std::fs::create_dir(t.path().join(d)).map_err(|e| e.to_string())?;
    }
    let x = Command::new("setfattr")
        .args(["-n", "trusted.layerkit-probe", "-v", "1"])
        .arg(t.path().join("u"))
        .output()
        .map_err(|e| format!("setfattr: {e}"))?;
    if !x.status.success() {
        return Err(format!(
            "trusted.* xattrs unsupported under {}: {}",
            t.path().display(),
            String::from_utf8_lossy(&x.stderr).trim()
        ));
    }
    let _ = Command::new("setfattr")
        .args(["-x", "trusted.layerkit-probe"])
        .arg(t.path().join("u"))
        .status();
    Mount::try_overlay(
        &[&t.path().join("l")],
        &t.path().join("u"),
        &t.path().join("w"),
        &t.path().join("m"),
        "",
    )
    .map(drop)
    .map_err(|e| format!("cannot mount overlayfs: {e}"))
}

/// A scratch dir on the target dir's filesystem (never tmpfs here; supports trusted xattrs and
/// d_type, as an overlay upper needs). Unique per call, so parallel tests never share paths.
pub fn scratch() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("layerkit-it-")
        .tempdir_in(env!("CARGO_TARGET_TMPDIR"))
        .expect("scratch dir")
}

/// Run a command; panic with its stdout and stderr unless it succeeds.
pub fn run(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    succeeded(cmd, out)
}

/// `out` of `cmd`, or a panic with its stdout and stderr unless it succeeded.
pub fn succeeded(cmd: &Command, out: Output) -> Output {
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run a bash script (`set -euo pipefail`) in `dir`.
pub fn sh(dir: &Path, script: &str) -> Output {
    run(Command::new("bash")
        .args(["-euo", "pipefail", "-c", script])
        .current_dir(dir))
}

/// An overlay mount, unmounted when dropped (lazily if a plain `umount` fails).
pub struct Mount {
    /// The merged view.
    pub merged: PathBuf,
}

impl Mount {
    /// `mount -t overlay overlay -o lowerdir=..,upperdir=..,workdir=..[,opts] merged`, lowers
    /// topmost first. Panics if the mount fails.
    pub fn overlay(
        lowers: &[&Path],
        upper: &Path,
        work: &Path,
        merged: &Path,
        opts: &str,
    ) -> Mount {
        Mount::try_overlay(lowers, upper, work, merged, opts).unwrap_or_else(|e| panic!("{e}"))
    }

    fn try_overlay(
        lowers: &[&Path],
        upper: &Path,
        work: &Path,
        merged: &Path,
        opts: &str,
    ) -> Result<Mount, String> {
        let lowerdir: Vec<String> = lowers.iter().map(|l| l.display().to_string()).collect();
        let mut o = format!(
            "lowerdir={},upperdir={},workdir={}",
            lowerdir.join(":"),
            upper.display(),
            work.display()
        );
        if !opts.is_empty() {
            o.push(',');
            o.push_str(opts);
        }
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &o])
            .arg(merged)
            .output()
            .map_err(|e| format!("mount: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "mount -o {o}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(Mount {
            merged: merged.to_path_buf(),
        })
    }

    /// A guard that only unmounts `path` (for mounts made elsewhere, e.g. a tiny tmpfs).
    pub fn guard(path: &Path) -> Mount {
        Mount {
            merged: path.to_path_buf(),
        }
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // Quiet: the test may have unmounted it already.
        let ok = Command::new("umount")
            .arg(&self.merged)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount")
                .arg("-l")
                .arg(&self.merged)
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// A file in tests/it/support.
pub fn support(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/support")
        .join(name)
}

/// The canonical dump of a tree (`dump.py`; flags `--drop-overlay-xattrs`, `--no-dir-mtimes`).
pub fn dump(root: &Path, flags: &[&str]) -> String {
    let out = run(Command::new("python3")
        .arg(support("dump.py"))
        .args(flags)
        .arg(root));
    String::from_utf8(out.stdout).expect("dump.py writes ASCII")
}

/// Apply an OCI layer onto `root` with the independent applier (`apply_oci.py`).
pub fn apply_oci(root: &Path, layer: &Path) {
    run(Command::new("python3")
        .arg(support("apply_oci.py"))
        .arg(root)
        .arg(layer));
}

/// `cp -a` keeps owners, modes, times, xattrs, hardlinks and devices.
pub fn copy_tree(from: &Path, to: &Path) {
    run(Command::new("cp").arg("-a").arg(from).arg(to));
}

/// `diff -u` of two texts, for assertion messages.
pub fn unified_diff(want: &str, got: &str) -> String {
    let t = tempfile::tempdir().expect("tempdir");
    let (w, g) = (t.path().join("want"), t.path().join("got"));
    std::fs::write(&w, want).unwrap();
    std::fs::write(&g, got).unwrap();
    let out = Command::new("diff")
        .args(["-u", "--label", "want", "--label", "got"])
        .arg(&w)
        .arg(&g)
        .output()
        .expect("diff");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Panic with a unified diff unless the two dumps are equal.
pub fn assert_same(want: &str, got: &str, what: &str) {
    assert!(
        want == got,
        "{what}: trees differ\n{}",
        unified_diff(want, got)
    );
}

/// The `layerdiff` binary.
pub fn layerdiff() -> Command {
    Command::new(env!("CARGO_BIN_EXE_layerdiff"))
}

/// `layerkit diff`.
pub fn layerkit_diff() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_layerkit"));
    c.arg("diff");
    c
}

/// The `layerapply` binary.
pub fn layerapply() -> Command {
    Command::new(env!("CARGO_BIN_EXE_layerapply"))
}

/// `layerkit apply`.
pub fn layerkit_apply() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_layerkit"));
    c.arg("apply");
    c
}

/// One tar member as Python's `tarfile` and GNU tar see it.
#[derive(Debug, Clone)]
pub struct Member {
    /// tarfile's name (trailing `/` stripped for dirs).
    pub name: String,
    /// The name as stored, from `tar -tf` (dirs keep their trailing `/`).
    pub raw: String,
    /// Typeflag: '0' file, '1' hardlink, '2' symlink, '3'/'4' devices, '5' dir, '6' fifo.
    pub typ: char,
    pub size: u64,
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    /// As tarfile reports it: an integer, or a fraction if a PAX mtime had one.
    pub mtime: String,
    pub link: String,
    pub dev: (u32, u32),
    /// PAX records, values in hex (bytes exactly as stored).
    pub pax: BTreeMap<String, String>,
}

impl Member {
    /// The last path component.
    pub fn base(&self) -> &str {
        self.name.rsplit('/').next().unwrap()
    }

    /// The hex value of `SCHILY.xattr.<name>`, if present.
    pub fn xattr(&self, name: &str) -> Option<&str> {
        self.pax
            .get(&format!("SCHILY.xattr.{name}"))
            .map(String::as_str)
    }
}

const TAR_LIST: &str = r#"
import io, json, subprocess, sys, tarfile
p = sys.argv[1]
enc = dict(encoding="utf-8", errors="surrogateescape")
magic = open(p, "rb").read(4)
if magic == b"\x28\xb5\x2f\xfd":
    tf = tarfile.open(fileobj=io.BytesIO(subprocess.run(["zstd", "-dc", p], check=True, capture_output=True).stdout), mode="r:", **enc)
else:
    tf = tarfile.open(p, "r:*", **enc)
s = lambda v: v.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
for m in tf:
    print(json.dumps({"name": s(m.name), "type": m.type.decode(), "size": m.size, "mode": m.mode,
        "uid": m.uid, "gid": m.gid, "mtime": str(m.mtime), "link": s(m.linkname),
        "dev": [m.devmajor, m.devminor],
        "pax": {s(k): v.encode("utf-8", "surrogateescape").hex() for k, v in m.pax_headers.items()}}))
"#;

/// The members of a (plain, gzip or zstd) tar, read by Python's `tarfile`, with the stored names
/// from GNU `tar -tf` (which must list the archive without error, with the same member count).
pub fn tar_members(tar: &Path) -> Vec<Member> {
    let out = run(Command::new("python3").arg("-c").arg(TAR_LIST).arg(tar));
    let gnu = run(Command::new("tar")
        .args(["--xattrs", "--quoting-style=literal", "-tf"])
        .arg(tar)
        .env("LC_ALL", "C.UTF-8"));
    let raw: Vec<String> = String::from_utf8_lossy(&gnu.stdout)
        .lines()
        .map(String::from)
        .collect();
    let members: Vec<Member> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .zip(raw.iter().cloned().chain(std::iter::repeat(String::new())))
        .map(|(l, raw)| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let s = |k: &str| v[k].as_str().unwrap().to_string();
            let n = |k: &str| v[k].as_u64().unwrap();
            Member {
                name: s("name"),
                raw,
                typ: s("type").chars().next().unwrap_or('0'),
                size: n("size"),
                mode: n("mode") as u32,
                uid: n("uid"),
                gid: n("gid"),
                mtime: s("mtime"),
                link: s("link"),
                dev: (
                    v["dev"][0].as_u64().unwrap() as u32,
                    v["dev"][1].as_u64().unwrap() as u32,
                ),
                pax: v["pax"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, x)| (k.clone(), x.as_str().unwrap().to_string()))
                    .collect(),
            }
        })
        .collect();
    assert_eq!(
        members.len(),
        raw.len(),
        "{}: GNU tar and Python tarfile disagree on the member count",
        tar.display()
    );
    members
}

/// Names of a directory's entries, sorted.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Run `cmd`, which must fail cleanly: non-zero exit, exactly one line on stderr naming one of
/// `names`, no `outfile`, and nothing new (no staging file) in `outfile`'s directory.
pub fn assert_fails_cleanly(cmd: &mut Command, names: &[&str], outfile: &Path) -> Output {
    let dir = outfile.parent().unwrap_or(Path::new("/"));
    let before = listing(dir);
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{cmd:?} must fail; stderr: {err}");
    assert_eq!(
        err.lines().count(),
        1,
        "{cmd:?}: exactly one line on stderr, got {err:?}"
    );
    assert!(
        names.iter().any(|n| err.contains(n)),
        "{cmd:?}: {err:?} should name one of {names:?}"
    );
    assert!(
        std::fs::symlink_metadata(outfile).is_err(),
        "{cmd:?}: output {} left behind",
        outfile.display()
    );
    assert_eq!(
        listing(dir),
        before,
        "{cmd:?}: files left in {}",
        dir.display()
    );
    out
}

/// `sha256:<hex>` of a file, by `sha256sum`.
pub fn sha256_file(p: &Path) -> String {
    let o = run(Command::new("sha256sum").arg(p));
    let hex = String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    format!("sha256:{hex}")
}

/// Layer 0 of the every-entry-type stacks (apply_store's STACK, squash's KITCHEN): every entry
/// type, long names, xattrs, ns mtimes, setuid bits and devices, for the later layers to delete,
/// replace, make opaque and link to. A macro so that `concat!` can build both stacks from it.
macro_rules! every_type_l0 {
    () => {
        r#"
=== L0
d etc mode=0755 mtime=1500000000.123456789
f etc/passwd data=root:x:0:0 mtime=1500000001.5
f etc/shadow data=secret mode=0640 gid=42
d etc/ssl
f etc/ssl/cert data=cert
d del
f del/a data=a
d del/sub
f del/sub/b data=b
f delfile data=gone
d opq1 mtime=1400000000
f opq1/old data=old
d opq1/olddir
f opq1/olddir/x data=x
d opq2 mtime=1400000000
f opq2/old data=old
d opq3 mode=0700 uid=3 gid=4 mtime=1450000000.25 x.user.o=3
f opq3/old data=old
d recreate
f recreate/old data=old
d recreate2 mtime=0
f recreate2/old data=old
d samedir
f samedir/old data=old
f fd data=file-to-dir
d df
f df/inner data=inner
l sd link=etc
d ds
f ds/x data=x
f hl-target data=shared mode=0600 uid=5 mtime=1300000000.7
f in0a data=in-layer
h in0b link=in0a
d usr
d usr/bin
f usr/bin/su data=su mode=04755
f usr/bin/newgrp data=ng mode=02755 gid=50
f usr/bin/own data=own mode=06750 uid=1000 gid=1000
d tmp mode=01777
p run/fifo mode=0620
c dev/null dev=1:3 mode=0666
b dev/loop0 dev=7:0 mode=0660 gid=6
c dev/big dev=4095:1048575 mode=0600
d {d*100} mtime=1234567890.000000001
f {d*100}/{f*200} data=long uid=3000000 gid=3000001
l longlink link={t*300}
h {h*150} link={d*100}/{f*200}
f xattrs data=x x.user.a=hello xh.user.bin=00ff0a0d x.trusted.plain=t
d xdir x.user.d=1 mode=0711
f sp\sace data=space
f ünïcødé-名前 data=u
"#
    };
}

/// Layer 1 of the every-entry-type stacks, but for the lines each stack adds: deletions, opaque
/// and re-created dirs, replacements of file/dir/symlink by each other, hardlinks to L0's files.
macro_rules! every_type_l1 {
    () => {
        r#"w .wh.delfile
w .wh.del
d opq1 mtime=1600000100
w opq1/.wh..wh..opq
f opq1/new data=new
d opq1/olddir
f opq1/olddir/z data=z
d opq2 mtime=1600000200
f opq2/new data=new
w opq2/.wh..wh..opq
w opq3/.wh..wh..opq
f opq3/n data=n
w .wh.recreate
d recreate mode=0700 mtime=1600000300
f recreate/new data=new
f recreate/keep data=keep
w .wh.recreate2
f recreate2/child data=child
d samedir mode=0750 mtime=1600000400
f samedir/new data=new
w .wh.samedir
d fd mtime=1600000500
f fd/in data=in
f df data=now-a-file
d sd
f sd/f data=f
l ds link=etc
f own data=own
h own-link link=own
h hl-lower link=hl-target
l sym2 link=/etc/passwd
h sym2-hl link=sym2
"#
    };
}

/// Layer 2 of the every-entry-type stacks, but for the lines each stack adds: replacements back
/// and forth, a whiteout of a file L1 linked to, a dir deleted in L1 made again.
macro_rules! every_type_l2 {
    () => {
        r#"=== L2
l fd link=df
d df mtime=1600000600
f df/again data=again
f sd data=file
w .wh.ds
w etc/.wh.shadow
w recreate/.wh.new
d del mtime=1600000700
f del/back data=back
w .wh.hl-lower
f own data=changed
f usr/bin/new data=new
"#
    };
}

/// The Python interpreter itself, resolved once (a version-manager shim costs ~0.2 s a call).
pub fn python() -> &'static str {
    static PY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PY.get_or_init(|| {
        let o = run(Command::new("python3").args(["-c", "import sys; print(sys.executable)"]));
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    })
}

/// `dump.py ROOT` (no flags), as `dump` but through `python()`.
pub fn dump_tree(root: &Path) -> String {
    let out = run(Command::new(python()).arg(support("dump.py")).arg(root));
    String::from_utf8(out.stdout).expect("dump.py writes ASCII")
}

/// Per-entry `rel mtime_ns` (mode "mtime") or `rel ino mtime_ns ctime_ns` (mode "inode"), sorted.
const STAT_LIST: &str = r#"
import os, sys
mode, root = sys.argv[1], sys.argv[2]
rows = []
for dp, dn, fn in os.walk(root):
    for n in dn + fn:
        p = os.path.join(dp, n)
        st = os.lstat(p)
        rel = os.fsencode(os.path.relpath(p, root)).decode("utf-8", "backslashreplace")
        if mode == "mtime":
            rows.append("%s %d" % (rel, st.st_mtime_ns))
        else:
            rows.append("%s %d %d %d" % (rel, st.st_ino, st.st_mtime_ns, st.st_ctime_ns))
print("\n".join(sorted(rows)))
"#;

pub fn stat_list(root: &Path, mode: &str) -> String {
    let o = run(Command::new(python())
        .arg("-c")
        .arg(STAT_LIST)
        .arg(mode)
        .arg(root));
    String::from_utf8(o.stdout).unwrap()
}

/// A read-only overlay mount of some layer dirs; unmounted, then its dir removed, when dropped.
pub struct LowerMount {
    pub path: PathBuf,
    _mount: Mount,
    _dir: tempfile::TempDir,
}

/// Mount `lowerdir` (topmost first) read-only in a fresh dir under `tmp`, with `opts` before
/// it; with an empty upper+work if the kernel refuses a single lower without one.
pub fn mount_lowers(tmp: &Path, lowerdir: &str, opts: &str) -> LowerMount {
    let dir = tempfile::Builder::new()
        .prefix("mnt-")
        .tempdir_in(tmp)
        .unwrap();
    let merged = dir.path().join("merged");
    std::fs::create_dir(&merged).unwrap();
    let mut o = format!("lowerdir={lowerdir}");
    if !opts.is_empty() {
        o = format!("{opts},{o}");
    }
    let direct = Command::new("mount")
        .args(["-t", "overlay", "overlay", "-o", &o])
        .arg(&merged)
        .output()
        .unwrap();
    let mount = if direct.status.success() {
        Mount::guard(&merged)
    } else {
        assert!(
            !lowerdir.contains(':'),
            "mount -o {o} failed: {}",
            String::from_utf8_lossy(&direct.stderr)
        );
        let (u, w) = (dir.path().join("upper"), dir.path().join("work"));
        std::fs::create_dir(&u).unwrap();
        std::fs::create_dir(&w).unwrap();
        Mount::overlay(&[Path::new(lowerdir)], &u, &w, &merged, opts)
    };
    LowerMount {
        path: merged,
        _mount: mount,
        _dir: dir,
    }
}

/// Run `cmd` with `input` on stdin; panic unless it succeeds.
pub fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    // Fed from a thread: a command whose output fills the pipe before it has read all of its
    // input would otherwise wait for us while we wait for it.
    let mut stdin = child.stdin.take().unwrap();
    std::thread::scope(|s| {
        s.spawn(move || stdin.write_all(input).unwrap());
        succeeded(cmd, child.wait_with_output().unwrap())
    })
}

/// The hex sha256 of some bytes, by `sha256sum`.
pub fn sha256_hex(data: &[u8]) -> String {
    let o = run_with_stdin(&mut Command::new("sha256sum"), data);
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// `tool` (e.g. `["zstd", "-q"]`) over `file` into `out`.
pub fn compress(file: &Path, tool: &[&str], out: &Path) {
    let data = std::fs::read(file).unwrap();
    let o = run_with_stdin(Command::new(tool[0]).args(&tool[1..]), &data);
    std::fs::write(out, o.stdout).unwrap();
}

/// `--json`: the one stdout line, parsed by Python: (mediaType, digest, size, diffID), exactly
/// those keys.
pub fn descriptor(stdout: &[u8]) -> (String, String, u64, String) {
    let script = r#"
import json, sys
d = json.loads(sys.stdin.buffer.read())
assert set(d) == {"mediaType", "digest", "size", "diffID"}, sorted(d)
assert type(d["size"]) is int, d
print(d["mediaType"], d["digest"], d["size"], d["diffID"])
"#;
    let s = String::from_utf8_lossy(stdout);
    assert!(
        s.ends_with('\n') && s.matches('\n').count() == 1,
        "--json: exactly one line: {s:?}"
    );
    let out = run_with_stdin(Command::new(python()).arg("-c").arg(script), stdout);
    let s = String::from_utf8(out.stdout).unwrap();
    let f: Vec<&str> = s.split_whitespace().collect();
    (f[0].into(), f[1].into(), f[2].parse().unwrap(), f[3].into())
}

/// The first 512 bytes' kind: "tar" (ustar magic), "gzip" or "zstd".
pub fn kind(bytes: &[u8]) -> &'static str {
    if bytes.starts_with(&[0x1f, 0x8b]) {
        "gzip"
    } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        "zstd"
    } else if bytes.len() >= 262 && &bytes[257..262] == b"ustar" {
        "tar"
    } else {
        "unknown"
    }
}

/// `mib` files `r0`, `r1`, ... of 1 MiB of xorshift noise each in `dir` (created): incompressible,
/// so gzip/zstd output is as large as the data; `seed` picks the bytes.
pub fn noise_files(dir: &Path, mib: usize, seed: u64) {
    std::fs::create_dir_all(dir).unwrap();
    let mut x = seed | 1;
    for i in 0..mib {
        let data: Vec<u8> = (0..1 << 20)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        std::fs::write(dir.join(format!("r{i}")), data).unwrap();
    }
}

/// Peak RSS in KiB of `cmd`, by Python's `getrusage` (the command must succeed).
pub fn peak_rss_kib(cmd: &Command) -> u64 {
    let script = "import resource, subprocess, sys\n\
                  r = subprocess.run(sys.argv[1:], capture_output=True)\n\
                  sys.stderr.write(r.stderr.decode(errors='replace'))\n\
                  assert r.returncode == 0, r.returncode\n\
                  print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)";
    let out = run(Command::new(python())
        .arg("-c")
        .arg(script)
        .arg(cmd.get_program())
        .args(cmd.get_args()));
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// A PAX tar of `dir` by GNU tar (an independent writer).
pub fn gnu_tar(dir: &Path, out: &Path) {
    run(Command::new("tar")
        .arg("-C")
        .arg(dir)
        .args(["--format=pax", "-cf"])
        .arg(out)
        .arg("."));
}

/// A layer tar per shell script: each script builds a tree in `root/treeN`, which GNU tar (PAX,
/// every xattr, numeric owners) writes to `root/lN.tar`; `.wh.` files are the OCI markers.
pub fn tars_from_scripts(root: &Path, scripts: &[&str]) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for (i, script) in scripts.iter().enumerate() {
        let dir = root.join(format!("tree{i}"));
        std::fs::create_dir_all(&dir).unwrap();
        sh(&dir, script);
        let tar = root.join(format!("l{i}.tar"));
        run(Command::new("tar")
            .args([
                "--format=pax",
                "--xattrs",
                "--xattrs-include=*",
                "--numeric-owner",
            ])
            .arg("-C")
            .arg(&dir)
            .arg("-cf")
            .arg(&tar)
            .arg("."));
        out.push(tar);
    }
    out
}

/// `make_image.py OUT SPEC`, the independent layout writer: `layers` compressed as `compress`
/// (one per layer, `none|gzip|zstd`, optionally `/sha512`), `extra` appended to the spec's JSON
/// object (e.g. `, "tamper": {...}`).
pub fn make_image(out: &Path, layers: &[PathBuf], compress: &[&str], extra: &str) -> PathBuf {
    let ls: Vec<String> = layers
        .iter()
        .zip(compress)
        .map(|(l, c)| {
            let (c, alg) = c.split_once('/').unwrap_or((c, "sha256"));
            format!(
                r#"{{"file": "{}", "compress": "{c}", "alg": "{alg}"}}"#,
                l.display()
            )
        })
        .collect();
    let spec = format!(r#"{{"layers": [{}]{extra}}}"#, ls.join(", "));
    run(Command::new(python())
        .arg(support("make_image.py"))
        .arg(out)
        .arg(&spec));
    out.to_path_buf()
}

/// A store id or container id: 64 lowercase hex chars (moby and the OCI chainID's hex).
pub fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// An overlay2 short link name: 26 chars of base32 (moby `idLength`).
pub fn is_link_name(s: &str) -> bool {
    s.len() == 26
        && s.bytes()
            .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
}
