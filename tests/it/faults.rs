//! Faults: `layerapply --store` SIGKILLed at many points of its run (one store, so later runs meet
//! the debris of earlier ones), concurrent appliers on one store, ENOSPC on a small filesystem for
//! every writer, SIGINT/SIGTERM to every writer, and the temp files of killed writers. Whatever
//! happens, a store holds only complete layers under real ids (and no staging once a run has
//! finished), an output dir holds the complete result or nothing (an earlier file untouched), and
//! a re-run gives what a clean run gives. Timings only pick the kill points; nothing asserts on
//! them.

use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{kill_process, Pid, Signal};

use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Inputs

/// `stack OUT NDIRS NTEXT`: L0.tar, l1.tar, l2.tar with Python's tarfile. L0: NDIRS dirs of 100
/// small files, files of 2, 3 and 5 MB of random bytes, NTEXT files of 2 MB of compressible text,
/// a file and a dir L1 deletes, a dir L1 makes opaque, a symlink and a hardlink. L1: whiteouts of
/// a file, a dir and a file in a dir, `opq` opaque with a new file, a changed file, NDIRS*100/6
/// new files and 2 MB. L2: whiteouts of a file of L0, one of L1 and of the symlink, NDIRS*100/3
/// new files and 3 MB.
/// `upper OUT N`: an upper dir of N files of 2 MB of compressible text.
const GEN: &str = r#"
import io, os, random, sys, tarfile

rng = random.Random(7)
WORDS = ["".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randrange(2, 10)))
         for _ in range(2000)]
BASE = []

