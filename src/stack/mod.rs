//! A stack of layers read and merged, shared by the jobs that need the stack's final state rather
//! than its layers one by one (squash; `--rootfs`):
//!
//! ```text
//! index workers (-j, one layer each): decompress -> tar reader -> index (+ spool if compressed)
//! merge thread:                      merge::Merger folds the indexes bottom-up into a plan
//! caller:                            write_plan: plan -> a PlanSink (member bytes read by pread)
//! ```
//! The plan is a function of the indexes alone, so the same input gives the same output at any
//! `-j`; data a later layer replaces or deletes is never read again.

pub(crate) mod index;
pub(crate) mod merge;

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;

use crate::entry::{Entry, Kind, Meta, MAX_DEPTH};
use crate::error::{Error, Result, Rule};
use crate::input::Input;
use crate::output::stop_if_pipe;
use crate::path::RelPath;
use crate::tar::{to_entry, Reader};
use crate::threads::map_in_order;
use index::{Layer, LayerIndex, Range};
use merge::Merger;
pub(crate) use merge::Step;

/// Index every layer, `workers` at once, spooling compressed ones into `spool`. The first
/// failure (in layer order) is reported.
pub(crate) fn read(inputs: &[Input], workers: usize, spool: &Path) -> Result<Vec<Layer>> {
    map_in_order(workers, inputs.len(), |i| index::index(&inputs[i], spool))
        .into_iter()
        .collect()
}

/// The merge walks its tree recursively, one frame per level: run it on a thread whose stack
/// holds [`MAX_DEPTH`] levels, whatever the caller's thread has (a 2 MiB default overflows at
/// about 4,000 levels). Only the pages it touches are ever allocated.
pub(crate) fn merge(layers: &[LayerIndex], flatten: bool) -> Result<Vec<Step>> {
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

/// Where a plan's entries go.
pub(crate) trait PlanSink {
    /// An entry and its data (files).
    fn put(&mut self, e: &Entry, data: &mut dyn Read) -> Result<()>;

    /// A member copied as it is in its layer (`len` bytes from `start`: headers, data, padding).
    /// By default it is read again and put as an entry; a tar writer copies the bytes.
    fn put_raw(&mut self, tar: &File, start: u64, len: u64, label: &str) -> Result<()> {
        let mut rd = Reader::new(Range::new(tar, start, len), label);
        let te = rd.next_entry()?.ok_or_else(|| {
            Error::rejected(
                label,
                Rule::MalformedTar,
                format!("no member at byte {start}"),
            )
        })?;
        let e = to_entry(&te)?;
        if matches!(e.kind, Kind::File { .. }) {
            self.put(&e, &mut rd.data())
        } else {
            self.put(&e, &mut io::empty())
        }
    }
}

/// Give every entry of `plan` to `sink`, in order, reading member bytes from `tars`. Errors name
/// the layer whose member failed.
pub(crate) fn write_plan(
    plan: &[Step],
    layers: &[LayerIndex],
    tars: &[File],
    sink: &mut dyn PlanSink,
) -> Result<()> {
    // The current dir (see `Step::Enter`) and its length before each component.
    let mut here: Vec<u8> = Vec::new();
    let mut lens: Vec<usize> = Vec::new();
    for step in plan {
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
                (sink.put(&dir, &mut io::empty()), None)
            }
            Step::Raw { layer, start, end } => (
                sink.put_raw(&tars[*layer], *start, end - start, &layers[*layer].label),
                Some(*layer),
            ),
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
                        (sink.put(entry, &mut r), Some(*layer))
                    }
                    _ => (sink.put(entry, &mut io::empty()), None),
                }
            }
        };
        res.map_err(|e| match (stop_if_pipe(e), layer) {
            (Error::Stopped, _) => Error::Stopped,
            (e, Some(l)) => e.in_layer(&layers[l].label),
            (e, None) => e,
        })?;
    }
    Ok(())
}
