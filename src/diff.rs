//! The diff job: overlay upper walk -> tar writer -> compressor -> digests, as a three-stage pipeline.
//!
//! ```text
//! walker thread ──Item──> tar thread (opens files, serialises) ──1 MiB chunks──> caller's thread:
//!                                                  sha256 (diffID) -> compressor -> sha256 (blob) -> out
//! ```
//! Channels are bounded, so memory stays a few MiB whatever the layer size; the compressors run
//! their own workers. The stream order is the walker's, so output bytes never depend on timing.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crossbeam_channel::bounded;

use crate::compress::{Compression, Encoder};
use crate::digest::{Descriptor, HashWriter, Hasher};
use crate::entry::Sink;
use crate::error::{Error, Result};
use crate::overlay::walk::{walk, FileRef, Item, WalkOptions, Warning};
use crate::sys;
use crate::tar::write::{TarWriter, WriteOptions};

/// What to produce.
#[derive(Debug, Clone, Default)]
pub struct DiffOptions {
    /// How to read the upper (namespace, lowers).
    pub walk: WalkOptions,
    /// Blob compression.
    pub compression: Compression,
    /// Compression level (`None`: gzip 6, zstd 3).
    pub level: Option<i32>,
    /// Compression worker threads (0 = all cores).
    pub jobs: usize,
    /// Tar writer options (mtime clamp).
    pub write: WriteOptions,
}

/// The result of a diff.
#[derive(Debug, Clone)]
pub struct DiffReport {
    /// The blob's descriptor with its diffID.
    pub descriptor: Descriptor,
    /// Entries skipped, with the reason.
    pub warnings: Vec<Warning>,
}

/// Default worker count: the cores this process may use.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A `Write` that hands 1 MiB chunks to the next stage.
struct ChunkSender(crossbeam_channel::Sender<Vec<u8>>);

impl Write for ChunkSender {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .send(buf.to_vec())
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "pipeline stopped"))?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Diff `upper` into `out`. `out` receives the (compressed) blob.
pub fn diff<W: Write + Send + 'static>(
    upper: &Path,
    out: W,
    opts: &DiffOptions,
) -> Result<(DiffReport, W)> {
    sys::raise_nofile_limit();
    let jobs = if opts.jobs == 0 {
        default_jobs()
    } else {
        opts.jobs
    };
    let (item_tx, item_rx) = bounded::<Item>(512);
    let (chunk_tx, chunk_rx) = bounded::<Vec<u8>>(8);
    let (out_tx, out_rx) = bounded::<Vec<u8>>(8);
    let hash_blob = opts.compression != Compression::None;

    std::thread::scope(|s| {
        let walker = s.spawn(move || {
            walk(upper, &opts.walk, &mut |item| {
                item_tx.send(item).map_err(|_| Error::Stopped)
            })
        });
        let tar = s.spawn(move || -> Result<()> {
            let mut w = TarWriter::new(ChunkSender(chunk_tx), opts.write);
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
                res.map_err(|e| stop_if_pipe(relabel(e, &display)))?;
            }
            w.finish().map_err(|_| Error::Stopped)?;
            Ok(())
        });
        // write(2) gets a thread of its own so that it overlaps hashing and compression.
        let writer = s.spawn(move || -> Result<W> {
            let mut out = out;
            for chunk in out_rx {
                out.write_all(&chunk).map_err(|e| Error::io(OUTPUT, e))?;
            }
            out.flush().map_err(|e| Error::io(OUTPUT, e))?;
            Ok(out)
        });

        // `move`: when this stage fails, its receiver must drop so the tar stage's sends fail
        // instead of blocking forever.
        let sink = (move || -> Result<(String, String, u64)> {
            let to_writer = io::BufWriter::with_capacity(1 << 20, ChunkSender(out_tx));
            let hashed = HashWriter::new(to_writer, hash_blob);
            let mut enc = Encoder::new(opts.compression, hashed, jobs, opts.level)
                .map_err(|e| Error::Usage(e.to_string()))?;
            let mut diff_id = Hasher::default();
            let io_err = |e: io::Error| stop_if_pipe(Error::io(OUTPUT, e));
            for chunk in chunk_rx {
                diff_id.update(&chunk);
                match &mut enc {
                    // Plain: hand the chunk itself to the writer; no copy, no second hash.
                    Encoder::Plain(h) => {
                        h.count(chunk.len());
                        h.get_mut().flush().map_err(io_err)?;
                        h.get_mut()
                            .get_mut()
                            .0
                            .send(chunk)
                            .map_err(|_| Error::Stopped)?;
                    }
                    _ => enc.write_all(&chunk).map_err(io_err)?,
                }
            }
            let (buffered, digest, size) = enc.finish().map_err(io_err)?.finish();
            buffered.into_inner().map_err(|e| io_err(e.into_error()))?;
            let diff_id = diff_id.finish();
            // Uncompressed: the blob is the tar, so one hash serves as both digests.
            let digest = if hash_blob { digest } else { diff_id.clone() };
            Ok((digest, diff_id, size))
        })();
        let walked = walker.join().expect("walker panicked");
        let tarred = tar.join().expect("tar stage panicked");
        let written = writer.join().expect("writer panicked");
        // A stage that stopped because another failed reports Stopped; show the real cause.
        let mut errors = Vec::new();
        let warnings = walked.map_err(|e| errors.push(e)).ok();
        let _ = tarred.map_err(|e| errors.push(e));
        let done = sink.map_err(|e| errors.push(e)).ok();
        let out = written.map_err(|e| errors.push(e)).ok();
        if !errors.is_empty() {
            let i = errors
                .iter()
                .position(|e| !matches!(e, Error::Stopped))
                .unwrap_or(0);
            return Err(errors.swap_remove(i));
        }
        let (digest, diff_id, size) = done.expect("no error");
        let descriptor = Descriptor {
            media_type: opts.compression.media_type().to_string(),
            digest,
            size,
            diff_id,
        };
        Ok((
            DiffReport {
                descriptor,
                warnings: warnings.unwrap_or_default(),
            },
            out.expect("no error"),
        ))
    })
}

