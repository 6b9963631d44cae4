//! The store job: a stack of layer tars becomes overlay-native layers in an overlay2-style store
//! (layout in [`layout`]), unpacked concurrently and committed bottom-up.
//!
//! ```text
//! workers (-j): layer k -> staging/<run>/<k>/diff     (unpack::unpack, -j layers at once)
//! main thread, k = 0, 1, ...: wait for k -> settle against the lowers (overlay::write::settle)
//!                             -> chainID -> lock; rename to <id>, link, l/SHORT; unlock
//! ```
//! Safety: a layer is renamed into place only when complete, under `.layerkit/lock`, with
//! `RENAME_NOREPLACE`; an id already present is reused and never touched. Each run stages under its
//! own dir, held by an exclusive `flock` for the run's lifetime; a run finds the staging dirs whose
//! lock nobody holds (their run died) and removes them. So a crash leaves nothing under a real id,
//! and concurrent runs on one store never see each other's half layers.

pub mod container;
pub mod gc;
pub mod layout;
pub mod records;

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::unbounded;

use crate::digest::{chain_id, Hasher};
use crate::error::{Error, Outcomes, Result};
use crate::image::{Image, ImageRef};
use crate::input::{Digests, Input, Source};
use crate::overlay::read::lower::LowerView;
use crate::overlay::write::{FilePool, Layer, Stacked, Unsettled};
use crate::overlay::{escape_lowerdir, Namespace};
use crate::staging;
use crate::sys;
use crate::threads::{spawn_workers, Budget};
use crate::unpack::{unpack, ApplyOptions, ApplyReport, ImageReport, LayerReport};

const STATE: &[u8] = b".layerkit";

/// An open store.
pub(crate) struct Store {
    pub(crate) path: PathBuf,
    pub(crate) fd: OwnedFd,
    state: OwnedFd,
    pub(crate) staging: Arc<OwnedFd>,
    blobs: OwnedFd,
    /// One record per image applied: `<config hex>.json` and `<config hex>.config`.
    pub(crate) images: OwnedFd,
    /// One record per container: `<cid>.json`.
    pub(crate) containers: OwnedFd,
    /// One record per layer: `<id>` holding its diffID.
    pub(crate) layer_records: OwnedFd,
    pub(crate) links: OwnedFd,
    lock: OwnedFd,
}

/// Held while the store's shared state (ids, `l/`, staging dirs, records) changes.
pub(crate) struct Locked<'a>(&'a OwnedFd);

impl Drop for Locked<'_> {
    fn drop(&mut self) {
        let _ = rustix::fs::flock(self.0, rustix::fs::FlockOperation::Unlock);
    }
}

/// What a run found at `--store DIR`, so that a failed first run can leave it as it was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Found {
    /// A store an earlier run made.
    Store,
    /// An empty directory: this run makes the store in it.
    Empty,
    /// Nothing: this run made the directory too.
    Nothing,
}

