//! The second half of writing a layer into a store: what its native form owes to the layers below,
//! settled once they are complete (DESIGN.md section 2, semantics.md findings 1, 6, 7, 9).
//!
//! - A root-level opaque marker becomes one whiteout per top-level lower name the layer does not
//!   provide (the kernel ignores opaque on a layer root) and opaque top-level dirs.
//! - A hardlink to a file only a lower layer has: the file is copied in and linked, so both names
//!   share an inode as in a flat extraction.
//! - An implied dir takes the attributes of the same dir in the merged lower view; where the lower
//!   has a symlink there, the layer's content moves to the symlink's in-root target instead, so the
//!   symlink keeps working (a flat extraction writes through it).

use std::collections::BTreeSet;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};

use crate::error::{Error, Result, Rule};
use crate::overlay::is_whiteout;
use crate::overlay::read::lower::{last, Found, LowerView};
use crate::overlay::write::attrs;
use crate::overlay::write::cursor::Cursor;
use crate::overlay::write::key::Key;
use crate::overlay::write::parents::Purpose;
use crate::overlay::write::stream::LayerWriter;
use crate::path::show;
use crate::path::{is_within, join, split};
use crate::sys::{self, FileType, Node, Stat};

impl LayerWriter {
    /// Settle everything that depends on the lower layers (`view`, topmost first).
    pub(super) fn settle(&mut self, view: &LowerView) -> Result<()> {
        self.drain()?;
        if self.root_opaque {
            self.opaque_root(view)?;
        } else {
            self.settle_links(view)?;
            self.settle_implied(view)?;
        }
        self.prune_ghosts(view)?;
        if !self.root_explicit && !view.is_empty() {
            if let Found::Dir { layer, st } = view.lookup(b"").map_err(|e| Self::io(b"", e))? {
                let src = view.open_dir(layer, b"").map_err(|e| Self::io(b"", e))?;
                let root = self.root.clone();
                self.copy_dir_attrs(src.as_fd(), &st, root.as_fd(), b"")?;
                self.root_explicit = true;
            }
        }
        Ok(())
    }

