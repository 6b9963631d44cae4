//! The bodies of layerkit's fuzz targets, kept out of the `fuzz_target!` files so that `lk-list` and
//! anything else can reuse them without linking libFuzzer.
//!
//! Every target takes the raw bytes of a layer blob exactly as a registry would hand it over, so a
//! real layer (plain, gzip or zstd) is a valid seed for every one of them, and a crasher found by one
//! target can be replayed by the others. A target panics (libFuzzer reports a crash) only when
//! layerkit panics or breaks one of the invariants checked here; a refused input is never a crash.

use std::ffi::OsString;
use std::fs;
use std::io::{self, Cursor, Read, Seek as _};
use std::os::unix::fs::{FileTypeExt as _, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use layerkit::compress::{decoder, Compression};
use layerkit::entry::{Entry, Kind, Sink as _};
use layerkit::tar::{to_entry, Reader, TarEntry, TarWriter, WriteOptions};
use layerkit::{apply_into, ApplyOptions, Input};

/// Largest amount of decompressed data a target reads from one input. Decompression bombs are
/// legal layers (a layer may be gigabytes); past this the target stops reading, it is not a bug.
pub const MAX_OUT: u64 = 64 << 20;

/// Whether the known, reported, not yet fixed bug `id` is listed in `LAYERKIT_FUZZ_KNOWN` (comma
/// separated): its check is skipped so that a long run can look for other bugs. Ids and what they
/// are: testdata/fuzz-regressions/README.md.
pub fn known(id: &str) -> bool {
    static K: OnceLock<Vec<String>> = OnceLock::new();
    K.get_or_init(|| {
        std::env::var("LAYERKIT_FUZZ_KNOWN")
            .unwrap_or_default()
            .split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    })
    .iter()
    .any(|k| k == id)
}

// ------------------------------------------------------------------------------------------------
// tar_reader

/// What one pass of the reader saw: the members, and whether the archive was accepted.
#[derive(Debug, PartialEq, Eq)]
struct Pass {
    members: Vec<TarEntry>,
    ok: bool,
}

fn check_member(e: &TarEntry) {
    assert_eq!(
        e.header_offset % 512,
        0,
        "header offset not block aligned: {e:?}"
    );
    assert_eq!(
        e.data_offset % 512,
        0,
        "data offset not block aligned: {e:?}"
    );
    assert!(e.header_offset < e.data_offset, "data before header: {e:?}");
    assert!(e.mode <= 0o7777, "mode with type bits: {e:?}");
    if matches!(e.typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') {
        assert_eq!(e.size, 0, "header-only type with data: {e:?}");
    }
    assert!(
        e.typeflag != 0 && e.typeflag != b'7',
        "typeflag not normalised: {e:?}"
    );
    assert!(
        e.mtime_nsec < 1_000_000_000,
        "nanoseconds out of range: {e:?}"
    );
}

/// The cleaned path contract of `to_entry` (entry.rs: no leading `/`, no trailing `/`, no empty,
/// `.` or `..` component, no NUL).
fn check_entry(e: &Entry) {
    let p = &e.path;
    assert!(!p.contains(&0), "NUL in a cleaned path: {e:?}");
    if !p.is_empty() {
        for c in p.split(|&b| b == b'/') {
            assert!(
                !c.is_empty() && c != b"." && c != b"..",
                "bad component in a cleaned path: {e:?}"
            );
        }
    }
    match &e.kind {
        Kind::Hardlink { target } => {
            assert!(!target.is_empty() && !target.contains(&0), "{e:?}");
            for c in target.split(|&b| b == b'/') {
                assert!(!c.is_empty() && c != b"." && c != b"..", "{e:?}");
            }
        }
        Kind::Symlink { target } => assert!(!target.is_empty() && !target.contains(&0), "{e:?}"),
        _ => {}
    }
}

/// An entry as a round trip must keep it: whiteouts and opaque markers are written with fixed
/// metadata (tar/write.rs), so only their path and kind count.
fn comparable(e: &Entry) -> Entry {
    let mut e = e.clone();
    if matches!(e.kind, Kind::Whiteout | Kind::Opaque) {
        e.meta = Default::default();
    }
    e
}

/// Read every member of `rd`, reading the data of regular files when `read_data`.
fn pass<R: Read>(mut rd: Reader<R>, read_data: bool, datas: &mut Vec<Vec<u8>>) -> Pass {
    let mut members = Vec::new();
    loop {
        match rd.next_entry() {
            Ok(None) => {
                return Pass { members, ok: true };
            }
            Err(_) => return Pass { members, ok: false },
            Ok(Some(e)) => {
                check_member(&e);
                let before = rd.position();
                assert_eq!(before, e.data_offset, "position is not the data offset");
                if read_data {
                    let mut v = Vec::new();
                    let r = rd.data().take(MAX_OUT).read_to_end(&mut v);
                    let got = v.len() as u64;
                    match r {
                        Ok(_) => assert_eq!(got, e.size.min(MAX_OUT), "short data without error"),
                        Err(_) => assert!(got < e.size, "error after all the data"),
                    }
                    assert_eq!(rd.position(), before + got, "position after data");
                    datas.push(v);
                }
                members.push(e);
            }
        }
    }
}

/// tar_reader: the streaming reader (as `apply` drives it: reading member data) and the seeking
/// reader (as `squash` drives it on a plain file: `seek_relative(n as i64)` over data) must see the
/// same members and agree on acceptance; every member meets the reader's own invariants; every
/// member `to_entry` accepts has a clean path; and an accepted archive whose entries the writer takes
/// reads back as the same entries (writer and reader agree).
pub fn tar_reader(data: &[u8]) {
    let mut datas = Vec::new();
    let a = pass(Reader::new(data, "fuzz"), true, &mut datas);
    let b = pass(
        Reader::with_skip(Cursor::new(data), "fuzz", |r, n| r.seek_relative(n as i64)),
        false,
        &mut Vec::new(),
    );
    assert_eq!(a, b, "streaming and seeking reader disagree");

    let mut entries = Vec::new();
    for (te, d) in a.members.iter().zip(&datas) {
        if let Ok(e) = to_entry(te) {
            check_entry(&e);
            entries.push((e, d));
        } else {
            return;
        }
    }
    if !a.ok
        || datas
            .iter()
            .zip(&a.members)
            .any(|(d, m)| (d.len() as u64) < m.size)
    {
        return;
    }
    // Round trip through the writer, as squash re-encodes members it cannot copy.
    let mut w = TarWriter::new(
        Vec::new(),
        WriteOptions {
            clamp_mtime: None,
            subsecond: true,
        },
    );
    for (e, d) in &entries {
        let mut src: &[u8] = if matches!(e.kind, Kind::File { .. }) {
            d
        } else {
            &[]
        };
        if w.put(e, &mut src).is_err() {
            return;
        }
    }
    let out = w.finish().expect("writing to a Vec");
    let mut rd = Reader::new(&out[..], "roundtrip");
    for (i, (e, d)) in entries.iter().enumerate() {
        let te = match rd.next_entry() {
            Ok(Some(te)) => te,
            other => panic!("member {i} of our own output: {other:?}"),
        };
        let back = to_entry(&te).unwrap_or_else(|err| panic!("our own member {i}: {err}"));
        assert_eq!(
            comparable(&back),
            comparable(e),
            "member {i} changed in a write/read round trip"
        );
        let mut v = Vec::new();
        rd.data().read_to_end(&mut v).expect("our own data");
        if matches!(e.kind, Kind::File { .. }) {
            assert!(v == **d, "member {i}: data changed in a round trip");
        }
    }
    assert!(
        matches!(rd.next_entry(), Ok(None)),
        "our own end of archive"
    );
}

// ------------------------------------------------------------------------------------------------
// decoder

/// Read sizes, as the callers use them: apply fills 1 MiB chunks, squash's spool goes through a
/// 64 KiB BufReader, the tar reader asks for 512-byte blocks; odd sizes shake out boundary bugs.
const SIZES: [usize; 6] = [1 << 20, 512, 1, 7, 65536, 4093];

/// decoder: sniff + decompress to the end (capped at [`MAX_OUT`]) with a mix of read sizes; a plain
/// blob comes back byte for byte; a read after an error or the end never panics.
pub fn decode(data: &[u8]) {
    let (kind, mut d) = match decoder(data) {
        Ok(x) => x,
        Err(_) => return,
    };
    assert_eq!(kind, Compression::sniff(data), "decoder and sniff disagree");
    let mut buf = vec![0u8; 1 << 20];
    let mut total: u64 = 0;
    let mut plain = Vec::new();
    let mut i = data.len();
    let ended = loop {
        let want = SIZES[i % SIZES.len()];
        i = i.wrapping_mul(31).wrapping_add(7);
        match d.read(&mut buf[..want]) {
            Ok(0) => break true,
            Ok(n) => {
                assert!(n <= want);
                if kind == Compression::None {
                    plain.extend_from_slice(&buf[..n]);
                }
                total += n as u64;
                if total >= MAX_OUT {
                    break false;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break false,
        }
    };
    if kind == Compression::None {
        assert!(ended, "a plain blob cannot fail");
        assert!(plain == data, "a plain blob must come back unchanged");
    }
    let _ = d.read(&mut buf[..512]);
}

// ------------------------------------------------------------------------------------------------
// scratch dirs

/// This process's scratch dir (tmpfs when there is one): `<base>/<pid>`.
fn scratch() -> &'static Path {
    static S: OnceLock<PathBuf> = OnceLock::new();
    S.get_or_init(|| {
        let base = std::env::var_os("LAYERKIT_FUZZ_SCRATCH")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                if Path::new("/dev/shm").is_dir() {
                    PathBuf::from("/dev/shm/layerkit-fuzz")
                } else {
                    std::env::temp_dir().join("layerkit-fuzz")
                }
            });
        let d = base.join(std::process::id().to_string());
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).expect("scratch dir");
        d
    })
}

