//! The OCI layer tar codec: pure bytes, never touches the filesystem.
//!
//! Whiteouts travel as empty regular files named `.wh.NAME`, opaque markers as `DIR/.wh..wh..opq`
//! (image-spec layer.md "Whiteouts"); the codec maps them to [`crate::entry::Kind::Whiteout`] and
//! [`crate::entry::Kind::Opaque`] so nothing else in the crate knows these names.

pub(crate) mod entry;
pub(crate) mod read;
pub(crate) mod write;

pub use entry::to_entry;
pub use read::{Reader, TarEntry};
pub use write::{TarWriter, WriteOptions};

/// Prefix of a whiteout name; no real file in a layer may start with it.
pub(crate) const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// Whether a real file may have this name in a layer: not under a whiteout's prefix, which every
/// reader takes as a deletion (image-spec layer.md "Whiteouts").
pub(crate) fn representable(name: &[u8]) -> bool {
    !name.starts_with(WHITEOUT_PREFIX)
}

/// Name of the opaque marker inside a directory.
pub(crate) const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
/// PAX record prefix of an extended attribute (the form GNU tar, Go and libarchive read).
pub(crate) const PAX_XATTR_PREFIX: &[u8] = b"SCHILY.xattr.";

/// Size of a tar block.
pub(crate) const BLOCK: usize = 512;
