//! Upper dir (+ lowers) -> changeset entries, in deterministic order.
//!
//! Order inside each directory: the dir's own entry, its opaque marker, its whiteouts (by name), then
//! the other children by byte order of their names, depth first. The image-spec asks for whiteouts
//! before sibling entries (layer.md "Whiteouts"); byte order keeps the stream independent of the
//! filesystem and of thread counts.
//!
//! Lowers are needed only where the upper alone is not the layer (semantics.md finding 5): a metacopy
//! file's data lives in a lower, and a redirected (renamed) dir's content is the lower dir it names,
//! merged with the upper's own children. With lowers we also drop opaque markers on dirs that have no
//! counterpart below, where the marker hides nothing.

use crate::entry::Xattrs;
use std::collections::{BTreeSet, HashMap};
use std::ffi::CString;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::entry::{Entry, Kind, Meta};
use crate::error::{Error, Result, Rule};
use crate::overlay::read::lower::{last, Found, LowerView};
use crate::overlay::{split_xattrs, Markers, Namespace};
use crate::path::{join, RelPath};
use crate::sys::{self, FileType, Stat};

/// Where the data of a file entry is to be read from; the consumer opens it.
#[derive(Debug, Clone)]
pub enum FileRef {
    /// `name` in the open directory `dir` (an upper's or a lower's: fd-relative, no path walk).
    At {
        /// Parent directory.
        dir: Arc<OwnedFd>,
        /// File name inside it.
        name: CString,
    },
}

/// One walked entry and, for files, where its bytes are.
#[derive(Debug)]
pub struct Item {
    /// The changeset entry.
    pub entry: Entry,
    /// Data source for `Kind::File`.
    pub data: Option<FileRef>,
    /// Path shown in errors about this entry's data.
    pub display: PathBuf,
}

/// How to read an upper.
#[derive(Debug, Clone, Default)]
pub struct WalkOptions {
    /// Marker namespace of the mount the upper belongs to.
    pub ns: Namespace,
    /// Lower dirs, topmost first (the order of `lowerdir=`).
    pub lowers: Vec<PathBuf>,
}

/// Something the walk skipped or noticed that a user should hear about.
pub type Warning = String;

/// Whether a name can be emitted; the output format's rule (a tar cannot hold `.wh.` names),
/// applied as each dir is listed so that nothing below a refused name is read first.
pub type NameRule = fn(&[u8]) -> bool;

/// Walk `upper`, calling `emit` for each entry in stream order; a name `representable` refuses is
/// an error ([`Rule::WhiteoutPrefix`]). Returns the warnings.
pub fn walk(
    upper: &Path,
    opts: &WalkOptions,
    representable: NameRule,
    emit: &mut dyn FnMut(Item) -> Result<()>,
) -> Result<Vec<Warning>> {
    let root = sys::open_dir(upper).map_err(|e| Error::io(upper, e))?;
    // Without the right to read trusted.*, the kernel answers "no such attribute": opaque dirs
    // would silently lose their marker (and hidden lower files show again). Refuse instead.
    if opts.ns == Namespace::Trusted && !sys::can_read_trusted_xattrs() {
        return Err(Error::io(
            upper,
            std::io::Error::new(
                std::io::ErrorKind::PermissionDenied,
                "cannot read trusted.overlay.* xattrs (opaque dirs, redirects, metacopy) without \
                 CAP_SYS_ADMIN in the initial user namespace: run as root, or pass --userxattr \
                 if the mount used userxattr",
            ),
        ));
    }
    let mut lower_fds = Vec::with_capacity(opts.lowers.len());
    for l in &opts.lowers {
        // O_DIRECTORY: a missing lower or one that is not a dir fails here, naming it.
        lower_fds.push(sys::open_dir(l).map_err(|e| Error::io(l, e))?);
    }
    let mut w = Walker {
        ns: opts.ns,
        upper: upper.as_os_str().as_encoded_bytes().to_vec(),
        lowers: Lowers {
            roots: opts.lowers.clone(),
            view: LowerView::new(lower_fds, opts.ns),
        },
        links: HashMap::new(),
        warnings: Vec::new(),
        representable,
        emit,
    };
    let ctx = Ctx {
        lower: if opts.lowers.is_empty() {
            None
        } else {
            Some(Vec::new())
        },
        redirected: false,
    };
    w.dir(Arc::new(root), &[], &ctx)?;
    Ok(w.warnings)
}