    fn opaque_root(&mut self, view: &LowerView) -> Result<()> {
        let root = self.root.clone();
        for name in view.merged_names(b"").map_err(|e| Self::io(b"", e))? {
            match sys::lstatat(&*root, &name) {
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    sys::mknodat(&*root, &name, Node::Char(0, 0))
                        .map_err(|e| Self::io(&name, e))?;
                    sys::utimensat_nofollow(&*root, &name, 0, 0).map_err(|e| Self::io(&name, e))?;
                }
                Err(e) => return Err(Self::io(&name, e)),
                Ok(st) if sys::file_type(&st) == FileType::Directory => {
                    let fd = sys::openat_dir(&*root, &name).map_err(|e| Self::io(&name, e))?;
                    self.set_opaque(fd.as_fd(), &name)?;
                }
                Ok(_) => {}
            }
        }
        // Nothing below shows through, so implied dirs keep their defaults.
        self.implied.clear();
        Ok(())
    }

    /// Copy attributes (owner, non-marker xattrs, mode, mtime) of a lower dir onto ours.
    fn copy_dir_attrs(
        &mut self,
        src: BorrowedFd<'_>,
        st: &Stat,
        dst: BorrowedFd<'_>,
        path: &[u8],
    ) -> Result<()> {
        let xattrs = self.lower_xattrs(sys::fget_all_xattrs(src).map_err(|e| Self::io(path, e))?);
        let a = attrs::Attrs {
            uid: u64::from(st.st_uid),
            gid: u64::from(st.st_gid),
            mode: st.st_mode & 0o7777,
            xattrs: &xattrs,
            mtime: None,
        };
        attrs::set(attrs::Node::Open(dst), path, &a, &mut self.warnings)?;
        self.dir_times
            .insert(Key::from(path), (st.st_mtime, st.st_mtime_nsec as u32));
        Ok(())
    }

    /// A lower node's xattrs minus the markers of its own layer (already-escaped image xattrs stay
    /// escaped, as they are on disk).
    fn lower_xattrs(&self, raw: crate::entry::Xattrs) -> crate::entry::Xattrs {
        let prefix = self.ns.prefix();
        raw.into_iter()
            .filter(|(n, _)| match n.strip_prefix(prefix) {
                Some(rest) => rest.starts_with(b"overlay."),
                None => n != b"security.selinux",
            })
            .collect()
    }

    fn settle_implied(&mut self, view: &LowerView) -> Result<()> {
        let mut todo: BTreeSet<Key> = self.implied.clone();
        // Parents first (sorted order), so the lower lookups and our own dirs are each one step
        // from the last: linear at any depth.
        let mut own = Cursor::new(self.root.clone());
        while let Some(p) = todo.pop_first() {
            // Below a dir this layer made opaque, the lowers are hidden: defaults stay.
            if !self.implied.contains(&*p) || self.below_opaque(&p) {
                continue;
            }
            let found = view.lookup(&p).map_err(|e| Self::io(&p, e))?;
            match found {
                Found::Dir { layer, st } => {
                    let src = view.open_dir(layer, &p).map_err(|e| Self::io(&p, e))?;
                    let Some(dst) = own.goto(&p).map_err(|e| Self::io(&p, e))? else {
                        continue;
                    };
                    self.copy_dir_attrs(src.as_fd(), &st, dst, &p)?;
                }
                Found::Other { st, .. } if sys::file_type(&st) == FileType::Symlink => {
                    let Some(target) = view.resolve(&p, true)? else {
                        continue;
                    };
                    if target.is_empty() || is_within(&target, &p) || is_within(&p, &target) {
                        continue;
                    }
                    self.redirect(&p, &target, &mut todo)?;
                    // Dirs moved: start over from the root.
                    own = Cursor::new(self.root.clone());
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Whiteouts that hide nothing below, and the implied dirs made only to hold them, go.
    /// Overlayfs hides whiteouts only in the dirs it merges; in any other dir readdir lists them
    /// as names that cannot be opened. A flat extraction makes nothing for such a whiteout (and
    /// a whiteout below a lower file must not turn that file into a dir).
    fn prune_ghosts(&mut self, view: &LowerView) -> Result<()> {
        // The dirs that held a pruned whiteout: the only candidates for removal below. Keys
        // share the whiteout's path, so a deep whiteout costs O(depth), not O(depth^2).
        let mut held: BTreeSet<Key> = BTreeSet::new();
        let mut own = Cursor::new(self.root.clone());
        for w in std::mem::take(&mut self.whiteouts) {
            if !matches!(view.lookup(&w).map_err(|e| Self::io(&w, e))?, Found::Absent) {
                continue;
            }
            let shared: std::sync::Arc<[u8]> = w.as_slice().into();
            let mut end = w.len();
            while let Some(i) = shared[..end].iter().rposition(|&b| b == b'/') {
                end = i;
                if !held.insert(Key::prefix(&shared, end)) {
                    break;
                }
            }
            // `w` is where the whiteout was made; if a later entry of the layer replaced a dir
            // on the way (by a symlink, say), it went with that dir: never follow a link here.
            let Some(dir) = own.goto(split(&w).0).map_err(|e| Self::io(&w, e))? else {
                continue;
            };
            match sys::lstatat(dir, last(&w)) {
                Ok(st) if is_whiteout(&st) => {
                    sys::unlinkat(dir, last(&w), false).map_err(|e| Self::io(&w, e))?;
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(Self::io(&w, e)),
            }
        }
        // Which of them the lowers have as dirs: parents first, so each lookup is one step
        // from the last.
        let mut lower_dirs: BTreeSet<Key> = BTreeSet::new();
        for d in &held {
            if self.implied.contains(d.as_slice())
                && !self.opaque.contains(d.as_slice())
                && matches!(
                    view.lookup(d).map_err(|e| Self::io(d, e))?,
                    Found::Dir { .. }
                )
            {
                lower_dirs.insert(d.clone());
            }
        }
        // Implied dirs that held them and are empty now, deepest first (so that a dir emptied by
        // its children's removal goes too). A dir the layer made opaque stays: an opaque marker
        // for a missing dir makes it.
        for d in held.into_iter().rev() {
            if !self.implied.contains(d.as_slice())
                || self.opaque.contains(d.as_slice())
                || lower_dirs.contains(&d)
            {
                continue;
            }
            let Some(fd) = own.goto(&d).map_err(|e| Self::io(&d, e))? else {
                continue;
            };
            if !sys::read_dir_names(fd)
                .map_err(|e| Self::io(&d, e))?
                .is_empty()
            {
                continue;
            }
            let Some(parent) = own.goto(split(&d).0).map_err(|e| Self::io(&d, e))? else {
                continue;
            };
            sys::unlinkat(parent, last(&d), true).map_err(|e| Self::io(&d, e))?;
            self.forget(&d);
            self.forget_cache();
        }
        Ok(())
    }

    /// Move the content of the implied dir `from` to `to` (the in-root target of the lower symlink
    /// at `from`), then remove `from` so the lower symlink shows through again.
    fn redirect(&mut self, from: &[u8], to: &[u8], todo: &mut BTreeSet<Key>) -> Result<()> {
        let Some(dst_parent) = self.parent(to, Purpose::Create)? else {
            return Ok(());
        };
        let name = last(to);
        let to = join(&dst_parent.path, name);
        match sys::lstatat(&*dst_parent.fd, name) {
            Ok(st) if sys::file_type(&st) == FileType::Directory => {}
            Ok(_) => {
                self.warnings.push(format!(
                    "{}: not redirected to {} (not a directory in this layer)",
                    show(from),
                    show(&to)
                ));
                return Ok(());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                sys::mkdirat(&*dst_parent.fd, name, 0o755).map_err(|e| Self::io(&to, e))?;
                let fd = sys::openat_dir(&*dst_parent.fd, name).map_err(|e| Self::io(&to, e))?;
                sys::fchown(&fd, 0, 0).map_err(|e| Self::io(&to, e))?;
                sys::fchmod(&fd, 0o755).map_err(|e| Self::io(&to, e))?;
                self.dir_times.insert(Key::from(to.as_slice()), (0, 0));
                self.implied.insert(Key::from(to.as_slice()));
                todo.insert(Key::from(to.as_slice()));
            }
            Err(e) => return Err(Self::io(&to, e)),
        }
        // Any new implied dirs on the way to `to` need settling too.
        for p in self.implied.iter() {
            if is_within(&to, p) {
                todo.insert(p.clone());
            }
        }
        let src_parent = self
            .parent(from, Purpose::Lookup)?
            .expect("implied dir exists");
        let src = sys::openat_dir(&*src_parent.fd, last(from)).map_err(|e| Self::io(from, e))?;
        let dst = sys::openat_dir(&*dst_parent.fd, name).map_err(|e| Self::io(&to, e))?;
        if self.opaque.contains(from) {
            // `lib/.wh..wh..opq` through a lower `lib -> usr/lib` clears `usr/lib`.
            self.set_opaque(dst.as_fd(), &to)?;
            self.remove_whiteouts_below(dst.as_fd(), &to)?;
        }
        self.merge_into(src.as_fd(), from, dst.as_fd(), &to, todo)?;
        sys::unlinkat(&*src_parent.fd, last(from), true).map_err(|e| Self::io(from, e))?;
        self.forget(from);
        self.forget_cache();
        Ok(())
    }

    /// Move every child of `src` into `dst`; dirs present in both merge, otherwise what is already
    /// at the destination stays (a flat extraction would have written both to one place).
    fn merge_into(
        &mut self,
        src: BorrowedFd<'_>,
        from: &[u8],
        dst: BorrowedFd<'_>,
        to: &[u8],
        todo: &mut BTreeSet<Key>,
    ) -> Result<()> {
        for child in sys::read_dir_names(src).map_err(|e| Self::io(from, e))? {
            let (cf, ct) = (join(from, &child), join(to, &child));
            match sys::rename_noreplace(src, &child, dst, &child) {
                Ok(()) => self.rekey(&cf, &ct, todo),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    let s = sys::lstatat(src, &child).map_err(|e| Self::io(&cf, e))?;
                    let d = sys::lstatat(dst, &child).map_err(|e| Self::io(&ct, e))?;
                    if sys::file_type(&s) == FileType::Directory
                        && sys::file_type(&d) == FileType::Directory
                    {
                        let s2 = sys::openat_dir(src, &child).map_err(|e| Self::io(&cf, e))?;
                        let d2 = sys::openat_dir(dst, &child).map_err(|e| Self::io(&ct, e))?;
                        self.merge_into(s2.as_fd(), &cf, d2.as_fd(), &ct, todo)?;
                        sys::unlinkat(src, &child, true).map_err(|e| Self::io(&cf, e))?;
                    } else {
                        self.warnings.push(format!(
                            "{}: also written as {}; kept {}",
                            show(&cf),
                            show(&ct),
                            show(&ct)
                        ));
                        sys::remove_all_at(src, &child).map_err(|e| Self::io(&cf, e))?;
                    }
                    self.forget(&cf);
                    todo.retain(|p| !is_within(p, &cf));
                }
                Err(e) => return Err(Self::io(&cf, e)),
            }
        }
        Ok(())
    }

    /// Paths under `from` now live under `to`.
    fn rekey(&mut self, from: &[u8], to: &[u8], todo: &mut BTreeSet<Key>) {
        let re = |p: &[u8]| -> Vec<u8> {
            if is_within(p, from) {
                let mut v = to.to_vec();
                v.extend_from_slice(&p[from.len()..]);
                v
            } else {
                p.to_vec()
            }
        };
        let re_key = |k: &Key| -> Key {
            if is_within(k, from) {
                Key::from(re(k))
            } else {
                k.clone()
            }
        };
        self.implied = self.implied.iter().map(re_key).collect();
        self.opaque = self.opaque.iter().map(|p| re(p)).collect();
        *todo = todo.iter().map(re_key).collect();
        self.links.rekey(re);
        let moved: Vec<(Key, (i64, u32))> = self
            .dir_times
            .range::<[u8], _>((std::ops::Bound::Included(from), std::ops::Bound::Unbounded))
            .take_while(|(p, _)| p.starts_with(from))
            .filter(|(p, _)| is_within(p, from))
            .map(|(p, t)| (p.clone(), *t))
            .collect();
        for (p, t) in moved {
            self.dir_times.remove(&p);
            self.dir_times.insert(re_key(&p), t);
        }
    }

    /// Hardlinks whose targets only a lower layer has.
    fn settle_links(&mut self, view: &LowerView) -> Result<()> {
        let links = self.links.take();
        let mut copied: BTreeSet<Vec<u8>> = BTreeSet::new();
        for (link, target) in links {
            let bad = |d: String| Error::rejected(show(&link), Rule::Hardlink, d);
            let lower = view.resolve(&target, false)?.ok_or_else(|| {
                bad(format!(
                    "target {} not found in this layer or below",
                    show(&target)
                ))
            })?;
            let lp = self.parent(&link, Purpose::Create)?.expect("created");
            let lname = last(&link).to_vec();
            // Something of this layer may stand at the link's own path (a later whiteout of it).
            if let Ok(st) = sys::lstatat(&*lp.fd, &lname) {
                if sys::file_type(&st) == FileType::Directory {
                    continue;
                }
                sys::unlinkat(&*lp.fd, &lname, false).map_err(|e| Self::io(&link, e))?;
            }
            let own = self.parent(&lower, Purpose::Lookup)?;
            let own_st = own
                .as_ref()
                .and_then(|p| sys::lstatat(&*p.fd, last(&lower)).ok());
            match (own, own_st) {
                (Some(p), Some(_)) if copied.contains(&lower) => {
                    sys::linkat(&*p.fd, last(&lower), &*lp.fd, &lname)
                        .map_err(|e| Self::io(&link, e))?;
                }
                (_, Some(st)) if sys::file_type(&st) == FileType::Directory => {
                    return Err(bad(format!("target {} is a directory", show(&target))));
                }
                (_, Some(_)) => {
                    // This layer replaced or deleted the target after linking to it: the link keeps
                    // the lower content, as in a flat extraction.
                    self.copy_from_lower(view, &lower, lp.fd.as_fd(), &lname, &link)?;
                }
                (_, None) => {
                    let found = view.lookup(&lower).map_err(|e| Self::io(&link, e))?;
                    if !matches!(found, Found::Other { .. }) {
                        return Err(bad(format!(
                            "target {} is not a file in this layer or below",
                            show(&target)
                        )));
                    }
                    let tp = self.parent(&lower, Purpose::Create)?.expect("created");
                    let tname = last(&lower).to_vec();
                    self.copy_from_lower(view, &lower, tp.fd.as_fd(), &tname, &link)?;
                    sys::linkat(&*tp.fd, &tname, &*lp.fd, &lname)
                        .map_err(|e| Self::io(&link, e))?;
                    copied.insert(lower.clone());
                }
            }
        }
        Ok(())
    }

    /// Copy the lower node at `lower` (a non-dir) to `name` in `dst`, data and attributes.
    fn copy_from_lower(
        &mut self,
        view: &LowerView,
        lower: &[u8],
        dst: BorrowedFd<'_>,
        name: &[u8],
        shown: &[u8],
    ) -> Result<()> {
        let io = |e: io::Error| Self::io(shown, e);
        let (layer, st) = match view.lookup(lower).map_err(io)? {
            Found::Other { layer, st } => (layer, st),
            Found::Dir { .. } => {
                return Err(Error::rejected(
                    show(shown),
                    Rule::Hardlink,
                    format!("target {} is a directory", show(lower)),
                ))
            }
            Found::Absent => {
                return Err(Error::rejected(
                    show(shown),
                    Rule::Hardlink,
                    format!("target {} not found in this layer or below", show(lower)),
                ))
            }
        };
        let src = view.open_parent(layer, lower).map_err(io)?;
        let sname = last(lower);
        let xattrs = self.lower_xattrs(sys::lget_all_xattrs_at(src.as_fd(), sname).map_err(io)?);
        let a = attrs::Attrs {
            uid: u64::from(st.st_uid),
            gid: u64::from(st.st_gid),
            mode: st.st_mode & 0o7777,
            xattrs: &xattrs,
            mtime: Some((st.st_mtime, st.st_mtime_nsec as u32)),
        };
        let symlink = match sys::file_type(&st) {
            FileType::RegularFile => {
                let mut from = sys::open_file_at(&src, sname).map_err(io)?;
                let mut to = sys::create_excl(dst, name).map_err(io)?;
                std::io::copy(&mut from, &mut to).map_err(io)?;
                return attrs::set(attrs::Node::Open(to.as_fd()), shown, &a, &mut self.warnings);
            }
            FileType::Symlink => {
                let t = sys::readlinkat(&src, sname).map_err(io)?;
                sys::symlinkat(&t, dst, name).map_err(io)?;
                true
            }
            FileType::CharacterDevice | FileType::BlockDevice => {
                let (maj, min) = sys::rdev(&st);
                let node = if sys::file_type(&st) == FileType::CharacterDevice {
                    Node::Char(maj, min)
                } else {
                    Node::Block(maj, min)
                };
                sys::mknodat(dst, name, node).map_err(io)?;
                false
            }
            FileType::Fifo => {
                sys::mknodat(dst, name, Node::Fifo).map_err(io)?;
                false
            }
            _ => {
                return Err(Error::rejected(
                    show(shown),
                    Rule::Hardlink,
                    format!("target {} cannot be copied", show(lower)),
                ))
            }
        };
        let node = attrs::Node::At {
            dir: dst,
            name,
            symlink,
        };
        attrs::set(node, shown, &a, &mut self.warnings)
    }
}