// ------------------------------------------------------------------------------------------------
// squash_index

/// squash_index: the bytes as a layer file, through `squash::squash` (index -> merge -> writer) with
/// one layer and with the layer twice (flattened), into memory; the output must be a tar that our
/// own reader accepts to the end, every member of which `to_entry` accepts.
pub fn squash_index(data: &[u8]) {
    let dir = scratch();
    let layer = dir.join("layer");
    fs::write(&layer, data).expect("write layer");
    let spool = dir.join("spool");
    let _ = fs::create_dir(&spool);
    let input = Input::from_arg(&layer);
    let mut opts = layerkit::SquashOptions {
        spool_dir: Some(spool.clone()),
        ..Default::default()
    };
    opts.blob.jobs = 1;
    opts.blob.skip_digests = true;

    let idx = layerkit::fuzzing::index(&input, &spool);
    let one = layerkit::squash(std::slice::from_ref(&input), Vec::new(), &opts);
    if let (Err(e), Ok(_)) = (&idx, &one) {
        panic!("squash accepted a layer its indexer refuses: {e}");
    }
    drop(idx);
    if let Ok((_, out)) = one {
        check_own_output(&out, "squash of one layer");
        opts.flatten = true;
        let two = layerkit::squash(&[input.clone(), input], Vec::new(), &opts);
        if let Ok((_, out)) = two {
            check_own_output(&out, "flattened squash of the layer over itself");
        }
    }
    assert!(
        fs::read_dir(&spool).expect("spool dir").next().is_none(),
        "squash left files in its spool dir"
    );
}

