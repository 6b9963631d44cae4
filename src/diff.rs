//! The diff job: overlay upper walk -> tar writer -> compressor -> digests, as a three-stage pipeline.
//!
//! ```text
//! walker thread ──Item──> tar thread (opens files, serialises) ──1 MiB chunks──> caller's thread:
//!                                                  sha256 (diffID) -> compressor -> sha256 (blob) -> out
//! ```
//! Channels are bounded, so memory stays a few MiB whatever the layer size; the compressors run
//! their own workers. The stream order is the walker's, so output bytes never depend on timing.

use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crossbeam_channel::bounded;
use serde::Serialize;

use crate::compress::Compression;
use crate::digest::Descriptor;
use crate::entry::Sink;
use crate::error::{Error, Outcomes, Result};
use crate::image::spec::media::OCI_MANIFEST;
use crate::image::write::{
    config_with, manifest_of, write_to, ImageMeta, ImageTarget, LayerDesc, ManifestDescriptor,
};
use crate::image::Image;
use crate::output::{stop_if_pipe, to_file, write_blob, BlobOptions};
use crate::overlay::read::upper::{walk, FileRef, Item, WalkOptions, Warning};
use crate::sys;
use crate::tar;
use crate::tar::write::{TarWriter, WriteOptions};

/// Everything besides the upper that decides a diff's bytes: the same upper and options always
/// give the same blob, at any `jobs`.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// How to read the upper (namespace, lowers).
    pub walk: WalkOptions,
    /// Blob compression.
    pub compression: Compression,
    /// Compression level (`None`: gzip 6, zstd 3).
    pub level: Option<i32>,
    /// The thread budget (0 = all cores): compressor workers.
    pub jobs: usize,
    /// Tar writer options (mtime clamp).
    pub write: WriteOptions,
}

/// What a registry push needs: the blob's descriptor with the diffID an image config lists.
#[derive(Debug, Clone)]
pub struct DiffReport {
    /// The blob's descriptor with its diffID.
    pub descriptor: Descriptor,
    /// Entries skipped, with the reason.
    pub warnings: Vec<Warning>,
}

/// Diff `upper` into `out`. `out` receives the (compressed) blob.
pub fn diff<W: Write + Send + 'static>(
    upper: &Path,
    out: W,
    opts: &DiffOptions,
) -> Result<(DiffReport, W)> {
    sys::raise_nofile_limit();
    let blob = BlobOptions {
        compression: opts.compression,
        level: opts.level,
        jobs: opts.jobs,
        skip_digests: false,
    };
    let (descriptor, warnings, out) = write_blob(out, &blob, |chunks| {
        let (item_tx, item_rx) = bounded::<Item>(512);
        std::thread::scope(|s| {
            // The walk recurses once per level: a stack for MAX_DEPTH levels (only the pages it
            // touches are allocated).
            let walker = std::thread::Builder::new()
                .name("layerkit-walk".into())
                .stack_size((1 << 20) + crate::entry::MAX_DEPTH * (4 << 10))
                .spawn_scoped(s, move || {
                    walk(upper, &opts.walk, tar::representable, &mut |item| {
                        item_tx.send(item).map_err(|_| Error::Stopped)
                    })
                })
                .map_err(|source| Error::Resource {
                    what: "walk thread",
                    source,
                })?;
            // `move`: a failing tar stage drops the receiver, so the walker stops instead of
            // blocking.
            let tarred = (move || -> Result<_> {
                let mut w = TarWriter::new(chunks, opts.write);
                for item in item_rx {
                    let Item {
                        entry,
                        data,
                        display,
                    } = item;
                    let res = match data {
                        Some(r) => {
                            let mut f = open_data(&r).map_err(|e| Error::io(&display, e))?;
                            w.put(&entry, &mut f)
                        }
                        None => w.put(&entry, &mut io::empty()),
                    };
                    res.map_err(|e| stop_if_pipe(relabel(e, &display, upper, &entry.path)))?;
                }
                Ok(w)
            })();
            // The end-of-archive marker only after a complete walk: a failed one must not end in
            // what reads as a valid (short) layer.
            // The tar stage first: when both fail of their own accord, its error is the one to
            // show (the walker's may only echo it).
            let mut outcomes = Outcomes::default();
            let w = outcomes.take(tarred);
            let warnings = outcomes.take(walker.join().expect("walker panicked"));
            outcomes.result()?;
            w.expect("no error").finish().map_err(|_| Error::Stopped)?;
            Ok(warnings.expect("no error"))
        })
    })?;
    Ok((
        DiffReport {
            descriptor,
            warnings,
        },
        out,
    ))
}