impl Store {
    /// Open the store at `path`, making it in a new or empty directory. Anything else (a file, a
    /// directory holding other things, such as a live containers-storage or docker root) is
    /// refused before anything is written.
    fn open(path: &Path) -> Result<(Store, Found)> {
        let e = |err: io::Error| Error::io(path, err);
        let mut found = match sys::stat_path(path, true) {
            Err(err) if err.kind() == io::ErrorKind::NotFound => {
                sys::mkdir_p(path, 0o710).map_err(e)?;
                Found::Nothing
            }
            Err(err) => return Err(e(err)),
            Ok(st) if sys::file_type(&st) != sys::FileType::Directory => {
                return Err(e(io::Error::other("not a directory")));
            }
            Ok(_) => Found::Store,
        };
        let fd = sys::open_dir(path).map_err(e)?;
        let names = sys::read_dir_names(&fd).map_err(e)?;
        if !names.iter().any(|n| n == STATE) {
            if !names.is_empty() {
                return Err(e(io::Error::other(
                    "not a layerkit store (it holds other files and no .layerkit); \
                     --store takes a new or empty directory, or a store layerkit made",
                )));
            }
            if found == Found::Store {
                found = Found::Empty;
            }
        }
        let sub = |at: &OwnedFd, name: &[u8], mode: u32| -> Result<OwnedFd> {
            sys::mkdirat_exist_ok(at, name, mode).map_err(e)?;
            sys::openat_dir(at, name).map_err(e)
        };
        let state = sub(&fd, STATE, 0o700)?;
        let links = sub(&fd, b"l", 0o700)?;
        let staging = sub(&state, b"staging", 0o700)?;
        let blobs = sub(&state, b"blobs", 0o700)?;
        let images = sub(&state, b"images", 0o700)?;
        let containers = sub(&state, b"containers", 0o700)?;
        let layer_records = sub(&state, b"layers", 0o700)?;
        let lock = sys::open_lock_file(&state, b"lock").map_err(e)?;
        let store = Store {
            path: std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()),
            fd,
            state,
            staging: Arc::new(staging),
            blobs,
            images,
            containers,
            layer_records,
            links,
            lock,
        };
        Ok((store, found))
    }

    /// The store at `path`, which must exist (commands that only read or tidy one never make it).
    pub(crate) fn open_existing(path: &Path) -> Result<Store> {
        let has_state = sys::open_dir(path)
            .and_then(|fd| sys::read_dir_names(&fd))
            .map_err(|e| Error::io(path, e))?
            .iter()
            .any(|n| n == STATE);
        if !has_state {
            return Err(Error::io(
                path,
                io::Error::other("not a layerkit store (no .layerkit); make one with layerapply --store or layerkit create"),
            ));
        }
        Ok(Store::open(path)?.0)
    }

    /// The marker namespace the store's layers were written in (trusted for a new store).
    pub(crate) fn namespace(&self) -> Namespace {
        match sys::read_file_at(&self.state, b"namespace") {
            Ok(v) if v == Namespace::User.prefix() => Namespace::User,
            _ => Namespace::Trusted,
        }
    }

    /// A first run that committed nothing takes back the skeleton it made (and the directory, if
    /// it made that too), so a failed first run leaves `--store DIR` as it found it. Under the
    /// lock, and only while no other run stages and no layer is in the store.
    fn unmake(&self, found: Found) {
        if found == Found::Store {
            return;
        }
        let Ok(_guard) = self.lock() else { return };
        let staging_empty = sys::read_dir_names(&*self.staging).is_ok_and(|v| v.is_empty());
        let links_empty = sys::read_dir_names(&self.links).is_ok_and(|v| v.is_empty());
        let only_ours =
            sys::read_dir_names(&self.fd).is_ok_and(|v| v.iter().all(|n| n == STATE || n == b"l"));
        if !(staging_empty && links_empty && only_ours) {
            return;
        }
        let _ = sys::remove_all_at(self.fd.as_fd(), b"l");
        let _ = sys::remove_all_at(self.fd.as_fd(), STATE);
        if found == Found::Nothing {
            let _ = sys::rmdir(&self.path);
        }
    }

    /// A store's layers all carry their markers in one namespace, recorded when it is made: a
    /// `--userxattr` layer under a trusted id would let lower files show through a normal mount.
    /// Called under the lock.
    fn check_namespace(&self, ns: Namespace) -> Result<()> {
        let want = ns.prefix();
        match sys::read_file_at(&self.state, b"namespace") {
            Ok(have) if have == want => Ok(()),
            Ok(have) => Err(Error::io(
                &self.path,
                io::Error::other(format!(
                    "this store's layers carry {}* markers, this run would write {}*: use one \
                     store per marker namespace ({})",
                    String::from_utf8_lossy(&have),
                    String::from_utf8_lossy(want),
                    if ns == Namespace::User {
                        "drop --userxattr"
                    } else {
                        "add --userxattr"
                    }
                )),
            )),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                sys::write_file_atomic(self.state.as_fd(), b"namespace", want, 0o644)
                    .map_err(|e| Error::io(&self.path, e))
            }
            Err(e) => Err(Error::io(&self.path, e)),
        }
    }

    /// Whether another run removed this store's state (its first run failed) after we opened it.
    fn gone(&self) -> bool {
        sys::fstat(&self.state).map_or(true, |st| st.st_nlink == 0)
    }

    pub(crate) fn lock(&self) -> Result<Locked<'_>> {
        sys::flock(&self.lock, true, false).map_err(|e| Error::io(&self.path, e))?;
        Ok(Locked(&self.lock))
    }

    /// Remove staging dirs whose run is gone (nobody holds their lock). Called under the lock.
    /// Returns the names removed.
    pub(crate) fn clean_orphans(&self) -> Vec<String> {
        let mut removed = Vec::new();
        for name in sys::read_dir_names(&*self.staging).unwrap_or_default() {
            let orphan = match sys::openat_dir(&*self.staging, &name)
                .and_then(|d| sys::open_lock_file(&d, b"lock"))
            {
                Ok(l) => sys::flock(&l, true, true).unwrap_or(false),
                Err(_) => true,
            };
            if orphan {
                let _ = sys::remove_all_at(self.staging.as_fd(), &name);
                removed.push(String::from_utf8_lossy(&name).into_owned());
            }
        }
        removed
    }

    /// The store ids that live runs use (their `pins`), read under the lock: a prune keeps them.
    pub(crate) fn pinned(&self) -> std::collections::HashSet<String> {
        let mut ids = std::collections::HashSet::new();
        for name in sys::read_dir_names(&*self.staging).unwrap_or_default() {
            let Ok(d) = sys::openat_dir(&*self.staging, &name) else {
                continue;
            };
            if let Ok(v) = sys::read_file_at(&d, b"pins") {
                ids.extend(String::from_utf8_lossy(&v).lines().map(str::to_string));
            }
        }
        ids
    }

    /// A new run: a staging dir of its own, locked for the run's lifetime and removed when the run
    /// ends (a signal included); its `pins` name the layers it uses. Called under the lock.
    pub(crate) fn new_run(&self) -> Result<(staging::Registered, OwnedFd, OwnedFd)> {
        let e = |err: io::Error| Error::io(&self.path, err);
        let name = format!(
            "{}-{}",
            std::process::id(),
            layout::link_name(&sys::random17().map_err(e)?)
        );
        sys::mkdirat(&*self.staging, name.as_bytes(), 0o700).map_err(e)?;
        let run = staging::Registered::new(self.staging.clone(), name.into_bytes());
        let dir = sys::openat_dir(run.dir(), run.name()).map_err(e)?;
        let lock = sys::open_lock_file(&dir, b"lock").map_err(e)?;
        sys::flock(&lock, true, false).map_err(e)?;
        Ok((run, dir, lock))
    }

    /// Record in `run` that it uses `ids` (a prune keeps them while the run lives). Under the lock.
    pub(crate) fn pin(&self, run: &OwnedFd, ids: &[String]) -> Result<()> {
        sys::write_file_atomic(run.as_fd(), b"pins", ids.join("\n").as_bytes(), 0o600)
            .map_err(|e| Error::io(&self.path, e))
    }

    /// The diffID recorded for a blob digest by an earlier run.
    fn known_diff_id(&self, blob: &str) -> Option<String> {
        let v = sys::read_file_at(&self.blobs, layout::id(blob).as_bytes()).ok()?;
        let s = String::from_utf8(v).ok()?;
        (s.starts_with("sha256:") && s.len() == 71).then_some(s)
    }

    pub(crate) fn has(&self, id: &str) -> bool {
        sys::openat_dir(&self.fd, id.as_bytes())
            .and_then(|d| sys::openat_dir(&d, b"diff"))
            .is_ok()
    }

    pub(crate) fn diff_dir(&self, id: &str) -> Result<OwnedFd> {
        let p = self.path.join(id).join("diff");
        sys::openat_dir(&self.fd, id.as_bytes())
            .and_then(|d| sys::openat_dir(&d, b"diff"))
            .map_err(|e| Error::io(p, e))
    }

    /// `link` and `lower` of a committed layer; re-creates `l/SHORT` if a crash lost it.
    pub(crate) fn names_of(&self, id: &str) -> Result<(String, Option<String>)> {
        let p = self.path.join(id);
        let d = sys::openat_dir(&self.fd, id.as_bytes()).map_err(|e| Error::io(&p, e))?;
        let link = sys::read_file_at(&d, b"link").map_err(|e| Error::io(p.join("link"), e))?;
        if !layout::is_link_name(&link) {
            return Err(Error::io(
                p.join("link"),
                io::Error::new(io::ErrorKind::InvalidData, "not a 26-char link name"),
            ));
        }
        let lower = sys::read_file_at(&d, b"lower")
            .ok()
            .map(|v| String::from_utf8_lossy(&v).into_owned());
        let link = String::from_utf8_lossy(&link).into_owned();
        if sys::lstatat(&self.links, link.as_bytes()).is_err() {
            let _guard = self.lock()?;
            let target = format!("../{id}/diff");
            let _ = sys::symlinkat(target.as_bytes(), &self.links, link.as_bytes());
        }
        Ok((link, lower))
    }

    /// Put the staged layer `run/<k>` in place as `<id>`. `Ok(false)`: another run got there first.
    pub(crate) fn commit(
        &self,
        run: &OwnedFd,
        k: &[u8],
        id: &str,
        parent: Option<&(String, Option<String>)>,
        diff_id: Option<&str>,
        pins: &mut Vec<String>,
    ) -> Result<bool> {
        let staged = sys::openat_dir(run, k).map_err(|e| Error::io(&self.path, e))?;
        let e = |err: io::Error| Error::io(self.path.join(id), err);
        if let Some((plink, plower)) = parent {
            let lower = layout::lower_file(plink, plower.as_deref());
            sys::write_file_atomic(staged.as_fd(), b"lower", lower.as_bytes(), 0o644).map_err(e)?;
            sys::mkdirat_exist_ok(&staged, b"work", 0o700).map_err(e)?;
        }
        let _guard = self.lock()?;
        let pin = |pins: &mut Vec<String>| -> Result<()> {
            pins.push(id.to_string());
            self.pin(run, pins)
        };
        if self.has(id) {
            pin(pins)?;
            return Ok(false);
        }
        let link = loop {
            let l = layout::link_name(&sys::random17().map_err(e)?);
            if sys::lstatat(&self.links, l.as_bytes()).is_err() {
                break l;
            }
        };
        sys::write_file_atomic(staged.as_fd(), b"link", link.as_bytes(), 0o644).map_err(e)?;
        if let Some(d) = diff_id {
            // Before the layer appears: a layer never lacks its record (a record without a layer,
            // left by a crash, is tidied by prune).
            sys::write_file_atomic(
                self.layer_records.as_fd(),
                id.as_bytes(),
                d.as_bytes(),
                0o644,
            )
            .map_err(e)?;
        }
        // The layer and its short link appear together, never split by a signal's cleanup.
        let r = staging::exclusive(|| {
            match sys::rename_noreplace(run, k, &self.fd, id.as_bytes()) {
                Ok(()) => {}
                Err(err) if err.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
                Err(err) => return Err(e(err)),
            }
            let target = format!("../{id}/diff");
            sys::symlinkat(target.as_bytes(), &self.links, link.as_bytes()).map_err(e)?;
            Ok(true)
        })?;
        pin(pins)?;
        Ok(r)
    }

    /// Record `image` (its ref, manifest, config and layers) so later commands know it:
    /// `images/<config hex>.json` and the config itself beside it, both written atomically.
    fn record(&self, image: &Image, report: &ApplyReport) -> Result<()> {
        let e = |err: io::Error| Error::io(self.path.join(".layerkit/images"), err);
        let hex = layout::id(&image.config);
        let layers: Vec<&str> = report
            .layers
            .iter()
            .filter_map(|l| l.chain_id.as_deref().map(layout::id))
            .collect();
        let rec = records::ImageRecord {
            reference: image.label.clone(),
            source: ImageRef::parse(&image.label).map(|r| r.absolute().label()),
            manifest: image.manifest.clone(),
            config: image.config.clone(),
            diff_ids: image.diff_ids.clone(),
            layers: layers.iter().map(|l| l.to_string()).collect(),
        };
        let rec = serde_json::to_vec(&rec).expect("serialisable");
        let _guard = self.lock()?;
        sys::write_file_atomic(
            self.images.as_fd(),
            format!("{hex}.config").as_bytes(),
            &image.config_bytes,
            0o644,
        )
        .map_err(e)?;
        sys::write_file_atomic(
            self.images.as_fd(),
            format!("{hex}.json").as_bytes(),
            &rec,
            0o644,
        )
        .map_err(e)
    }

    fn remember(&self, d: &Digests) {
        if !d.blob.starts_with("sha256:") {
            return;
        }
        let _ = sys::write_file_atomic(
            self.blobs.as_fd(),
            layout::id(&d.blob).as_bytes(),
            d.diff_id.as_bytes(),
            0o644,
        );
    }
}

