//! Tidying the store: leftovers of interrupted runs (repair), what is there (ls), forgetting
//! images (rmi) and removing what nothing uses (prune).
//!
//! What counts as used: the layers of every image record and container record, the layers a live
//! run has pinned (`staging/<run>/pins`), and any layer dir an overlay mount of this host names.
//! Removal (under the lock) first renames a doomed dir into a staging dir of its own, then drops
//! its link and record and deletes it: a crash part way leaves a staging dir whose run is gone,
//! which the next command removes, never a half layer under a real name.

use std::collections::{BTreeMap, HashSet};
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use serde::Serialize;

use super::{layout, Store};
use crate::error::{Error, Result};
use crate::sys;

/// Whether `name` is a store id or container id (see [`super::records::is_id`]).
fn is_hex64(name: &[u8]) -> bool {
    std::str::from_utf8(name).is_ok_and(super::records::is_id)
}

/// The dirs at the store's top level, split: layers, containers, init layers. A container dir is
/// one a record names, one with an `-init` sibling, or one with `merged` (never a layer's); the
/// rest of the 64-hex dirs are layers.
struct TopDirs {
    layers: Vec<String>,
    containers: Vec<String>,
    inits: Vec<String>,
}

fn top_dirs(store: &Store, known: &HashSet<String>) -> Result<TopDirs> {
    let mut t = TopDirs {
        layers: Vec::new(),
        containers: Vec::new(),
        inits: Vec::new(),
    };
    let mut names = sys::read_dir_names(&store.fd).map_err(|e| Error::io(&store.path, e))?;
    names.sort();
    let all: HashSet<Vec<u8>> = names.iter().cloned().collect();
    for n in names {
        let s = String::from_utf8_lossy(&n).into_owned();
        if let Some(cid) = n.strip_suffix(b"-init") {
            if is_hex64(cid) {
                t.inits.push(s);
            }
        } else if is_hex64(&n) {
            let container = known.contains(&s)
                || all.contains(&[&n[..], b"-init"].concat())
                || sys::lstatat(&store.fd, format!("{s}/merged").as_bytes()).is_ok();
            if container {
                t.containers.push(s);
            } else {
                t.layers.push(s);
            }
        }
    }
    Ok(t)
}

/// The ids of every container record file, readable or not: a record that cannot be parsed
/// still claims its dirs (they are never taken as leftovers).
fn claimed(store: &Store) -> Result<HashSet<String>> {
    Ok(
        super::records::stems(&store.containers, &store.path.join(".layerkit/containers"))?
            .into_iter()
            .collect(),
    )
}

/// The options of every overlay mount of this host, in every mount namespace a process is in
/// (`/proc/*/mountinfo`, one per namespace): a layer a container runtime or a user's `unshare -m`
/// mounted elsewhere is in use too.
fn overlay_mounts() -> Vec<String> {
    let mut seen_ns = HashSet::new();
    let mut out = Vec::new();
    let mut pids: Vec<Vec<u8>> = vec![b"self".to_vec()];
    if let Ok(proc_dir) = sys::open_dir(Path::new("/proc")) {
        pids.extend(
            sys::read_dir_names(&proc_dir)
                .unwrap_or_default()
                .into_iter()
                .filter(|n| n.iter().all(u8::is_ascii_digit)),
        );
    }
    for pid in pids {
        let base = format!("/proc/{}", String::from_utf8_lossy(&pid));
        let ns = sys::readlinkat(rustix::fs::CWD, format!("{base}/ns/mnt").as_bytes())
            .unwrap_or_else(|_| pid.clone());
        if !seen_ns.insert(ns) {
            continue;
        }
        let Ok(info) = sys::read_file_at(rustix::fs::CWD, format!("{base}/mountinfo").as_bytes())
        else {
            continue;
        };
        for l in String::from_utf8_lossy(&info).lines() {
            if let Some((_, rest)) = l.split_once(" - ") {
                if rest.starts_with("overlay ") {
                    out.push(rest.to_string());
                }
            }
        }
    }
    out
}

/// Whether an overlay mount's options name the store dir `dir` (`<dir>/diff`, or `l/SHORT` of its
/// link). `dir` is a chainID or a random container id, so the name holds however the store was
/// reached (a symlink, a relative path, a path the kernel shows escaped).
fn named_by(store: &Store, dir: &str, mounts: &[String]) -> bool {
    let named = format!("{dir}/diff");
    let short = sys::read_file_at(&store.fd, format!("{dir}/link").as_bytes())
        .ok()
        .filter(|l| layout::is_link_name(l))
        .map(|l| format!("l/{}", String::from_utf8_lossy(&l)));
    mounts
        .iter()
        .any(|o| o.contains(&named) || short.as_ref().is_some_and(|s| o.contains(s.as_str())))
}

