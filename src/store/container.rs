//! Containers on the store, as Docker's overlay2 makes them (without a daemon):
//!
//! ```text
//! <cid>-init/{diff,link,lower,work}   mount-point placeholders (docker's initlayer), where the
//!                                     image has nothing at those paths
//! <cid>/{diff,work,merged,link,lower} the writable layer; lower = l/INIT:l/TOP:...:l/BOTTOM
//! l/SHORT -> ../<cid>-init/diff, l/SHORT -> ../<cid>/diff
//! .layerkit/containers/<cid>.json     the record (written last, under the lock)
//! ```
//!
//! Both layer dirs are built in the run's staging dir and renamed into place under the lock, and
//! the record is written after them, so a crash leaves either a whole container or leftovers that
//! the next command tidies ([`super::gc::repair`]).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::records::ContainerRecord;
use super::{apply_stack, layout, Store};
use crate::entry::{Entry, Kind, Meta, Sink};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::input::Input;
use crate::overlay::read::lower::{Found, LowerView};
use crate::overlay::write::{FilePool, Layer, Stacked};
use crate::overlay::Namespace;
use crate::path::RelPath;
use crate::staging;
use crate::sys;
use crate::unpack::{ApplyOptions, ApplyReport};

/// What a container is made from.
#[derive(Debug, Clone, Copy)]
pub enum ContainerBase<'a> {
    /// An image's layers (recorded with the image).
    Image(&'a Image),
    /// Layer files, bottom first.
    Layers(&'a [Input]),
}

/// A new container.
#[derive(Debug, Clone, Serialize)]
pub struct Created {
    /// 64 hex chars.
    #[serde(rename = "Id")]
    pub id: String,
    /// Its name.
    #[serde(rename = "Name")]
    pub name: String,
    /// The apply that brought its layers into the store.
    #[serde(skip)]
    pub apply: ApplyReport,
}

/// Docker's placeholders (moby `daemon/initlayer`): what a runtime mounts over, so that the
/// mount points exist whatever the image has.
const PLACEHOLDERS: &[(&str, Placeholder)] = &[
    ("dev/pts", Placeholder::Dir),
    ("dev/shm", Placeholder::Dir),
    ("proc", Placeholder::Dir),
    ("sys", Placeholder::Dir),
    (".dockerenv", Placeholder::File),
    ("etc/resolv.conf", Placeholder::File),
    ("etc/hosts", Placeholder::File),
    ("etc/hostname", Placeholder::File),
    ("dev/console", Placeholder::File),
    ("etc/mtab", Placeholder::Symlink("/proc/mounts")),
];

#[derive(Debug, Clone, Copy)]
enum Placeholder {
    Dir,
    File,
    Symlink(&'static str),
}

/// `layerkit create`: apply what the store lacks, then make the init and container layers.
pub fn create(
    path: &Path,
    base: ContainerBase<'_>,
    name: Option<&str>,
    opts: &ApplyOptions,
) -> Result<Created> {
    let (inputs, image) = match base {
        ContainerBase::Image(i) => (i.layers.as_slice(), Some(i)),
        ContainerBase::Layers(l) => (l, None),
    };
    if let Some(n) = name {
        check_name(n)?;
        // Before any work (and again under the lock at the end).
        if let Ok(store) = Store::open_existing(path) {
            name_free(&store, n)?;
        }
    }
    let from: Vec<String> = match base {
        ContainerBase::Image(i) => vec![i.label.clone()],
        ContainerBase::Layers(l) => l.iter().map(|i| i.label.clone()).collect(),
    };
    let (apply, (id, name)) = apply_stack(path, inputs, opts, image, |store, run, report| {
        make(store, run, report, image, name, from, opts.ns)
    })?;
    Ok(Created { id, name, apply })
}

/// A conflict with the store (exit 1), not a usage error.
fn name_free(store: &Store, name: &str) -> Result<()> {
    if store
        .container_records()
        .iter()
        .any(|c| c.name == name || c.id == name)
    {
        return Err(Error::io(
            &store.path,
            io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("the name {name} is already in use"),
            ),
        ));
    }
    Ok(())
}

fn check_name(n: &str) -> Result<()> {
    let ok = !n.is_empty()
        && n.len() <= 128
        && n.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && n.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "--name {n}: letters, digits, '_', '.' and '-', starting with a letter or digit (as docker)"
        )))
    }
}