/// sha256 of a file's bytes, for the reuse check (cheaper than decompressing it).
fn blob_digest(p: &Path) -> Option<String> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes()).ok()?;
    let mut f = sys::openat_file(rustix::fs::CWD, &c).ok()?;
    let mut h = Hasher::default();
    io::copy(&mut f, &mut h).ok()?;
    Some(h.finish())
}

/// Which layers a store already has, known before unpacking: their diffIDs come from their image
/// (its config promises them; the blob is not read) or from the blob index of earlier runs (files
/// only; stdin is read once, so it is always unpacked).
fn precheck(store: &Store, inputs: &[Input]) -> Vec<Option<String>> {
    let mut known: Vec<Option<String>> = vec![None; inputs.len()];
    let no_blobs = sys::read_dir_names(&store.blobs)
        .map(|v| v.is_empty())
        .unwrap_or(true);
    std::thread::scope(|s| {
        let hs: Vec<_> = inputs
            .iter()
            .map(|i| {
                s.spawn(move || match (&i.source, i.promised_diff_id()) {
                    (_, Some(d)) => Some(d.to_string()),
                    (_, None) if no_blobs => None,
                    (Source::Path(p), None) => blob_digest(p).and_then(|d| store.known_diff_id(&d)),
                    (Source::Stdin | Source::Range { .. }, None) => None,
                })
            })
            .collect();
        for (k, h) in hs.into_iter().enumerate() {
            known[k] = h.join().unwrap_or(None);
        }
    });
    let mut chain: Vec<String> = Vec::new();
    let mut out = vec![None; inputs.len()];
    for (k, d) in known.into_iter().enumerate() {
        let Some(d) = d else { break };
        chain.push(d);
        let c = chain_id(&chain).expect("non-empty");
        if !store.has(layout::id(&c)) {
            break;
        }
        out[k] = Some(chain[k].clone());
    }
    out
}

