//! The overlay-native layer writer: a [`Sink`] that materialises a changeset inside one layer dir.
//! It is the only code that creates files from untrusted input.
//!
//! Confinement: every parent path is resolved inside the layer root, one component at a time from an
//! open directory with `O_NOFOLLOW` (or in one `openat2(RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS)` when no
//! symlink is on the way); a symlink met on the way is read and resolved *inside the root* (chroot
//! semantics: `/` and `..` stop at the layer root); the final component is never followed. So no
//! entry, whatever names and links the tar plants, can create or change anything outside the root.
//!
//! Markers (semantics.md A2): a whiteout becomes a char 0/0 device, an opaque marker the
//! `<ns>.overlay.opaque=y` xattr. Both only concern the layers below: content of this layer
//! survives them whatever the order, a whited-out name re-created as a dir becomes an opaque dir, and
//! no whiteout is ever left below a same-layer opaque dir (the kernel would list it as a ghost).
//!
//! What needs the lower layers (implied dirs' attributes, parents through a lower symlink, hardlinks
//! to lower files, an opaque root) is recorded here and settled by `overlay::fixup` once the lowers are
//! complete; without lowers (`--into`) those cases get defaults or are refused.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::entry::{Entry, Kind, Meta, Sink, MAX_DEPTH};
use crate::error::{Error, Result, Rule};
use crate::overlay::is_whiteout;
use crate::overlay::write::attrs;
use crate::overlay::write::cursor::Cursor;
use crate::overlay::write::key::{ancestor_in, within, within_set, Key, Waiting};
use crate::overlay::write::pool::{FilePool, LayerFiles, PendingFile, SMALL};
use crate::overlay::Namespace;
use crate::path::{join, show, split};
use crate::resolve::{joined, resolve, Last, Options as ResolveOptions, Outcome, Seen, Tree};
use crate::sys::{self, FileType, Node};

/// How a parent path is being resolved.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Purpose {
    /// For an entry: missing dirs are created (implied), a same-layer whiteout on the way becomes an
    /// opaque dir, a same-layer non-dir on the way is an error.
    Create,
    /// For a whiteout: as `Create`, but a same-layer non-dir or whiteout on the way means the path is
    /// already gone: nothing to do.
    Whiteout,
    /// For an opaque marker's dir: as `Create`.
    Opaque,
    /// For reading (hardlink targets, dir times): nothing is created.
    Lookup,
}

/// A resolved parent directory.
pub(crate) struct Parent {
    pub fd: Arc<OwnedFd>,
    /// Its path inside the layer, symlinks resolved ("" = the root).
    pub path: Vec<u8>,
}

/// Writes one layer. See the module docs.
pub(crate) struct LayerWriter {
    pub(crate) root: Arc<OwnedFd>,
    pub(crate) ns: Namespace,
    /// Lowers will be known later (`--store`): defer what needs them instead of refusing.
    pub(crate) deferred: bool,
    /// Dirs this layer writes into without an entry of their own (resolved paths).
    pub(crate) implied: BTreeSet<Key>,
    /// Whiteouts this layer wrote, by their path in the layer (checked against the lowers).
    pub(crate) whiteouts: Vec<Vec<u8>>,
    /// Dirs marked opaque in this layer.
    pub(crate) opaque: BTreeSet<Vec<u8>>,
    /// Hardlinks whose target is not in this layer: (link path, target path), in stream order.
    pub(crate) links: Waiting,
    /// A `.wh..wh..opq` at the root was seen.
    pub(crate) root_opaque: bool,
    /// The tar had an entry for the root itself.
    pub(crate) root_explicit: bool,
    /// Every dir's final mtime, set last (creating children changes it).
    pub(crate) dir_times: BTreeMap<Key, (i64, u32)>,
    pub(crate) warnings: Vec<String>,
    cache: Option<(Vec<u8>, Parent)>,
    buf: Vec<u8>,
    selinux_warned: bool,
    pool: LayerFiles,
}