/// Whether container `id` is in use: its `merged` is a mount point (when the kernel cannot tell,
/// it counts as used), or any overlay mount anywhere names its layer dirs (a bind mount of it, a
/// copy in another namespace, a mount made by hand from `inspect`).
pub(crate) fn container_in_use(store: &Store, id: &str) -> bool {
    let merged = store.path.join(id).join("merged");
    if sys::is_mount_point(&merged).unwrap_or(true) {
        return true;
    }
    let mounts = overlay_mounts();
    named_by(store, id, &mounts) || named_by(store, &format!("{id}-init"), &mounts)
}

/// Take what an interrupted command left: staging dirs of dead runs, container dirs no record
/// names (an interrupted create or rm), records whose dirs are gone, links that point nowhere.
/// Nothing in use is touched, and a store it cannot read stops it. Returns what it removed, one
/// line each.
pub(crate) fn repair(store: &Store) -> Result<Vec<String>> {
    let _guard = store.lock()?;
    let mut done: Vec<String> = store
        .clean_orphans()
        .into_iter()
        .map(|n| format!("staging {n}"))
        .collect();
    for dir in [&store.containers, &store.images] {
        for n in sys::read_dir_names(dir).map_err(|e| Error::io(&store.path, e))? {
            if n.starts_with(b".tmp-") {
                let _ = sys::unlinkat(dir, &n, false);
                done.push(format!("temp record {}", String::from_utf8_lossy(&n)));
            }
        }
    }
    let records = store.container_records();
    let known = claimed(store)?;
    let top = top_dirs(store, &known)?;
    let mut leftovers = Vec::new();
    for c in &top.containers {
        if !known.contains(c.as_str()) {
            leftovers.push(c.clone());
        }
    }
    for i in &top.inits {
        // Taken only with its container's dirs, and never while that container is in use
        // (checked below): an init layer is a live overlay's lowest lower.
        if !known.contains(&i[..64]) {
            leftovers.push(i.clone());
        }
    }
    for r in &records {
        let whole = top.containers.contains(&r.id) && top.inits.contains(&format!("{}-init", r.id));
        if !whole && !container_in_use(store, &r.id) {
            // An rm or create that died part way: finish taking it away.
            for d in [r.id.clone(), format!("{}-init", r.id)] {
                if top.containers.contains(&d) || top.inits.contains(&d) {
                    leftovers.push(d);
                }
            }
            store.drop_container(&r.id)?;
            done.push(format!("container record {} (its dirs were gone)", r.id));
        }
    }
    for d in leftovers {
        if container_in_use(store, &d[..64]) {
            continue; // never what is mounted
        }
        trash(store, &d)?;
        done.push(format!("container dir {d} (no record)"));
    }
    done.extend(dangling_links(store)?);
    Ok(done)
}

/// Remove `l/` links whose target is gone. Under the lock.
fn dangling_links(store: &Store) -> Result<Vec<String>> {
    let mut done = Vec::new();
    for n in sys::read_dir_names(&store.links).unwrap_or_default() {
        let Ok(target) = sys::readlinkat(&store.links, &n) else {
            continue;
        };
        // `../<dir>/diff`: gone when <dir>/diff is.
        let Some(dir) = target
            .strip_prefix(b"../")
            .and_then(|t| t.strip_suffix(b"/diff"))
        else {
            continue;
        };
        if sys::openat_dir(&store.fd, dir)
            .and_then(|d| sys::openat_dir(&d, b"diff"))
            .is_err()
        {
            let _ = sys::unlinkat(&store.links, &n, false);
            done.push(format!("link l/{}", String::from_utf8_lossy(&n)));
        }
    }
    Ok(done)
}

/// Move a top-level dir out of the store's names into a staging dir of a dead run's shape (its
/// lock free), then delete it: a crash part way leaves a staging dir the next command removes.
/// Drops its `l/` link. Under the lock.
fn trash(store: &Store, dir: &str) -> Result<()> {
    let e = |err: io::Error| Error::io(store.path.join(dir), err);
    let plain = dir.strip_suffix("-init").unwrap_or(dir);
    if !is_hex64(plain.as_bytes()) {
        return Err(e(io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a store dir name; refusing to remove it",
        )));
    }
    if let Ok(link) = sys::read_file_at(&store.fd, format!("{dir}/link").as_bytes()) {
        if layout::is_link_name(&link) {
            let _ = sys::unlinkat(&store.links, &link, false);
        }
    }
    let name = format!("trash-{}-{dir}", std::process::id());
    sys::mkdirat(&*store.staging, name.as_bytes(), 0o700).map_err(e)?;
    let bin = sys::openat_dir(&*store.staging, name.as_bytes()).map_err(e)?;
    sys::renameat(&store.fd, dir.as_bytes(), &bin, dir.as_bytes()).map_err(e)?;
    let _ = sys::remove_all_at(store.staging.as_fd(), name.as_bytes());
    Ok(())
}