fn make(
    store: &Store,
    run: &OwnedFd,
    report: &ApplyReport,
    image: Option<&Image>,
    name: Option<&str>,
    from: Vec<String>,
    ns: Namespace,
) -> Result<(String, String)> {
    let e = |err: io::Error| Error::io(&store.path, err);
    let mut raw = [0u8; 34];
    raw[..17].copy_from_slice(&sys::random17().map_err(e)?);
    raw[17..].copy_from_slice(&sys::random17().map_err(e)?);
    let id = hex::encode(&raw[..32]);
    let name = name.map_or_else(|| format!("lk-{}", &id[..12]), str::to_string);
    name_free(store, &name)?;
    let ids: Vec<String> = report
        .layers
        .iter()
        .filter_map(|l| l.chain_id.as_deref().map(|c| layout::id(c).to_string()))
        .collect();
    let diff_ids: Vec<String> = report
        .layers
        .iter()
        .filter_map(|l| l.diff_id.clone())
        .collect();
    // The image's layers, topmost first, as the kernel stacks them.
    let lowers = ids
        .iter()
        .rev()
        .map(|i| store.diff_dir(i))
        .collect::<Result<Vec<_>>>()?;
    let view = LowerView::new(lowers, ns);
    let top = match ids.last() {
        Some(t) => Some(store.names_of(t)?),
        None => None,
    };

    // <run>/init: the placeholders.
    sys::mkdirat(run, b"init", 0o700).map_err(e)?;
    let init = sys::openat_dir(run, b"init").map_err(e)?;
    sys::mkdirat(&init, b"diff", 0o755).map_err(e)?;
    let root = sys::openat_dir(&init, b"diff").map_err(e)?;
    let mut w = Layer::<Stacked>::new(root, ns, FilePool::new(0));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64);
    let meta = Meta {
        mode: 0o755,
        mtime: now,
        ..Meta::default()
    };
    let mut made_dirs: Vec<String> = Vec::new();
    for (p, what) in PLACEHOLDERS {
        if !wanted(&view, p).map_err(e)? {
            continue;
        }
        // A parent the image lacks is made as docker makes it (0755 root, now); the ones it has
        // are left implied, so settling gives them the image's attributes.
        let comps: Vec<&str> = p.split('/').collect();
        for k in 1..comps.len() {
            let parent = comps[..k].join("/");
            if made_dirs.contains(&parent)
                || !matches!(view.lookup(parent.as_bytes()).map_err(e)?, Found::Absent)
            {
                continue;
            }
            let dir = Entry {
                path: RelPath::new(parent.as_bytes().to_vec()).expect("a clean placeholder path"),
                kind: Kind::Dir,
                meta: meta.clone(),
            };
            w.put(&dir, &mut io::empty())?;
            made_dirs.push(parent);
        }
        let kind = match what {
            Placeholder::Dir => Kind::Dir,
            Placeholder::File => Kind::File { size: 0 },
            Placeholder::Symlink(t) => Kind::Symlink {
                target: t.as_bytes().to_vec(),
            },
        };
        let entry = Entry {
            path: RelPath::new(p.as_bytes().to_vec()).expect("a clean placeholder path"),
            kind,
            meta: meta.clone(),
        };
        w.put(&entry, &mut io::empty())?;
    }
    // Parent dirs the image has keep its attributes (settling copies them from the lowers).
    w.finish()?.settle(&view)?.seal()?;
    let lower = top
        .as_ref()
        .map(|(link, lower)| layout::lower_file(link, lower.as_deref()));
    if let Some(l) = &lower {
        sys::write_file_atomic(init.as_fd(), b"lower", l.as_bytes(), 0o644).map_err(e)?;
    }
    sys::mkdirat(&init, b"work", 0o700).map_err(e)?;

    // <run>/ctr: the writable layer.
    sys::mkdirat(run, b"ctr", 0o700).map_err(e)?;
    let ctr = sys::openat_dir(run, b"ctr").map_err(e)?;
    for (d, mode) in [(&b"diff"[..], 0o755), (b"work", 0o700), (b"merged", 0o700)] {
        sys::mkdirat(&ctr, d, mode).map_err(e)?;
    }
    // The merged root takes its attributes from the topmost layer's root, the upper's: give it
    // the init layer's (the image's own, settled from the lowers), or `/` would turn 0755 root.
    let init_root = sys::openat_dir(&init, b"diff").map_err(e)?;
    let ctr_root = sys::openat_dir(&ctr, b"diff").map_err(e)?;
    copy_root_attrs(&init_root, &ctr_root, ns).map_err(e)?;

    let _guard = store.lock()?;
    name_free(store, &name)?;
    let init_link = fresh_link(store)?;
    sys::write_file_atomic(init.as_fd(), b"link", init_link.as_bytes(), 0o644).map_err(e)?;
    let ctr_link = loop {
        let l = fresh_link(store)?;
        if l != init_link {
            break l;
        }
    };
    sys::write_file_atomic(ctr.as_fd(), b"link", ctr_link.as_bytes(), 0o644).map_err(e)?;
    let ctr_lower = layout::lower_file(&init_link, lower.as_deref());
    sys::write_file_atomic(ctr.as_fd(), b"lower", ctr_lower.as_bytes(), 0o644).map_err(e)?;
    let rec = ContainerRecord {
        id: id.clone(),
        name: name.clone(),
        image: image.map(|i| i.config.clone()),
        from,
        layers: ids,
        diff_ids,
        created: crate::image::rfc3339_now(),
    };
    let init_name = format!("{id}-init");
    staging::exclusive(|| -> Result<()> {
        sys::rename_noreplace(run, b"init", &store.fd, init_name.as_bytes()).map_err(e)?;
        sys::rename_noreplace(run, b"ctr", &store.fd, id.as_bytes()).map_err(e)?;
        let t = format!("../{init_name}/diff");
        sys::symlinkat(t.as_bytes(), &store.links, init_link.as_bytes()).map_err(e)?;
        let t = format!("../{id}/diff");
        sys::symlinkat(t.as_bytes(), &store.links, ctr_link.as_bytes()).map_err(e)?;
        // Last: until the record exists, the dirs are leftovers the next command tidies.
        store.put_container(&rec)
    })?;
    Ok((id, name))
}

