//! layerkit converts container image layers between the two forms they live in: overlayfs
//! directories on a host and OCI layer tarballs in a registry.
//!
//! # Brief overview
//! Everything is a stream of [`entry::Entry`] values (a path plus file / dir / symlink / hardlink /
//! device / fifo / whiteout / opaque marker). Sources produce them, sinks consume them:
//!
//! ```text
//! diff:   overlay::walk (upper + lowers) -> tar::write::TarWriter -> output (compress, digests)
//! apply:  compress::decoder -> tar::read::Reader -> overlay::write::LayerWriter -> store
//! squash: squash::index (per layer, in parallel) -> squash::merge -> TarWriter -> output
//! ```
//!
//! Each codec owns its wire form of deletions: the tar codec speaks `.wh.` names, the overlay codec
//! char 0/0 devices and `<ns>.overlay.opaque`; nothing else in the crate knows either.
//!
//! ```no_run
//! use layerkit::{diff_to_file, DiffOptions};
//! use layerkit::Compression;
//! let opts = DiffOptions { compression: Compression::Zstd, ..Default::default() };
//! let report = diff_to_file("/var/lib/ovl/upper".as_ref(), "layer.tar.zst".as_ref(), &opts)?;
//! println!("{} {}", report.descriptor.digest, report.descriptor.diff_id);
//! # Ok::<(), layerkit::Error>(())
//! ```

mod apply;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
pub mod compress;
mod diff;
pub mod digest;
pub mod entry;
pub mod error;
mod input;
mod output;
mod overlay;
pub mod path;
mod resolve;
mod squash;
mod staging;
mod store;
mod sys;
pub mod tar;
mod threads;
mod unpack;

pub use apply::apply_into;
pub use compress::Compression;
pub use diff::{diff, diff_to_file, DiffOptions, DiffReport};
pub use digest::Descriptor;
pub use error::{Error, Result, Rule};
pub use input::{Input, Source};
pub use output::BlobOptions;
pub use overlay::read::upper::WalkOptions;
pub use overlay::Namespace;
pub use squash::{squash, squash_to_file, SquashOptions};
pub use staging::remove_on_signals;
pub use store::apply_store;
pub use tar::write::WriteOptions;
pub use unpack::{ApplyOptions, ApplyReport, LayerReport};

/// Internals the fuzz targets (`fuzz/`) drive directly; not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::squash::index::index;
}
