//! The `--into` job: one layer unpacked into a plain directory, overlay-native (char 0/0 whiteouts,
//! opaque xattrs), with no lowers to settle against: what needs them gets defaults or is refused
//! (see [`crate::overlay::write`]). The pipeline is [`crate::unpack`]'s.

use std::path::Path;
use std::sync::atomic::AtomicBool;

use crate::error::{Error, Result};
use crate::input::Input;
use crate::overlay::escape_lowerdir;
use crate::overlay::write::{FilePool, Layer, Standalone};
use crate::staging;
use crate::threads::Budget;
use crate::unpack::{unpack, ApplyOptions, ApplyReport, LayerReport};

/// Unpack one layer into `dir` (created if missing, must be empty). The layer is written under a
/// temporary name beside `dir` and renamed onto it when complete, so a rejected or corrupt layer
/// leaves `dir` as it was.
pub fn apply_into(dir: &Path, input: &Input, opts: &ApplyOptions) -> Result<ApplyReport> {
    let (tmp, root, name) = staging::empty_dir(dir, "--into")?;
    // The writer gets a duplicate: the original fd keeps the temporary dir locked until it is
    // published, whatever the writer closes.
    let files = FilePool::new(Budget::new(opts.jobs).workers());
    let root_fd = root.try_clone().map_err(|e| Error::io(dir, e))?;
    let mut w = Layer::<Standalone>::new(root_fd, opts.ns, files);
    let d = unpack(input, &mut w, &AtomicBool::new(false), !opts.skip_digests)
        .map_err(|e| e.in_layer(&input.label))?;
    let warnings = (|| w.finish()?.standalone()?.seal())().map_err(|e| e.in_layer(&input.label))?;
    tmp.publish(&name).map_err(|e| Error::io(dir, e))?;
    drop(root);
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    let path = abs.display().to_string();
    Ok(ApplyReport {
        layers: vec![LayerReport {
            layer: input.label.clone(),
            chain_id: d.as_ref().map(|d| d.diff_id.clone()),
            diff_id: d.map(|d| d.diff_id),
            path: path.clone(),
            reused: false,
        }],
        lowerdir: escape_lowerdir(&path),
        short_lowerdir: String::new(),
        image: None,
        warnings: warnings
            .into_iter()
            .map(|w| format!("{}: {w}", input.label))
            .collect(),
    })
}