/// Owner, xattrs (but the overlay markers), mode and times of `from` onto `to`.
fn copy_root_attrs(from: &OwnedFd, to: &OwnedFd, ns: Namespace) -> io::Result<()> {
    let st = sys::fstat(from)?;
    sys::fchown(to, u64::from(st.st_uid), u64::from(st.st_gid))?;
    let private = [ns.prefix(), b"overlay.".as_slice()].concat();
    for (n, v) in sys::fget_all_xattrs(from.as_fd())? {
        if !n.starts_with(&private) {
            sys::fsetxattr(to, &n, &v)?;
        }
    }
    sys::fchmod(to, st.st_mode & 0o7777)?;
    sys::futimens(to, st.st_mtime, st.st_mtime_nsec as u32)
}

/// A short name no `l/` link has yet. Under the lock.
fn fresh_link(store: &Store) -> Result<String> {
    loop {
        let l = layout::link_name(&sys::random17().map_err(|e| Error::io(&store.path, e))?);
        if sys::lstatat(&store.links, l.as_bytes()).is_err() {
            return Ok(l);
        }
    }
}

/// Whether the init layer needs a placeholder at `p`: only where the image has nothing, and only
/// below dirs (an image whose `/etc` is a symlink keeps it; a placeholder would hide it).
fn wanted(view: &LowerView, p: &str) -> io::Result<bool> {
    let comps: Vec<&str> = p.split('/').collect();
    for k in 1..comps.len() {
        let parent = comps[..k].join("/");
        match view.lookup(parent.as_bytes())? {
            Found::Dir { .. } | Found::Absent => {}
            Found::Other { .. } => return Ok(false),
        }
    }
    Ok(matches!(view.lookup(p.as_bytes())?, Found::Absent))
}

