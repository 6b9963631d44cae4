//! layerkit converts container image layers between the two forms they live in: overlayfs
//! directories on a host and OCI layer tarballs in a registry.
//!
//! # Brief overview
//! Everything is a stream of [`entry::Entry`] values: a [`RelPath`] plus file / dir / symlink /
//! hardlink / device / fifo / whiteout / opaque marker. Sources produce them and push them into an
//! [`entry::Sink`]; each job is one wiring of sources and sinks, and the jobs share parts but never
//! call each other:
//!
//! ```text
//! diff:   upper walk -> tar writer -> blob (diffID, compressor, digest)   [diff], [diff_to_file]
//! apply:  input (decompress, digests) -> tar reader -> layer writer        [apply_into], [apply_store]
//! squash: input -> tar reader -> index (per layer, in parallel) -> merge
//!         -> tar writer (verbatim copies) -> blob                          [squash], [squash_to_file]
//! ```
//!
//! Each codec owns its wire form of deletions: the tar codec ([`tar`]) speaks `.wh.` names, the
//! overlay codec char 0/0 devices and `<ns>.overlay.opaque`; nothing else in the crate knows
//! either. Refusals of hostile input are [`Error::Rejected`] with the [`Rule`] broken, so callers
//! match on the rule, not on text. `-j` ([`ApplyOptions::jobs`], [`BlobOptions::jobs`],
//! [`DiffOptions::jobs`]) is one budget: at most that many workers of each kind for the whole run.
//!
//! ```no_run
//! use layerkit::{diff_to_file, Compression, DiffOptions};
//! let opts = DiffOptions { compression: Compression::Zstd, ..Default::default() };
//! let report = diff_to_file("/var/lib/ovl/upper".as_ref(), "layer.tar.zst".as_ref(), &opts)?;
//! println!("{} {}", report.descriptor.digest, report.descriptor.diff_id);
//! # Ok::<(), layerkit::Error>(())
//! ```
//!
//! The README's "Library" section has one example per job; they are compiled as doctests here.

mod apply;
#[cfg(feature = "cli")]
#[doc(hidden)]
pub mod cli;
mod commit;
pub mod compress;
mod diff;
pub mod digest;
pub mod entry;
pub mod error;
pub mod image;
mod input;
mod output;
mod overlay;
pub mod path;
pub mod progress;
mod resolve;
mod rootfs;
mod squash;
mod stack;
mod staging;
mod store;
mod sys;
pub mod tar;
mod threads;
mod unpack;

pub use apply::apply_into;
pub use compress::Compression;
pub use diff::{diff, diff_to_file, diff_to_image, DiffOptions, DiffReport, ImageDiffReport};
pub use digest::Descriptor;
pub use error::{Error, Result, Rule};
pub use image::{ImageMeta, ImageTarget, ManifestDescriptor};
pub use input::{Input, Source};
pub use output::BlobOptions;
pub use overlay::read::upper::WalkOptions;
pub use overlay::{escape_lowerdir, split_lowerdir, Namespace};
pub use path::RelPath;
pub use rootfs::{apply_image_rootfs, apply_rootfs, RootfsReport};
pub use squash::{squash, squash_image, squash_to_file, ImageSquashReport, SquashOptions};
pub use staging::remove_on_signals;
pub use store::{apply_image, apply_store};
pub use tar::write::WriteOptions;
pub use unpack::{ApplyOptions, ApplyReport, ImageReport, LayerReport};

/// The store's lifecycle and docker's run -> commit loop, without a daemon: containers (an init
/// layer of mount-point placeholders and a writable layer on an image's layers), their mounts,
/// their changes committed as layers or images, and tidying what nothing uses.
pub mod containers {
    pub use crate::commit::{commit_to_file, commit_to_image};
    pub use crate::store::container::{
        container_dirs, create, inspect, mount, remove, umount, ContainerBase, ContainerDirs,
        Created, GraphData, GraphDriver, Inspect, RootFs,
    };
    pub use crate::store::gc::{
        forget_image, list, prune, ContainerInfo, ImageInfo, LayerInfo, Listing, Pruned,
        PrunedLayer,
    };
    pub use crate::store::records::{ContainerRecord, ImageRecord};
}

/// Internals the fuzz targets (`fuzz/`) drive directly; not part of the API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::stack::index::index;
}

/// The README's examples, compiled by `cargo test`.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;
