//! The store under concurrent commands and kill -9: every command reads and repairs what is left.
//!
//! Concurrent `create`s, `prune`s and `rm`s on one store; SIGKILL at timed points of `layerapply
//! --store`, `create` and `prune`, and (through `strace -e inject`) right before each change a
//! `create`, `rm` or `prune` makes; a mounted container under `prune` and `rm`. After each: `ls
//! --json` succeeds and the store is whole (records and dirs agree, every layer dir has `diff` and
//! `link`, no dangling `l/` link, no staging dir once nothing runs), a layer that was complete is
//! never changed, and a new container of the same stack mounts and shows what an independent
//! applier (`apply_oci.py`) makes of the stack. Timings only pick the kill points; nothing asserts
//! on them.

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Inputs

/// `gen.py OUT TAG NFILES`: TAG0.tar, TAG1.tar, TAG2.tar (PAX, Python's tarfile), the bytes
/// fixed by TAG. Layer k: `etc/TAG-k` and a dir `Lk` of NFILES small files in dirs of 50. L0 adds
/// a symlink and a hardlink; L1 deletes `L0/d00` and `etc/TAG-0`; L2 makes `L1` opaque with one
/// new file. Parents of whiteouts are in the tar, as real layers carry them.
const GEN: &str = r#"
import io, os, random, sys, tarfile
out, tag, nfiles = sys.argv[1], sys.argv[2], int(sys.argv[3])
rng = random.Random(tag)

def add(tf, name, typ=tarfile.REGTYPE, data=b"", mode=None, link=""):
    ti = tarfile.TarInfo(name)
    ti.type = typ
    ti.mode = mode if mode is not None else {tarfile.DIRTYPE: 0o755, tarfile.SYMTYPE: 0o777}.get(typ, 0o644)
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = 1600000000 + rng.randrange(1000000)
    ti.linkname = link
    ti.size = len(data) if typ == tarfile.REGTYPE else 0
    tf.addfile(ti, io.BytesIO(data) if ti.size else None)

