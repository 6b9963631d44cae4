//! The overlay-native layer writer: a [`Sink`] that materialises a changeset inside one layer dir.
//! It is the only code that creates files from untrusted input. This file holds its state and the
//! entries that make something (dirs, files, links, nodes); `parents.rs` resolves where they go,
//! `markers.rs` writes whiteouts and opaque dirs.
//!
//! What needs the lower layers (implied dirs' attributes, parents through a lower symlink, hardlinks
//! to lower files, an opaque root) is recorded here and settled by `settle.rs` once the lowers are
//! complete; without lowers (`--into`) those cases get defaults or are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::entry::{Entry, Kind, Meta, Sink};
use crate::error::{Error, Result, Rule};
use crate::overlay::is_whiteout;
use crate::overlay::write::attrs;
use crate::overlay::write::cursor::Cursor;
use crate::overlay::write::key::{within, within_set, Key, Waiting};
use crate::overlay::write::parents::{Parent, Purpose};
use crate::overlay::write::pool::{FilePool, LayerFiles, PendingFile, SMALL};
use crate::overlay::Namespace;
use crate::path::{join, show, split};
use crate::sys::{self, FileType, Node};

/// Writes one layer. See the module docs.
pub(super) struct LayerWriter {
    pub(super) root: Arc<OwnedFd>,
    pub(super) ns: Namespace,
    /// Lowers will be known later (`--store`): defer what needs them instead of refusing.
    pub(super) deferred: bool,
    /// Dirs this layer writes into without an entry of their own (resolved paths).
    pub(super) implied: BTreeSet<Key>,
    /// Whiteouts this layer wrote, by their path in the layer (checked against the lowers).
    pub(super) whiteouts: Vec<Vec<u8>>,
    /// Dirs marked opaque in this layer.
    pub(super) opaque: BTreeSet<Vec<u8>>,
    /// Hardlinks whose target is not in this layer: (link path, target path), in stream order.
    pub(super) links: Waiting,
    /// A `.wh..wh..opq` at the root was seen.
    pub(super) root_opaque: bool,
    /// The tar had an entry for the root itself.
    pub(super) root_explicit: bool,
    /// Every dir's final mtime, set last (creating children changes it).
    pub(super) dir_times: BTreeMap<Key, (i64, u32)>,
    pub(super) warnings: Vec<String>,
    pub(super) cache: Option<(Vec<u8>, Parent)>,
    buf: Vec<u8>,
    selinux_warned: bool,
    pool: LayerFiles,
}

fn exists(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AlreadyExists
}
impl LayerWriter {
    /// A writer into the empty directory `root`. With `deferred`, what needs the lower layers is
    /// recorded for [`LayerWriter::fix_against`](crate::overlay::write::settle); without, it is refused.
    pub(super) fn new(root: OwnedFd, ns: Namespace, deferred: bool, pool: Arc<FilePool>) -> Self {
        let mut dir_times = BTreeMap::new();
        dir_times.insert(Key::from(Vec::new()), (0, 0));
        LayerWriter {
            root: Arc::new(root),
            ns,
            deferred,
            implied: BTreeSet::new(),
            whiteouts: Vec::new(),
            opaque: BTreeSet::new(),
            links: Waiting::default(),
            root_opaque: false,
            root_explicit: false,
            dir_times,
            warnings: Vec::new(),
            cache: None,
            buf: vec![0; 1 << 20],
            selinux_warned: false,
            pool: LayerFiles::new(pool),
        }
    }

    pub(super) fn io(path: &[u8], e: io::Error) -> Error {
        Error::io(show(path), e)
    }

    /// Drop the bookkeeping of `path` and everything below it (it was removed or replaced).
    pub(super) fn forget(&mut self, path: &[u8]) {
        for p in within_set(&self.implied, path) {
            self.implied.remove(&p);
        }
        for p in within_set(&self.opaque, path) {
            self.opaque.remove(&p);
        }
        self.links.remove_within(path);
        for p in within(&self.dir_times, path) {
            self.dir_times.remove(&p);
        }
    }

