//! Where an entry goes: every parent path is resolved inside the layer root, one component at a
//! time from an open directory with `O_NOFOLLOW` (or in one `openat2(RESOLVE_BENEATH|
//! RESOLVE_NO_SYMLINKS)` when no symlink is on the way); a symlink met on the way is read and
//! resolved *inside the root* (chroot semantics: `/` and `..` stop at the layer root); the final
//! component is never followed. So no entry, whatever names and links the tar plants, can create
//! or change anything outside the root. Missing parents are made as implied dirs.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::entry::MAX_DEPTH;
use crate::error::{Error, Result, Rule};
use crate::overlay::is_whiteout;
use crate::overlay::write::key::Key;
use crate::overlay::write::stream::LayerWriter;
use crate::path::{join, show, split};
use crate::resolve::{joined, resolve, Last, Options as ResolveOptions, Outcome, Seen, Tree};
use crate::sys::{self, FileType};

/// How a parent path is being resolved.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Purpose {
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
pub(super) struct Parent {
    pub fd: Arc<OwnedFd>,
    /// Its path inside the layer, symlinks resolved ("" = the root).
    pub path: Vec<u8>,
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

impl LayerWriter {
    pub(super) fn forget_cache(&mut self) {
        self.cache = None;
    }

    /// Resolve the parent of `path` inside the layer. `None`: for `Lookup`, it does not exist; for
    /// `Whiteout`, there is nothing to white out.
    pub(super) fn parent(&mut self, path: &[u8], purpose: Purpose) -> Result<Option<Parent>> {
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
}
