//! What the two apply jobs (`--into`: `apply.rs`, `--store`: `store/`) share: their
//! options and report, and one layer's bytes pumped through the tar reader into a layer writer.
//!
//! ```text
//! input::read_plain (reader thread: file -> digests, decompressor) ──plain tar──>
//! caller's thread: tar::read -> tar::entry -> overlay::write::Layer (syscalls)
//! ```

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};

use serde::Serialize;

use crate::entry::{Kind, Sink};
use crate::error::{Error, Result};
use crate::image;
use crate::input::{read_plain, Digests, Input};
use crate::overlay::Namespace;
use crate::tar::entry::to_entry;
use crate::tar::read::Reader;

/// How layers are written. The marker namespace must be the one of the mount that will read them:
/// a `userxattr` mount ignores `trusted.overlay.*`, and lower files would show through.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Marker namespace (`user` for `userxattr` mounts).
    pub ns: Namespace,
    /// The thread budget (0 = all cores): layers unpacked at once, and workers finishing small
    /// files for all of them.
    pub jobs: usize,
    /// `--into` only: leave out the diffID (the store always needs it for ids). Hashing is a
    /// quarter of the CPU time of a one-layer unpack, wasted when nobody reads the digest.
    pub skip_digests: bool,
}

/// One unpacked layer: what names it in an image config (diffID) and in a store (chainID).
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// The layer argument as given.
    pub layer: String,
    /// sha256 of the uncompressed tar (None only with [`ApplyOptions::skip_digests`]).
    #[serde(rename = "diffID", skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
    /// OCI chainID of the stack up to this layer (None as `diff_id`).
    #[serde(rename = "chainID", skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<String>,
    /// The layer dir.
    pub path: String,
    /// Already in the store: not unpacked again.
    pub reused: bool,
}

/// What a mount needs from an apply: each layer's dir, and the `lowerdir=` value that stacks
/// them.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    /// Bottom first.
    pub layers: Vec<LayerReport>,
    /// The `lowerdir=` value: layer dirs, topmost first, `:`-separated (`:` and `\` escaped).
    pub lowerdir: String,
    /// `--store` only: the same stack as `l/SHORT` names relative to the store (for a `mount` run
    /// from there; 128 layers fit the one page mount(2) takes).
    #[serde(skip)]
    pub short_lowerdir: String,
    /// The image the layers came from, when they came from one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageReport>,
    /// Things users should hear about (duplicates, skipped xattrs).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// Which image an apply unpacked: its manifest and config digests.
#[derive(Debug, Clone, Serialize)]
pub struct ImageReport {
    /// The manifest's digest (absent for a classic `docker save` archive, which has none).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub manifest: Option<String>,
    /// The config's digest.
    pub config: String,
}

/// Unpack `input` into `writer` (a layer being written). `stop` is polled between entries (another layer failed).
/// Digests are computed (and returned) only when `hash` is set.
pub(crate) fn unpack(
    input: &Input,
    writer: &mut dyn Sink,
    stop: &AtomicBool,
    hash: bool,
) -> Result<Option<Digests>> {
    let ((), digests) = read_plain(input, hash, |plain| {
        let mut rd = Reader::new(plain, &input.label);
        while let Some(te) = rd.next_entry()? {
            if stop.load(Ordering::Relaxed) {
                return Err(Error::Stopped);
            }
            let entry = to_entry(&te)?;
            if let Kind::File { size } = entry.kind {
                if image::may_be_image_member(&entry.path, size) {
                    // An image archive given as a layer: refuse it by name, not half-unpacked.
                    let mut data = Vec::new();
                    rd.data()
                        .read_to_end(&mut data)
                        .map_err(|e| Error::io(&input.label, e))?;
                    if let Some(e) = image::archive_hint(&input.label, &entry.path, &data) {
                        return Err(e);
                    }
                    writer.put(&entry, &mut &data[..])?;
                } else {
                    writer.put(&entry, &mut rd.data())?;
                }
            } else {
                writer.put(&entry, &mut io::empty())?;
            }
        }
        Ok(())
    })?;
    Ok(digests)
}