def text(i):
    # 2 MB of words from a 2000-word vocabulary (deflate gets ~40%), rotated per file
    if not BASE:
        BASE.append(" ".join(rng.choices(WORDS, k=(2 << 20) // 5)).encode()[: 2 << 20])
    b = BASE[0]
    k = (i * 7919) % (len(b) // 2)
    return b[k:] + b[:k]

def add(tf, name, typ=tarfile.REGTYPE, data=b"", mode=None, link="", mtime=None):
    ti = tarfile.TarInfo(name)
    ti.type = typ
    ti.mode = mode if mode is not None else {tarfile.DIRTYPE: 0o755, tarfile.SYMTYPE: 0o777}.get(typ, 0o644)
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.mtime = mtime if mtime is not None else 1600000000 + rng.randrange(1000000)
    ti.linkname = link
    ti.size = len(data) if typ == tarfile.REGTYPE else 0
    tf.addfile(ti, io.BytesIO(data) if ti.size else None)

def small():
    return rng.randbytes(rng.randrange(64, 600))

def wh(tf, name):
    add(tf, name, data=b"", mode=0, mtime=0)

def layer(out, name, body):
    with tarfile.open(os.path.join(out, name), "w", format=tarfile.PAX_FORMAT) as tf:
        body(tf)

def stack(out, ndirs, ntext):
    def l0(tf):
        for d in range(ndirs):
            add(tf, "d%02d" % d, tarfile.DIRTYPE)
            for f in range(100):
                add(tf, "d%02d/f%03d" % (d, f), data=small())
        add(tf, "big", tarfile.DIRTYPE)
        for n, mb in (("b1", 2), ("b2", 3), ("b3", 5)):
            add(tf, "big/" + n, data=rng.randbytes(mb << 20))
        if ntext:
            add(tf, "txt", tarfile.DIRTYPE)
        for i in range(ntext):
            add(tf, "txt/t%03d" % i, data=text(i))
        add(tf, "gone", data=b"gone")
        add(tf, "gonedir", tarfile.DIRTYPE)
        for f in range(20):
            add(tf, "gonedir/g%02d" % f, data=small())
        add(tf, "opq", tarfile.DIRTYPE)
        for f in ("a", "b", "c"):
            add(tf, "opq/" + f, data=small())
        add(tf, "lnk", tarfile.SYMTYPE, link="d00/f000")
        add(tf, "hl", tarfile.LNKTYPE, link="d00/f001")

    def l1(tf):
        wh(tf, ".wh.gone")
        wh(tf, ".wh.gonedir")
        wh(tf, "d01/.wh.f000")
        add(tf, "opq", tarfile.DIRTYPE, mode=0o750)
        wh(tf, "opq/.wh..wh..opq")
        add(tf, "opq/new", data=small())
        add(tf, "d02/f010", data=b"changed")
        add(tf, "n1", tarfile.DIRTYPE)
        for f in range(ndirs * 100 // 6):
            add(tf, "n1/f%04d" % f, data=small())
        add(tf, "big/b4", data=rng.randbytes(2 << 20))

    def l2(tf):
        wh(tf, "d03/.wh.f005")
        wh(tf, "n1/.wh.f0003")
        wh(tf, ".wh.lnk")
        add(tf, "opq/new2", data=small())
        add(tf, "n2", tarfile.DIRTYPE)
        for f in range(ndirs * 100 // 3):
            add(tf, "n2/f%04d" % f, data=small())
        add(tf, "big/b5", data=rng.randbytes(3 << 20))

    layer(out, "L0.tar", l0)
    layer(out, "l1.tar", l1)
    layer(out, "l2.tar", l2)

def upper(out, n):
    for i in range(n):
        d = os.path.join(out, "d%d" % (i % 4))
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "t%03d" % i), "wb") as f:
            f.write(text(i))

if sys.argv[1] == "stack":
    stack(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]))
else:
    upper(sys.argv[2], int(sys.argv[3]))
"#;

/// A scratch dir with a 3-layer stack: L0.tar (plain), L1.tar.gz, L2.tar.zst.
struct Stack {
    tmp: tempfile::TempDir,
    layers: Vec<PathBuf>,
}

impl Stack {
    /// `ndirs` dirs of 100 small files in L0 (and half as many files again in L1 and L2, 15 MB
    /// in all), and `text` 2 MB files of compressible text in L0.
    fn new(ndirs: usize, text: usize) -> Stack {
        let tmp = scratch();
        run(Command::new(python())
            .arg("-c")
            .arg(GEN)
            .arg("stack")
            .arg(tmp.path())
            .arg(ndirs.to_string())
            .arg(text.to_string()));
        let p = |n: &str| tmp.path().join(n);
        compress(&p("l1.tar"), &["gzip", "-c"], &p("L1.tar.gz"));
        compress(&p("l2.tar"), &["zstd", "-q", "-c"], &p("L2.tar.zst"));
        let layers = vec![p("L0.tar"), p("L1.tar.gz"), p("L2.tar.zst")];
        Stack { tmp, layers }
    }

    fn p(&self, name: &str) -> PathBuf {
        self.tmp.path().join(name)
    }
}

/// An upper dir `dir` of `n` files of 2 MB of compressible text.
fn text_upper(dir: &Path, n: usize) -> PathBuf {
    run(Command::new(python())
        .arg("-c")
        .arg(GEN)
        .arg("upper")
        .arg(dir)
        .arg(n.to_string()));
    dir.to_path_buf()
}

// ---------------------------------------------------------------------------------------------
// What a clean run gives, and the store invariants

/// A layer dir or a merged view as text: the dump and the ns mtimes.
fn fingerprint(dir: &Path) -> String {
    format!("{}\n{}", dump_tree(dir), stat_list(dir, "mtime"))
}

/// The fingerprint of the kernel's read-only merged view of `lowerdir`.
fn merged_view(tmp: &Path, lowerdir: &str) -> String {
    let m = mount_lowers(tmp, lowerdir, "");
    fingerprint(&m.path)
}

/// A clean run of a stack into a fresh store.
struct Reference {
    /// ChainIDs in hex (the store ids), bottom first.
    ids: Vec<String>,
    /// The fingerprint of each layer dir, bottom first.
    layers: Vec<String>,
    /// The fingerprint of the merged view of the whole stack.
    merged: String,
}

impl Reference {
    fn new(tmp: &Path, store: &Path, layers: &[PathBuf]) -> Reference {
        let out = run(layerapply()
            .arg("--json")
            .arg("--store")
            .arg(store)
            .args(layers));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("--json output");
        let ids: Vec<String> = v["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| {
                let c = l["chainID"].as_str().expect("chainID");
                c.strip_prefix("sha256:").expect("sha256:").to_string()
            })
            .collect();
        assert_eq!(ids.len(), layers.len(), "one report per layer");
        assert_complete(store, &ids, "the clean run");
        let layers = ids
            .iter()
            .map(|id| fingerprint(&store.join(id).join("diff")))
            .collect();
        let merged = merged_view(tmp, v["lowerdir"].as_str().expect("lowerdir"));
        Reference {
            ids,
            layers,
            merged,
        }
    }

    /// Each layer `store` holds must equal the clean run's layer of the same id.
    fn check_layers(&self, store: &Path, present: &[bool], what: &str) {
        for (i, id) in self.ids.iter().enumerate() {
            if present[i] {
                assert_same(
                    &self.layers[i],
                    &fingerprint(&store.join(id).join("diff")),
                    &format!("{what}: L{i} ({id}) vs the clean run's"),
                );
            }
        }
    }
}

fn read_text(p: &Path) -> String {
    String::from_utf8(std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{}: not UTF-8: {e}", p.display()))
}

/// Which layers of the stack `ids` (hex chainIDs, bottom first) `store` holds, checked as they
/// must be at any moment, even right after a SIGKILL: at the top only ids of the stack, `l` and
/// `.layerkit`; a layer only above its parent; each id dir exactly `diff/` and a 26-char base32
/// `link` (plus `lower` naming the parents' links and an empty `work/` above the bottom);
/// `l/<link>` a symlink to `../<id>/diff`, or missing (a kill between the rename and the symlink;
/// the next complete run must re-create it); every entry of `l/` a symlink to a present layer
/// whose `link` names it. Returns (present, indexes of present layers without their `l/` link).
fn layers_in(store: &Path, ids: &[String], when: &str) -> (Vec<bool>, Vec<usize>) {
    let top = listing(store);
    let stray: Vec<&String> = top
        .iter()
        .filter(|n| !(ids.contains(n) || *n == "l" || *n == ".layerkit"))
        .collect();
    assert!(
        stray.is_empty(),
        "{when}: stray entries in the store: {stray:?}"
    );
    let present: Vec<bool> = ids.iter().map(|id| top.contains(id)).collect();
    let mut links: Vec<String> = Vec::new();
    let mut lowers: Vec<String> = Vec::new();
    let mut unlinked = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        if !present[i] {
            links.push(String::new());
            lowers.push(String::new());
            continue;
        }
        let d = store.join(id);
        assert!(
            i == 0 || present[i - 1],
            "{when}: L{i} {id} without its parent"
        );
        let mut want = vec!["diff", "link"];
        if i > 0 {
            want.extend(["lower", "work"]);
        }
        assert_eq!(listing(&d), want, "{when}: entries of L{i} {id}");
        assert!(
            std::fs::symlink_metadata(d.join("diff")).is_ok_and(|m| m.is_dir()),
            "{when}: {id}/diff is not a dir"
        );
        let link = read_text(&d.join("link"));
        assert!(is_link_name(&link), "{when}: {id}/link = {link:?}");
        match std::fs::read_link(store.join("l").join(&link)) {
            Ok(t) => assert_eq!(
                t,
                PathBuf::from(format!("../{id}/diff")),
                "{when}: l/{link} of {id}"
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => unlinked.push(i),
            Err(e) => panic!("{when}: l/{link} of {id}: {e}"),
        }
        let lower = if i > 0 {
            let lower = read_text(&d.join("lower"));
            let mut want = format!("l/{}", links[i - 1]);
            if !lowers[i - 1].is_empty() {
                want = format!("{want}:{}", lowers[i - 1]);
            }
            assert_eq!(lower, want, "{when}: {id}/lower");
            assert!(
                std::fs::symlink_metadata(d.join("work")).is_ok_and(|m| m.is_dir()),
                "{when}: {id}/work is not a dir"
            );
            assert!(listing(&d.join("work")).is_empty(), "{when}: {id}/work");
            lower
        } else {
            String::new()
        };
        links.push(link);
        lowers.push(lower);
    }
    for name in listing(&store.join("l")) {
        let p = store.join("l").join(&name);
        let t = std::fs::read_link(&p)
            .unwrap_or_else(|e| panic!("{when}: l/{name} is not a symlink: {e}"));
        let t = t.to_string_lossy().into_owned();
        let id = t
            .strip_prefix("../")
            .and_then(|t| t.strip_suffix("/diff"))
            .filter(|id| is_hex64(id))
            .unwrap_or_else(|| panic!("{when}: l/{name} -> {t}: not ../<id>/diff"));
        assert!(
            std::fs::metadata(&p).is_ok_and(|m| m.is_dir()),
            "{when}: l/{name} -> {t} dangles"
        );
        let i = ids.iter().position(|x| x == id).unwrap();
        assert_eq!(
            links[i], name,
            "{when}: l/{name} -> {t}, but {id}/link differs"
        );
    }
    (present, unlinked)
}

/// Names in the store's staging dir.
fn staging(store: &Path) -> Vec<String> {
    listing(&store.join(".layerkit/staging"))
}

/// The whole stack `ids` committed, every `l/` link there (and no other), staging empty.
fn assert_complete(store: &Path, ids: &[String], when: &str) {
    let (present, unlinked) = layers_in(store, ids, when);
    assert!(
        present.iter().all(|&p| p),
        "{when}: layers missing: {present:?}"
    );
    assert!(unlinked.is_empty(), "{when}: no l/ link for L{unlinked:?}");
    assert_eq!(listing(&store.join("l")).len(), ids.len(), "{when}: l/");
    assert!(
        staging(store).is_empty(),
        "{when}: leftovers in staging: {:?}",
        staging(store)
    );
}

/// The lowerdir value a store run of the stack `ids` prints.
fn lowerdir_of(store: &Path, ids: &[String]) -> String {
    let s = store.canonicalize().expect("store exists");
    ids.iter()
        .rev()
        .map(|id| s.join(id).join("diff").display().to_string())
        .collect::<Vec<_>>()
        .join(":")
}

/// Remove the committed layers of `ids` from the store (their `l/` links first), as a garbage
/// collector would, so that the next run has all of them to unpack again.
fn drop_layers(store: &Path, ids: &[String]) {
    for id in ids.iter().rev() {
        let d = store.join(id);
        if let Ok(link) = std::fs::read(d.join("link")) {
            let _ = std::fs::remove_file(
                store
                    .join("l")
                    .join(String::from_utf8_lossy(&link).as_ref()),
            );
        }
        if std::fs::symlink_metadata(&d).is_ok() {
            std::fs::remove_dir_all(&d).unwrap();
        }
    }
}

/// Names in `dir` a writer of `dir/name` stages under: `.NAME.layerkit-tmp*`.
fn tmp_names(dir: &Path, name: &str) -> Vec<String> {
    let prefix = format!(".{name}.layerkit-tmp");
    listing(dir)
        .into_iter()
        .filter(|n| n.starts_with(&prefix))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Processes

/// How a started command ended.
struct Ended {
    status: ExitStatus,
    stderr: String,
    /// It had exited before the signal was due (so none was sent).
    early: bool,
}

impl Ended {
    fn describe(&self) -> String {
        let how = match (self.status.code(), self.status.signal()) {
            (Some(c), _) => format!("exit {c}"),
            (_, Some(s)) => format!("killed by signal {s}"),
            _ => self.status.to_string(),
        };
        format!("{how}, stderr {:?}", self.stderr)
    }
}

/// Whether this process ignores SIGINT or SIGTERM, which its children would inherit.
fn ignores_int_or_term() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigIgn:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .is_some_and(|m| m & ((1 << (2 - 1)) | (1 << (15 - 1))) != 0)
}

/// Start `cmd` (stdout discarded, stderr kept), with SIGINT and SIGTERM at their defaults: when
/// this process ignores them (a `nohup` or a shell's `&`), through Python resetting them first.
fn start(cmd: &mut Command) -> Child {
    let mut wrapped;
    let cmd = if ignores_int_or_term() {
        wrapped = Command::new(python());
        wrapped
            .arg("-c")
            .arg(
                "import os, signal, sys\n\
                 for s in (signal.SIGINT, signal.SIGTERM): signal.signal(s, signal.SIG_DFL)\n\
                 os.execv(sys.argv[1], sys.argv[1:])",
            )
            .arg(cmd.get_program())
            .args(cmd.get_args());
        &mut wrapped
    } else {
        cmd
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"))
}

/// Wait for `child`, at most 30 s (then SIGKILL it and panic: it hung).
fn finish(mut child: Child, what: &str) -> (ExitStatus, String) {
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running 30 s after it was started or signalled");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut err = String::new();
    let _ = child.stderr.take().unwrap().read_to_string(&mut err);
    (status, err)
}

/// Start `cmd`, send `sig` after `delay` unless it has exited by then, and wait for it.
fn signal_after(cmd: &mut Command, delay: Duration, sig: Signal) -> Ended {
    let what = format!("{cmd:?}");
    let mut child = start(cmd);
    std::thread::sleep(delay);
    let early = child.try_wait().unwrap().is_some();
    if !early {
        kill_process(Pid::from_child(&child), sig).expect("kill");
    }
    let (status, stderr) = finish(child, &what);
    Ended {
        status,
        stderr,
        early,
    }
}

/// Run `cmd` to completion; it must succeed. Returns its stdout line and how long it took.
fn timed(cmd: &mut Command) -> (String, Duration) {
    let t = Instant::now();
    let out = run(cmd);
    let took = t.elapsed();
    let s = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    (s.trim_end_matches('\n').to_string(), took)
}

// ---------------------------------------------------------------------------------------------
// 1. SIGKILL at many points of a store run, one store throughout

#[test]
fn kill9_store_at_random_points() {
    if !need_root("layerapply --store killed at random points + overlay mount") {
        return;
    }
    let st = Stack::new(10, 0);
    let clean = Reference::new(st.tmp.path(), &st.p("clean"), &st.layers);
    let s = st.p("store");
    // One layer at a time, so the commits spread over the run (L0's while L1 unpacks, ...)
    // instead of bunching at its end.
    let cmd = || {
        let mut c = layerapply();
        c.args(["-j", "1", "--store"]).arg(&s).args(&st.layers);
        c
    };
    // A run to completion over whatever the store holds; returns its duration.
    let complete = |what: &str| -> Duration {
        let (line, took) = timed(&mut cmd());
        assert_eq!(line, lowerdir_of(&s, &clean.ids), "{what}: stdout");
        assert_complete(&s, &clean.ids, what);
        clean.check_layers(&s, &[true; 3], what);
        took
    };
    // 30 kills that land (runs that finish first, having little left to do, do not count), in
    // 3 rounds; the kill points are fractions of the round's full run, (k*7 mod 30 + 0.5)/30 for
    // the k-th run: all different, early and late mixed (7 is coprime with 30).
    const KILLS: usize = 30;
    const ROUNDS: usize = 3;
    let mut k = 0;
    let mut landed = 0;
    for round in 0..ROUNDS {
        // A layer whose l/ link a kill lost gets it back from the next complete run.
        if !layers_in(&s, &clean.ids, "round start").1.is_empty() {
            complete(&format!("round {round}: the run after a lost l/ link"));
        }
        // Each round re-measures a full run into this store from no layers (over the debris of
        // the last kill; runs get slower as debris and deleted inodes pile up), then drops the
        // layers again so that the kills have all of them to unpack.
        drop_layers(&s, &clean.ids);
        let took = complete(&format!("round {round}: the run to completion"));
        eprintln!("round {round}: a run to completion took {took:?}");
        drop_layers(&s, &clean.ids);
        // Layers compared with the clean run's since they were committed.
        let mut checked = [false; 3];
        let (goal, limit) = ((round + 1) * KILLS / ROUNDS, k + 2 * KILLS / ROUNDS);
        while landed < goal && k < limit {
            let frac = ((k * 7) % KILLS) as f64 / KILLS as f64 + 0.5 / KILLS as f64;
            let delay = took.mul_f64(frac);
            let what = format!("kill {k} at {:.1}% ({delay:?}) of {took:?}", frac * 100.0);
            k += 1;
            let ended = signal_after(&mut cmd(), delay, Signal::KILL);
            assert!(
                ended.status.success() || ended.status.signal() == Some(9),
                "{what}: the run failed on its own: {}",
                ended.describe()
            );
            landed += usize::from(!ended.early);
            let (present, unlinked) = layers_in(&s, &clean.ids, &what);
            eprintln!(
                "{what}: {}; committed {present:?}, without l/ link {unlinked:?}, staging {:?}",
                if ended.early {
                    "had finished"
                } else {
                    "killed"
                },
                staging(&s)
            );
            for i in 0..3 {
                if present[i] && !checked[i] {
                    clean.check_layers(
                        &s,
                        &[i == 0, i == 1, i == 2],
                        &format!("{what}: committed"),
                    );
                    checked[i] = true;
                }
            }
            if present.iter().all(|&p| p) {
                if !unlinked.is_empty() {
                    complete(&format!("{what}: the run after a lost l/ link"));
                }
                drop_layers(&s, &clean.ids);
                checked = [false; 3];
            }
        }
    }
    assert!(
        landed >= KILLS,
        "only {landed} of {k} runs were still running at their kill point"
    );
    complete("the final run");
    assert_same(
        &clean.merged,
        &merged_view(st.tmp.path(), &lowerdir_of(&s, &clean.ids)),
        "merged view after the kills vs a clean store's",
    );
}

// ---------------------------------------------------------------------------------------------
// 2. Concurrent appliers

#[test]
fn concurrent_appliers_commit_each_layer_once() {
    if !need_root("concurrent layerapply --store + overlay mount") {
        return;
    }
    let st = Stack::new(5, 0);
    let clean = Reference::new(st.tmp.path(), &st.p("clean"), &st.layers);
    let stacks = [3, 2, 3, 1];
    for round in 0..3 {
        let s = st.p(&format!("store{round}"));
        let runs: Vec<(usize, Child)> = (0..stacks.len())
            .map(|i| {
                let n = stacks[(i + round) % stacks.len()];
                let child = layerapply()
                    .arg("--store")
                    .arg(&s)
                    .args(&st.layers[..n])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap();
                (n, child)
            })
            .collect();
        for (n, child) in runs {
            let o = child.wait_with_output().unwrap();
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                o.status.success(),
                "round {round}: a run of {n} layer(s) failed ({}): {err}",
                o.status
            );
            assert_eq!(
                String::from_utf8_lossy(&o.stdout).trim_end_matches('\n'),
                lowerdir_of(&s, &clean.ids[..n]),
                "round {round}: stdout of a run of {n} layer(s)"
            );
        }
        let what = format!("round {round}");
        assert_complete(&s, &clean.ids, &what);
        clean.check_layers(&s, &[true; 3], &what);
        assert_same(
            &clean.merged,
            &merged_view(st.tmp.path(), &lowerdir_of(&s, &clean.ids)),
            &format!("{what}: merged view vs a single clean run's"),
        );
    }
}

// ---------------------------------------------------------------------------------------------
// 3. ENOSPC

/// A 4 MiB tmpfs at `dir`, unmounted when the guard drops (on a panic too).
fn small_fs(dir: &Path) -> Mount {
    std::fs::create_dir(dir).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs"])
        .arg(dir));
    Mount::guard(dir)
}

/// `cmd` must fail with exit code 1 and one stderr line that says "No space left on device" and
/// names one of `names`. Returns that line.
fn fails_with_enospc(cmd: &mut Command, names: &[String], what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{what}: must fail with exit code 1 ({}); stderr: {err:?}",
        out.status
    );
    assert_eq!(
        err.lines().count(),
        1,
        "{what}: one line on stderr: {err:?}"
    );
    assert!(
        err.contains("No space left on device"),
        "{what}: should say ENOSPC: {err:?}"
    );
    assert!(
        names.iter().any(|n| err.contains(n.as_str())),
        "{what}: {err:?} should name one of {names:?}"
    );
    err
}

