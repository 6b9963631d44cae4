//! The `--rootfs` job: a whole stack (an image's layers, or layer files) as one plain directory
//! tree, deletions applied, no markers: what `umoci raw unpack` gives.
//!
//! ```text
//! stack::read (-j layers at once; an image's layers verified in the same pass)
//!   -> stack::merge (flattened: the final state of every path, for an empty base)
//!   -> write_plan -> overlay::write::Layer<Standalone> (confined like --into) -> publish DIR
//! ```
//! Each final file is written once: data that a later layer replaces or deletes is never
//! written, because the merge decides from the indexes alone what survives before anything is
//! created.

use std::io::Read;
use std::path::Path;

use serde::Serialize;

use crate::entry::{Entry, Sink};
use crate::error::{Error, Result};
use crate::image::Image;
use crate::input::Input;
use crate::overlay::write::{FilePool, Layer, Standalone};
use crate::stack::index::LayerIndex;
use crate::stack::{self, write_plan, PlanSink};
use crate::staging;
use crate::threads::Budget;
use crate::unpack::{ApplyOptions, ImageReport};

/// What `--rootfs` made.
#[derive(Debug, Clone, Serialize)]
pub struct RootfsReport {
    /// The tree.
    pub rootfs: String,
    /// How many layers went into it.
    pub layers: usize,
    /// The image, when the layers came from one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageReport>,
    /// Things users should hear about (skipped xattrs).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// The layer writer as a plan's sink.
struct Writer<'a>(&'a mut Layer<Standalone>);

impl PlanSink for Writer<'_> {
    fn put(&mut self, e: &Entry, data: &mut dyn Read) -> Result<()> {
        self.0.put(e, data)
    }
}

/// Unpack `inputs` (bottom first) into `dir` as one tree. `dir` must be missing or empty; the tree
/// is built under a temporary name beside it and renamed into place only when complete.
pub fn apply_rootfs(dir: &Path, inputs: &[Input], opts: &ApplyOptions) -> Result<RootfsReport> {
    if inputs.is_empty() {
        return Err(Error::Usage("no layers to unpack".into()));
    }
    let (tmp, root, name) = staging::empty_dir(dir, "--rootfs")?;
    let workers = Budget::new(opts.jobs).workers();
    let (layers, tars): (Vec<LayerIndex>, Vec<_>) =
        stack::read(inputs, workers, &std::env::temp_dir())?
            .into_iter()
            .map(|l| (l.index, l.tar))
            .unzip();
    let plan = stack::merge(&layers, true)?;
    let root_fd = root.try_clone().map_err(|e| Error::io(dir, e))?;
    let mut w = Layer::<Standalone>::new(root_fd, opts.ns, FilePool::new(workers));
    write_plan(&plan, &layers, &tars, &mut Writer(&mut w))?;
    let warnings = w.finish()?.standalone()?.seal()?;
    tmp.publish(&name).map_err(|e| Error::io(dir, e))?;
    drop(root);
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    Ok(RootfsReport {
        rootfs: abs.display().to_string(),
        layers: inputs.len(),
        image: None,
        warnings,
    })
}

/// [`apply_rootfs`] of an image's layers, each verified as it is read.
pub fn apply_image_rootfs(dir: &Path, image: &Image, opts: &ApplyOptions) -> Result<RootfsReport> {
    let mut r = apply_rootfs(dir, &image.layers, opts)?;
    r.image = Some(ImageReport {
        manifest: image.manifest.clone(),
        config: image.config.clone(),
    });
    Ok(r)
}