    /// Make room for a new non-dir at `name`: whatever this layer has there goes (last wins).
    /// Returns whether the old node was a whiteout (replacing one is normal, not a duplicate).
    fn clear(&mut self, at: BorrowedFd<'_>, name: &[u8], path: &[u8]) -> Result<()> {
        let st = match sys::lstatat(at, name) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(Self::io(path, e)),
        };
        if is_whiteout(&st) {
            return sys::unlinkat(at, name, false).map_err(|e| Self::io(path, e));
        }
        let implied = self.implied.contains(path);
        if !implied {
            self.warnings.push(format!(
                "{}: duplicate entry, the later one wins",
                show(path)
            ));
        }
        if sys::file_type(&st) == FileType::Directory {
            sys::remove_all_at(at, name).map_err(|e| Self::io(path, e))?;
            self.forget_cache();
        } else {
            sys::unlinkat(at, name, false).map_err(|e| Self::io(path, e))?;
        }
        self.forget(path);
        Ok(())
    }

    /// Run `make` to create `name`; if something is in the way, clear it and try once more.
    fn create<T>(
        &mut self,
        at: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        mut make: impl FnMut() -> io::Result<T>,
    ) -> Result<T> {
        // A hardlink to a lower file waits for the lowers with no node of its own: a later entry
        // at its path (or above it) replaces it, as in a flat extraction (last one wins).
        self.links.remove_within(path);
        match make() {
            Ok(t) => Ok(t),
            Err(e) if exists(&e) => {
                self.clear(at, name, path)?;
                make().map_err(|e| Self::io(path, e))
            }
            Err(e) => Err(Self::io(path, e)),
        }
    }

    /// The on-disk name of a tar xattr, or `None` to skip it. The active namespace's overlay names
    /// are escaped one level (overlayfs.rst "Nesting overlayfs mounts"), so a layer can never plant
    /// a marker the kernel would obey.
    fn disk_xattr(&mut self, name: &[u8]) -> Option<Vec<u8>> {
        if name == b"security.selinux" {
            if !self.selinux_warned {
                self.selinux_warned = true;
                self.warnings.push(
                    "security.selinux xattrs skipped: labels are assigned by the host's policy"
                        .into(),
                );
            }
            return None;
        }
        let prefix = self.ns.prefix();
        match name.strip_prefix(prefix) {
            Some(rest) => {
                let mut v = prefix.to_vec();
                v.extend_from_slice(b"overlay.");
                v.extend_from_slice(rest);
                Some(v)
            }
            None => Some(name.to_vec()),
        }
    }

    /// Owner, xattrs, mode (after chown, which clears setuid), then times; dirs' times are deferred.
    fn meta_fd(
        &mut self,
        fd: BorrowedFd<'_>,
        path: &[u8],
        meta: &Meta,
        dir: bool,
        existed: bool,
    ) -> Result<()> {
        if existed {
            // Dir over dir: the later entry's xattrs replace the earlier ones; markers stay.
            let keep: Vec<Vec<u8>> = meta
                .xattrs
                .iter()
                .filter_map(|(n, _)| self.disk_xattr(n))
                .collect();
            let marker = self.ns.name("opaque");
            for (n, _) in sys::fget_all_xattrs(fd).map_err(|e| Self::io(path, e))? {
                if n != marker && n != b"security.selinux" && !keep.contains(&n) {
                    sys::fremovexattr(fd, &n).map_err(|e| Self::io(path, e))?;
                }
            }
        }
        let disk = self.on_disk(meta);
        attrs::set(
            attrs::Node::Open(fd),
            path,
            &attrs::Attrs::of(&disk, !dir),
            &mut self.warnings,
        )?;
        if dir {
            self.dir_times
                .insert(Key::from(path), (meta.mtime, meta.mtime_nsec));
        }
        Ok(())
    }

    /// `meta` with its xattrs as they go to disk (escaped; skipped ones left out).
    fn on_disk(&mut self, meta: &Meta) -> Meta {
        let mut m = meta.clone();
        m.xattrs = std::mem::take(&mut m.xattrs)
            .into_iter()
            .filter_map(|(n, v)| self.disk_xattr(&n).map(|d| (d, v)))
            .collect();
        m
    }

    /// The same for nodes that cannot be opened (symlinks, devices, fifos).
    fn meta_at(
        &mut self,
        at: BorrowedFd<'_>,
        name: &[u8],
        path: &[u8],
        meta: &Meta,
        symlink: bool,
    ) -> Result<()> {
        let disk = self.on_disk(meta);
        attrs::set(
            attrs::Node::At {
                dir: at,
                name,
                symlink,
            },
            path,
            &attrs::Attrs::of(&disk, true),
            &mut self.warnings,
        )
    }

    fn dir(&mut self, path: &[u8], meta: &Meta) -> Result<()> {
        if path.is_empty() {
            self.root_explicit = true;
            let root = self.root.clone();
            return self.meta_fd(root.as_fd(), b"", meta, true, true);
        }
        let p = self.parent(path, Purpose::Create)?.expect("created");
        let (_, name) = split(path);
        let rpath = join(&p.path, name);
        // A waiting hardlink at this path (see `create`) is replaced by the dir; the link had
        // replaced whatever the lowers have here, so the dir hides them (as below).
        let mut existed = false;
        let mut opaque = self.links.remove(&rpath);
        if let Err(e) = sys::mkdirat(&*p.fd, name, 0o700) {
            if !exists(&e) {
                return Err(Self::io(&rpath, e));
            }
            let st = sys::lstatat(&*p.fd, name).map_err(|e| Self::io(&rpath, e))?;
            if sys::file_type(&st) == FileType::Directory {
                existed = true;
                if !self.implied.remove(rpath.as_slice()) {
                    self.warnings.push(format!(
                        "{}: duplicate entry, the later one wins",
                        show(&rpath)
                    ));
                }
            } else {
                // A non-dir of this layer stands here (a whiteout, or a file that replaced the
                // lower dir): whatever the lowers have at the path is gone, so the dir that now
                // replaces it must hide them too (base `ff/old`, layer `ff`, `ff/`, `ff/k`: the
                // merged view is `ff/k`, as a flat extraction and squash give).
                opaque = true;
                self.clear(p.fd.as_fd(), name, &rpath)?;
                sys::mkdirat(&*p.fd, name, 0o700).map_err(|e| Self::io(&rpath, e))?;
            }
        }
        let fd = sys::openat_dir(&*p.fd, name).map_err(|e| Self::io(&rpath, e))?;
        if opaque {
            self.set_opaque(fd.as_fd(), &rpath)?;
        }
        self.meta_fd(fd.as_fd(), &rpath, meta, true, existed)
    }

    fn file(&mut self, path: &[u8], meta: &Meta, size: u64, data: &mut dyn Read) -> Result<()> {
        let p = self.parent(path, Purpose::Create)?.expect("created");
        let (_, name) = split(path);
        let rpath = join(&p.path, name);
        let fd = p.fd.clone();
        let mut f = self.create(fd.as_fd(), name, &rpath, || sys::create_excl(&*fd, name))?;
        if size <= SMALL && self.pool.enabled() {
            let mut bytes = vec![0u8; size as usize];
            read_data(data, &mut bytes, &rpath)?;
            let meta = self.on_disk(meta);
            return self.pool.submit(PendingFile {
                file: f,
                data: bytes,
                meta,
                path: rpath,
            });
        }
        let mut left = size;
        while left > 0 {
            let want = left.min(self.buf.len() as u64) as usize;
            let n = match data.read(&mut self.buf[..want]) {
                Ok(0) => {
                    return Err(Error::rejected(
                        show(&rpath),
                        Rule::MalformedTar,
                        "truncated entry data",
                    ))
                }
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(Error::rejected(
                        show(&rpath),
                        Rule::MalformedTar,
                        e.to_string(),
                    ))
                }
                Err(e) => return Err(Self::io(&rpath, e)),
            };
            f.write_all(&self.buf[..n])
                .map_err(|e| Self::io(&rpath, e))?;
            left -= n as u64;
        }
        self.meta_fd(f.as_fd(), &rpath, meta, false, false)
    }

    fn symlink(&mut self, path: &[u8], meta: &Meta, target: &[u8]) -> Result<()> {
        let p = self.parent(path, Purpose::Create)?.expect("created");
        let (_, name) = split(path);
        let rpath = join(&p.path, name);
        let fd = p.fd.clone();
        self.create(fd.as_fd(), name, &rpath, || {
            sys::symlinkat(target, &*fd, name)
        })?;
        self.meta_at(fd.as_fd(), name, &rpath, meta, true)
    }

    fn node(&mut self, path: &[u8], meta: &Meta, node: Node) -> Result<()> {
        let p = self.parent(path, Purpose::Create)?.expect("created");
        let (_, name) = split(path);
        let rpath = join(&p.path, name);
        let fd = p.fd.clone();
        self.create(fd.as_fd(), name, &rpath, || sys::mknodat(&*fd, name, node))?;
        self.meta_at(fd.as_fd(), name, &rpath, meta, false)
    }

    fn hardlink(&mut self, path: &[u8], target: &[u8]) -> Result<()> {
        let t = self.parent(target, Purpose::Lookup)?;
        let (_, tname) = split(target);
        let tst = match &t {
            Some(t) => match sys::lstatat(&*t.fd, tname) {
                Ok(st) => Some(st),
                Err(e) if e.kind() == io::ErrorKind::NotFound => None,
                Err(e) => return Err(Self::io(target, e)),
            },
            None => None,
        };
        let p = self.parent(path, Purpose::Create)?.expect("created");
        let (_, name) = split(path);
        let rpath = join(&p.path, name);
        match (t, tst) {
            (_, Some(st)) if sys::file_type(&st) == FileType::Directory => Err(Error::rejected(
                show(path),
                Rule::Hardlink,
                format!("target {} is a directory", show(target)),
            )),
            (Some(t), Some(st)) if !is_whiteout(&st) => {
                if join(&t.path, tname) == rpath {
                    self.warnings
                        .push(format!("{}: hardlink to itself ignored", show(&rpath)));
                    return Ok(());
                }
                let fd = p.fd.clone();
                self.create(fd.as_fd(), name, &rpath, || {
                    sys::linkat(&*t.fd, tname, &*fd, name)
                })
            }
            _ if self.deferred => {
                // Only a lower layer can have it: settled once the lowers are complete.
                let fd = p.fd.clone();
                self.clear(fd.as_fd(), name, &rpath)?;
                let resolved = self.links.target_of(target).unwrap_or(target).to_vec();
                self.links.push(rpath, resolved);
                Ok(())
            }
            _ => Err(Error::rejected(
                show(path),
                Rule::Hardlink,
                format!(
                    "target {} is not in this layer (it must come earlier in the tar)",
                    show(target)
                ),
            )),
        }
    }

    /// Wait for the files handed to the pool (before anything reads what they write).
    pub(super) fn drain(&mut self) -> Result<()> {
        let w = self.pool.drain()?;
        self.warnings.extend(w);
        Ok(())
    }

    /// Set every directory's time, last, so that creating children cannot disturb them; default
    /// attributes for a root the tar did not describe.
    pub(super) fn seal(mut self) -> Result<Vec<String>> {
        self.drain()?;
        if !self.root_explicit {
            let root = self.root.clone();
            sys::fchown(&*root, 0, 0).map_err(|e| Self::io(b"", e))?;
            sys::fchmod(&*root, 0o755).map_err(|e| Self::io(b"", e))?;
        }
        if let Some((l, t)) = self.links.first() {
            return Err(Error::rejected(
                show(l),
                Rule::Hardlink,
                format!("target {} is not in this layer", show(t)),
            ));
        }
        let times = std::mem::take(&mut self.dir_times);
        // In sorted order, so one cursor visits the tree once at any depth.
        let mut cursor = Cursor::new(self.root.clone());
        for (path, (s, ns)) in times {
            if path.is_empty() {
                sys::futimens(&*self.root, s, ns).map_err(|e| Self::io(b"", e))?;
                continue;
            }
            let (dir, name) = split(&path);
            let Some(at) = cursor.goto(dir).map_err(|e| Self::io(dir, e))? else {
                continue;
            };
            match sys::utimensat_nofollow(at, name, s, ns) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Self::io(&path, e)),
            }
        }
        Ok(self.warnings)
    }
}