#[test]
fn enospc_store_into_and_output() {
    if !need_root("tmpfs mount") {
        return;
    }
    let tmp = scratch();
    let t = tmp.path();
    // E0 (~1.4 MB on tmpfs) and E1 (~0.7 MB, a whiteout, an opaque dir) fit in 4 MiB, E2 (3 MB)
    // does not fit beside them.
    let mut spec = String::from("=== E0\nd a\n");
    for i in 0..100 {
        spec += &format!("f a/f{i:03} size=1000\n");
    }
    spec += "f a/big size=1048576\nd o\nf o/x data=x\nf o/y data=y\n";
    spec += "=== E1\nw a/.wh.f000\nd o mode=0750\nw o/.wh..wh..opq\nf o/new data=new\nd b\n";
    for i in 0..50 {
        spec += &format!("f b/f{i:03} size=1000\n");
    }
    spec += "f b/half size=524288\n=== E2\nd c\nf c/huge size=3145728\n";
    run_with_stdin(
        Command::new(python()).arg(support("gen_layers.py")).arg(t),
        spec.as_bytes(),
    );
    compress(&t.join("E1.tar"), &["gzip", "-c"], &t.join("E1.tar.gz"));
    compress(
        &t.join("E2.tar"),
        &["zstd", "-q", "-c"],
        &t.join("E2.tar.zst"),
    );
    let layers = vec![t.join("E0.tar"), t.join("E1.tar.gz"), t.join("E2.tar.zst")];
    let names: Vec<String> = layers.iter().map(|l| l.display().to_string()).collect();
    let clean = Reference::new(t, &t.join("clean"), &layers);
    let upper = t.join("upper");
    std::fs::create_dir(&upper).unwrap();
    std::fs::write(upper.join("big"), vec![0x5a; 5 << 20]).unwrap();

    let x = t.join("small");
    let _fs = small_fs(&x);
    let s = x.join("store");
    let store = |n: usize| {
        let mut c = layerapply();
        c.arg("--store").arg(&s).args(&layers[..n]);
        c
    };

    // (a) a fresh store: the three layers do not fit at once. Whatever failed, only complete
    // layers under real ids, no staging.
    let what = "--store, fresh, E0 E1 E2";
    let err = fails_with_enospc(&mut store(3), &names, what);
    eprintln!("{what}: {err}");
    let (present, unlinked) = layers_in(&s, &clean.ids, what);
    assert!(!present[2], "{what}: E2 cannot be there");
    assert!(unlinked.is_empty(), "{what}: no l/ link for L{unlinked:?}");
    clean.check_layers(&s, &present, what);
    assert!(staging(&s).is_empty(), "{what}: staging: {:?}", staging(&s));

    // E0 and E1 fit.
    run(&mut store(2));
    let (present, unlinked) = layers_in(&s, &clean.ids, "E0 E1");
    assert_eq!(present, [true, true, false], "E0 E1 committed");
    assert!(unlinked.is_empty() && staging(&s).is_empty());
    let meta = |id: &str| {
        let d = s.join(id);
        let lower = std::fs::read(d.join("lower")).unwrap_or_default();
        (std::fs::read(d.join("link")).unwrap(), lower)
    };
    let before: Vec<_> = clean.ids[..2].iter().map(|id| meta(id)).collect();

    // (a) E0 and E1 are reused, E2 alone does not fit: the error names E2, the committed layers
    // stay as they were.
    let what = "--store, E0 E1 committed, E2 too big";
    let err = fails_with_enospc(&mut store(3), &names[2..], what);
    eprintln!("{what}: {err}");
    let (present, unlinked) = layers_in(&s, &clean.ids, what);
    assert_eq!(present, [true, true, false], "{what}: layers");
    assert!(unlinked.is_empty(), "{what}: no l/ link for L{unlinked:?}");
    clean.check_layers(&s, &present, what);
    let after: Vec<_> = clean.ids[..2].iter().map(|id| meta(id)).collect();
    assert_eq!(before, after, "{what}: link and lower files of E0, E1");
    assert!(staging(&s).is_empty(), "{what}: staging: {:?}", staging(&s));

    // (b) --into a dir on the full filesystem.
    let what = "--into X/dir E2";
    let dir = x.join("dir");
    let err = fails_with_enospc(
        layerapply().arg("--into").arg(&dir).arg(&layers[2]),
        &[names[2].clone(), dir.display().to_string()],
        what,
    );
    eprintln!("{what}: {err}");
    assert!(
        std::fs::symlink_metadata(&dir).is_err(),
        "{what}: X/dir left behind"
    );
    assert_eq!(tmp_names(&x, "dir"), Vec::<String>::new(), "{what}: debris");

    // (c) an output file that does not fit, first where there was none, then over an earlier
    // file, which must stay byte for byte.
    let out = x.join("out.tar");
    let writers = || -> Vec<(&str, Command)> {
        let mut diff = layerdiff();
        diff.arg(&upper).arg("-o").arg(&out);
        let mut squash = Command::new(env!("CARGO_BIN_EXE_layerkit"));
        squash
            .args(["squash", "-o"])
            .arg(&out)
            .arg(&layers[0])
            .arg(&layers[2]);
        vec![
            ("layerdiff -o X/out.tar", diff),
            ("layerkit squash -o X/out.tar", squash),
        ]
    };
    let earlier: Vec<u8> = b"an earlier layer file\n".repeat(100);
    for existing in [false, true] {
        if existing {
            std::fs::write(&out, &earlier).unwrap();
        }
        for (name, mut cmd) in writers() {
            let what = format!("{name} (earlier file: {existing})");
            let err = fails_with_enospc(&mut cmd, &[out.display().to_string()], &what);
            eprintln!("{what}: {err}");
            if existing {
                assert!(
                    std::fs::read(&out).is_ok_and(|b| b == earlier),
                    "{what}: the earlier X/out.tar changed"
                );
            } else {
                assert!(
                    std::fs::symlink_metadata(&out).is_err(),
                    "{what}: X/out.tar left behind"
                );
            }
            assert_eq!(
                tmp_names(&x, "out.tar"),
                Vec::<String>::new(),
                "{what}: debris"
            );
        }
    }
    // The store survived all that.
    let (present, unlinked) = layers_in(&s, &clean.ids, "at the end");
    assert_eq!(present, [true, true, false]);
    assert!(unlinked.is_empty() && staging(&s).is_empty());
}

