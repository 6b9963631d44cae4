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

pub(crate) mod index;
mod merge;

use std::fs::File;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::digest::Descriptor;
use crate::entry::{Entry, Kind, Meta, Sink, MAX_DEPTH};
use crate::error::{Error, Result};
use crate::input::Input;
use crate::output::{stop_if_pipe, to_file, write_blob, BlobOptions};
use crate::path::RelPath;
use crate::tar::write::{TarWriter, WriteOptions};
use crate::threads::{map_in_order, Budget};
use index::{Layer, LayerIndex, Range};
use merge::{Merger, Step};

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

/// The merge walks its tree recursively, one frame per level: run it on a thread whose stack
/// holds [`MAX_DEPTH`] levels, whatever the caller's thread has (a 2 MiB default overflows at
/// about 4,000 levels). Only the pages it touches are ever allocated.
fn merge(layers: &[LayerIndex], flatten: bool) -> Result<Vec<Step>> {
    const FRAME: usize = 2 << 10;
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("layerkit-merge".into())
            .stack_size((1 << 20) + MAX_DEPTH * FRAME)
            .spawn_scoped(s, || Merger::new(layers, flatten).run())
            .map_err(|source| Error::Resource {
                what: "merge thread",
                source,
            })?
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// Index every layer, `-j` at once. The first failure (in layer order) is reported.
fn index_all(inputs: &[Input], opts: &SquashOptions) -> Result<Vec<Layer>> {
    let tmp = opts.spool_dir.clone().unwrap_or_else(std::env::temp_dir);
    let workers = Budget::new(opts.blob.jobs).workers();
    map_in_order(workers, inputs.len(), |i| index::index(&inputs[i], &tmp))
        .into_iter()
        .collect()
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
    let (layers, tars): (Vec<LayerIndex>, Vec<File>) = index_all(inputs, opts)?
        .into_iter()
        .map(|l| (l.index, l.tar))
        .unzip();
    let plan = merge(&layers, opts.flatten)?;
    let (descriptor, (), out) = write_blob(out, &opts.blob, |chunks| {
        let mut w = TarWriter::new(
            chunks,
            WriteOptions {
                clamp_mtime: None,
                subsecond: true,
            },
        );
        // The current dir (see `Step::Enter`) and its length before each component.
        let mut here: Vec<u8> = Vec::new();
        let mut lens: Vec<usize> = Vec::new();
        for step in &plan {
            let (res, layer) = match step {
                Step::Enter(name) => {
                    lens.push(here.len());
                    if !here.is_empty() {
                        here.push(b'/');
                    }
                    here.extend_from_slice(name);
                    continue;
                }
                Step::Leave => {
                    here.truncate(lens.pop().expect("entered"));
                    continue;
                }
                Step::SynthDir => {
                    let dir = Entry {
                        path: RelPath::from_clean(here.clone()),
                        kind: Kind::Dir,
                        meta: Meta {
                            mode: 0o755,
                            ..Meta::default()
                        },
                    };
                    (w.put(&dir, &mut io::empty()), None)
                }
                Step::Raw { layer, start, end } => {
                    let mut r = Range::new(&tars[*layer], *start, end - start);
                    (w.put_raw(&mut r, end - start), Some(*layer))
                }
                Step::Entry {
                    entry,
                    data,
                    xattrs,
                } => {
                    let with;
                    let entry = match xattrs {
                        Some((layer, start)) => {
                            let mut e = entry.clone();
                            e.meta.xattrs =
                                index::xattrs_at(&tars[*layer], &layers[*layer].label, *start)
                                    .map_err(|e| e.in_layer(&layers[*layer].label))?;
                            with = e;
                            &with
                        }
                        None => entry,
                    };
                    match (data, &entry.kind) {
                        (Some((layer, off)), Kind::File { size }) => {
                            let mut r = Range::new(&tars[*layer], *off, *size);
                            (w.put(entry, &mut r), Some(*layer))
                        }
                        _ => (w.put(entry, &mut io::empty()), None),
                    }
                }
            };
            res.map_err(|e| match (stop_if_pipe(e), layer) {
                (Error::Stopped, _) => Error::Stopped,
                (e, Some(l)) => e.in_layer(&layers[l].label),
                (e, None) => e,
            })?;
        }
        w.finish().map_err(|_| Error::Stopped)?;
        Ok(())
    })?;
    Ok((descriptor, out))
}

/// Squash into the file `path`, staged under a temporary name and renamed into place when
/// complete: a failure leaves no file behind.
pub fn squash_to_file(inputs: &[Input], path: &Path, opts: &SquashOptions) -> Result<Descriptor> {
    to_file(path, |w| squash(inputs, w, opts))
}
