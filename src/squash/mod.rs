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