/// The layer dir being written, as the resolver sees it: one open dir (`None`: the root).
struct LayerTree<'w, 'e> {
    writer: &'w mut LayerWriter,
    cur: Option<Arc<OwnedFd>>,
    /// The dir `look` found (or made), entered by `down`.
    next: Option<OwnedFd>,
    entry: &'e [u8],
    purpose: Purpose,
}

impl LayerTree<'_, '_> {
    fn here(&self) -> Arc<OwnedFd> {
        self.cur.clone().unwrap_or_else(|| self.writer.root.clone())
    }
}

impl Tree for LayerTree<'_, '_> {
    type Error = Error;

    fn look(&mut self, name: &[u8], path: &[u8]) -> Result<Seen> {
        let cur = self.here();
        match sys::openat_dir(&*cur, name) {
            Ok(fd) => {
                self.next = Some(fd);
                return Ok(Seen::Dir);
            }
            Err(e) if !sys::is_absent(&e) => return Err(LayerWriter::io(path, e)),
            Err(_) => {}
        }
        let st = match sys::lstatat(&*cur, name) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Seen::Missing),
            Err(e) => return Err(LayerWriter::io(path, e)),
        };
        let marker = matches!(self.purpose, Purpose::Whiteout | Purpose::Opaque);
        if sys::file_type(&st) == FileType::Symlink {
            if marker {
                return Err(through_symlink(
                    self.entry,
                    self.purpose,
                    format!("{} is a symlink in this layer", show(path)),
                ));
            }
            let target = sys::readlinkat(&*cur, name).map_err(|e| LayerWriter::io(path, e))?;
            return Ok(Seen::Symlink(target));
        }
        if is_whiteout(&st) && matches!(self.purpose, Purpose::Create | Purpose::Opaque) {
            // `.wh.X` then `X/child`: X is re-created by this layer, hiding the lower X.
            sys::unlinkat(&*cur, name, false).map_err(|e| LayerWriter::io(path, e))?;
            let fd = self
                .writer
                .make_dir(cur.as_fd(), name, Key::from(path), true)?;
            self.next = Some(fd);
            return Ok(Seen::Dir);
        }
        Ok(Seen::Other)
    }

    fn down(&mut self, _name: &[u8], _path: &[u8]) -> Result<()> {
        self.cur = Some(Arc::new(self.next.take().expect("looked at")));
        Ok(())
    }

    fn up(&mut self, path: &[u8]) -> Result<()> {
        self.cur = if path.is_empty() {
            None
        } else {
            let up = sys::openat_dir(&*self.here(), b"..").map_err(|e| LayerWriter::io(path, e))?;
            Some(Arc::new(up))
        };
        Ok(())
    }

    fn root(&mut self) {
        self.cur = None;
    }
}

/// `entry` (a marker, by the path it deletes) passes through a symlink of its own layer. Named as
/// the tar names it.
fn through_symlink(entry: &[u8], purpose: Purpose, detail: String) -> Error {
    let name = match purpose {
        Purpose::Whiteout => {
            let (dir, name) = split(entry);
            join(dir, &[b".wh.", name].concat())
        }
        _ => entry.to_vec(),
    };
    Error::rejected(show(&name), Rule::MarkerThroughSymlink, detail)
}

fn exists(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::AlreadyExists
}