/// Take container `id` away: its dirs, links, then its record. Under the lock.
pub(crate) fn discard_container(store: &Store, id: &str) -> Result<()> {
    for d in [id.to_string(), format!("{id}-init")] {
        if sys::lstatat(&store.fd, d.as_bytes()).is_ok() {
            trash(store, &d)?;
        }
    }
    store.drop_container(id)
}

/// One layer in `ls`.
#[derive(Debug, Clone, Serialize)]
pub struct LayerInfo {
    /// Store id (chainID hex).
    pub id: String,
    /// Its diffID, when recorded.
    #[serde(rename = "diffID", skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
    /// Bytes its files take (apparent sizes).
    pub size: u64,
    /// Image refs and container names that use it.
    #[serde(rename = "usedBy")]
    pub used_by: Vec<String>,
}

/// One image in `ls`.
#[derive(Debug, Clone, Serialize)]
pub struct ImageInfo {
    /// The reference it was applied from.
    #[serde(rename = "ref")]
    pub reference: String,
    /// Its config digest.
    pub config: String,
    /// Its manifest digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// Store ids of its layers, bottom first.
    pub layers: Vec<String>,
}

/// One container in `ls`.
#[derive(Debug, Clone, Serialize)]
pub struct ContainerInfo {
    /// Its id.
    pub id: String,
    /// Its name.
    pub name: String,
    /// Its image's config digest.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Whether `merged` is mounted.
    pub mounted: bool,
    /// Bytes in its writable layer.
    pub size: u64,
}

/// What `layerkit ls` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Listing {
    /// Layers, sorted by id.
    pub layers: Vec<LayerInfo>,
    /// Image records.
    pub images: Vec<ImageInfo>,
    /// Containers.
    pub containers: Vec<ContainerInfo>,
}

/// Apparent bytes under a dir (files' sizes), by walking it through descriptors.
fn du(dir: &OwnedFd) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.try_clone().ok()];
    while let Some(Some(d)) = stack.pop() {
        for n in sys::read_dir_names(&d).unwrap_or_default() {
            let Ok(st) = sys::lstatat(&d, &n) else {
                continue;
            };
            if sys::file_type(&st) == sys::FileType::Directory {
                stack.push(sys::openat_dir(&d, &n).ok());
            } else {
                total += st.st_size as u64;
            }
        }
    }
    total
}

fn diff_size(store: &Store, dir: &str) -> u64 {
    sys::openat_dir(&store.fd, dir.as_bytes())
        .and_then(|d| sys::openat_dir(&d, b"diff"))
        .map_or(0, |d| du(&d))
}

/// `layerkit ls`.
pub fn list(path: &Path) -> Result<Listing> {
    let store = Store::open_existing(path)?;
    repair(&store)?;
    let images = store.image_records();
    let containers = store.container_records();
    let mut users: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (_, r) in &images {
        for l in &r.layers {
            users
                .entry(l.clone())
                .or_default()
                .push(r.reference.clone());
        }
    }
    for c in &containers {
        for l in &c.layers {
            users.entry(l.clone()).or_default().push(c.name.clone());
        }
    }
    let layers = top_dirs(&store, &claimed(&store)?)?
        .layers
        .into_iter()
        .map(|id| LayerInfo {
            diff_id: store.layer_diff_id(&id),
            size: diff_size(&store, &id),
            used_by: users.remove(&id).unwrap_or_default(),
            id,
        })
        .collect();
    Ok(Listing {
        layers,
        images: images
            .into_iter()
            .map(|(_, r)| ImageInfo {
                reference: r.reference,
                config: r.config,
                manifest: r.manifest,
                layers: r.layers,
            })
            .collect(),
        containers: containers
            .into_iter()
            .map(|c| ContainerInfo {
                mounted: sys::is_mount_point(&store.path.join(&c.id).join("merged"))
                    .unwrap_or(false),
                size: diff_size(&store, &c.id),
                id: c.id,
                name: c.name,
                image: c.image,
            })
            .collect(),
    })
}

