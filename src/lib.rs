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
//! use layerkit::diff::{diff_to_file, DiffOptions};
//! use layerkit::compress::Compression;
//! let opts = DiffOptions { compression: Compression::Zstd, ..Default::default() };
//! let report = diff_to_file("/var/lib/ovl/upper".as_ref(), "layer.tar.zst".as_ref(), &opts)?;
//! println!("{} {}", report.descriptor.digest, report.descriptor.diff_id);
//! # Ok::<(), layerkit::error::Error>(())
//! ```

pub mod apply;
pub mod cli;
pub mod compress;
pub mod diff;
pub mod digest;
pub mod entry;
pub mod error;
pub mod output;
pub mod overlay;
mod resolve;
pub mod squash;
pub mod staging;
pub mod store;
mod sys;
pub mod tar;