// ---------------------------------------------------------------------------------------------
// 4. SIGINT and SIGTERM

/// Attempt 0 of `cmd` runs to completion (its duration picks the signal point); then for SIGINT
/// and SIGTERM a fresh attempt is signalled at 40% of that (at half the delay again if it
/// finished first). It must end (by the signal or a non-zero exit) and `left(attempt)` must be
/// empty afterwards. Both signals are tried before the test fails.
fn signals_leave_nothing(
    what: &str,
    cmd: &dyn Fn(usize) -> Command,
    left: &dyn Fn(usize) -> Vec<String>,
) {
    let (_, took) = timed(&mut cmd(0));
    let mut attempt = 1;
    let mut failures = Vec::new();
    for (sig, name) in [(Signal::INT, "SIGINT"), (Signal::TERM, "SIGTERM")] {
        let mut delay = took.mul_f64(0.4);
        let ended = loop {
            let ended = signal_after(&mut cmd(attempt), delay, sig);
            attempt += 1;
            if !ended.status.success() {
                break ended;
            }
            assert!(
                delay > Duration::from_millis(5),
                "{what}: exits 0 however early {name} comes (last at {delay:?})"
            );
            delay /= 2;
        };
        let a = attempt - 1;
        assert!(
            !ended.early,
            "{what}: failed before {name} was sent: {}",
            ended.describe()
        );
        let left = left(a);
        if !left.is_empty() {
            failures.push(format!(
                "{name} after {delay:?} (a clean run takes {took:?}): {}; left behind: {left:?}",
                ended.describe()
            ));
        }
    }
    assert!(failures.is_empty(), "{what}:\n{}", failures.join("\n"));
}

