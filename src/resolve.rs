//! The one in-root path resolver: how a path from a tar (or a symlink in one) is followed inside a
//! layer, a stack of layers or squash's merged tree. Chroot semantics: an absolute symlink target
//! starts again at the root, `..` never leaves it; at most [`MAX_LINKS`] symlinks are followed
//! and a path never grows past its depth limit; below a missing dir nothing exists, so the rest
//! resolves lexically (`missing/..` takes the component back instead of making `missing`).
//!
//! What is at a name is the caller's business ([`Tree`]): the layer writer looks in the dir it
//! is writing (one open fd), the store in the merged lower view, squash in its tree. The rules
//! above live here only, so a fix reaches apply, the store and squash at once.

use std::collections::VecDeque;

use crate::entry::{MAX_DEPTH, MAX_LINKS};
use crate::error::{Error, Rule};
use crate::path::show;

/// What a tree has at a name.
pub(crate) enum Seen {
    Dir,
    Symlink(Vec<u8>),
    Missing,
    /// A non-directory (not a symlink).
    Other,
}

/// A tree the resolver walks: a current dir, moved by `down`, `up` and `root`.
pub(crate) trait Tree {
    type Error;
    /// What is at `name` in the current dir; `path` is its resolved path (ending in `name`).
    fn look(&mut self, name: &[u8], path: &[u8]) -> Result<Seen, Self::Error>;
    /// Enter `name`, a dir by the last `look`.
    fn down(&mut self, name: &[u8], path: &[u8]) -> Result<(), Self::Error>;
    /// Back to the parent dir (never called at the root); `path` is the parent's.
    fn up(&mut self, path: &[u8]) -> Result<(), Self::Error>;
    /// Back to the root.
    fn root(&mut self);
}

/// How the last component is taken.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Last {
    /// Not looked at: the path names it, whatever it is (an entry's own name).
    Keep,
    /// Followed if it is a symlink; any other node ends the path.
    Follow,
    /// Must be a dir, through symlinks (an entry's parent).
    Dir,
}

pub(crate) struct Options {
    pub last: Last,
    /// Stop at the first missing component instead of resolving the rest lexically.
    pub stop_at_missing: bool,
    /// The most components the resolved path may have.
    pub max_depth: usize,
}

pub(crate) enum Outcome {
    /// Resolved: `path` exists (per the tree); `rest` are the components below it that were not
    /// looked at (the last one, as `Last` says) or do not exist (resolved lexically), in order.
    Found { path: Vec<u8>, rest: Vec<Vec<u8>> },
    /// A component is missing (only with `stop_at_missing`).
    Missing,
    /// A non-dir stands where a dir is needed; `path` is where.
    NotDir { path: Vec<u8> },
    /// More than [`MAX_LINKS`] symlinks; `path` is the one that broke the limit.
    Loop { path: Vec<u8> },
    /// The resolved path would pass `max_depth`.
    TooDeep,
}

/// Resolve `path` (components separated by `/`; empty and `.` components are skipped) in `tree`.
pub(crate) fn resolve<T: Tree>(
    tree: &mut T,
    path: &[u8],
    opts: &Options,
) -> Result<Outcome, T::Error> {
    let mut todo: VecDeque<Vec<u8>> = path.split(|&b| b == b'/').map(<[u8]>::to_vec).collect();
    // The resolved path of the current dir, and its length before each component.
    let mut here: Vec<u8> = Vec::with_capacity(path.len());
    let mut lens: Vec<usize> = Vec::new();
    let mut missing: Vec<Vec<u8>> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        match c.as_slice() {
            b"" | b"." => continue,
            b".." => {
                if missing.pop().is_none() {
                    if let Some(l) = lens.pop() {
                        here.truncate(l);
                        tree.up(&here)?;
                    }
                }
                continue;
            }
            _ => {}
        }
        if lens.len() + missing.len() + 1 > opts.max_depth {
            return Ok(Outcome::TooDeep);
        }
        let last = todo.is_empty();
        if !missing.is_empty() || (last && opts.last == Last::Keep) {
            missing.push(c);
            continue;
        }
        let len = here.len();
        if !here.is_empty() {
            here.push(b'/');
        }
        here.extend_from_slice(&c);
        match tree.look(&c, &here)? {
            Seen::Dir => {
                lens.push(len);
                tree.down(&c, &here)?;
            }
            Seen::Symlink(target) => {
                links += 1;
                if links > MAX_LINKS {
                    return Ok(Outcome::Loop { path: here });
                }
                here.truncate(len);
                if target.starts_with(b"/") {
                    here.clear();
                    lens.clear();
                    tree.root();
                }
                for t in target.split(|&b| b == b'/').rev() {
                    todo.push_front(t.to_vec());
                }
            }
            Seen::Missing if opts.stop_at_missing => return Ok(Outcome::Missing),
            Seen::Missing => {
                here.truncate(len);
                missing.push(c);
            }
            Seen::Other if last && opts.last == Last::Follow => {
                here.truncate(len);
                missing.push(c);
            }
            Seen::Other => return Ok(Outcome::NotDir { path: here }),
        }
    }
    Ok(Outcome::Found {
        path: here,
        rest: missing,
    })
}

/// `path` and then `more`, joined by `/`.
pub(crate) fn joined(path: &[u8], more: &[Vec<u8>]) -> Vec<u8> {
    let mut v = path.to_vec();
    for c in more {
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(c);
    }
    v
}

/// `entry` resolves (through symlinks) to more than [`MAX_DEPTH`] components.
pub(crate) fn too_deep(entry: &[u8]) -> Error {
    Error::rejected(
        show(entry),
        Rule::PathTooDeep,
        format!("its parent resolves through symlinks to more than {MAX_DEPTH} components"),
    )
}