fn check_own_output(out: &[u8], what: &str) {
    let mut rd = Reader::new(out, "own");
    loop {
        match rd.next_entry() {
            Ok(None) => break,
            Ok(Some(te)) => {
                if let Err(e) = to_entry(&te) {
                    panic!("{what}: output member refused by to_entry: {e} ({te:?})");
                }
            }
            Err(e) => panic!("{what}: our reader refuses our own output: {e}"),
        }
    }
}

// ------------------------------------------------------------------------------------------------
// apply

/// The apply sandbox: `<root>/canary` (a fixed tree that hostile names point at), `<root>/work`
/// (where layers are applied). The root is fixed so that seeds can name the canary by absolute
/// path: `LAYERKIT_FUZZ_SANDBOX`, default `/dev/shm/layerkit-fuzz-sandbox` (tmpfs: apply's fsyncs
/// cost nothing there, 8x the executions of a disk). One apply fuzzer per root.
pub fn sandbox_root() -> PathBuf {
    std::env::var_os("LAYERKIT_FUZZ_SANDBOX")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/dev/shm/layerkit-fuzz-sandbox"))
}

/// One line per object under `dir`: relative path, type, mode, owner, size, mtime, ctime, target,
/// xattrs. Any write, chmod, chown, utimes, link or xattr change shows in the ctime.
fn fingerprint(dir: &Path) -> Vec<String> {
    fn walk(base: &Path, rel: &Path, out: &mut Vec<String>) {
        let p = base.join(rel);
        let Ok(m) = fs::symlink_metadata(&p) else {
            out.push(format!("{} missing", rel.display()));
            return;
        };
        let target = fs::read_link(&p)
            .map(|t| t.display().to_string())
            .unwrap_or_default();
        out.push(format!(
            "{} {:o} {}:{} {} {} {}.{} {}.{} {} {}",
            rel.display(),
            m.mode(),
            m.uid(),
            m.gid(),
            m.size(),
            m.nlink(),
            m.mtime(),
            m.mtime_nsec(),
            m.ctime(),
            m.ctime_nsec(),
            m.ino(),
            target,
        ));
        if m.is_dir() {
            let mut names: Vec<OsString> = fs::read_dir(&p)
                .expect("read canary dir")
                .map(|e| e.expect("entry").file_name())
                .collect();
            names.sort();
            for n in names {
                walk(base, &rel.join(n), out);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, Path::new(""), &mut out);
    out
}

struct Sandbox {
    root: PathBuf,
    work: PathBuf,
    canary: PathBuf,
    canary_print: Vec<String>,
    root_names: Vec<OsString>,
    slash_names: Vec<OsString>,
}

fn names(d: &Path) -> Vec<OsString> {
    let mut v: Vec<OsString> = fs::read_dir(d)
        .expect("read dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    v.sort();
    v
}

fn sandbox() -> &'static Sandbox {
    static S: OnceLock<Sandbox> = OnceLock::new();
    S.get_or_init(|| {
        let root = sandbox_root();
        let canary = root.join("canary");
        let work = root.join("work");
        let _ = fs::remove_dir_all(&root);
        fs::create_dir_all(canary.join("sub")).expect("canary");
        fs::create_dir_all(&work).expect("work");
        fs::write(canary.join("file"), b"canary\n").expect("canary file");
        fs::write(canary.join("sub/x"), b"canary x\n").expect("canary file");
        std::os::unix::fs::symlink("file", canary.join("link")).expect("canary link");
        Sandbox {
            canary_print: fingerprint(&canary),
            root_names: names(&root),
            slash_names: names(Path::new("/")),
            root,
            work,
            canary,
        }
    })
}

/// Descriptors this process has open.
pub fn open_fds() -> usize {
    fd_set().len()
}

fn fd_set() -> std::collections::BTreeSet<i32> {
    let listed: Vec<i32> = fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    // The listing's own descriptor is closed by now (and its number may be reused later).
    listed
        .into_iter()
        .filter(|fd| fs::read_link(format!("/proc/self/fd/{fd}")).is_ok())
        .collect()
}

/// apply: the bytes as a layer file, `apply_into(<work>/layer)`. Accepted or refused, nothing
/// outside `<work>/layer` may change: the canary tree is unchanged (names, modes, owners, times,
/// ctimes, inodes), the sandbox root and `/` list what they listed before; a refused layer leaves
/// `<work>` empty (no layer dir, no staging dir), an accepted one leaves exactly the layer dir; no
/// file descriptor stays open (a leak ends a long-running caller with EMFILE).
pub fn apply(data: &[u8]) {
    let sb = sandbox();
    let layer_file = scratch().join("layer");
    fs::write(&layer_file, data).expect("write layer");
    let dest = sb.work.join("layer");
    let input = Input::from_arg(&layer_file);
    let opts = ApplyOptions {
        jobs: 1,
        skip_digests: data.len().is_multiple_of(2),
        ..Default::default()
    };
    let fds_before = open_fds();
    let r = apply_into(&dest, &input, &opts);
    let fds_after = open_fds();
    if fds_after != fds_before {
        panic!(
            "apply_into ({}) leaked file descriptors: {fds_before} open before, {fds_after} after",
            if r.is_ok() { "accepted" } else { "refused" }
        );
    }
    let left = names(&sb.work);
    match &r {
        Ok(_) => assert_eq!(
            left,
            vec![OsString::from("layer")],
            "an applied layer left more than its dir"
        ),
        Err(e) => assert!(
            left.is_empty(),
            "a refused layer ({e}) left {left:?} behind"
        ),
    }
    assert_eq!(names(&sb.root), sb.root_names, "the sandbox root changed");
    assert_eq!(names(Path::new("/")), sb.slash_names, "/ changed");
    let now = fingerprint(&sb.canary);
    if now != sb.canary_print {
        panic!(
            "the canary changed (apply {}):\nbefore: {:#?}\nafter: {:#?}",
            if r.is_ok() { "accepted" } else { "refused" },
            sb.canary_print,
            now
        );
    }
    if r.is_ok() {
        fs::remove_dir_all(&dest).expect("clean the layer dir");
    }
}

// ------------------------------------------------------------------------------------------------
// squash_apply

/// Everything `apply` leaves in a tree that a container could see, one line per object: path,
/// type, permission bits, owner, mtime (not the root's: an undescribed root keeps the time it was
/// made), size and a content hash, device numbers, symlink target, every xattr (trusted.overlay.*
/// included), and the first name of its hardlink group.
///
/// Whiteouts (char 0/0) are dumped by name only: writers give them fixed metadata. With `flat`,
/// whiteouts and overlay opaque markers are left out (what `squash --flatten` drops by design).
pub fn dump_tree(root: &Path, flat: bool) -> Vec<String> {
    use std::collections::HashMap;
    let mut out = Vec::new();
    let mut inodes: HashMap<(u64, u64), String> = HashMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let p = root.join(&rel);
        let m = fs::symlink_metadata(&p).expect("lstat in a dump");
        let shown = rel.display().to_string();
        let ft = m.file_type();
        if ft.is_char_device() && m.rdev() == 0 {
            if !flat {
                out.push(format!("{shown:?} whiteout"));
            }
            continue;
        }
        let mut line = format!("{shown:?} {:o} {}:{}", m.mode(), m.uid(), m.gid());
        if !rel.as_os_str().is_empty() {
            line += &format!(" t={}.{}", m.mtime(), m.mtime_nsec());
        }
        if ft.is_file() {
            let data = fs::read(&p).expect("read in a dump");
            let h = data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &b| {
                (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
            });
            line += &format!(" size={} h={h:x}", data.len());
        }
        if ft.is_symlink() {
            line += &format!(" -> {:?}", fs::read_link(&p).expect("readlink"));
        }
        if !ft.is_dir() && !ft.is_symlink() && !ft.is_file() {
            line += &format!(" rdev={}", m.rdev());
        }
        if !ft.is_dir() {
            let first = inodes
                .entry((m.dev(), m.ino()))
                .or_insert_with(|| shown.clone());
            if *first != shown {
                line += &format!(" hardlink-of={first:?}");
            }
        }
        let mut xs = xattrs_of(&p);
        if flat {
            xs.retain(|(k, _)| !k.ends_with(".overlay.opaque"));
        }
        line += &format!(" xattrs={xs:?}");
        out.push(line);
        if ft.is_dir() {
            let mut names: Vec<OsString> = fs::read_dir(&p)
                .expect("readdir in a dump")
                .map(|e| e.expect("entry").file_name())
                .collect();
            names.sort();
            for n in names.into_iter().rev() {
                stack.push(rel.join(n));
            }
        }
    }
    if flat {
        // A dir that only held whiteouts, made by the applier with default attributes (0755
        // root:root, mtime 0) as their parent: `--flatten` has no reason to name it.
        loop {
            let before = out.len();
            let keep: Vec<bool> = (0..out.len())
                .map(|i| {
                    let l = &out[i];
                    let implicit = l.contains(" 40755 0:0 t=0.0 xattrs=[]");
                    let name = l.split(' ').next().unwrap_or("").trim_end_matches('"');
                    let child = out
                        .get(i + 1)
                        .is_some_and(|n| n.starts_with(&format!("{name}/")));
                    !(implicit && !child && i > 0)
                })
                .collect();
            let mut it = keep.iter();
            out.retain(|_| *it.next().unwrap_or(&true));
            if out.len() == before {
                break;
            }
        }
    }
    out
}

fn xattrs_of(p: &Path) -> Vec<(String, String)> {
    let mut names = vec![0u8; 1 << 16];
    let n = match rustix::fs::llistxattr(p, &mut names[..]) {
        Ok(n) => n,
        Err(_) => return Vec::new(),
    };
    let mut v: Vec<(String, String)> = names[..n]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
        .map(|name| {
            let c = std::ffi::CString::new(name).expect("xattr name");
            let mut val = vec![0u8; 1 << 16];
            let k = rustix::fs::lgetxattr(p, c.as_c_str(), &mut val[..]).unwrap_or(0);
            (
                String::from_utf8_lossy(name).into_owned(),
                String::from_utf8_lossy(&val[..k]).into_owned(),
            )
        })
        .collect();
    v.sort();
    v
}

/// squash_apply: squash's promise, checked on one layer over an empty base: applying the layer and
/// applying `squash(layer)` (and, flattened, `squash --flatten`) give identical trees. Both applies
/// must succeed when the first does; only then are the trees compared.
pub fn squash_apply(data: &[u8]) {
    let dir = scratch();
    let layer = dir.join("layer");
    fs::write(&layer, data).expect("write layer");
    let work = dir.join("trees");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work).expect("trees dir");
    let opts = ApplyOptions {
        jobs: 1,
        skip_digests: true,
        ..Default::default()
    };
    let a = work.join("a");
    let fds = open_fds();
    let applied = apply_into(&a, &Input::from_arg(&layer), &opts);
    assert_eq!(fds, open_fds(), "apply_into leaked file descriptors");
    if applied.is_err() {
        return;
    }
    for flatten in [false, true] {
        let want = dump_tree(&a, flatten);
        let mut sq = layerkit::SquashOptions {
            spool_dir: Some(dir.to_path_buf()),
            flatten,
            ..Default::default()
        };
        sq.blob.jobs = 1;
        sq.blob.skip_digests = true;
        let out = match layerkit::squash(&[Input::from_arg(&layer)], Vec::new(), &sq) {
            Ok((_, out)) => out,
            Err(e) => panic!("squash (flatten={flatten}) refused a layer apply accepts: {e}"),
        };
        let sq_file = dir.join("squashed");
        fs::write(&sq_file, &out).expect("write squashed");
        let b = work.join(if flatten { "c" } else { "b" });
        let fds = open_fds();
        let applied = apply_into(&b, &Input::from_arg(&sq_file), &opts);
        assert_eq!(fds, open_fds(), "apply_into leaked file descriptors");
        if let Err(e) = applied {
            panic!("apply refuses squash's output (flatten={flatten}) of a layer it accepts: {e}");
        }
        let got = dump_tree(&b, flatten);
        if got != want {
            let first = want
                .iter()
                .zip(&got)
                .position(|(x, y)| x != y)
                .unwrap_or(want.len().min(got.len()));
            panic!(
                "apply(layer) and apply(squash{}(layer)) differ at line {first}:\n  layer:  {:?}\n  squash: {:?}\n(layer tree {} lines, squash tree {})",
                if flatten { " --flatten" } else { "" },
                want.get(first),
                got.get(first),
                want.len(),
                got.len()
            );
        }
    }
    let _ = fs::remove_dir_all(&work);
}