/// Per-directory context: which lower path merges with this upper dir, and whether the output path
/// differs from it (inside a redirected dir, so lower content must be emitted in full).
struct Ctx {
    lower: Option<Vec<u8>>,
    redirected: bool,
}

struct Walker<'a> {
    ns: Namespace,
    upper: Vec<u8>,
    lowers: Lowers,
    /// (dev, ino) of files with several names -> path of the first name emitted.
    links: HashMap<(u64, u64), Vec<u8>>,
    warnings: Vec<Warning>,
    representable: NameRule,
    emit: &'a mut dyn FnMut(Item) -> Result<()>,
}

/// One child of an upper dir, classified.
struct Child {
    name: Vec<u8>,
    st: Stat,
    markers: Markers,
    xattrs: Xattrs,
    whiteout: bool,
}

fn is_whiteout_dev(st: &Stat) -> bool {
    sys::file_type(st) == FileType::CharacterDevice && sys::rdev(st) == (0, 0)
}

fn meta_of(st: &Stat, xattrs: Xattrs) -> Meta {
    Meta {
        mode: st.st_mode & 0o7777,
        uid: u64::from(st.st_uid),
        gid: u64::from(st.st_gid),
        mtime: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
        xattrs,
    }
}

impl Walker<'_> {
    fn upper_path(&self, rel: &[u8]) -> PathBuf {
        sys::os_path(&self.upper, rel)
    }

    fn dir(&mut self, fd: Arc<OwnedFd>, rel: &[u8], ctx: &Ctx) -> Result<()> {
        let mut names =
            sys::read_dir_names(&*fd).map_err(|e| Error::io(self.upper_path(rel), e))?;
        names.sort_unstable();
        let mut children = Vec::with_capacity(names.len());
        for name in names {
            let path = join(rel, &name);
            if !(self.representable)(&name) {
                return Err(Error::rejected(
                    self.upper_path(&path),
                    Rule::WhiteoutPrefix,
                    "",
                ));
            }
            let st = sys::lstatat(&*fd, &name).map_err(|e| Error::io(self.upper_path(&path), e))?;
            // By the open dir, not by path: a path past PATH_MAX (4,096 bytes) is still walked.
            let raw = sys::lget_all_xattrs_at(fd.as_fd(), &name)
                .map_err(|e| Error::io(self.upper_path(&path), e))?;
            let (markers, xattrs) = split_xattrs(self.ns, raw);
            let whiteout = is_whiteout_dev(&st)
                || (sys::file_type(&st) == FileType::RegularFile
                    && st.st_size == 0
                    && markers.whiteout);
            children.push(Child {
                name,
                st,
                markers,
                xattrs,
                whiteout,
            });
        }

        if ctx.redirected {
            // The output path has nothing below it in the lowers (the redirect root hid it), so
            // whiteouts are moot; what the merged view shows is upper children plus the source's.
            let upper_names: BTreeSet<Vec<u8>> = children.iter().map(|c| c.name.clone()).collect();
            let lower_names = match &ctx.lower {
                Some(l) => self.lowers.merged_names(l)?,
                None => Vec::new(),
            };
            let mut merged: Vec<(Vec<u8>, Option<Child>)> = children
                .into_iter()
                .filter(|c| !c.whiteout)
                .map(|c| (c.name.clone(), Some(c)))
                .chain(
                    lower_names
                        .into_iter()
                        .filter(|n| !upper_names.contains(n))
                        .map(|n| (n, None)),
                )
                .collect();
            merged.sort_by(|a, b| a.0.cmp(&b.0));
            for (name, child) in merged {
                let out = join(rel, &name);
                match child {
                    Some(c) => self.child(&fd, rel, ctx, c)?,
                    None => {
                        let lrel = join(ctx.lower.as_deref().unwrap_or_default(), &name);
                        self.lower_entry(&out, &lrel)?
                    }
                }
            }
            return Ok(());
        }

        let (whiteouts, others): (Vec<Child>, Vec<Child>) =
            children.into_iter().partition(|c| c.whiteout);
        for c in whiteouts {
            let path = join(rel, &c.name);
            self.put_plain(path, Kind::Whiteout, Meta::default())?;
        }
        for c in others {
            self.child(&fd, rel, ctx, c)?;
        }
        Ok(())
    }

    /// An entry without data to read (anything but a regular file).
    fn put_plain(&mut self, path: Vec<u8>, kind: Kind, meta: Meta) -> Result<()> {
        let path = RelPath::from_clean(path);
        self.put(Entry { path, kind, meta }, None, PathBuf::new())
    }

    fn put(&mut self, entry: Entry, data: Option<FileRef>, display: PathBuf) -> Result<()> {
        (self.emit)(Item {
            entry,
            data,
            display,
        })
    }

    /// Hardlink bookkeeping: `Some(target)` when an earlier name of this inode was already emitted.
    fn link_target(&mut self, st: &Stat, path: &[u8]) -> Option<Vec<u8>> {
        if st.st_nlink <= 1 {
            return None;
        }
        let key = (st.st_dev, st.st_ino);
        if let Some(t) = self.links.get(&key) {
            return Some(t.clone());
        }
        self.links.insert(key, path.to_vec());
        None
    }

    fn child(&mut self, parent: &Arc<OwnedFd>, rel: &[u8], ctx: &Ctx, c: Child) -> Result<()> {
        let path = join(rel, &c.name);
        // What layerapply and squash refuse is not made (and the walk holds one fd per level).
        crate::path::check_depth(&path)
            .map_err(|d| Error::rejected(self.upper_path(&path), Rule::PathTooDeep, d))?;
        let lower_path = ctx.lower.as_ref().map(|l| join(l, &c.name));
        let ft = sys::file_type(&c.st);
        let display = self.upper_path(&path);
        let needs_lower =
            |what: &str| Error::rejected(display.clone(), Rule::NeedsLower, what.to_string());
        match ft {
            FileType::Directory => {
                let fd = sys::openat_dir(&**parent, &c.name).map_err(|e| Error::io(&display, e))?;
                let meta = meta_of(&c.st, c.xattrs);
                if let Some(redirect) = &c.markers.redirect {
                    if self.lowers.roots.is_empty() {
                        return Err(needs_lower("redirected directory"));
                    }
                    let src = resolve_redirect(redirect, ctx.lower.as_deref().unwrap_or_default());
                    self.put_plain(path.clone(), Kind::Dir, meta)?;
                    if !ctx.redirected && self.lowers.has_dir(&path)? {
                        self.put_plain(path.clone(), Kind::Opaque, Meta::default())?;
                    }
                    let lower = if c.markers.is_opaque() {
                        None
                    } else {
                        Some(src)
                    };
                    return self.dir(
                        Arc::new(fd),
                        &path,
                        &Ctx {
                            lower,
                            redirected: true,
                        },
                    );
                }
                self.put_plain(path.clone(), Kind::Dir, meta)?;
                let opaque = c.markers.is_opaque();
                if opaque && !ctx.redirected {
                    let needed = match &lower_path {
                        Some(_) => self.lowers.has_dir(&path)?,
                        None => true,
                    };
                    if needed {
                        self.put_plain(path.clone(), Kind::Opaque, Meta::default())?;
                    }
                }
                let lower = if opaque { None } else { lower_path };
                self.dir(
                    Arc::new(fd),
                    &path,
                    &Ctx {
                        lower,
                        redirected: ctx.redirected,
                    },
                )
            }
            FileType::RegularFile => {
                let meta = meta_of(&c.st, c.xattrs);
                if let Some(target) = self.link_target(&c.st, &path) {
                    return self.put_plain(path, Kind::Hardlink { target }, meta);
                }
                let size = c.st.st_size as u64;
                let data = if c.markers.metacopy {
                    if self.lowers.roots.is_empty() {
                        return Err(needs_lower("metacopy file"));
                    }
                    let src = match &c.markers.redirect {
                        Some(r) => resolve_redirect(r, ctx.lower.as_deref().unwrap_or_default()),
                        None => lower_path.clone().unwrap_or_else(|| path.clone()),
                    };
                    let (data, _) = self.lowers.data_of(&src, 0).ok_or_else(|| {
                        Error::rejected(
                            display.clone(),
                            Rule::LowerMissing,
                            format!("no lower file at /{}", String::from_utf8_lossy(&src)),
                        )
                    })?;
                    data
                } else {
                    let name = CString::new(c.name.clone()).map_err(|_| {
                        Error::io(&display, std::io::ErrorKind::InvalidInput.into())
                    })?;
                    FileRef::At {
                        dir: parent.clone(),
                        name,
                    }
                };
                self.put(
                    Entry {
                        path: RelPath::from_clean(path),
                        kind: Kind::File { size },
                        meta,
                    },
                    Some(data),
                    display,
                )
            }
            FileType::Socket => {
                self.warnings.push(format!(
                    "{}: socket skipped (a tar cannot hold sockets)",
                    display.display()
                ));
                Ok(())
            }
            _ => {
                let kind = special_kind(&c.st, || {
                    sys::readlinkat(&**parent, &c.name).map_err(|e| Error::io(&display, e))
                })?;
                let meta = meta_of(&c.st, c.xattrs);
                let kind = match self.link_target(&c.st, &path) {
                    Some(target) => Kind::Hardlink { target },
                    None => kind,
                };
                self.put_plain(path, kind, meta)
            }
        }
    }

    /// Emit the lower node at `lrel` (merged view of the lowers) under output path `out`, recursively.
    fn lower_entry(&mut self, out: &[u8], lrel: &[u8]) -> Result<()> {
        let name = out.rsplit(|&b| b == b'/').next().unwrap_or(out);
        if !(self.representable)(name) {
            return Err(Error::rejected(
                self.lowers.display(lrel),
                Rule::WhiteoutPrefix,
                "",
            ));
        }
        match self.lowers.view(lrel, 0)? {
            Found::Absent => Ok(()),
            Found::Dir { layer, st } => {
                let (_, xattrs, _, _) = self.lowers.node(layer, lrel)?;
                self.put_plain(out.to_vec(), Kind::Dir, meta_of(&st, xattrs))?;
                for n in self.lowers.merged_names(lrel)? {
                    self.lower_entry(&join(out, &n), &join(lrel, &n))?;
                }
                Ok(())
            }
            Found::Other { layer, st } => {
                let p = self.lowers.at(layer, lrel);
                let (markers, xattrs, dir, name) = self.lowers.node(layer, lrel)?;
                let meta = meta_of(&st, xattrs);
                let ft = sys::file_type(&st);
                if ft == FileType::Socket {
                    self.warnings.push(format!(
                        "{}: socket skipped (a tar cannot hold sockets)",
                        p.display()
                    ));
                    return Ok(());
                }
                if let Some(target) = self.link_target(&st, out) {
                    return self.put_plain(out.to_vec(), Kind::Hardlink { target }, meta);
                }
                let kind = match ft {
                    FileType::RegularFile => {
                        let data = if markers.metacopy {
                            let src = match &markers.redirect {
                                Some(r) => resolve_redirect(r, parent_of(lrel)),
                                None => lrel.to_vec(),
                            };
                            self.lowers
                                .data_of(&src, layer + 1)
                                .map(|x| x.0)
                                .ok_or_else(|| {
                                    Error::rejected(
                                        p.clone(),
                                        Rule::LowerMissing,
                                        "metacopy data not found below",
                                    )
                                })?
                        } else {
                            let name = CString::new(name).map_err(|_| {
                                Error::io(&p, std::io::ErrorKind::InvalidInput.into())
                            })?;
                            FileRef::At { dir, name }
                        };
                        let size = st.st_size as u64;
                        return self.put(
                            Entry {
                                path: RelPath::from_clean(out.to_vec()),
                                kind: Kind::File { size },
                                meta,
                            },
                            Some(data),
                            p,
                        );
                    }
                    _ => special_kind(&st, || {
                        sys::readlinkat(&*dir, &name).map_err(|e| Error::io(&p, e))
                    })?,
                };
                self.put_plain(out.to_vec(), kind, meta)
            }
        }
    }
}

