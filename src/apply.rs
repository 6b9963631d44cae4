//! The `--into` job: one layer unpacked into a plain directory, overlay-native (char 0/0 whiteouts,
//! opaque xattrs), with no lowers to settle against: what needs them gets defaults or is refused
//! (see [`crate::overlay::write`]). The pipeline is [`crate::unpack`]'s.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use crate::error::{Error, Result};
use crate::input::Input;
use crate::overlay::escape_lowerdir;
use crate::overlay::write::{FilePool, Layer, Standalone};
use crate::staging;
use crate::sys;
use crate::threads::Budget;
use crate::unpack::{unpack, ApplyOptions, ApplyReport, LayerReport};

/// Unpack one layer into `dir` (created if missing, must be empty). The layer is written under a
/// temporary name beside `dir` and renamed onto it when complete, so a rejected or corrupt layer
/// leaves `dir` as it was.
pub fn apply_into(dir: &Path, input: &Input, opts: &ApplyOptions) -> Result<ApplyReport> {
    let name = dir
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a directory name", dir.display())))?
        .as_encoded_bytes()
        .to_vec();
    let parent_path = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = sys::open_dir(&parent_path).map_err(|e| Error::io(&parent_path, e))?;
    match sys::lstatat(&parent, &name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(dir, e)),
        Ok(st) => {
            if sys::file_type(&st) != sys::FileType::Directory {
                return Err(Error::io(dir, io::Error::other("not a directory")));
            }
            let d = sys::openat_dir(&parent, &name).map_err(|e| Error::io(dir, e))?;
            if !sys::read_dir_names(&d)
                .map_err(|e| Error::io(dir, e))?
                .is_empty()
            {
                return Err(Error::io(
                    dir,
                    io::Error::other("not empty (--into needs an empty or missing directory)"),
                ));
            }
            if sys::fstat(&parent)
                .map_err(|e| Error::io(&parent_path, e))?
                .st_dev
                != st.st_dev
            {
                return Err(Error::io(
                    dir,
                    io::Error::other("a mount point; unpack into a directory inside it"),
                ));
            }
        }
    }
    let parent = Arc::new(parent);
    // Dropped on any error: the temporary tree goes with it.
    let (tmp, root) = staging::directory(parent, &name, 0o700).map_err(|e| Error::io(dir, e))?;
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
        image: None,
        warnings: warnings
            .into_iter()
            .map(|w| format!("{}: {w}", input.label))
            .collect(),
    })
}