// ------------------------------------------------------------------------------------------------
// lk-list

/// Every member of the (possibly compressed) tar at `path` as layerkit's reader sees it, as JSON
/// rows; `Err` with the message when layerkit refuses the archive.
pub fn list(path: &Path) -> Result<serde_json::Value, String> {
    use serde_json::{json, Map, Value};
    let f = fs::File::open(path).map_err(|e| e.to_string())?;
    let (_, d) = decoder(f).map_err(|e| e.to_string())?;
    let mut rd = Reader::new(d, path.display().to_string());
    let mut rows = Vec::new();
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    while let Some(e) = rd.next_entry().map_err(|e| e.to_string())? {
        io::copy(&mut rd.data(), &mut io::sink()).map_err(|e| e.to_string())?;
        let xattrs: Map<String, Value> = e
            .xattrs
            .iter()
            .map(|(k, v)| (hex(k), Value::String(hex(v))))
            .collect();
        rows.push(json!({
            "path": hex(&e.path), "link": hex(&e.linkname),
            "type": String::from_utf8_lossy(&[e.typeflag]), "size": e.size, "mode": e.mode,
            "uid": e.uid, "gid": e.gid, "mtime": e.mtime, "devmajor": e.devmajor,
            "devminor": e.devminor, "xattrs": xattrs,
            "entry": to_entry(&e).err().map(|e| e.to_string()),
        }));
    }
    // The rest of the stream: gzip's CRC and zstd's checksum are checked at its end.
    let mut rest = rd.into_inner();
    io::copy(&mut rest, &mut io::sink()).map_err(|e| e.to_string())?;
    Ok(Value::Array(rows))
}