/// The kind of a symlink, device or fifo (`readlink` is called only for symlinks).
fn special_kind(st: &Stat, readlink: impl FnOnce() -> Result<Vec<u8>>) -> Result<Kind> {
    let (major, minor) = sys::rdev(st);
    Ok(match sys::file_type(st) {
        FileType::Symlink => Kind::Symlink {
            target: readlink()?,
        },
        FileType::CharacterDevice => Kind::Char { major, minor },
        FileType::BlockDevice => Kind::Block { major, minor },
        _ => Kind::Fifo,
    })
}

fn parent_of(p: &[u8]) -> &[u8] {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => &p[..i],
        None => &[],
    }
}

/// A redirect is absolute from the overlay root (`/a/b`) or a sibling name relative to the lower
/// parent (overlayfs.rst "Redirect dir").
fn resolve_redirect(redirect: &[u8], lower_parent: &[u8]) -> Vec<u8> {
    let r = redirect.strip_suffix(b"\0").unwrap_or(redirect);
    if let Some(abs) = r.strip_prefix(b"/") {
        let mut v = abs.to_vec();
        while v.ends_with(b"/") {
            v.pop();
        }
        v
    } else {
        join(lower_parent, r)
    }
}

/// The read-only lower layers, merged as overlayfs merges them: the store's own merged view
/// (`overlay::read::lower`), by descriptor, so there is one definition of what the layers below show.
struct Lowers {
    /// For messages only.
    roots: Vec<PathBuf>,
    view: LowerView,
}

