//! The squash job: N layers -> one layer that does the same to any base.
//!
//! ```text
//! index workers (-j, one layer each): decompress -> tar reader -> index (+ spool if compressed)
//! caller's thread:                   merge::Merger folds the indexes bottom-up into a plan
//! producer thread:                   plan -> TarWriter (raw member bytes copied by pread)
//!                                    ──chunks──> output::write_blob (diffID, compressor, digest)
//! ```
//! Layers are read in parallel; the output is a function of the indexes alone, so the same input
//! gives the same bytes at any `-j`.

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::digest::Descriptor;
use crate::entry::{Entry, Sink};
use crate::error::{Error, Result};
use crate::input::Input;
use crate::output::{to_file, write_blob, BlobOptions};
use crate::stack::index::{LayerIndex, Range};
use crate::stack::{self, write_plan, PlanSink};
use crate::tar::write::{TarWriter, WriteOptions};
use crate::threads::Budget;

/// How to squash. Without `flatten`, the result does to any base what the stack does; with it,
/// it is a complete tree for an empty base (no markers at all).
#[derive(Debug, Clone, Default)]
pub struct SquashOptions {
    /// Blob compression and level, and the thread budget (layers read at once, compressors).
    pub blob: BlobOptions,
    /// The result is for an empty base: no whiteouts, no opaque markers, every dir named.
    pub flatten: bool,
    /// Where compressed layers are spooled uncompressed while squashing (default: the system's
    /// temporary dir).
    pub spool_dir: Option<PathBuf>,
}

/// Squash `inputs` (bottom first) into `out`.
pub fn squash<W: Write + Send>(
    inputs: &[Input],
    out: W,
    opts: &SquashOptions,
) -> Result<(Descriptor, W)> {
    if inputs.is_empty() {
        return Err(Error::Usage("no layers to squash".into()));
    }
    // The merge reads the indexes only; the tars are read when the output is written.
    let spool = opts.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
    let workers = Budget::new(opts.blob.jobs).workers();
    let (layers, tars): (Vec<LayerIndex>, Vec<File>) = stack::read(inputs, workers, &spool)?
        .into_iter()
        .map(|l| (l.index, l.tar))
        .unzip();
    let plan = stack::merge(&layers, opts.flatten)?;
    let (descriptor, (), out) = write_blob(out, &opts.blob, |chunks| {
        let mut w = TarWriter::new(
            chunks,
            WriteOptions {
                clamp_mtime: None,
                subsecond: true,
            },
        );
        let mut sink = TarSink(&mut w);
        write_plan(&plan, &layers, &tars, &mut sink)?;
        w.finish().map_err(|_| Error::Stopped)?;
        Ok(())
    })?;
    Ok((descriptor, out))
}

/// The tar writer as a plan's sink: members the plan keeps as they are are copied byte for byte.
struct TarSink<'a, W: Write>(&'a mut TarWriter<W>);

impl<W: Write> PlanSink for TarSink<'_, W> {
    fn put(&mut self, e: &Entry, data: &mut dyn io::Read) -> Result<()> {
        self.0.put(e, data)
    }

    fn put_raw(&mut self, tar: &File, start: u64, len: u64, _label: &str) -> Result<()> {
        self.0.put_raw(&mut Range::new(tar, start, len), len)
    }
}

/// Squash into the file `path`, staged under a temporary name and renamed into place when
/// complete: a failure leaves no file behind.
pub fn squash_to_file(inputs: &[Input], path: &Path, opts: &SquashOptions) -> Result<Descriptor> {
    to_file(path, |w| squash(inputs, w, opts))
}

/// Which layers of an image `--from N` squashes: `N..top`, N 0-based, negative from the top
/// (`-2`: the top two). `0` (all) flattens. Returns the first squashed layer.
pub(crate) fn from_layer(from: i64, layers: usize) -> Result<usize> {
    let n = layers as i64;
    let k = if from < 0 { n + from } else { from };
    if n == 0 || !(0..n).contains(&k) {
        return Err(Error::Usage(format!(
            "--from {from}: the image has {layers} layers (use 0..{} or -{}..-1)",
            n - 1,
            n
        )));
    }
    Ok(k as usize)
}

/// What `squash_image` wrote.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ImageSquashReport {
    /// The manifest that the ref now names.
    pub manifest: crate::image::ManifestDescriptor,
    /// The squashed layer, with its diffID.
    pub layer: Descriptor,
    /// The layers kept below it, as they were.
    pub kept: usize,
}

/// Squash layers `from..top` of `image` (`from` 0-based, negative from the top) into one and
/// write the image into the OCI layout of `target`: the layers below kept byte-identical (the
/// same blobs, copied into the layout when it lacks them), the config's diff_ids and history cut
/// and extended to match. `from` 0 flattens. The squashed layers are verified as they are read.
pub fn squash_image(
    image: &crate::image::Image,
    from: i64,
    target: &crate::image::ImageTarget,
    opts: &SquashOptions,
    meta: &crate::image::ImageMeta,
) -> Result<ImageSquashReport> {
    use crate::image::write::{config_squashed, manifest_of, write_to, LayerDesc};
    let keep = from_layer(from, image.layers.len())?;
    write_to(target, |w, name| {
        let kept = w.copy_layers(image, keep)?;
        let opts = SquashOptions {
            flatten: keep == 0,
            ..opts.clone()
        };
        let layer = w.put_with(|out| {
            let (d, out) = squash(&image.layers[keep..], out, &opts)?;
            let digest = d.digest.clone();
            Ok((d, digest, out))
        })?;
        let desc = LayerDesc {
            media_type: layer.media_type.clone(),
            digest: layer.digest.clone(),
            size: layer.size,
            diff_id: layer.diff_id.clone(),
        };
        let created = meta.created_rfc3339();
        let config = config_squashed(
            &image.config_bytes,
            keep,
            &desc,
            &created,
            meta.message.as_deref(),
        )?;
        let (config_digest, config_size) = w.put_bytes(&config)?;
        let mut layers = kept;
        layers.push(desc);
        let manifest = manifest_of((&config_digest, config_size), &layers);
        let (digest, size) = w.put_bytes(&manifest)?;
        let m = crate::image::ManifestDescriptor {
            media_type: crate::image::spec::media::OCI_MANIFEST.to_string(),
            digest,
            size,
        };
        w.set_ref(
            serde_json::json!({"mediaType": m.media_type, "digest": m.digest, "size": m.size}),
            name,
        )?;
        Ok(ImageSquashReport {
            manifest: m,
            layer,
            kept: keep,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::from_layer;

    #[test]
    fn from_counts_from_the_bottom_or_the_top() {
        assert_eq!(from_layer(0, 3).unwrap(), 0);
        assert_eq!(from_layer(2, 3).unwrap(), 2);
        assert_eq!(from_layer(-1, 3).unwrap(), 2);
        assert_eq!(from_layer(-3, 3).unwrap(), 0);
        assert!(from_layer(3, 3).is_err());
        assert!(from_layer(-4, 3).is_err());
        assert!(from_layer(0, 0).is_err());
    }
}