/// A fresh empty dir `name` in `tmp`.
fn fresh_dir(tmp: &Path, name: &str) -> PathBuf {
    let d = tmp.join(name);
    std::fs::create_dir(&d).unwrap();
    d
}

#[test]
fn sigint_sigterm_layerdiff_output_leaves_nothing() {
    if !need_root("layerdiff of a large upper") {
        return;
    }
    let tmp = scratch();
    let t = tmp.path();
    let upper = text_upper(&t.join("upper"), 50);
    signals_leave_nothing(
        "layerdiff -j 1 UPPER -o D/out.tar.gz",
        &|a| {
            let d = fresh_dir(t, &format!("d{a}"));
            let mut c = layerdiff();
            c.args(["-j", "1"])
                .arg(&upper)
                .arg("-o")
                .arg(d.join("out.tar.gz"));
            c
        },
        &|a| listing(&t.join(format!("d{a}"))),
    );
}

#[test]
fn sigint_sigterm_squash_output_leaves_nothing() {
    if !need_root("layerkit squash of a large stack") {
        return;
    }
    let st = Stack::new(30, 30);
    let t = st.tmp.path();
    signals_leave_nothing(
        "layerkit squash -j 1 -o D/out.tar.gz L0 L1 L2",
        &|a| {
            let d = fresh_dir(t, &format!("d{a}"));
            let mut c = Command::new(env!("CARGO_BIN_EXE_layerkit"));
            c.args(["squash", "-j", "1", "-o"])
                .arg(d.join("out.tar.gz"))
                .args(&st.layers);
            c
        },
        &|a| listing(&t.join(format!("d{a}"))),
    );
}