impl Lowers {
    fn display(&self, rel: &[u8]) -> PathBuf {
        self.at(0, rel)
    }

    /// `rel` in layer `layer`, for messages.
    fn at(&self, layer: usize, rel: &[u8]) -> PathBuf {
        match self.roots.get(layer) {
            Some(r) => sys::os_path(r.as_os_str().as_encoded_bytes(), rel),
            None => PathBuf::from(String::from_utf8_lossy(rel).into_owned()),
        }
    }

    fn view(&self, rel: &[u8], from: usize) -> Result<Found> {
        self.view
            .lookup_from(rel, from)
            .map_err(|e| Error::io(self.at(from, rel), e))
    }

    fn has_dir(&self, rel: &[u8]) -> Result<bool> {
        Ok(!self.roots.is_empty() && matches!(self.view(rel, 0)?, Found::Dir { .. }))
    }

    /// The visible names in the merged lower dir at `rel`, sorted.
    fn merged_names(&self, rel: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.view
            .merged_names(rel)
            .map_err(|e| Error::io(self.display(rel), e))
    }

    /// The dir holding `rel` in `layer`, and `rel`'s name in it.
    fn parent(&self, layer: usize, rel: &[u8]) -> Result<(Arc<OwnedFd>, Vec<u8>)> {
        let fd = self
            .view
            .open_parent(layer, rel)
            .map_err(|e| Error::io(self.at(layer, rel), e))?;
        Ok((Arc::new(fd), last(rel).to_vec()))
    }