impl LayerWriter {
    /// A writer into the empty directory `root`. With `deferred`, what needs the lower layers is
    /// recorded for [`LayerWriter::fix_against`](crate::overlay::write::settle); without, it is refused.
    pub(crate) fn new(root: OwnedFd, ns: Namespace, deferred: bool, pool: Arc<FilePool>) -> Self {
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

    pub(crate) fn io(path: &[u8], e: io::Error) -> Error {
        Error::io(show(path), e)
    }

    pub(crate) fn forget_cache(&mut self) {
        self.cache = None;
    }

    /// Resolve the parent of `path` inside the layer. `None`: for `Lookup`, it does not exist; for
    /// `Whiteout`, there is nothing to white out.
    pub(crate) fn parent(&mut self, path: &[u8], purpose: Purpose) -> Result<Option<Parent>> {
        let (dir, _) = split(path);
        if dir.is_empty() {
            return Ok(Some(Parent {
                fd: self.root.clone(),
                path: Vec::new(),
            }));
        }
        let marker = matches!(purpose, Purpose::Whiteout | Purpose::Opaque);
        if let Some((key, p)) = &self.cache {
            if key.as_slice() == dir {
                // The resolved path differs from the tar's (clean) one only if a symlink was
                // followed, and every symlink in the layer dir is this layer's.
                if marker && p.path != dir {
                    return Err(through_symlink(
                        path,
                        purpose,
                        format!("{} leads through one", show(dir)),
                    ));
                }
                return Ok(Some(Parent {
                    fd: p.fd.clone(),
                    path: p.path.clone(),
                }));
            }
        }
        let found = match sys::openat2_dir_beneath(&*self.root, dir) {
            Ok(Some(fd)) => Some(Parent {
                fd: Arc::new(fd),
                path: dir.to_vec(),
            }),
            // Missing, not a dir, a symlink on the way, or no openat2: the walk sorts it out.
            Ok(None) | Err(_) => self.walk(dir, path, purpose)?,
        };
        if let Some(p) = &found {
            self.cache = Some((
                dir.to_vec(),
                Parent {
                    fd: p.fd.clone(),
                    path: p.path.clone(),
                },
            ));
        }
        Ok(found)
    }

    /// Resolve `dir` one component at a time (`crate::resolve`), holding one directory fd at
    /// any depth: a `..` (only symlink targets bring one) reopens the parent through `..`, which
    /// in a tree only this writer changes is the dir the walk came from. Missing dirs are made at
    /// the end, as implied dirs.
    fn walk(&mut self, dir: &[u8], entry: &[u8], purpose: Purpose) -> Result<Option<Parent>> {
        let mut tree = LayerTree {
            writer: self,
            cur: None,
            next: None,
            entry,
            purpose,
        };
        let outcome = resolve(
            &mut tree,
            dir,
            &ResolveOptions {
                last: Last::Dir,
                stop_at_missing: purpose == Purpose::Lookup,
                // The parent of an entry holds at most MAX_DEPTH - 1 components.
                max_depth: MAX_DEPTH - 1,
            },
        )?;
        let mut cur = tree.cur.take().unwrap_or_else(|| self.root.clone());
        let (mut path, missing) = match outcome {
            Outcome::Found { path, rest } => (path, rest),
            Outcome::Missing => return Ok(None),
            Outcome::NotDir { path } => {
                return match purpose {
                    Purpose::Create | Purpose::Opaque => Err(Error::rejected(
                        show(entry),
                        Rule::NotDir,
                        format!("{} is not a directory", show(&path)),
                    )),
                    _ => Ok(None),
                }
            }
            Outcome::Loop { path } => {
                return Err(Error::rejected(show(entry), Rule::SymlinkLoop, show(&path)))
            }
            Outcome::TooDeep => return Err(crate::resolve::too_deep(entry)),
        };
        if !missing.is_empty() {
            // One buffer for the whole chain: each implied dir's key is a prefix of it, so a
            // chain of N dirs costs O(N + path) memory, not O(N * path).
            let full: Arc<[u8]> = joined(&path, &missing).into();
            let mut end = path.len();
            for c in &missing {
                end += c.len() + usize::from(end > 0);
                let key = Key::prefix(&full, end);
                cur = Arc::new(self.make_dir(cur.as_fd(), c, key.clone(), false)?);
                self.implied.insert(key);
            }
            path = full.to_vec();
        }
        Ok(Some(Parent { fd: cur, path }))
    }

    /// A dir with default attributes (0755 root:root, mtime 0), optionally opaque.
    fn make_dir(
        &mut self,
        at: BorrowedFd<'_>,
        name: &[u8],
        path: Key,
        opaque: bool,
    ) -> Result<OwnedFd> {
        sys::mkdirat(at, name, 0o700).map_err(|e| Self::io(&path, e))?;
        let fd = sys::openat_dir(at, name).map_err(|e| Self::io(&path, e))?;
        sys::fchown(&fd, 0, 0).map_err(|e| Self::io(&path, e))?;
        sys::fchmod(&fd, 0o755).map_err(|e| Self::io(&path, e))?;
        if opaque {
            self.set_opaque(fd.as_fd(), &path)?;
        }
        self.dir_times.insert(path, (0, 0));
        Ok(fd)
    }

    pub(crate) fn set_opaque(&mut self, fd: BorrowedFd<'_>, path: &[u8]) -> Result<()> {
        sys::fsetxattr(fd, &self.ns.name("opaque"), b"y").map_err(|e| Self::io(path, e))?;
        self.opaque.insert(path.to_vec());
        Ok(())
    }

    /// `dir` or one of its ancestors is opaque in this layer.
    fn under_opaque(&self, dir: &[u8]) -> bool {
        self.root_opaque || ancestor_in(&self.opaque, dir)
    }

    /// Remove every whiteout this layer made below `fd` (an opaque dir must not contain any).
    /// Depth-first with one open dir, climbing through `..` (as `sys::remove_all_at`): no
    /// recursion and no descriptor per level, at any depth.
    pub(crate) fn remove_whiteouts_below(&mut self, fd: BorrowedFd<'_>, path: &[u8]) -> Result<()> {
        let mut cur = fd.try_clone_to_owned().map_err(|e| Self::io(path, e))?;
        let mut here = path.to_vec();
        // Per level below `path`: the length of `here` above it, its name, and the subdirs of
        // its parent still to visit.
        let mut levels: Vec<(usize, Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
        let mut todo = self.unlink_whiteouts_in(&cur, &here)?;
        loop {
            if let Some(sub) = todo.pop() {
                let next =
                    sys::openat_dir(&cur, &sub).map_err(|e| Self::io(&join(&here, &sub), e))?;
                levels.push((here.len(), sub.clone(), std::mem::take(&mut todo)));
                if !here.is_empty() {
                    here.push(b'/');
                }
                here.extend_from_slice(&sub);
                cur = next;
                todo = self.unlink_whiteouts_in(&cur, &here)?;
                continue;
            }
            let Some((len, name, rest)) = levels.pop() else {
                return Ok(());
            };
            let empty = sys::read_dir_names(&cur)
                .map_err(|e| Self::io(&here, e))?
                .is_empty();
            cur = sys::openat_dir(&cur, b"..").map_err(|e| Self::io(&here, e))?;
            // An implied dir that only held whiteouts has nothing left to say.
            if empty && self.implied.contains(here.as_slice()) {
                sys::unlinkat(&cur, &name, true).map_err(|e| Self::io(&here, e))?;
                let gone = std::mem::take(&mut here);
                self.forget(&gone);
                self.forget_cache();
                here = gone;
            }
            here.truncate(len);
            todo = rest;
        }
    }

    /// Unlink the whiteouts directly in `dir`; the names of its subdirs.
    fn unlink_whiteouts_in(&mut self, dir: &OwnedFd, path: &[u8]) -> Result<Vec<Vec<u8>>> {
        let mut subdirs = Vec::new();
        for name in sys::read_dir_names(dir).map_err(|e| Self::io(path, e))? {
            let st = sys::lstatat(dir, &name).map_err(|e| Self::io(&join(path, &name), e))?;
            if is_whiteout(&st) {
                sys::unlinkat(dir, &name, false).map_err(|e| Self::io(&join(path, &name), e))?;
            } else if sys::file_type(&st) == FileType::Directory {
                subdirs.push(name);
            }
        }
        Ok(subdirs)
    }

    /// `path` is strictly below a dir this layer made opaque (the lowers are hidden there).
    pub(crate) fn below_opaque(&self, path: &[u8]) -> bool {
        self.root_opaque || self.under_opaque(split(path).0)
    }

    /// Drop the bookkeeping of `path` and everything below it (it was removed or replaced).
    pub(crate) fn forget(&mut self, path: &[u8]) {
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

    fn whiteout(&mut self, path: &[u8], meta: &Meta) -> Result<()> {
        // Below a same-layer opaque dir there is nothing to delete: skip before any parent is made.
        if self.under_opaque(split(path).0) {
            return Ok(());
        }
        let Some(p) = self.parent(path, Purpose::Whiteout)? else {
            return Ok(());
        };
        if self.under_opaque(&p.path) {
            return Ok(());
        }
        let (_, name) = split(path);
        let rpath = join(&p.path, name);
        match sys::lstatat(&*p.fd, name) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                sys::mknodat(&*p.fd, name, Node::Char(0, 0)).map_err(|e| Self::io(&rpath, e))?;
                // The tar's time (0 from most writers), so layer dirs are reproducible.
                sys::utimensat_nofollow(&*p.fd, name, meta.mtime, meta.mtime_nsec)
                    .map_err(|e| Self::io(&rpath, e))?;
                if self.deferred {
                    self.whiteouts.push(rpath);
                }
                Ok(())
            }
            Err(e) => Err(Self::io(&rpath, e)),
            Ok(st) if sys::file_type(&st) == FileType::Directory => {
                // A dir of this layer survives its own whiteout, replacing the lower one.
                let fd = sys::openat_dir(&*p.fd, name).map_err(|e| Self::io(&rpath, e))?;
                self.remove_whiteouts_below(fd.as_fd(), &rpath)?;
                // An implied dir that only held whiteouts (`a/.wh.x`, then `.wh.a`) is no dir
                // of this layer: the whiteout takes its place.
                if self.implied.contains(rpath.as_slice())
                    && sys::read_dir_names(&fd)
                        .map_err(|e| Self::io(&rpath, e))?
                        .is_empty()
                {
                    drop(fd);
                    sys::unlinkat(&*p.fd, name, true).map_err(|e| Self::io(&rpath, e))?;
                    self.forget(&rpath);
                    self.forget_cache();
                    return self.whiteout(path, meta);
                }
                self.set_opaque(fd.as_fd(), &rpath)
            }
            // Already a whiteout, or a non-dir of this layer, which hides the lower path anyway.
            Ok(_) => Ok(()),
        }
    }

    fn opaque_marker(&mut self, path: &[u8]) -> Result<()> {
        if path.is_empty() {
            if !self.deferred {
                return Err(Error::rejected(".wh..wh..opq", Rule::RootOpaque, ""));
            }
            self.root_opaque = true;
            let root = self.root.clone();
            return self.remove_whiteouts_below(root.as_fd(), b"");
        }
        // The marker is an entry inside the dir: the dir path resolves like any parent (through
        // symlinks, in root; created when missing; a whiteout of this layer becomes a new dir).
        let mut inside = path.to_vec();
        inside.extend_from_slice(b"/.wh..wh..opq");
        let d = self.parent(&inside, Purpose::Opaque)?.expect("created");
        if d.path.is_empty() {
            // Resolved to the root (`s -> /`): the root case.
            return self.opaque_marker(b"");
        }
        self.set_opaque(d.fd.as_fd(), &d.path)?;
        self.remove_whiteouts_below(d.fd.as_fd(), &d.path)
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
    pub(crate) fn drain(&mut self) -> Result<()> {
        let w = self.pool.drain()?;
        self.warnings.extend(w);
        Ok(())
    }

    /// Set every directory's time, last, so that creating children cannot disturb them; default
    /// attributes for a root the tar did not describe.
    pub(crate) fn seal(mut self) -> Result<Vec<String>> {
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