/// Our channels report a closed receiver as `BrokenPipe`: that stage stopped because a later one
/// failed, and the later one's error is the one to show.
/// Placeholder path of errors writing the blob, replaced by the real name where it is known.
const OUTPUT: &str = "<output>";

fn stop_if_pipe(e: Error) -> Error {
    match e {
        Error::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe => Error::Stopped,
        other => other,
    }
}

/// Errors from the tar writer name the entry's path in the stream; show the file on disk instead.
fn relabel(e: Error, display: &Path) -> Error {
    if display.as_os_str().is_empty() {
        return e;
    }
    match e {
        Error::Rejected { rule, detail, .. } => Error::rejected(display, rule, detail),
        Error::Io { source, path } if path != Path::new(OUTPUT) => Error::io(display, source),
        other => other,
    }
}

fn open_data(r: &FileRef) -> io::Result<std::fs::File> {
    match r {
        FileRef::At { dir, name } => sys::openat_file(&**dir, name),
        FileRef::Path(p) => {
            let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
                .map_err(|_| io::ErrorKind::InvalidInput)?;
            sys::openat_file(rustix::fs::CWD, &c)
        }
    }
}

/// Diff into the file `path`, staged under a temporary name in the same directory and renamed into
/// place only when complete: a failed diff leaves no partial file, an existing file stays intact.
pub fn diff_to_file(upper: &Path, path: &Path, opts: &DiffOptions) -> Result<DiffReport> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a file name", path.display())))?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".layerkit-tmp.{}", std::process::id()));
    let tmp = dir.join(tmp_name);
    let file = sys::create_new(&tmp).map_err(|e| Error::io(path, e))?;
    let result =
        diff(upper, io::BufWriter::with_capacity(1 << 20, file), opts).and_then(|(report, w)| {
            w.into_inner()
                .map_err(|e| Error::io(path, e.into_error()))?;
            Ok(report)
        });
    match result {
        Ok(report) => {
            sys::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
            Ok(report)
        }
        Err(e) => {
            let _ = sys::remove_file(&tmp);
            Err(name_output(e, path))
        }
    }
}

/// The pipeline only knows "the output"; name it for the user.
pub fn name_output(e: Error, path: &Path) -> Error {
    match e {
        Error::Io { path: p, source } if p == Path::new(OUTPUT) => Error::io(path, source),
        other => other,
    }
}