    /// Markers and image xattrs of `rel` in `layer`, and the dir holding it (to read it through).
    fn node(&self, layer: usize, rel: &[u8]) -> Result<(Markers, Xattrs, Arc<OwnedFd>, Vec<u8>)> {
        let (dir, name) = self.parent(layer, rel)?;
        let raw = sys::lget_all_xattrs_at(dir.as_fd(), &name)
            .map_err(|e| Error::io(self.at(layer, rel), e))?;
        let (m, x) = split_xattrs(self.view.ns(), raw);
        Ok((m, x, dir, name))
    }

    /// The regular file holding the data for `rel`, searching layers `from..`, following metacopy
    /// chains (a lower that is itself a metacopy upper of an older mount): where to read it, and
    /// its path for messages.
    fn data_of(&self, rel: &[u8], from: usize) -> Option<(FileRef, PathBuf)> {
        let mut rel = rel.to_vec();
        let mut from = from;
        for _ in 0..self.roots.len() + 1 {
            match self.view(&rel, from).ok()? {
                Found::Other { layer, st } if sys::file_type(&st) == FileType::RegularFile => {
                    let (m, _, dir, name) = self.node(layer, &rel).ok()?;
                    if !m.metacopy {
                        let name = CString::new(name).ok()?;
                        return Some((FileRef::At { dir, name }, self.at(layer, &rel)));
                    }
                    if let Some(r) = m.redirect {
                        rel = resolve_redirect(&r, parent_of(&rel));
                    }
                    from = layer + 1;
                }
                _ => return None,
            }
        }
        None
    }
}