impl Sink for LayerWriter {
    fn put(&mut self, e: &Entry, data: &mut dyn Read) -> Result<()> {
        match &e.kind {
            Kind::Whiteout => self.whiteout(&e.path, &e.meta),
            Kind::Opaque => self.opaque_marker(&e.path),
            Kind::Dir => self.dir(&e.path, &e.meta),
            Kind::File { size } => self.file(&e.path, &e.meta, *size, data),
            Kind::Symlink { target } => self.symlink(&e.path, &e.meta, target),
            Kind::Hardlink { target } => self.hardlink(&e.path, target),
            Kind::Char { major, minor } => self.node(&e.path, &e.meta, Node::Char(*major, *minor)),
            Kind::Block { major, minor } => {
                self.node(&e.path, &e.meta, Node::Block(*major, *minor))
            }
            Kind::Fifo => self.node(&e.path, &e.meta, Node::Fifo),
        }
    }
}

/// Read exactly `buf.len()` bytes of entry data; a short stream is a malformed tar.
fn read_data(data: &mut dyn Read, buf: &mut [u8], path: &[u8]) -> Result<()> {
    let mut got = 0;
    while got < buf.len() {
        match data.read(&mut buf[got..]) {
            Ok(0) => {
                return Err(Error::rejected(
                    show(path),
                    Rule::MalformedTar,
                    "truncated entry data",
                ))
            }
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(Error::rejected(
                    show(path),
                    Rule::MalformedTar,
                    e.to_string(),
                ))
            }
            Err(e) => return Err(LayerWriter::io(path, e)),
        }
    }
    Ok(())
}