type Unpacked = (usize, Result<(Unsettled<Stacked>, Digests)>);

/// Unpack `inputs` (bottom first) into the store at `path`.
pub fn apply_store(path: &Path, inputs: &[Input], opts: &ApplyOptions) -> Result<ApplyReport> {
    Ok(apply_stack(path, inputs, opts, None, |_, _, _| Ok(()))?.0)
}

/// Unpack `image`'s layers into the store at `path`, each verified as it is read (layers the store
/// has by chainID are reused without reading their blobs), and record the image in the store.
pub fn apply_image(path: &Path, image: &Image, opts: &ApplyOptions) -> Result<ApplyReport> {
    Ok(apply_stack(path, &image.layers, opts, Some(image), |_, _, _| Ok(()))?.0)
}

/// Apply `inputs` (of `image`, if any), then run `then` while the run still pins the layers (so a
/// concurrent prune cannot take them before `then` records what uses them).
pub(crate) fn apply_stack<T>(
    path: &Path,
    inputs: &[Input],
    opts: &ApplyOptions,
    image: Option<&Image>,
    then: impl FnOnce(&Store, &OwnedFd, &ApplyReport) -> Result<T>,
) -> Result<(ApplyReport, T)> {
    sys::raise_nofile_limit();
    // A concurrent first run that failed may take the store back between our open and our lock:
    // then open it anew.
    let (store, found, run, run_dir, _run_lock) = loop {
        let (store, found) = Store::open(path)?;
        let staged = {
            let _guard = store.lock()?;
            if store.gone() {
                continue;
            }
            store.check_namespace(opts.ns)?;
            store.clean_orphans();
            store.new_run()?
        };
        break (store, found, staged.0, staged.1, staged.2);
    };
    let mut result = run_stack(&store, &run_dir, inputs, opts);
    if let (Ok(report), Some(image)) = (&mut result, image) {
        match store.record(image, report) {
            Ok(()) => {
                report.image = Some(ImageReport {
                    manifest: image.manifest.clone(),
                    config: image.config.clone(),
                })
            }
            Err(e) => result = Err(e),
        }
    }
    let result = result.and_then(|r| {
        let t = then(&store, &run_dir, &r)?;
        Ok((r, t))
    });
    drop(run_dir);
    drop(run);
    if result.is_err() {
        store.unmake(found);
    }
    result
}

