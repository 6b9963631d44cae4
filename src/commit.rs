//! `layerkit commit`: a container's changes as a layer (its upper diffed against its own lowers,
//! so redirected dirs and metacopy files resolve), or as an image: the container's image plus that
//! layer. A composition of the store (which dirs) and the diff job (the layer), kept out of both.

use std::path::Path;

use crate::diff::{diff_to_file, diff_to_image, DiffOptions, DiffReport, ImageDiffReport};
use crate::error::{Error, Result};
use crate::image::{ImageMeta, ImageRef, ImageTarget};
use crate::store::container::hold;

/// `opts` for a held container's upper: its lowers and marker namespace, as the store has them.
fn with_dirs(d: &crate::store::container::ContainerDirs, opts: &DiffOptions) -> DiffOptions {
    let mut opts = opts.clone();
    opts.walk.ns = d.ns;
    opts.walk.lowers = d.lowers.clone();
    opts
}

/// The changes of container `what` (id, name or id prefix) in the store at `store`, as a layer
/// file at `out`. The init layer's placeholders are below the upper, so they are never part of it.
pub fn commit_to_file(
    store: &Path,
    what: &str,
    out: &Path,
    opts: &DiffOptions,
) -> Result<DiffReport> {
    // Held (resolved once, pinned) until the layer is written: no rm or prune in between.
    let held = hold(store, what)?;
    diff_to_file(&held.dirs.upper, out, &with_dirs(&held.dirs, opts))
}

/// The container's image plus its changes as a new top layer, written to `target`. The image's
/// blobs are read (and verified) from where the store recorded it came from; that source must
/// still hold the same image.
pub fn commit_to_image(
    store: &Path,
    what: &str,
    target: &ImageTarget,
    opts: &DiffOptions,
    meta: &ImageMeta,
) -> Result<ImageDiffReport> {
    let held = hold(store, what)?;
    let base = match held.source.clone() {
        Some((source, platform, config)) => {
            let r = ImageRef::parse(&source)
                .ok_or_else(|| Error::Usage(format!("{source}: not an image reference")))?;
            // Whatever ref names it now: committing into the image's own layout adds refs.
            crate::image::open_config(&r, &platform, &config)?
        }
        None => {
            return Err(Error::Usage(format!(
                "container {what} was made from layer files, not an image: commit it to a layer \
                 file (-o FILE.tar[.gz|.zst])"
            )))
        }
    };
    diff_to_image(
        &held.dirs.upper,
        target,
        Some(&base),
        &with_dirs(&held.dirs, opts),
        meta,
    )
}
