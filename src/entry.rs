//! The format-neutral changeset model that every pipeline speaks.
//!
//! A source (the overlay upper walk, the tar reader) produces [`Entry`] values in stream order; a sink
//! (the tar writer, the overlay-native layer writer) consumes them. Whiteouts and opaque markers are
//! kinds of their own here: each codec translates its wire form (`.wh.` names in tar, char 0/0 and
//! `<ns>.overlay.opaque` on disk) to and from these, so no codec knows the other's conventions.

use std::io::Read;

use crate::error::Result;
use crate::path::RelPath;

/// Symlinks followed while resolving one path inside a layer or stack before it counts as a loop:
/// Linux's own limit (path_resolution(7)), used by every resolver (apply, the store, squash).
pub const MAX_LINKS: usize = 40;

/// The most components a path may have, in the tar or once resolved through symlinks. Linux
/// filesystems have no depth limit, but every path-based tool stops at PATH_MAX (4,096 bytes,
/// so about 2,048 levels); 4,096 components is beyond anything a real image holds and keeps the
/// cost of one hostile member small (every walk is linear in the path, so this bounds it).
pub const MAX_DEPTH: usize = 4096;

/// The kernel's device number encoding keeps 12 bits of major and 20 of minor; `mknodat`'s `dev`
/// argument is 32 bits wide, so larger values would be silently truncated into another device
/// (possibly 0/0, a whiteout). Callers check [`dev_fits`] first.
pub const MAX_MAJOR: u32 = 0xfff;
/// See [`MAX_MAJOR`].
pub const MAX_MINOR: u32 = 0xf_ffff;

/// Whether `major:minor` survives `mknodat` unchanged.
pub fn dev_fits(major: u32, minor: u32) -> bool {
    major <= MAX_MAJOR && minor <= MAX_MINOR
}

/// One change: a path and what is there (or that nothing is).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where, in the layer: clean by construction (see [`RelPath`]).
    pub path: RelPath,
    /// What the path holds.
    pub kind: Kind,
    /// Attributes; ignored for whiteouts and opaque markers, which writers emit with fixed metadata.
    pub meta: Meta,
}

/// What a changeset entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    /// Regular file with `size` bytes of data, which the sink receives as a reader.
    File {
        /// Exact data length.
        size: u64,
    },
    /// Directory.
    Dir,
    /// Symbolic link to `target` (raw bytes, not resolved).
    Symlink {
        /// Link target as stored.
        target: Vec<u8>,
    },
    /// Another name for an entry written earlier in the same stream.
    Hardlink {
        /// The earlier entry's path.
        target: Vec<u8>,
    },
    /// Character device.
    Char {
        /// Device major.
        major: u32,
        /// Device minor.
        minor: u32,
    },
    /// Block device.
    Block {
        /// Device major.
        major: u32,
        /// Device minor.
        minor: u32,
    },
    /// Named pipe.
    Fifo,
    /// The path is deleted from the layers below.
    Whiteout,
    /// The directory at the path hides everything the layers below have inside it.
    Opaque,
}

/// Extended attributes as (name, value) byte pairs.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// Attributes of an entry.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Permission bits including setuid, setgid and sticky (the low 12 bits of `st_mode`).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u64,
    /// Numeric group.
    pub gid: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Nanoseconds part of the modification time.
    pub mtime_nsec: u32,
    /// Extended attributes, already filtered for the destination, sorted by name.
    pub xattrs: Xattrs,
}

/// A consumer of a changeset stream.
///
/// The source drives: it calls [`Sink::put`] once per entry, in stream order (a dir before its
/// children, a hardlink after its target). For [`Kind::File`] the sink must consume exactly `size`
/// bytes from `data`; for every other kind `data` is empty. A source that fails stops calling; it never
/// calls a finishing method, which sinks expose as their own consuming `finish`.
pub trait Sink {
    /// Receive one entry.
    fn put(&mut self, entry: &Entry, data: &mut dyn Read) -> Result<()>;
}