fn run_stack(
    store: &Store,
    run: &OwnedFd,
    inputs: &[Input],
    opts: &ApplyOptions,
) -> Result<ApplyReport> {
    let mut reused = precheck(store, inputs);
    // The layers found are pinned at once, under the lock: no prune takes them from here on.
    let mut pins0 = Vec::new();
    {
        let _guard = store.lock()?;
        let mut chain = Vec::new();
        for k in 0..reused.len() {
            let Some(d) = reused[k].clone() else { break };
            chain.push(d);
            let id = layout::id(&chain_id(&chain).expect("non-empty")).to_string();
            if store.has(&id) {
                pins0.push(id);
            } else {
                for r in &mut reused[k..] {
                    *r = None;
                }
                break;
            }
        }
        if !pins0.is_empty() {
            store.pin(run, &pins0)?;
        }
    }
    let todo: Vec<usize> = (0..inputs.len()).filter(|&k| reused[k].is_none()).collect();
    // Stage dirs first (cheap), so workers only unpack.
    let mut roots: HashMap<usize, OwnedFd> = HashMap::new();
    for &k in &todo {
        let e = |err: io::Error| Error::io(&store.path, err);
        let name = k.to_string();
        sys::mkdirat(run, name.as_bytes(), 0o700).map_err(e)?;
        let d = sys::openat_dir(run, name.as_bytes()).map_err(e)?;
        sys::mkdirat(&d, b"diff", 0o755).map_err(e)?;
        roots.insert(k, sys::openat_dir(&d, b"diff").map_err(e)?);
    }
    let budget = Budget::new(opts.jobs);
    // One pool of file finishers for all layers in flight.
    let files = FilePool::new(budget.workers());
    let stop = AtomicBool::new(false);
    let (tx, rx) = unbounded::<Unpacked>();
    let roots = std::sync::Mutex::new(roots);
    std::thread::scope(|s| {
        let (todo, stop, roots, files) = (&todo, &stop, &roots, &files);
        let work_tx = tx.clone();
        spawn_workers(s, budget.workers(), todo.len(), move |i| {
            let k = todo[i];
            if stop.load(Ordering::Relaxed) {
                let _ = work_tx.send((k, Err(Error::Stopped)));
                return;
            }
            let root = roots.lock().expect("poisoned").remove(&k).expect("staged");
            let mut w = Layer::<Stacked>::new(root, opts.ns, files.clone());
            let r = unpack(&inputs[k], &mut w, stop, true)
                .and_then(|d| Ok((w.finish()?, d.expect("hashed when asked"))));
            if r.is_err() {
                stop.store(true, Ordering::Relaxed);
            }
            let _ = work_tx.send((k, r));
        });
        drop(tx);
        let r = commit_in_order(store, run, inputs, opts, &reused, &rx, pins0);
        if r.is_err() {
            stop.store(true, Ordering::Relaxed);
        }
        // Drain so workers never block; their results are dropped with the staging dir.
        for _ in rx.iter() {}
        r
    })
}