/// Replays files through a target body outside libFuzzer (`lk-list --replay TARGET FILES`).
pub fn run_target(name: &str, data: &[u8]) -> bool {
    match name {
        "tar_reader" => tar_reader(data),
        "decoder" => decode(data),
        "squash_index" => squash_index(data),
        "apply" => apply(data),
        "squash_apply" => squash_apply(data),
        _ => return false,
    }
    true
}

// ------------------------------------------------------------------------------------------------
// structure-aware mutation

/// Parse a header number leniently (octal or base-256), for the mutator only.
fn loose_num(f: &[u8]) -> Option<u64> {
    if f[0] & 0x80 != 0 {
        let mut v: u64 = u64::from(f[0] & 0x7f);
        for &b in &f[1..] {
            v = v.checked_mul(256)?.checked_add(u64::from(b))?;
        }
        return Some(v);
    }
    let s: Vec<u8> = f
        .iter()
        .copied()
        .skip_while(|&b| b == b' ' || b == 0)
        .take_while(|&b| (b'0'..=b'7').contains(&b))
        .collect();
    let mut v: u64 = 0;
    for b in s {
        v = v.checked_mul(8)?.checked_add(u64::from(b - b'0'))?;
    }
    Some(v)
}

/// Walk `buf` as a tar and give every header block a correct checksum, so that mutations of header
/// fields reach the code behind the checksum check instead of dying there.
pub fn fix_checksums(buf: &mut [u8]) {
    let mut off = 0usize;
    while off + 512 <= buf.len() {
        let b = &mut buf[off..off + 512];
        if b.iter().all(|&x| x == 0) {
            off += 512;
            continue;
        }
        b[148..156].fill(b' ');
        let sum: u32 = b.iter().map(|&x| u32::from(x)).sum();
        b[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let size = loose_num(&b[124..136]).unwrap_or(0);
        let Some(next) = size
            .checked_add(511)
            .map(|s| s / 512 * 512)
            .and_then(|s| usize::try_from(s).ok())
            .and_then(|s| off.checked_add(512 + s))
        else {
            break;
        };
        off = next;
    }
}

fn xorshift(s: &mut u32) -> u32 {
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    *s
}

/// libFuzzer's mutation of `data[..size]`, made tar-aware: most of the time checksums are fixed
/// after the mutation, and a gzip or zstd layer is mutated inside its compression (decompressed,
/// the tar mutated and fixed, compressed again) so compressed seeds reach the tar reader with
/// interesting tars instead of corrupt streams. Raw mutations stay possible for everything.
/// `raw` is libFuzzer's own mutator (`libfuzzer_sys::fuzzer_mutate`), passed in so that this
/// library never links libFuzzer (lk-list uses it).
pub fn mutate(
    data: &mut [u8],
    size: usize,
    max_size: usize,
    seed: u32,
    raw: fn(&mut [u8], usize, usize) -> usize,
) -> usize {
    let mut rng = seed | 1;
    let roll = xorshift(&mut rng) % 8;
    let kind = Compression::sniff(&data[..size.min(4)]);
    if kind != Compression::None && roll < 4 {
        if let Some(n) = mutate_inside(data, size, max_size, kind, &mut rng, raw) {
            return n;
        }
    }
    let n = raw(data, size, max_size);
    if kind == Compression::None && roll < 6 {
        fix_checksums(&mut data[..n]);
    }
    n
}

fn mutate_inside(
    data: &mut [u8],
    size: usize,
    max_size: usize,
    kind: Compression,
    rng: &mut u32,
    raw: fn(&mut [u8], usize, usize) -> usize,
) -> Option<usize> {
    use std::io::Write as _;
    const CAP: usize = 1 << 20;
    let (_, d) = decoder(&data[..size]).ok()?;
    let mut inner = Vec::new();
    d.take(CAP as u64).read_to_end(&mut inner).ok()?;
    let len = inner.len();
    inner.resize(CAP.max(len), 0);
    let n = raw(&mut inner, len, (len * 2).clamp(1024, CAP));
    inner.truncate(n);
    if !xorshift(rng).is_multiple_of(4) {
        fix_checksums(&mut inner);
    }
    let out = match kind {
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(&inner).ok()?;
            e.finish().ok()?
        }
        _ => zstd::bulk::compress(&inner, 1).ok()?,
    };
    if out.len() > max_size {
        return None;
    }
    data[..out.len()].copy_from_slice(&out);
    Some(out.len())
}