#[test]
fn sigint_sigterm_apply_into_leaves_nothing() {
    if !need_root("layerapply --into") {
        return;
    }
    let st = Stack::new(10, 0);
    let t = st.tmp.path();
    signals_leave_nothing(
        "layerapply --into D/tree L0",
        &|a| {
            let d = fresh_dir(t, &format!("d{a}"));
            let mut c = layerapply();
            c.arg("--into").arg(d.join("tree")).arg(&st.layers[0]);
            c
        },
        &|a| listing(&t.join(format!("d{a}"))),
    );
}

#[test]
fn sigint_sigterm_apply_store_leaves_nothing() {
    if !need_root("layerapply --store") {
        return;
    }
    let st = Stack::new(10, 0);
    let t = st.tmp.path();
    let ids: Vec<String> = {
        let r = Reference::new(t, &st.p("clean"), &st.layers);
        r.ids
    };
    signals_leave_nothing(
        "layerapply --store S L0 L1 L2",
        &|a| {
            let mut c = layerapply();
            c.arg("--store")
                .arg(t.join(format!("s{a}")))
                .args(&st.layers);
            c
        },
        &|a| {
            let s = t.join(format!("s{a}"));
            // Panics on a half layer under a real id; a missing l/ link is reported.
            let (_, unlinked) = layers_in(&s, &ids, &format!("store s{a} after the signal"));
            let mut left: Vec<String> = staging(&s)
                .into_iter()
                .map(|n| format!(".layerkit/staging/{n}"))
                .collect();
            left.extend(unlinked.iter().map(|i| format!("L{i} without its l/ link")));
            left
        },
    );
}