/// The dirs of a container, for `inspect` and `commit`.
#[derive(Debug, Clone)]
pub struct ContainerDirs {
    /// The record.
    pub record: ContainerRecord,
    /// `<cid>-init/diff` first, then the image's layers topmost first (absolute).
    pub lowers: Vec<PathBuf>,
    /// `<cid>/diff`.
    pub upper: PathBuf,
    /// `<cid>/merged`.
    pub merged: PathBuf,
    /// `<cid>/work`.
    pub work: PathBuf,
    /// The store's marker namespace.
    pub ns: Namespace,
}

/// The dirs of container `what` (id, name or unique id prefix) in the store at `path`.
pub fn container_dirs(path: &Path, what: &str) -> Result<ContainerDirs> {
    let store = Store::open_existing(path)?;
    super::gc::repair(&store)?;
    let record = store.find_container(what)?;
    Ok(dirs_of(&store, record))
}

fn dirs_of(store: &Store, record: ContainerRecord) -> ContainerDirs {
    let base = &store.path;
    let mut lowers = vec![base.join(format!("{}-init", record.id)).join("diff")];
    lowers.extend(
        record
            .layers
            .iter()
            .rev()
            .map(|i| base.join(i).join("diff")),
    );
    ContainerDirs {
        upper: base.join(&record.id).join("diff"),
        merged: base.join(&record.id).join("merged"),
        work: base.join(&record.id).join("work"),
        lowers,
        ns: store.namespace(),
        record,
    }
}

/// Docker's `inspect` shape.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct Inspect {
    /// The container id.
    pub id: String,
    /// `/NAME`, as docker writes it.
    pub name: String,
    /// The image's config digest (null when made from layer files).
    pub image: Option<String>,
    /// When it was made.
    pub created: String,
    /// `{"Name": "overlay2", "Data": {LowerDir, UpperDir, MergedDir, WorkDir}}`.
    pub graph_driver: GraphDriver,
    /// `{"Type": "layers", "Layers": [diffIDs, bottom first]}`.
    #[serde(rename = "RootFS")]
    pub root_fs: RootFs,
    /// Whether its `merged` dir is mounted now (layerkit's addition).
    pub mounted: bool,
}

/// `GraphDriver` of docker's inspect.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GraphDriver {
    /// `overlay2`.
    pub name: String,
    /// The dirs.
    pub data: GraphData,
}

/// `GraphDriver.Data` of docker's inspect.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GraphData {
    /// Absolute diff dirs, `:`-separated (`:` and `\\` in a path escaped, as `mount` reads them):
    /// the init layer's first, then the image's topmost first.
    pub lower_dir: String,
    /// The container's `diff`.
    pub upper_dir: String,
    /// The container's `merged`.
    pub merged_dir: String,
    /// The container's `work`.
    pub work_dir: String,
}

/// `RootFS` of docker's inspect.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct RootFs {
    /// `layers`.
    #[serde(rename = "Type")]
    pub kind: String,
    /// The image's diffIDs, bottom first.
    pub layers: Vec<String>,
}

/// `layerkit inspect`.
pub fn inspect(path: &Path, what: &str) -> Result<Inspect> {
    let d = container_dirs(path, what)?;
    let show = |p: &Path| p.display().to_string();
    Ok(Inspect {
        id: d.record.id.clone(),
        name: format!("/{}", d.record.name),
        image: d.record.image.clone(),
        created: d.record.created.clone(),
        mounted: sys::is_mount_point(&d.merged).unwrap_or(false),
        graph_driver: GraphDriver {
            name: "overlay2".into(),
            data: GraphData {
                lower_dir: d
                    .lowers
                    .iter()
                    .map(|p| crate::overlay::escape_lowerdir(&show(p)))
                    .collect::<Vec<_>>()
                    .join(":"),
                upper_dir: show(&d.upper),
                merged_dir: show(&d.merged),
                work_dir: show(&d.work),
            },
        },
        root_fs: RootFs {
            kind: "layers".into(),
            layers: d.record.diff_ids.clone(),
        },
    })
}

