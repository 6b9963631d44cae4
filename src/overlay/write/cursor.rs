//! One open directory that moves between paths of a tree only this process changes: it climbs
//! through `..` to the common ancestor and descends by name (never following a symlink). Visiting
//! paths in sorted order costs O(size of the tree) syscalls with one descriptor, at any depth;
//! opening each path from the root would cost O(depth) each, and one descriptor per level would
//! run out at a few thousand levels.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use crate::sys;

pub(crate) struct Cursor {
    root: Arc<OwnedFd>,
    /// Open at `path`; `None` at the root.
    fd: Option<OwnedFd>,
    path: Vec<u8>,
    /// `path`'s length before each of its components.
    lens: Vec<usize>,
}

impl Cursor {
    pub(crate) fn new(root: Arc<OwnedFd>) -> Cursor {
        Cursor {
            root,
            fd: None,
            path: Vec::new(),
            lens: Vec::new(),
        }
    }

    fn here(&self) -> BorrowedFd<'_> {
        match &self.fd {
            Some(fd) => fd.as_fd(),
            None => self.root.as_fd(),
        }
    }

    /// The dir at `target` ("" = the root), or `None` if it is not a directory there (missing, a
    /// non-dir or a symlink on the way).
    pub(crate) fn goto(&mut self, target: &[u8]) -> io::Result<Option<BorrowedFd<'_>>> {
        // Climb until `path` is `target` or an ancestor of it.
        while !crate::path::is_within(target, &self.path) {
            let l = self
                .lens
                .pop()
                .expect("the root is an ancestor of every path");
            self.path.truncate(l);
            self.fd = if self.lens.is_empty() {
                None
            } else {
                Some(sys::openat_dir(self.here(), b"..")?)
            };
        }
        let rest = &target[self.path.len()..];
        let rest = rest.strip_prefix(b"/").unwrap_or(rest);
        for c in rest.split(|&b| b == b'/').filter(|c| !c.is_empty()) {
            match sys::openat_dir(self.here(), c) {
                Ok(fd) => {
                    self.fd = Some(fd);
                    self.lens.push(self.path.len());
                    if !self.path.is_empty() {
                        self.path.push(b'/');
                    }
                    self.path.extend_from_slice(c);
                }
                Err(e) if sys::is_absent(&e) => return Ok(None),
                Err(e) => return Err(e),
            }
        }
        Ok(Some(self.here()))
    }
}