/// `layerkit rmi`: forget the image named `what` (its ref as recorded, its config digest, or a
/// unique prefix of the digest's hex). Its layers stay until `prune`. Refused while a container
/// uses it, unless `force`. Returns the config digest.
pub fn forget_image(path: &Path, what: &str, force: bool) -> Result<String> {
    let store = Store::open_existing(path)?;
    let _guard = store.lock()?;
    let all = store.image_records();
    let hex = what.strip_prefix("sha256:").unwrap_or(what);
    let hits: Vec<&(String, super::records::ImageRecord)> = all
        .iter()
        .filter(|(h, r)| r.reference == what || r.source.as_deref() == Some(what) || h == hex)
        .collect();
    let hits = if hits.is_empty() && !hex.is_empty() {
        all.iter().filter(|(h, _)| h.starts_with(hex)).collect()
    } else {
        hits
    };
    let (h, rec) = match hits.as_slice() {
        [one] => *one,
        [] => {
            return Err(Error::io(
                &store.path,
                io::Error::new(io::ErrorKind::NotFound, format!("no image {what}")),
            ))
        }
        _ => {
            return Err(Error::io(
                &store.path,
                io::Error::other(format!(
                    "{what} names {} images; give the config digest",
                    hits.len()
                )),
            ))
        }
    };
    let users: Vec<String> = store
        .container_records()
        .into_iter()
        .filter(|c| c.image.as_deref() == Some(rec.config.as_str()))
        .map(|c| c.name)
        .collect();
    if !users.is_empty() && !force {
        return Err(Error::io(
            &store.path,
            io::Error::other(format!(
                "image {} is used by container(s) {}; rm them first, or rmi -f",
                rec.reference,
                users.join(", ")
            )),
        ));
    }
    store.drop_image(h)?;
    Ok(rec.config.clone())
}

/// A layer `prune` removed.
#[derive(Debug, Clone, Serialize)]
pub struct PrunedLayer {
    /// Its store id.
    pub id: String,
    /// The bytes its files held.
    pub size: u64,
}

/// What `prune` freed.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Pruned {
    /// Layers removed.
    pub layers: Vec<PrunedLayer>,
    /// Other things tidied (staging dirs, links, records), one line each.
    pub tidied: Vec<String>,
    /// Total bytes of the layers removed.
    pub bytes: u64,
}

/// Layer dirs that overlay mounts name, in any mount namespace: a user's own mount of a printed
/// lowerdir keeps its layers.
fn mounted_layers(store: &Store, layers: &[String]) -> HashSet<String> {
    let mounts = overlay_mounts();
    layers
        .iter()
        .filter(|id| named_by(store, id, &mounts))
        .cloned()
        .collect()
}

/// `layerkit prune`: remove layers that no image, container, live run or mount uses, plus what
/// interrupted runs left.
pub fn prune(path: &Path) -> Result<Pruned> {
    let store = Store::open_existing(path)?;
    let mut out = Pruned {
        tidied: repair(&store)?,
        ..Pruned::default()
    };
    let doomed: Vec<PrunedLayer> = {
        let _guard = store.lock()?;
        let mut used: HashSet<String> = store.pinned();
        for (_, r) in store.image_records() {
            used.extend(r.layers);
        }
        for c in store.container_records() {
            used.extend(c.layers);
        }
        let layers = top_dirs(&store, &claimed(&store)?)?.layers;
        used.extend(mounted_layers(&store, &layers));
        let mut doomed = Vec::new();
        // Children before their parents (deepest `lower` first): a kill part way leaves whole
        // chains' bottoms, never a layer whose parent is gone.
        let mut ids = layers;
        let depth = |id: &String| {
            sys::read_file_at(&store.fd, format!("{id}/lower").as_bytes())
                .map_or(0, |v| v.split(|b| *b == b':').count())
        };
        ids.sort_by_cached_key(|id| std::cmp::Reverse(depth(id)));
        for id in ids {
            if used.contains(&id) {
                continue;
            }
            let size = diff_size(&store, &id);
            trash(&store, &id)?;
            let _ = sys::unlinkat(&store.layer_records, id.as_bytes(), false);
            doomed.push(PrunedLayer { id, size });
        }
        // Layer records whose layer is gone.
        for n in sys::read_dir_names(&store.layer_records).unwrap_or_default() {
            if sys::lstatat(&store.fd, &n).is_err() {
                let _ = sys::unlinkat(&store.layer_records, &n, false);
            }
        }
        out.tidied.extend(dangling_links(&store)?);
        doomed
    };
    out.bytes = doomed.iter().map(|l| l.size).sum();
    out.layers = doomed;
    Ok(out)
}