// ---------------------------------------------------------------------------------------------
// 5. Temp files of killed writers

#[test]
fn stale_temp_files_are_reaped_by_next_run() {
    if !need_root("layerapply --into") {
        return;
    }
    let st = Stack::new(10, 0);
    let t = st.tmp.path();
    let upper = text_upper(&t.join("upper"), 30);
    type Writer<'a> = (&'a str, &'a str, Box<dyn Fn(&Path) -> Command + 'a>);
    let writers: Vec<Writer> = vec![
        (
            "layerdiff -j 1 UPPER -o D/out.tar.gz",
            "out.tar.gz",
            Box::new(|d: &Path| {
                let mut c = layerdiff();
                c.args(["-j", "1"])
                    .arg(&upper)
                    .arg("-o")
                    .arg(d.join("out.tar.gz"));
                c
            }),
        ),
        (
            "layerkit squash -o D/out.tar.gz L0 L1 L2",
            "out.tar.gz",
            Box::new(|d: &Path| {
                let mut c = Command::new(env!("CARGO_BIN_EXE_layerkit"));
                c.args(["squash", "-o"])
                    .arg(d.join("out.tar.gz"))
                    .args(&st.layers);
                c
            }),
        ),
        (
            "layerapply --into D/tree L0",
            "tree",
            Box::new(|d: &Path| {
                let mut c = layerapply();
                c.arg("--into").arg(d.join("tree")).arg(&st.layers[0]);
                c
            }),
        ),
    ];
    let mut failures = Vec::new();
    for (w, (what, target, cmd)) in writers.iter().enumerate() {
        let (_, took) = timed(&mut cmd(&fresh_dir(t, &format!("clean{w}"))));
        let d = fresh_dir(t, &format!("d{w}"));
        let mut delay = took.mul_f64(0.4);
        let mut debris = Vec::new();
        for _ in 0..8 {
            let ended = signal_after(&mut cmd(&d), delay, Signal::KILL);
            assert!(
                ended.status.success() || ended.status.signal() == Some(9),
                "{what}: failed on its own: {}",
                ended.describe()
            );
            debris = tmp_names(&d, target);
            if !debris.is_empty() {
                break;
            }
            let done = d.join(target);
            if std::fs::symlink_metadata(&done).is_ok() {
                // Too late: it had finished.
                if done.is_dir() {
                    std::fs::remove_dir_all(&done).unwrap();
                } else {
                    std::fs::remove_file(&done).unwrap();
                }
                delay /= 2;
            } else {
                // Too early: it had not started writing.
                delay = delay.mul_f64(1.5);
            }
        }
        assert!(
            !debris.is_empty(),
            "{what}: no temp name in D after a SIGKILL at any of the tried points (last {delay:?})"
        );
        let (_, _) = timed(&mut cmd(&d));
        let got = listing(&d);
        if got != [target.to_string()] {
            failures.push(format!(
                "{what}: killed at {delay:?} (a clean run takes {took:?}) left {debris:?}; \
                 after a complete run D holds {got:?}"
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "stale temp files:\n{}",
        failures.join("\n")
    );
}
