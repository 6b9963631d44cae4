//! Markers (semantics.md A2): a whiteout becomes a char 0/0 device, an opaque marker the
//! `<ns>.overlay.opaque=y` xattr. Both only concern the layers below: content of this layer
//! survives them whatever the order, a whited-out name re-created as a dir becomes an opaque dir,
//! and no whiteout is ever left below a same-layer opaque dir (the kernel would list it as a ghost).

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use crate::entry::Meta;
use crate::error::{Error, Result, Rule};
use crate::overlay::is_whiteout;
use crate::overlay::write::key::ancestor_in;
use crate::overlay::write::parents::Purpose;
use crate::overlay::write::stream::LayerWriter;
use crate::path::{join, split};
use crate::sys::{self, FileType, Node};

impl LayerWriter {
    pub(super) fn set_opaque(&mut self, fd: BorrowedFd<'_>, path: &[u8]) -> Result<()> {
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
    pub(super) fn remove_whiteouts_below(&mut self, fd: BorrowedFd<'_>, path: &[u8]) -> Result<()> {
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
    pub(super) fn below_opaque(&self, path: &[u8]) -> bool {
        self.root_opaque || self.under_opaque(split(path).0)
    }

    pub(super) fn whiteout(&mut self, path: &[u8], meta: &Meta) -> Result<()> {
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

    pub(super) fn opaque_marker(&mut self, path: &[u8]) -> Result<()> {
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
}