fn commit_in_order(
    store: &Store,
    run: &OwnedFd,
    inputs: &[Input],
    opts: &ApplyOptions,
    reused: &[Option<String>],
    rx: &crossbeam_channel::Receiver<Unpacked>,
    mut pins: Vec<String>,
) -> Result<ApplyReport> {
    let mut done: HashMap<usize, Result<(Unsettled<Stacked>, Digests)>> = HashMap::new();
    let mut lowers: Vec<OwnedFd> = Vec::new();
    let mut diff_ids: Vec<String> = Vec::new();
    let mut parent: Option<(String, Option<String>)> = None;
    let mut reports = Vec::new();
    let mut warnings = Vec::new();
    let mut shorts: Vec<String> = Vec::new();
    for (k, input) in inputs.iter().enumerate() {
        let label = input.label.as_str();
        let (diff_id, was_reused) = if let Some(d) = &reused[k] {
            (d.clone(), true)
        } else {
            let got = loop {
                if let Some(r) = done.remove(&k) {
                    break r;
                }
                match rx.recv() {
                    Ok((j, r)) => {
                        done.insert(j, r);
                    }
                    Err(_) => return Err(Error::Stopped),
                }
            };
            let (w, d) = match got {
                Ok(x) => x,
                Err(e) => return Err(stack_error(k, e, done, rx, inputs)),
            };
            let view = LowerView::new(
                lowers
                    .iter()
                    .rev()
                    .map(|f| f.try_clone())
                    .collect::<io::Result<_>>()
                    .map_err(|e| Error::io(&store.path, e))?,
                opts.ns,
            );
            let sealed = w.settle(&view).and_then(|s| s.seal());
            warnings.extend(
                sealed
                    .map_err(|e| e.in_layer(label))?
                    .into_iter()
                    .map(|m| format!("{label}: {m}")),
            );
            diff_ids.push(d.diff_id.clone());
            let id = layout::id(&chain_id(&diff_ids).expect("non-empty")).to_string();
            diff_ids.pop();
            let committed = store
                .commit(
                    run,
                    k.to_string().as_bytes(),
                    &id,
                    parent.as_ref(),
                    Some(&d.diff_id),
                    &mut pins,
                )
                .map_err(|e| e.in_layer(label))?;
            store.remember(&d);
            (d.diff_id, !committed)
        };
        diff_ids.push(diff_id.clone());
        let chain = chain_id(&diff_ids).expect("non-empty");
        let id = layout::id(&chain).to_string();
        {
            // Pinned before anything else uses it: from here on no prune takes it.
            let _guard = store.lock()?;
            if !store.has(&id) {
                return Err(Error::io(
                    store.path.join(&id),
                    io::Error::other("removed by a concurrent prune; run again"),
                ));
            }
            if !pins.contains(&id) {
                pins.push(id.clone());
                store.pin(run, &pins)?;
            }
            if sys::lstatat(&store.layer_records, id.as_bytes()).is_err() {
                // A layer from before layers had records.
                let _ = sys::write_file_atomic(
                    store.layer_records.as_fd(),
                    id.as_bytes(),
                    diff_id.as_bytes(),
                    0o644,
                );
            }
        }
        lowers.push(store.diff_dir(&id)?);
        parent = Some(store.names_of(&id)?);
        shorts.push(format!("l/{}", parent.as_ref().expect("just set").0));
        reports.push(LayerReport {
            layer: input.label.clone(),
            diff_id: Some(diff_id),
            chain_id: Some(chain),
            path: store.path.join(&id).join("diff").display().to_string(),
            reused: was_reused,
        });
    }
    let lowerdir = reports
        .iter()
        .rev()
        .map(|r| escape_lowerdir(&r.path))
        .collect::<Vec<_>>()
        .join(":");
    shorts.reverse();
    Ok(ApplyReport {
        layers: reports,
        lowerdir,
        short_lowerdir: shorts.join(":"),
        image: None,
        warnings,
    })
}

/// The error to show when layer `k` failed with `err`: if it only stopped because another layer
/// failed, wait for every layer and show the first (in stack order) that failed of its own accord,
/// whatever the timing.
fn stack_error(
    k: usize,
    err: Error,
    mut done: HashMap<usize, Result<(Unsettled<Stacked>, Digests)>>,
    rx: &crossbeam_channel::Receiver<Unpacked>,
    inputs: &[Input],
) -> Error {
    done.insert(k, Err(err));
    done.extend(rx.iter());
    let mut failed: Vec<(usize, Error)> = done
        .into_iter()
        .filter_map(|(j, r)| r.err().map(|e| (j, e)))
        .collect();
    failed.sort_by_key(|(j, _)| *j);
    let mut outcomes = Outcomes::default();
    for (j, e) in failed {
        outcomes.take::<()>(Err(e.in_layer(&inputs[j].label)));
    }
    outcomes.result().err().unwrap_or(Error::Stopped)
}