/// `layerkit mount`: overlay at `<cid>/merged` (nothing to do when it is mounted already); returns
/// that path. The lowers are `l/SHORT` names relative to the store, as Docker passes them.
pub fn mount(path: &Path, what: &str) -> Result<PathBuf> {
    let store = Store::open_existing(path)?;
    super::gc::repair(&store)?;
    let _guard = store.lock()?;
    let rec = store.find_container(what)?;
    let merged = store.path.join(&rec.id).join("merged");
    let e = |err: io::Error| Error::io(&merged, err);
    // The container's own dirs must be dirs of the store, not symlinks out of it: mount(2)
    // and umount(2) would follow them.
    real_dir(&store, &rec.id)?;
    if sys::lstatat(&store.fd, format!("{}/merged", rec.id).as_bytes()).is_err() {
        // Docker's overlay2 removes `merged` on unmount; make it again.
        sys::mkdirat(&store.fd, format!("{}/merged", rec.id).as_bytes(), 0o700).map_err(e)?;
    }
    for d in ["diff", "work", "merged"] {
        real_dir(&store, &format!("{}/{d}", rec.id))?;
    }
    if sys::is_mount_point(&merged).map_err(e)? {
        return Ok(merged);
    }
    // The lowerdir is made from the record, each short link checked (and re-made if a crash lost
    // it or something re-pointed it): never from a `lower` file's text, which could carry
    // other mount options or name any dir of the host.
    let mut lowers = vec![relink(&store, &format!("{}-init", rec.id))?];
    for id in rec.layers.iter().rev() {
        lowers.push(relink(&store, id)?);
    }
    relink(&store, &rec.id)?;
    let mut data = String::new();
    if sys::stat_path(Path::new("/sys/module/overlay/parameters/index"), true).is_ok() {
        // As Docker: a layer is mounted in many places at once; the index would tie it to one.
        data.push_str("index=off,");
    }
    if store.namespace() == Namespace::User {
        data.push_str("userxattr,");
    }
    data.push_str(&format!(
        "lowerdir={},upperdir={id}/diff,workdir={id}/work",
        lowers
            .iter()
            .map(|l| format!("l/{l}"))
            .collect::<Vec<_>>()
            .join(":"),
        id = rec.id
    ));
    sys::mount_overlay_in(
        store.fd.as_fd(),
        format!("{}/merged", rec.id).as_bytes(),
        data.as_bytes(),
    )
    .map_err(|err| {
        Error::io(
            &merged,
            io::Error::new(err.kind(), format!("mount -t overlay -o {data}: {err}")),
        )
    })?;
    Ok(merged)
}

/// `dir` (relative to the store) is a directory itself, not a symlink to one.
fn real_dir(store: &Store, dir: &str) -> Result<()> {
    let st =
        sys::lstatat(&store.fd, dir.as_bytes()).map_err(|e| Error::io(store.path.join(dir), e))?;
    if sys::file_type(&st) != sys::FileType::Directory {
        return Err(Error::io(
            store.path.join(dir),
            io::Error::new(
                io::ErrorKind::InvalidData,
                "not a directory of the store (a symlink?); refusing to mount there",
            ),
        ));
    }
    Ok(())
}

/// The `l/` link of a store dir (a layer, an init layer or a container), checked to point at
/// `../<dir>/diff` and re-made if a crash lost it or it points elsewhere; returns its short name.
/// Under the lock.
fn relink(store: &Store, dir: &str) -> Result<String> {
    let p = store.path.join(dir);
    let plain = dir.strip_suffix("-init").unwrap_or(dir);
    if !super::records::is_id(plain) {
        return Err(Error::io(&p, io::Error::other("not a store dir name")));
    }
    real_dir(store, &format!("{dir}/diff"))?;
    let link = sys::read_file_at(&store.fd, format!("{dir}/link").as_bytes())
        .map_err(|e| Error::io(p.join("link"), e))?;
    if !layout::is_link_name(&link) {
        return Err(Error::io(
            p.join("link"),
            io::Error::new(io::ErrorKind::InvalidData, "not a 26-char link name"),
        ));
    }
    let want = format!("../{dir}/diff");
    match sys::readlinkat(&store.links, &link) {
        Ok(t) if t == want.as_bytes() => {}
        Ok(_) | Err(_) => {
            let _ = sys::unlinkat(&store.links, &link, false);
            sys::symlinkat(want.as_bytes(), &store.links, &link).map_err(|e| Error::io(&p, e))?;
        }
    }
    Ok(String::from_utf8_lossy(&link).into_owned())
}

