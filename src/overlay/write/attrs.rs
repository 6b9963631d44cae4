//! Setting a node's attributes: the one place that does it, for entries of the tar (the writer and
//! its file pool) and for nodes copied from a lower layer (settling a store layer). The order is the
//! kernel's: owner first (chown clears setuid and setgid), then xattrs, then the mode, then times
//! (last: every other change updates ctime only, but a directory's time waits for its children,
//! so the caller may leave it out).

use std::os::fd::BorrowedFd;

use crate::entry::{Meta, Xattrs};
use crate::error::{Error, Result};
use crate::path::show;
use crate::sys;

/// The node to set.
#[derive(Clone, Copy)]
pub(crate) enum Node<'a> {
    /// An open file or dir.
    Open(BorrowedFd<'a>),
    /// A name in a dir, never followed: symlinks, devices, fifos (which cannot be opened).
    At {
        dir: BorrowedFd<'a>,
        name: &'a [u8],
        /// A symlink has no mode of its own.
        symlink: bool,
    },
}

/// What to set. `xattrs` are on-disk names (escaped, see `LayerWriter::disk_xattr`).
pub(crate) struct Attrs<'a> {
    pub uid: u64,
    pub gid: u64,
    pub mode: u32,
    pub xattrs: &'a Xattrs,
    /// `None`: leave the times (a dir's are set once its children are written).
    pub mtime: Option<(i64, u32)>,
}

impl<'a> Attrs<'a> {
    /// From an entry's `Meta` whose xattrs are already on-disk names.
    pub(crate) fn of(meta: &'a Meta, times: bool) -> Attrs<'a> {
        Attrs {
            uid: meta.uid,
            gid: meta.gid,
            mode: meta.mode,
            xattrs: &meta.xattrs,
            mtime: times.then_some((meta.mtime, meta.mtime_nsec)),
        }
    }
}

/// Set `attrs` on `node` (at `path`, for messages). A `user.*` xattr the filesystem or the node
/// type refuses (EPERM on symlinks and devices, EOPNOTSUPP) is skipped with a warning, as GNU
/// tar does; any other failure fails the node.
pub(crate) fn set(
    node: Node<'_>,
    path: &[u8],
    attrs: &Attrs<'_>,
    warnings: &mut Vec<String>,
) -> Result<()> {
    let io = |e| Error::io(show(path), e);
    match node {
        Node::Open(fd) => sys::fchown(fd, attrs.uid, attrs.gid),
        Node::At { dir, name, .. } => sys::chownat_nofollow(dir, name, attrs.uid, attrs.gid),
    }
    .map_err(io)?;
    for (n, v) in attrs.xattrs {
        let r = match node {
            Node::Open(fd) => sys::fsetxattr(fd, n, v),
            Node::At { dir, name, .. } => sys::lsetxattr_at(dir, name, n, v),
        };
        match r {
            Ok(()) => {}
            Err(e) if sys::xattr_refused(&e) && n.starts_with(b"user.") => {
                warnings.push(format!(
                    "{}: xattr {} skipped: {e}",
                    show(path),
                    String::from_utf8_lossy(n)
                ));
            }
            Err(e) => {
                return Err(Error::io(
                    format!("{} (xattr {})", show(path), String::from_utf8_lossy(n)),
                    e,
                ))
            }
        }
    }
    match node {
        Node::Open(fd) => sys::fchmod(fd, attrs.mode),
        Node::At { symlink: true, .. } => Ok(()),
        Node::At { dir, name, .. } => sys::chmodat(dir, name, attrs.mode),
    }
    .map_err(io)?;
    if let Some((s, ns)) = attrs.mtime {
        match node {
            Node::Open(fd) => sys::futimens(fd, s, ns),
            Node::At { dir, name, .. } => sys::utimensat_nofollow(dir, name, s, ns),
        }
        .map_err(io)?;
    }
    Ok(())
}