/// Errors from the tar writer name the entry's path in the stream; show the file on disk instead
/// (`display` for a file, else the path below the upper).
fn relabel(e: Error, display: &Path, upper: &Path, path: &[u8]) -> Error {
    let below;
    let display = if display.as_os_str().is_empty() {
        below = upper.join(std::ffi::OsStr::from_bytes(path));
        &below
    } else {
        display
    };
    match e {
        Error::Rejected { rule, detail, .. } => Error::rejected(display, rule, detail),
        Error::Io { source, .. } => Error::io(display, source),
        other => other,
    }
}

fn open_data(r: &FileRef) -> io::Result<std::fs::File> {
    let FileRef::At { dir, name } = r;
    sys::openat_file(&**dir, name)
}

/// Diff into the file `path`, staged under a temporary name in the same directory and renamed into
/// place only when complete: a failed diff leaves no partial file, an existing file stays intact.
pub fn diff_to_file(upper: &Path, path: &Path, opts: &DiffOptions) -> Result<DiffReport> {
    to_file(path, |w| diff(upper, w, opts))
}

/// What `diff_to_image` wrote: the manifest that `REF` now names and the new layer.
#[derive(Debug, Clone, Serialize)]
pub struct ImageDiffReport {
    /// The manifest's descriptor.
    pub manifest: ManifestDescriptor,
    /// The new layer's descriptor with its diffID.
    pub layer: Descriptor,
    /// Entries skipped, with the reason.
    #[serde(skip)]
    pub warnings: Vec<Warning>,
}

/// Diff `upper` into a new image in an OCI layout: `base`'s layers (its blobs copied as they are,
/// verified, when the layout lacks them) plus the diff on top, with `base`'s config extended by
/// the new layer (or a minimal config for this host without a base). Blobs are content-addressed
/// and written atomically; `index.json` is replaced atomically, keeping the layout's other refs.
pub fn diff_to_image(
    upper: &Path,
    target: &ImageTarget,
    base: Option<&Image>,
    opts: &DiffOptions,
    meta: &ImageMeta,
) -> Result<ImageDiffReport> {
    write_to(target, |w, name| {
        let base_descs = match base {
            Some(b) => w.copy_layers(b, b.layers.len())?,
            None => Vec::new(),
        };
        let report = w.put_with(|out| {
            let (r, out) = diff(upper, out, opts)?;
            let digest = r.descriptor.digest.clone();
            Ok((r, digest, out))
        })?;
        let layer = LayerDesc {
            media_type: report.descriptor.media_type.clone(),
            digest: report.descriptor.digest.clone(),
            size: report.descriptor.size,
            diff_id: report.descriptor.diff_id.clone(),
        };
        let created = meta.created_rfc3339();
        let config = config_with(
            base.map(|b| b.config_bytes.as_slice()),
            &layer,
            &created,
            "layerkit diff",
            meta.message.as_deref(),
        )?;
        let (config_digest, config_size) = w.put_bytes(&config)?;
        let mut layers = base_descs;
        layers.push(layer);
        let manifest = manifest_of((&config_digest, config_size), &layers);
        let (digest, size) = w.put_bytes(&manifest)?;
        let desc = ManifestDescriptor {
            media_type: OCI_MANIFEST.to_string(),
            digest,
            size,
        };
        w.set_ref(
            serde_json::json!({"mediaType": desc.media_type, "digest": desc.digest, "size": desc.size}),
            name,
        )?;
        Ok(ImageDiffReport {
            manifest: desc,
            layer: report.descriptor,
            warnings: report.warnings,
        })
    })
}