/// `layerkit umount`: `Ok(false)` when it was not mounted.
pub fn umount(path: &Path, what: &str) -> Result<bool> {
    let store = Store::open_existing(path)?;
    let _guard = store.lock()?;
    let rec = store.find_container(what)?;
    let merged = store.path.join(&rec.id).join("merged");
    sys::unmount(&merged).map_err(|e| Error::io(&merged, e))
}

/// `layerkit rm`: the container's dirs, links and record. A mounted one is refused unless
/// `force` (then unmounted first).
pub fn remove(path: &Path, what: &str, force: bool) -> Result<String> {
    let store = Store::open_existing(path)?;
    let _guard = store.lock()?;
    let rec = store.find_container(what)?;
    let merged = store.path.join(&rec.id).join("merged");
    if sys::is_mount_point(&merged).unwrap_or(true) {
        if !force {
            return Err(Error::io(
                &merged,
                io::Error::other(format!(
                    "container {} is mounted; layerkit umount it first, or rm -f",
                    rec.name
                )),
            ));
        }
        sys::unmount(&merged).map_err(|e| Error::io(&merged, e))?;
    }
    if store.pinned().contains(&rec.id) {
        return Err(Error::io(
            store.path.join(&rec.id),
            io::Error::other(format!(
                "container {} is being committed; try again when that ends",
                rec.name
            )),
        ));
    }
    if super::gc::container_in_use(&store, &rec.id) {
        // A bind mount of it, a copy in another namespace, a mount made from inspect's dirs:
        // taking its dirs would pull the upper from under a live overlay. Not even with -f.
        return Err(Error::io(
            store.path.join(&rec.id),
            io::Error::other(format!(
                "container {} is used by another overlay mount (a bind mount, another mount \
                 namespace, a mount of inspect's dirs); unmount that first",
                rec.name
            )),
        ));
    }
    super::gc::discard_container(&store, &rec.id)?;
    Ok(rec.id)
}

/// Where a container's image can be read again (for `commit -o IMAGE`): the recorded source
/// reference, the platform its config names, and the config digest it must still have. `None`
/// for a container made from layer files.
fn source_of(
    store: &Store,
    rec: &ContainerRecord,
) -> Result<Option<(String, crate::image::PlatformChoice, String)>> {
    let Some(config) = rec.image.clone() else {
        return Ok(None);
    };
    let hex = layout::id(&config).to_string();
    let image = store
        .image_records()
        .into_iter()
        .find(|(h, _)| *h == hex)
        .map(|(_, r)| r)
        .ok_or_else(|| {
            Error::io(
                &store.path,
                io::Error::new(
                    io::ErrorKind::NotFound,
                    format!("the record of image {config} is gone (rmi -f?)"),
                ),
            )
        })?;
    let cfg: serde_json::Value =
        serde_json::from_slice(&store.image_config(&hex)?).unwrap_or_default();
    let s = |k: &str| cfg[k].as_str().unwrap_or_default().to_string();
    let platform = crate::image::PlatformChoice {
        os: s("os"),
        architecture: s("architecture"),
        variant: cfg["variant"].as_str().map(str::to_string),
    };
    Ok(Some((
        image.source.unwrap_or(image.reference),
        platform,
        config,
    )))
}

/// A container held for a commit: resolved once, and pinned (with its layers) by a run of its
/// own until dropped, so `rm` refuses it and `prune` keeps its lowers meanwhile.
pub(crate) struct Held {
    /// Its dirs.
    pub dirs: ContainerDirs,
    /// Where its image can be read again, if it has one.
    pub source: Option<(String, crate::image::PlatformChoice, String)>,
    _run: (staging::Registered, OwnedFd, OwnedFd),
}

/// Hold container `what` for a commit.
pub(crate) fn hold(path: &Path, what: &str) -> Result<Held> {
    let store = Store::open_existing(path)?;
    super::gc::repair(&store)?;
    let _guard = store.lock()?;
    let rec = store.find_container(what)?;
    let run = store.new_run()?;
    let mut pins = vec![rec.id.clone()];
    pins.extend(rec.layers.iter().cloned());
    store.pin(&run.1, &pins)?;
    let source = source_of(&store, &rec)?;
    Ok(Held {
        dirs: dirs_of(&store, rec),
        source,
        _run: run,
    })
}