for k in range(3):
    with tarfile.open(os.path.join(out, "%s%d.tar" % (tag, k)), "w", format=tarfile.PAX_FORMAT) as tf:
        add(tf, "etc", tarfile.DIRTYPE)
        add(tf, "etc/%s-%d" % (tag, k), data=b"%s %d\n" % (tag.encode(), k))
        add(tf, "L%d" % k, tarfile.DIRTYPE)
        for i in range(nfiles):
            if i % 50 == 0:
                add(tf, "L%d/d%02d" % (k, i // 50), tarfile.DIRTYPE)
            add(tf, "L%d/d%02d/f%04d" % (k, i // 50, i), data=rng.randbytes(rng.randrange(16, 2048)))
        if k == 0:
            add(tf, "L0/sym", tarfile.SYMTYPE, link="d01/f0050")
            add(tf, "L0/hard", tarfile.LNKTYPE, link="L0/d00/f0001")
        if k == 1:
            add(tf, "L0", tarfile.DIRTYPE, mode=0o750)
            add(tf, "L0/.wh.d00", mode=0)
            add(tf, "etc/.wh.%s-0" % tag, mode=0)
        if k == 2:
            add(tf, "L1", tarfile.DIRTYPE)
            add(tf, "L1/.wh..wh..opq", mode=0)
            add(tf, "L1/new", data=b"new\n")
"#;

/// A 3-layer stack of layer tars and what it must give.
struct Stack {
    _tmp: tempfile::TempDir,
    /// The layer files, bottom first.
    layers: Vec<PathBuf>,
    /// Store ids (chainID hex), bottom first.
    ids: Vec<String>,
    /// The fingerprint of each layer dir of a clean store, by id.
    prints: BTreeMap<String, String>,
    /// The dump of the stack applied by `apply_oci.py` (a container's view, placeholders aside).
    expected: String,
}

impl Stack {
    fn new(tag: &str, nfiles: usize) -> Stack {
        let tmp = scratch();
        run(Command::new(python())
            .arg("-c")
            .arg(GEN)
            .arg(tmp.path())
            .arg(tag)
            .arg(nfiles.to_string()));
        let layers: Vec<PathBuf> = (0..3)
            .map(|k| tmp.path().join(format!("{tag}{k}.tar")))
            .collect();
        let rootfs = tmp.path().join("rootfs");
        std::fs::create_dir(&rootfs).unwrap();
        for l in &layers {
            run(Command::new(python())
                .arg(support("apply_oci.py"))
                .arg(&rootfs)
                .arg(l));
        }
        let expected = dump_tree(&rootfs);
        let clean = tmp.path().join("clean");
        let out = run(layerapply()
            .arg("--json")
            .arg("--store")
            .arg(&clean)
            .args(&layers));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json");
        let ids: Vec<String> = v["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| hex_of(l["chainID"].as_str().expect("chainID")))
            .collect();
        assert_eq!(ids.len(), 3);
        let prints = ids
            .iter()
            .map(|id| (id.clone(), fingerprint(&clean.join(id).join("diff"))))
            .collect();
        Stack {
            _tmp: tmp,
            layers,
            ids,
            prints,
            expected,
        }
    }

    fn id_set(&self) -> BTreeSet<String> {
        self.ids.iter().cloned().collect()
    }
}

/// A tree as text, one sorted line per entry: path, mode (with the type), owner, ns mtime, link
/// count, and the bytes' hash, the symlink's target or the device number, and every xattr (the
/// overlay markers too). Read in-process: a layer dir is checked after every kill.
fn fingerprint(root: &Path) -> String {
    use std::hash::{Hash, Hasher};
    use std::os::unix::fs::MetadataExt;
    let mut rows = Vec::new();
    let mut dirs = vec![PathBuf::new()];
    let mut buf = vec![0u8; 1 << 16];
    let mut val = vec![0u8; 1 << 16];
    while let Some(rel) = dirs.pop() {
        let rd = std::fs::read_dir(root.join(&rel))
            .unwrap_or_else(|e| panic!("{}: {e}", root.join(&rel).display()));
        for e in rd {
            let r = rel.join(e.unwrap().file_name());
            let p = root.join(&r);
            let m = std::fs::symlink_metadata(&p).unwrap();
            let mut row = format!(
                "{} {:o} {}:{} {}.{:09} n{}",
                r.display(),
                m.mode(),
                m.uid(),
                m.gid(),
                m.mtime(),
                m.mtime_nsec(),
                m.nlink()
            );
            let ft = m.file_type();
            if ft.is_dir() {
                dirs.push(r);
            } else if ft.is_symlink() {
                row.push_str(&format!(
                    " -> {}",
                    std::fs::read_link(&p).unwrap().display()
                ));
            } else if ft.is_file() {
                let mut h = std::collections::hash_map::DefaultHasher::new();
                std::fs::read(&p).unwrap().hash(&mut h);
                row.push_str(&format!(" {} {:016x}", m.len(), h.finish()));
            } else {
                row.push_str(&format!(" dev {:x}", m.rdev()));
            }
            let n = rustix::fs::llistxattr(&p, &mut buf[..]).unwrap();
            let mut names: Vec<&[u8]> = buf[..n]
                .split(|b| *b == 0)
                .filter(|x| !x.is_empty())
                .collect();
            names.sort();
            for name in names {
                let k = rustix::fs::lgetxattr(&p, name, &mut val[..]).unwrap();
                row.push_str(&format!(
                    " {}={}",
                    String::from_utf8_lossy(name),
                    val[..k]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                ));
            }
            rows.push(row);
        }
    }
    rows.sort();
    rows.join("\n")
}

fn hex_of(digest: &str) -> String {
    digest.strip_prefix("sha256:").unwrap_or(digest).to_string()
}

// ---------------------------------------------------------------------------------------------
// Commands

fn layerkit() -> Command {
    Command::new(env!("CARGO_BIN_EXE_layerkit"))
}

/// `layerkit VERB --store STORE ARGS...`, not yet run.
fn lk(verb: &str, store: &Path, args: &[&str]) -> Command {
    let mut c = layerkit();
    c.arg(verb).arg("--store").arg(store).args(args);
    c
}

fn stdout_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn stderr_of(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `layerkit create --store STORE LAYERS...`; the new container's id.
fn create(store: &Path, layers: &[PathBuf]) -> String {
    let out = run(lk("create", store, &[]).args(layers));
    let id = stdout_of(&out);
    assert!(is_hex64(&id), "create printed {id:?}");
    id
}

fn ls_json(store: &Path, what: &str) -> serde_json::Value {
    let out = lk("ls", store, &["--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: ls --json failed ({}): {}",
        out.status,
        stderr_of(&out)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: ls --json: {e}: {}", stdout_of(&out)))
}

fn ids_in(v: &serde_json::Value, key: &str) -> BTreeSet<String> {
    v[key]
        .as_array()
        .unwrap_or_else(|| panic!("ls --json: no {key} array: {v}"))
        .iter()
        .map(|x| x["id"].as_str().expect("id").to_string())
        .collect()
}

/// `prune --json` must succeed; the ids of the layers it removed.
fn prune(store: &Path, what: &str) -> BTreeSet<String> {
    let out = lk("prune", store, &["--json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: prune failed ({}): {}",
        out.status,
        stderr_of(&out)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{what}: prune --json: {e}: {}", stdout_of(&out)));
    v["layers"]
        .as_array()
        .expect("layers")
        .iter()
        .map(|l| {
            l["id"]
                .as_str()
                .unwrap_or_else(|| panic!("{what}: prune --json: a layer is {l}"))
                .to_string()
        })
        .collect()
}

fn rm(store: &Path, args: &[&str], what: &str) -> Output {
    let out = lk("rm", store, args).output().unwrap();
    assert!(
        out.status.success(),
        "{what}: rm {args:?} failed ({}): {}",
        out.status,
        stderr_of(&out)
    );
    out
}

/// Run `cmd` under strace (`-f`, output to `log`, or discarded), with `strace_args` before it.
fn strace(cmd: &Command, strace_args: &[&str], log: Option<&Path>) -> Command {
    let mut c = Command::new("strace");
    c.args(["-f", "-qq", "-o"])
        .arg(log.unwrap_or(Path::new("/dev/null")))
        .args(strace_args)
        .arg("--")
        .arg(cmd.get_program())
        .args(cmd.get_args());
    c
}

/// Whether strace can run here (it injects the kills and delays); otherwise skipped as umoci's
/// cross-check is, and a failure under `LAYERKIT_REQUIRE_ROOT=1`.
fn have_strace(what: &str) -> bool {
    if Command::new("strace")
        .args(["-qq", "-o", "/dev/null", "true"])
        .status()
        .is_ok_and(|s| s.success())
    {
        return true;
    }
    let msg = format!("skipping {what}: strace is not installed or cannot trace here");
    if std::env::var("LAYERKIT_REQUIRE_ROOT").as_deref() == Ok("1") {
        panic!("{msg} (LAYERKIT_REQUIRE_ROOT=1)");
    }
    eprintln!("{msg}");
    false
}

/// Start `cmd` with stdout and stderr piped.
fn spawn(cmd: &mut Command) -> Child {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// Start `cmd`, SIGKILL it after `delay` unless it has ended; whether the kill landed (it was
/// still running), and how it ended.
fn kill_after(cmd: &mut Command, delay: Duration) -> (bool, Output) {
    let mut child = spawn(cmd);
    std::thread::sleep(delay);
    let landed = child.try_wait().unwrap().is_none();
    if landed {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    (landed && out.status.signal() == Some(9), out)
}

fn timed(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    run(cmd);
    t.elapsed()
}

// ---------------------------------------------------------------------------------------------
// What a store must be after any command, killed or not

fn is_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// Whether `p` is, or leads to, a dir.
fn leads_to_dir(p: &Path) -> bool {
    std::fs::metadata(p).is_ok_and(|m| m.is_dir())
}

fn is_file(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
}

fn staging(store: &Path) -> Vec<String> {
    listing(&store.join(".layerkit/staging"))
}

/// The top of a store, split: layer dirs, container dirs (with `merged`), init dirs.
struct Top {
    layers: BTreeSet<String>,
    containers: BTreeSet<String>,
    inits: BTreeSet<String>,
}

fn top(store: &Path, what: &str) -> Top {
    let mut t = Top {
        layers: BTreeSet::new(),
        containers: BTreeSet::new(),
        inits: BTreeSet::new(),
    };
    for n in listing(store) {
        if n == "l" || n == ".layerkit" {
            continue;
        }
        if is_hex64(&n) {
            if std::fs::symlink_metadata(store.join(&n).join("merged")).is_ok() {
                t.containers.insert(n);
            } else {
                t.layers.insert(n);
            }
        } else if n.strip_suffix("-init").is_some_and(is_hex64) {
            t.inits.insert(n);
        } else {
            panic!("{what}: stray {n:?} at the top of the store");
        }
    }
    t
}

fn link_of(dir: &Path, what: &str) -> String {
    let link = std::fs::read_to_string(dir.join("link"))
        .unwrap_or_else(|e| panic!("{what}: {}/link: {e}", dir.display()));
    assert!(
        is_link_name(&link),
        "{what}: {}/link = {link:?}",
        dir.display()
    );
    link
}

/// `ls --json` (which must succeed, and repairs), then the store as it must be after it: the
/// containers `ls` lists are exactly the container dirs, each with its init dir and its image's
/// layers (by `inspect`), its `lower` naming links of dirs there are; the layers it lists are
/// exactly the other id dirs, each with `diff` and `link`; every `l/` entry points at the dir
/// whose `link` names it, one per dir, none dangling. With `all_links` (no kill since the last
/// prune), every layer and container dir has its `l/` link (a kill between a layer's rename and
/// its link may leave one without, until a command that uses it re-makes it), and every layer's
/// `lower` names links of dirs there are.
fn check_store(store: &Path, all_links: bool, what: &str) -> serde_json::Value {
    let v = ls_json(store, what);
    let t = top(store, what);
    let listed = ids_in(&v, "containers");
    assert_eq!(
        listed, t.containers,
        "{what}: containers ls lists (left) vs container dirs (right)"
    );
    let want_inits: BTreeSet<String> = t.containers.iter().map(|c| format!("{c}-init")).collect();
    assert_eq!(
        t.inits, want_inits,
        "{what}: init dirs vs the containers' (a container record without its dirs, or dirs \
         without a record)"
    );
    assert_eq!(
        ids_in(&v, "layers"),
        t.layers,
        "{what}: layers ls lists vs layer dirs"
    );
    let mut links: BTreeMap<String, String> = BTreeMap::new();
    for l in &t.layers {
        let d = store.join(l);
        assert!(is_dir(&d.join("diff")), "{what}: layer {l} has no diff/");
        links.insert(link_of(&d, what), l.clone());
    }
    for c in &t.containers {
        let d = store.join(c);
        for sub in ["diff", "work", "merged"] {
            assert!(is_dir(&d.join(sub)), "{what}: container {c} has no {sub}/");
        }
        assert!(is_file(&d.join("lower")), "{what}: container {c}: no lower");
        links.insert(link_of(&d, what), c.clone());
        let i = store.join(format!("{c}-init"));
        assert!(is_dir(&i.join("diff")), "{what}: {c}-init has no diff/");
        links.insert(link_of(&i, what), format!("{c}-init"));
        let out = run(&mut lk("inspect", store, &[c]));
        let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let lower = j["GraphDriver"]["Data"]["LowerDir"]
            .as_str()
            .expect("LowerDir");
        for p in lower.split(':') {
            assert!(
                is_dir(Path::new(p)),
                "{what}: container {c}: lower {p} is gone"
            );
        }
    }
    // Every container's `lower` names the links of dirs there are (a link a kill lost is re-made
    // from the dir's `link` file; a name no dir has is a chain no mount can follow). So do the
    // layers' with `all_links` (a kill may leave a layer whose parent is gone: then nothing may
    // reuse it, and the next prune takes it).
    let mut lowers: Vec<String> = Vec::new();
    if all_links {
        lowers.extend(t.layers.iter().cloned());
    }
    lowers.extend(
        t.containers
            .iter()
            .flat_map(|c| [c.clone(), format!("{c}-init")]),
    );
    for d in lowers {
        let Ok(lower) = std::fs::read_to_string(store.join(&d).join("lower")) else {
            continue;
        };
        for l in lower.split(':') {
            let name = l
                .strip_prefix("l/")
                .unwrap_or_else(|| panic!("{what}: {d}/lower = {lower:?}: not l/ names"));
            assert!(
                links.contains_key(name),
                "{what}: {d}/lower names {l}, the link of no dir in the store (a layer below \
                 it is gone, or was made again under another link name): {d} can never be \
                 mounted. l/: {:?}",
                listing(&store.join("l"))
            );
        }
    }
    let mut seen = BTreeSet::new();
    for name in listing(&store.join("l")) {
        let p = store.join("l").join(&name);
        let target = std::fs::read_link(&p)
            .unwrap_or_else(|e| panic!("{what}: l/{name} is not a symlink: {e}"))
            .to_string_lossy()
            .into_owned();
        let dir = target
            .strip_prefix("../")
            .and_then(|t| t.strip_suffix("/diff"))
            .unwrap_or_else(|| panic!("{what}: l/{name} -> {target}: not ../<dir>/diff"));
        assert!(leads_to_dir(&p), "{what}: l/{name} -> {target} dangles");
        assert_eq!(
            links.get(&name).map(String::as_str),
            Some(dir),
            "{what}: l/{name} -> {target}, but that dir's link file names another"
        );
        assert!(
            seen.insert(dir.to_string()),
            "{what}: two l/ links to {dir}"
        );
    }
    if all_links {
        let missing: Vec<&String> = links.values().filter(|d| !seen.contains(*d)).collect();
        assert!(missing.is_empty(), "{what}: no l/ link for {missing:?}");
    }
    v
}

/// Every layer dir of `stacks` the store holds equals the clean store's layer of that id.
fn check_intact(store: &Path, stacks: &[&Stack], what: &str) {
    for s in stacks {
        for (id, want) in &s.prints {
            let d = store.join(id).join("diff");
            if is_dir(&d) {
                let got = fingerprint(&d);
                assert!(
                    *want == got,
                    "{what}: layer {id} differs from the clean store's:\n{}",
                    unified_diff(want, &got)
                );
            }
        }
    }
}

/// What the init layer adds (docker's placeholders), `path type`, sorted as dump.py sorts.
const PLACEHOLDERS: &[&str] = &[
    ".dockerenv f",
    "dev d",
    "dev/console f",
    "dev/pts d",
    "dev/shm d",
    "etc/hostname f",
    "etc/hosts f",
    "etc/mtab l",
    "etc/resolv.conf f",
    "proc d",
    "sys d",
];

/// The merged view of a mounted container: the stack's part, and the placeholders.
fn split_view(merged: &Path) -> (String, Vec<String>) {
    let mut rest = String::new();
    let mut ph = Vec::new();
    for line in dump_tree(merged).lines() {
        let mut f = line.split(' ');
        let (p, ty) = (f.next().unwrap(), f.next().unwrap_or(""));
        let key = format!("{p} {ty}");
        if PLACEHOLDERS.contains(&key.as_str()) {
            ph.push(key);
        } else {
            rest.push_str(line);
            rest.push('\n');
        }
    }
    (rest, ph)
}

/// `mount` the container, compare its merged view with the stack's (placeholders aside, which
/// must all be there), `umount` it. Unmounted even when the check panics.
fn assert_view(store: &Path, cid: &str, stack: &Stack, what: &str) {
    let out = run(&mut lk("mount", store, &[cid]));
    let merged = PathBuf::from(stdout_of(&out));
    assert_eq!(
        merged,
        store.join(cid).join("merged"),
        "{what}: mount printed"
    );
    let _guard = Unmount(merged.clone());
    let (rest, ph) = split_view(&merged);
    assert_same(&stack.expected, &rest, &format!("{what}: container {cid}"));
    assert_eq!(ph, PLACEHOLDERS, "{what}: placeholders of {cid}");
    run(&mut lk("umount", store, &[cid]));
}

/// A new container of `stack` must be made, mount, and show the stack; it is removed again.
fn create_mount_check(store: &Path, stack: &Stack, what: &str) {
    let cid = create(store, &stack.layers);
    let v = check_store(store, false, &format!("{what}, then create"));
    assert!(
        ids_in(&v, "containers").contains(&cid),
        "{what}: {cid} not listed"
    );
    // Its layers' l/ links are all there (re-made if a kill lost one): the mount names them.
    let init = format!("{cid}-init");
    for d in stack.ids.iter().chain([&cid, &init]) {
        let link = link_of(&store.join(d), what);
        assert!(
            leads_to_dir(&store.join("l").join(&link)),
            "{what}, then create: no l/{link} for {d}"
        );
    }
    assert_view(store, &cid, stack, &format!("{what}, then create"));
    rm(store, &["-f", &cid], what);
}

/// Unmounts `path` (lazily) when dropped if it is mounted then: a panicking test leaves nothing
/// mounted.
struct Unmount(PathBuf);

impl Drop for Unmount {
    fn drop(&mut self) {
        if mounted(&self.0) {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

/// Whether `merged` is a mount point now.
fn mounted(merged: &Path) -> bool {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let p = merged.display().to_string();
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(p.as_str()))
}

// ---------------------------------------------------------------------------------------------
// 1. Concurrent creates, prunes and rms on one store

/// 4 threads each create containers of stack a 4 times, one creates a container of stack c and
/// rms it 6 times, while 2 threads prune in a loop. Every command succeeds (a create may fail only
/// with the documented "removed by a concurrent prune; run again", and is then run again, at most
/// 3 times; such failures are counted and printed), no staging dir is left, `ls` and the dirs
/// agree with every link in place, every container of a mounts and shows a, and a last prune
/// frees c's layers and nothing of a's.
#[test]
fn concurrent_creates_prunes_and_rms_keep_the_store_whole() {
    if !need_root("concurrent create/prune/rm on one store + overlay mounts") {
        return;
    }
    let (a, c) = (Stack::new("a", 300), Stack::new("c", 150));
    let tmp = scratch();
    let store = tmp.path().join("s");
    // The store exists before the prunes start (a first run that fails takes back the store it
    // made, and a prune of no store fails).
    run(layerapply().arg("--store").arg(&store).arg(&c.layers[0]));
    const DOC: &str = "removed by a concurrent prune; run again";
    let done = AtomicBool::new(false);
    // (what, exit ok, stdout, stderr)
    let results: Mutex<Vec<(String, bool, String, String)>> = Mutex::new(Vec::new());
    let record = |what: String, out: &Output| {
        results
            .lock()
            .unwrap()
            .push((what, out.status.success(), stdout_of(out), stderr_of(out)));
    };
    // As the message says: run again (at most 3 times in all).
    let create_again = |layers: &[PathBuf], what: String| -> Output {
        let mut k = 0;
        loop {
            let out = lk("create", &store, &[]).args(layers).output().unwrap();
            k += 1;
            record(format!("{what} (try {k})"), &out);
            if out.status.success() || !stderr_of(&out).contains(DOC) || k == 3 {
                return out;
            }
        }
    };
    let prunes = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        let mut makers = Vec::new();
        for t in 0..4 {
            let (a, create_again) = (&a, &create_again);
            makers.push(s.spawn(move || {
                for i in 0..4 {
                    create_again(&a.layers, format!("create a #{t}.{i}"));
                }
            }));
        }
        {
            let (c, store, record, create_again) = (&c, &store, &record, &create_again);
            makers.push(s.spawn(move || {
                for i in 0..6 {
                    let out = create_again(&c.layers, format!("create c #{i}"));
                    if out.status.success() {
                        let out = lk("rm", store, &[&stdout_of(&out)]).output().unwrap();
                        record(format!("rm c #{i}"), &out);
                    }
                }
            }));
        }
        for t in 0..2 {
            let (store, record, done, prunes) = (&store, &record, &done, &prunes);
            s.spawn(move || {
                let mut i = 0;
                while !done.load(Ordering::Relaxed) {
                    let out = lk("prune", store, &["--json"]).output().unwrap();
                    record(format!("prune #{t}.{i}"), &out);
                    prunes.fetch_add(1, Ordering::Relaxed);
                    i += 1;
                    std::thread::sleep(Duration::from_millis(10));
                }
            });
        }
        for m in makers {
            m.join().unwrap();
        }
        done.store(true, Ordering::Relaxed);
    });
    // Every run has ended: none may have left its staging dir.
    assert_eq!(
        staging(&store),
        Vec::<String>::new(),
        "staging after all runs"
    );
    let results = results.into_inner().unwrap();
    let mut bad = Vec::new();
    let mut documented = Vec::new();
    let (mut made_a, mut made_c) = (BTreeSet::new(), 0);
    for (what, ok, out, err) in &results {
        if *ok {
            if what.starts_with("create a") {
                made_a.insert(out.clone());
            }
            made_c += usize::from(what.starts_with("create c"));
        } else if what.starts_with("create") && err.contains(DOC) && err.lines().count() == 1 {
            documented.push(what.clone());
        } else {
            bad.push(format!("{what}: {err}"));
        }
    }
    eprintln!(
        "concurrent: {} commands ({} prunes; {} creates of a and {made_c} of c made), {} \
         creates failed with {DOC:?}: {documented:?}",
        results.len(),
        prunes.load(Ordering::Relaxed),
        made_a.len(),
        documented.len()
    );
    assert!(bad.is_empty(), "commands failed: {bad:#?}");
    assert!(
        prunes.load(Ordering::Relaxed) >= 2,
        "the prunes never ran beside the creates"
    );
    let v = check_store(&store, true, "after the concurrent runs");
    assert_eq!(
        ids_in(&v, "containers"),
        made_a,
        "containers: exactly the creates of a that succeeded (every c removed)"
    );
    for cid in &made_a {
        assert_view(&store, cid, &a, "after the concurrent runs");
    }
    // c is used by nothing now: the next prune takes its layers and nothing of a.
    let freed = prune(&store, "final prune");
    let c_ids: BTreeSet<String> = c.ids.iter().cloned().collect();
    assert!(
        freed.is_subset(&c_ids),
        "prune freed {freed:?}, not only c's"
    );
    let v = check_store(&store, true, "after the final prune");
    let a_ids: BTreeSet<String> = a.ids.iter().cloned().collect();
    assert_eq!(ids_in(&v, "layers"), a_ids, "layers left: a's only");
    check_intact(&store, &[&a], "after the final prune");
    assert!(staging(&store).is_empty());
}

// ---------------------------------------------------------------------------------------------
// 2. kill -9 at timed points

/// Delays to kill at: 5 and 20 ms, and 15, 40, 65 and 90% of a clean run's time.
fn kill_points(clean: Duration) -> Vec<Duration> {
    let mut v = vec![Duration::from_millis(5), Duration::from_millis(20)];
    v.extend([0.15, 0.4, 0.65, 0.9].iter().map(|f| clean.mul_f64(*f)));
    v.sort();
    v
}

/// After a kill: `ls` repairs and the store is whole, every layer present is intact (and
/// `keep`'s, which a container uses, all there); then a new container of `stack` mounts and shows
/// it; then `prune` leaves no staging dir and only `keep`'s layers (so that the next kill has all
/// of `stack` to do again).
fn after_kill(store: &Path, stack: &Stack, keep: &Stack, others: &[&Stack], what: &str) {
    check_store(store, false, what);
    let mut all = vec![stack, keep];
    all.extend(others);
    check_intact(store, &all, what);
    for id in &keep.ids {
        assert!(
            is_dir(&store.join(id).join("diff")),
            "{what}: layer {id}, which a container uses, is gone"
        );
    }
    create_mount_check(store, stack, what);
    prune(store, what);
    assert_eq!(
        staging(store),
        Vec::<String>::new(),
        "{what}: staging after prune"
    );
    let v = check_store(store, true, &format!("{what}, then prune"));
    assert_eq!(
        ids_in(&v, "layers"),
        keep.id_set(),
        "{what}: layers after prune"
    );
}

/// A store holding one container of `keep`, whose layers no kill may touch.
fn store_with(tmp: &Path, keep: &Stack) -> (PathBuf, String) {
    let store = tmp.join("s");
    let cid = create(&store, &keep.layers);
    (store, cid)
}

/// Kill `cmd()` at each of `delays`, `then` after each; how many kills landed during a run.
fn kill_at(
    delays: &[Duration],
    mut cmd: impl FnMut() -> Command,
    mut then: impl FnMut(&str),
    what: &str,
) -> usize {
    let mut landed = 0;
    for d in delays {
        let what = format!("{what} killed at {d:?}");
        let (hit, out) = kill_after(&mut cmd(), *d);
        assert!(hit || out.status.success(), "{what}: {}", stderr_of(&out));
        landed += usize::from(hit);
        then(&what);
    }
    landed
}

/// `layerapply --store` of a 1,500-file stack SIGKILLed at 6 points of its run.
#[test]
fn kill9_during_apply() {
    if !need_root("layerapply --store killed at timed points + overlay mounts") {
        return;
    }
    let (big, keep) = (Stack::new("b", 500), Stack::new("k", 30));
    let tmp = scratch();
    let (store, kept) = store_with(tmp.path(), &keep);
    let apply = || {
        let mut c = layerapply();
        c.arg("--store").arg(&store).args(&big.layers);
        c
    };
    let clean = timed(&mut apply());
    prune(&store, "after the clean run");
    let landed = kill_at(
        &kill_points(clean),
        apply,
        |what| after_kill(&store, &big, &keep, &[], what),
        &format!("layerapply --store (clean: {clean:?})"),
    );
    assert!(landed >= 3, "only {landed} kills landed during a run");
    assert_view(&store, &kept, &keep, "the kept container after the kills");
}

/// `layerkit create` SIGKILLed at 6 points while it unpacks the stack, and at 4 points while it
/// reuses the stack (hashing the files, making the init and container layers).
#[test]
fn kill9_during_create() {
    if !need_root("layerkit create killed at timed points + overlay mounts") {
        return;
    }
    let (big, keep) = (Stack::new("b", 500), Stack::new("k", 30));
    let tmp = scratch();
    let (store, kept) = store_with(tmp.path(), &keep);
    let create_cmd = || {
        let mut c = lk("create", &store, &[]);
        c.args(&big.layers);
        c
    };
    let clean = timed(&mut create_cmd());
    // With the layers there, create only hashes the files and makes the container.
    let reuse = timed(&mut create_cmd());
    for cid in ids_in(&ls_json(&store, "setup"), "containers") {
        if cid != kept {
            rm(&store, &[&cid], "setup");
        }
    }
    prune(&store, "setup");
    // A killed create leaves a whole container (it mounts, rm takes it) or none.
    let then = |what: &str| {
        let v = check_store(&store, false, what);
        for cid in ids_in(&v, "containers").iter().filter(|c| **c != kept) {
            assert_view(&store, cid, &big, &format!("{what}: the container it left"));
            rm(&store, &[cid], what);
            let v = ls_json(&store, what);
            assert!(
                !ids_in(&v, "containers").contains(cid),
                "{what}: {cid} still listed after rm; records: {:?}",
                listing(&store.join(".layerkit/containers"))
            );
        }
        after_kill(&store, &big, &keep, &[], what);
    };
    let mut landed = kill_at(
        &kill_points(clean),
        create_cmd,
        then,
        &format!("create, the stack absent (clean: {clean:?})"),
    );
    // The stack in the store (unused): a kill lands in the hashing or in making the container.
    let delays: Vec<Duration> = [0.2, 0.5, 0.8, 0.95]
        .iter()
        .map(|f| reuse.mul_f64(*f))
        .collect();
    landed += kill_at(
        &delays,
        || {
            run(layerapply().arg("--store").arg(&store).args(&big.layers));
            create_cmd()
        },
        then,
        &format!("create, the stack present (clean: {reuse:?})"),
    );
    assert!(landed >= 4, "only {landed} kills landed during a run");
    assert_view(&store, &kept, &keep, "the kept container after the kills");
}

/// `layerkit prune` of 18 unused layers (6 stacks) SIGKILLed at 6 points; after each, a container
/// of one of the half-pruned stacks must be made and mount.
#[test]
fn kill9_during_prune() {
    if !need_root("layerkit prune killed at timed points + overlay mounts") {
        return;
    }
    let keep = Stack::new("k", 30);
    let unused: Vec<Stack> = ["p", "q", "r", "s", "t", "u"]
        .iter()
        .map(|t| Stack::new(t, 80))
        .collect();
    let others: Vec<&Stack> = unused.iter().collect();
    let tmp = scratch();
    let (store, kept) = store_with(tmp.path(), &keep);
    let fill = || {
        for s in &unused {
            run(layerapply().arg("--store").arg(&store).args(&s.layers));
        }
    };
    fill();
    let clean = timed(&mut lk("prune", &store, &[]));
    let mut k = 0;
    let landed = kill_at(
        &kill_points(clean),
        || {
            fill();
            lk("prune", &store, &[])
        },
        |what| {
            k += 1;
            after_kill(&store, &unused[k % unused.len()], &keep, &others, what);
        },
        &format!("prune of 18 unused layers (clean: {clean:?})"),
    );
    assert!(landed >= 3, "only {landed} kills landed during a prune");
    assert_view(&store, &kept, &keep, "the kept container after the kills");
}

// ---------------------------------------------------------------------------------------------
// 3. kill -9 right before each change (strace -e inject)

/// The calls that change a store. (A file written under a temporary name is renamed into place:
/// a kill before the rename covers a kill anywhere in the writing.)
const CHANGES: &[&str] = &["mkdirat", "renameat", "renameat2", "symlinkat", "unlinkat"];

/// Where to kill `cmd`: `(call, n)` for "right before its n-th `call`" (strace counts per
/// thread), from a clean run traced with `-y` (paths of fds). Every call that succeeded and
/// touches anything outside the staging dirs, and of the calls within them (a run's own dir,
/// a doomed dir being deleted) the first, middle and last of each kind.
fn kill_sites(cmd: &Command, log: &Path) -> Vec<(String, usize)> {
    run(&mut strace(
        cmd,
        &["-y", "-e", &format!("trace={}", CHANGES.join(","))],
        Some(log),
    ));
    let text = std::fs::read_to_string(log).unwrap();
    let mut per_thread: BTreeMap<(String, String), usize> = BTreeMap::new();
    let mut outside: BTreeSet<(String, usize)> = BTreeSet::new();
    let mut inside: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for line in text.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let Some((name, args)) = rest.split_once('(') else {
            continue;
        };
        if !CHANGES.contains(&name) {
            continue; // "<... resumed>" and exits
        }
        let n = per_thread
            .entry((pid.to_string(), name.to_string()))
            .or_default();
        *n += 1;
        if !line.ends_with(" = 0") && !line.contains("<unfinished") {
            continue; // failed (EEXIST, ENOENT): changed nothing
        }
        // The fd paths (`5</store>`) and the path args.
        let staged = args
            .split('<')
            .skip(1)
            .filter_map(|x| x.split_once('>').map(|(p, _)| p))
            .all(|p| p.contains("/.layerkit/staging/"));
        if staged {
            inside.entry(name.to_string()).or_default().insert(*n);
        } else {
            outside.insert((name.to_string(), *n));
        }
    }
    for (name, ns) in inside {
        let v: Vec<usize> = ns.into_iter().collect();
        for i in [0, v.len() / 2, v.len() - 1] {
            outside.insert((name.clone(), v[i]));
        }
    }
    outside.into_iter().collect()
}

/// `cmd`, SIGKILLed by strace right before its `n`-th `call`; whether the kill came.
fn kill_before(cmd: &Command, call: &str, n: usize) -> (bool, Output) {
    let out = strace(
        cmd,
        &[
            "-e",
            &format!("trace={call}"),
            "-e",
            &format!("inject={call}:signal=SIGKILL:when={n}"),
        ],
        None,
    )
    .output()
    .unwrap();
    (out.status.signal() == Some(9), out)
}

/// The message of a caught panic.
fn panic_text(e: &(dyn std::any::Any + Send)) -> String {
    e.downcast_ref::<String>()
        .cloned()
        .or_else(|| e.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default()
}

/// `create` (its stack in the store, and not), `rm` and `prune`, each SIGKILLed right before each
/// change it makes outside its staging dir and a few within (strace counts the calls of a clean
/// run). After each: the store is whole, a container a kill left is whole (it mounts and `rm`
/// takes it for good), and after a killed prune a new container of the half-pruned stack mounts.
/// Every site is tried; the failures are reported together.
#[test]
fn kill9_before_each_change_of_create_rm_and_prune() {
    if !need_root("create/rm/prune killed before each change + overlay mounts")
        || !have_strace("create/rm/prune killed before each change")
    {
        return;
    }
    // a: held by a container throughout, so its layers stay; q: applied, or not, then pruned
    // (tag r: its bottom layer's id sorts first, its top's last).
    let (a, q, keep) = (
        Stack::new("a", 60),
        Stack::new("r", 60),
        Stack::new("k", 20),
    );
    let tmp = scratch();
    let log = tmp.path().join("strace.log");
    let store = tmp.path().join("s");
    // The containers every kill must leave alone: one of keep, one of a.
    let reset = || -> Vec<String> {
        let _ = std::fs::remove_dir_all(&store);
        vec![create(&store, &keep.layers), create(&store, &a.layers)]
    };
    let mut held = reset();
    let mut problems: Vec<String> = Vec::new();
    let (mut landed, mut sites_tried) = (0, 0);
    for scenario in [
        "create, layers present",
        "create, layers absent",
        "rm",
        "prune",
    ] {
        // The command to kill, after its setup; the container `rm` takes.
        let setup = |store: &Path| -> (Command, Option<String>) {
            match scenario {
                "create, layers present" => {
                    let mut c = lk("create", store, &[]);
                    c.args(&a.layers);
                    (c, None)
                }
                "create, layers absent" => {
                    let mut c = lk("create", store, &[]);
                    c.args(&q.layers);
                    (c, None)
                }
                "rm" => {
                    let cid = create(store, &a.layers);
                    (lk("rm", store, &[&cid]), Some(cid))
                }
                _ => {
                    run(layerapply().arg("--store").arg(store).args(&q.layers));
                    (lk("prune", store, &[]), None)
                }
            }
        };
        // The sites, from a clean run; then the store as it was.
        let (cmd, _) = setup(&store);
        let sites = kill_sites(&cmd, &log);
        let held_ids: BTreeSet<String> = held.iter().cloned().collect();
        for cid in ids_in(&ls_json(&store, scenario), "containers") {
            if !held_ids.contains(&cid) {
                rm(&store, &[&cid], scenario);
            }
        }
        prune(&store, scenario);
        for (call, n) in sites {
            sites_tried += 1;
            let what = format!("{scenario}, killed right before its {call} #{n}");
            let (cmd, _) = setup(&store);
            let (hit, out) = kill_before(&cmd, &call, n);
            if !hit && !out.status.success() {
                problems.push(format!("{what}: failed: {}", stderr_of(&out)));
            }
            landed += usize::from(hit);
            let held_ids: BTreeSet<String> = held.iter().cloned().collect();
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let v = check_store(&store, false, &what);
                check_intact(&store, &[&a, &q, &keep], &what);
                let listed = ids_in(&v, "containers");
                assert!(
                    listed.is_superset(&held_ids),
                    "{what}: a held container went"
                );
                // What a kill left is a whole container (it mounts and shows its stack; rm
                // takes it) or nothing.
                for cid in listed.difference(&held_ids) {
                    let stack = if scenario == "create, layers absent" {
                        &q
                    } else {
                        &a
                    };
                    assert_view(&store, cid, stack, &format!("{what}: the container left"));
                    rm(&store, &[cid], &what);
                    let v = ls_json(&store, &what);
                    assert!(
                        !ids_in(&v, "containers").contains(cid),
                        "{what}: container {cid} still listed after `rm {cid}` succeeded \
                         (rm again: {:?}); records: {:?}",
                        lk("rm", &store, &[cid]).output().unwrap(),
                        listing(&store.join(".layerkit/containers"))
                    );
                    check_store(&store, false, &format!("{what}, then rm {cid}"));
                }
                if scenario == "prune" {
                    // What the killed prune left of q serves a new container of q.
                    create_mount_check(&store, &q, &what);
                }
                prune(&store, &what);
                assert_eq!(staging(&store), Vec::<String>::new(), "{what}: staging");
                let v = check_store(&store, true, &format!("{what}, then prune"));
                let want: BTreeSet<String> = keep.id_set().union(&a.id_set()).cloned().collect();
                assert_eq!(ids_in(&v, "layers"), want, "{what}: layers after prune");
            }));
            if let Err(e) = r {
                problems.push(panic_text(&*e));
                held = reset(); // the next site starts from a whole store
            }
        }
    }
    eprintln!("{landed} of {sites_tried} kill sites landed");
    assert!(landed >= 30, "only {landed} of {sites_tried} kills landed");
    check_store(&store, true, "after every kill");
    for (cid, stack) in held.iter().zip([&keep, &a]) {
        assert_view(&store, cid, stack, "a held container after every kill");
    }
    create_mount_check(&store, &q, "after every kill");
    assert!(
        problems.is_empty(),
        "{} of {sites_tried} kill sites broke the store:\n{}",
        problems.len(),
        problems.join("\n---\n")
    );
}

// ---------------------------------------------------------------------------------------------
// 4. A mounted container, prune, rm, rmi

/// `make_image.py OUT SPEC`: the stack as an OCI layout, tag `t`, layers uncompressed (so the
/// image's layers are the layer files' layers, same ids).
fn image_of(stack: &Stack, out: &Path) -> String {
    let layers: Vec<String> = stack
        .layers
        .iter()
        .map(|l| format!(r#"{{"file": "{}", "compress": "none"}}"#, l.display()))
        .collect();
    run(Command::new(python())
        .arg(support("make_image.py"))
        .arg(out)
        .arg(format!(
            r#"{{"layers": [{}], "refs": ["t"]}}"#,
            layers.join(", ")
        )));
    format!("oci:{}:t", out.display())
}

/// A mounted container of an image and one of layer files: `prune` takes nothing and unmounts
/// nothing; `rm` refuses a mounted container (exit 1, one line); `rm -f` unmounts and removes;
/// then `prune` frees the layers of layer files at once, the image's only after `rmi`.
#[test]
fn mounted_container_survives_prune_and_rm_needs_force() {
    if !need_root("a mounted container under prune and rm") {
        return;
    }
    let (a, c) = (Stack::new("a", 100), Stack::new("c", 60));
    let tmp = scratch();
    let store = tmp.path().join("s");
    let image = image_of(&a, &tmp.path().join("img"));
    let x = stdout_of(&run(&mut lk("create", &store, &["--name", "x", &image])));
    let y = create(&store, &c.layers);
    let mx = PathBuf::from(stdout_of(&run(&mut lk("mount", &store, &["x"]))));
    let _gx = Unmount(mx.clone());
    let my = PathBuf::from(stdout_of(&run(&mut lk("mount", &store, &[&y]))));
    let _gy = Unmount(my.clone());
    std::fs::write(mx.join("written"), "through the mount").unwrap();
    assert!(mounted(&mx) && mounted(&my));

    let freed = prune(&store, "prune with both mounted");
    assert!(
        freed.is_empty(),
        "prune freed {freed:?} while both are in use"
    );
    let v = check_store(&store, true, "after prune");
    let all: BTreeSet<String> = a.ids.iter().chain(&c.ids).cloned().collect();
    assert_eq!(ids_in(&v, "layers"), all);
    assert_eq!(
        ids_in(&v, "containers"),
        BTreeSet::from([x.clone(), y.clone()])
    );
    assert!(mounted(&mx) && mounted(&my), "prune unmounted a container");
    assert!(
        v["containers"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["mounted"] == true),
        "ls: {v}"
    );
    assert_eq!(
        std::fs::read_to_string(mx.join("written")).unwrap(),
        "through the mount"
    );
    let (rest, _) = split_view(&my);
    assert_same(&c.expected, &rest, "y's view after prune");
    check_intact(&store, &[&a, &c], "after prune");

    // rm without -f refuses a mounted container and changes nothing.
    let out = lk("rm", &store, &["x"]).output().unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "rm of a mounted container: {out:?}"
    );
    let err = stderr_of(&out);
    assert_eq!(err.lines().count(), 1, "one line: {err:?}");
    assert!(err.contains("mounted"), "{err:?}");
    assert!(mounted(&mx));
    let v = check_store(&store, true, "after the refused rm");
    assert_eq!(ids_in(&v, "containers").len(), 2);

    // rm -f unmounts and removes; the image record still holds a's layers.
    rm(&store, &["-f", "x"], "rm -f x");
    assert!(!mounted(&mx), "rm -f left {} mounted", mx.display());
    assert!(!store.join(&x).exists() && !store.join(format!("{x}-init")).exists());
    let freed = prune(&store, "prune after rm -f x");
    assert!(
        freed.is_empty(),
        "prune freed {freed:?}: the image record uses a's layers"
    );
    let v = check_store(&store, true, "after rm -f x");
    assert_eq!(ids_in(&v, "containers"), BTreeSet::from([y.clone()]));
    assert_eq!(ids_in(&v, "layers"), all);

    // y came from layer files: no record keeps its layers once it is gone.
    rm(&store, &["-f", &y], "rm -f y");
    assert!(!mounted(&my));
    let freed = prune(&store, "prune after rm -f y");
    let c_ids: BTreeSet<String> = c.ids.iter().cloned().collect();
    assert_eq!(freed, c_ids, "prune frees exactly c's layers");
    let v = check_store(&store, true, "after rm -f y");
    let a_ids: BTreeSet<String> = a.ids.iter().cloned().collect();
    assert_eq!(ids_in(&v, "layers"), a_ids);
    check_intact(&store, &[&a], "after rm -f y");

    // Forgetting the image frees its layers.
    run(&mut lk("rmi", &store, &[&image]));
    let freed = prune(&store, "prune after rmi");
    assert_eq!(
        freed, a_ids,
        "prune frees the image's layers once forgotten"
    );
    let v = check_store(&store, true, "after rmi");
    assert!(ids_in(&v, "layers").is_empty() && ids_in(&v, "containers").is_empty());
    assert!(
        listing(&store.join("l")).is_empty(),
        "l/ after everything went"
    );
    assert!(staging(&store).is_empty());
}

// ---------------------------------------------------------------------------------------------
// 5. Races made wide: a prune while a create holds layers it has not recorded yet

/// `create` of `stack`, every `flock` it makes from the `from`-th on delayed by 150 ms (strace),
/// while `prune` runs every 20 ms from `start` on until the create ends. The create must
/// succeed: the layers it applied or reused are its own (pinned) from the moment it has them.
fn create_beside_prunes(store: &Path, stack: &Stack, from: usize, start: Duration) -> Output {
    let mut cmd = lk("create", store, &[]);
    cmd.args(&stack.layers);
    let mut child = spawn(&mut strace(
        &cmd,
        &[
            "-e",
            "trace=flock",
            "-e",
            &format!("inject=flock:delay_enter=150000:when={from}+"),
        ],
        None,
    ));
    std::thread::sleep(start);
    let mut n = 0;
    while child.try_wait().unwrap().is_none() {
        prune(store, "a prune beside the create");
        n += 1;
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    assert!(n > 0, "no prune ran beside the create");
    out
}

/// A create whose every lock is delayed 150 ms (strace), beside a prune every 20 ms: the create
/// must succeed, whether it unpacks the stack or finds it in the store unused.
#[test]
fn prune_never_takes_the_layers_of_a_running_create() {
    if !need_root("create beside prunes + overlay mounts")
        || !have_strace("create beside prunes (strace delays)")
    {
        return;
    }
    let (a, keep) = (Stack::new("a", 100), Stack::new("k", 20));
    let tmp = scratch();
    let (store, _) = store_with(tmp.path(), &keep);
    let mut problems = Vec::new();
    // The stack absent: the create unpacks and commits each layer, then pins it.
    let out = create_beside_prunes(&store, &a, 1, Duration::ZERO);
    if !out.status.success() {
        problems.push(format!("layers absent: create failed: {}", stderr_of(&out)));
    } else {
        create_check_after(&store, &a, &stdout_of(&out), "layers absent");
    }
    // The stack present but unused: the create finds it, then pins it; the prunes start once
    // it has looked (its first lock and unlock are not delayed).
    run(layerapply().arg("--store").arg(&store).args(&a.layers));
    let out = create_beside_prunes(&store, &a, 3, Duration::from_millis(100));
    if !out.status.success() {
        problems.push(format!(
            "layers present: create failed: {}",
            stderr_of(&out)
        ));
    } else {
        create_check_after(&store, &a, &stdout_of(&out), "layers present");
    }
    check_store(&store, true, "the end");
    assert!(problems.is_empty(), "{problems:#?}");
}

fn create_check_after(store: &Path, stack: &Stack, cid: &str, what: &str) {
    check_store(store, true, what);
    assert_view(store, cid, stack, what);
    rm(store, &[cid], what);
    prune(store, what);
}

// ---------------------------------------------------------------------------------------------
// 6. mount holds the store lock until its overlay is up

/// `mount` (its mount(2) delayed 600 ms by strace) and, 300 ms in, `rm` of the same container:
/// the rm must wait for the mount, then refuse a mounted container.
fn mount_then_rm(store: &Path, cid: &str, what: &str) -> Vec<String> {
    let mut problems = Vec::new();
    let merged = store.join(cid).join("merged");
    let _guard = Unmount(merged.clone());
    let cmd = lk("mount", store, &[cid]);
    let child = spawn(&mut strace(
        &cmd,
        &["-e", "trace=mount", "-e", "inject=mount:delay_enter=600000"],
        None,
    ));
    std::thread::sleep(Duration::from_millis(300));
    let r = lk("rm", store, &[cid]).output().unwrap();
    let m = child.wait_with_output().unwrap();
    if !m.status.success() {
        problems.push(format!("{what}: mount failed: {}", stderr_of(&m)));
    }
    if r.status.success() {
        problems.push(format!(
            "{what}: rm removed the container while mount was mounting it (mount: {}, {})",
            m.status,
            stderr_of(&m).trim()
        ));
    } else if !stderr_of(&r).contains("mounted") {
        problems.push(format!("{what}: rm: {}", stderr_of(&r)));
    }
    problems
}

/// `rm` while `mount` is mounting (its mount(2) delayed 600 ms): the rm must wait and refuse, also
/// when the mount re-makes a lost `l/` link first.
#[test]
fn mount_holds_the_store_lock_while_it_relinks() {
    if !need_root("mount beside rm") || !have_strace("mount beside rm (strace delays)") {
        return;
    }
    let c = Stack::new("c", 50);
    let tmp = scratch();
    let store = tmp.path().join("s");
    let x = create(&store, &c.layers);
    let mut problems = mount_then_rm(&store, &x, "all links there");
    rm(&store, &["-f", &x], "cleanup");
    // A layer whose l/ link was lost (mount re-makes it).
    let y = create(&store, &c.layers);
    let link = link_of(&store.join(&c.ids[1]), "setup");
    std::fs::remove_file(store.join("l").join(&link)).unwrap();
    problems.extend(mount_then_rm(&store, &y, "one layer's l/ link lost"));
    let v = check_store(&store, true, "the end");
    for cid in ids_in(&v, "containers") {
        rm(&store, &["-f", &cid], "cleanup");
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
