//! The output half shared by diff and squash: a tar producer -> sha256 (diffID) -> compressor ->
//! sha256 (blob) -> writer, and the staging of a result file.
//!
//! ```text
//! producer thread (caller's closure) ──1 MiB chunks──> caller's thread: diffID -> compressor -> blob
//!                                                       digest ──chunks──> writer thread: write(2)
//! ```
//! Channels are bounded, so memory stays a few MiB whatever the layer size; the compressors run
//! their own workers. Output bytes depend only on what the producer writes, never on timing.

use std::io::{self, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::bounded;

use crate::compress::{Compression, Encoder};
use crate::digest::{Descriptor, HashWriter, Hasher};
use crate::error::{Error, Outcomes, Result};
use crate::staging;
use crate::sys;

/// How a layer blob is encoded. The bytes depend on the compression and level only, never on
/// `jobs`, so digests are reproducible.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlobOptions {
    /// Blob compression.
    pub compression: Compression,
    /// Compression level (`None`: gzip 6, zstd 3).
    pub level: Option<i32>,
    /// The thread budget (0 = all cores): compressor workers, and for squash also layers read at
    /// once.
    pub jobs: usize,
    /// Leave out both sha256 digests (the descriptor's `digest` and `diff_id` come back empty):
    /// a caller that shows no descriptor saves a hash of every byte, twice.
    pub skip_digests: bool,
}

/// A `Write` that hands each write as one chunk to the next stage. The producer gives it whole
/// chunks (the tar writer buffers 1 MiB).
pub struct ChunkSender(crossbeam_channel::Sender<Vec<u8>>);

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

/// Our channels report a closed receiver as `BrokenPipe`: that stage stopped because a later one
/// failed, and the later one's error is the one to show.
pub fn stop_if_pipe(e: Error) -> Error {
    match e {
        Error::Io { ref source, .. } | Error::Output { ref source, .. }
            if source.kind() == io::ErrorKind::BrokenPipe =>
        {
            Error::Stopped
        }
        other => other,
    }
}

/// Run `produce` on a thread of its own, feeding the tar bytes it writes into [`ChunkSender`]
/// through the digests and the compressor into `out`. Returns the descriptor, what `produce`
/// returned, and `out`.
pub fn write_blob<W, R, P>(out: W, opts: &BlobOptions, produce: P) -> Result<(Descriptor, R, W)>
where
    W: Write + Send,
    R: Send,
    P: FnOnce(ChunkSender) -> Result<R> + Send,
{
    let jobs = crate::threads::Budget::new(opts.jobs).workers();
    let (chunk_tx, chunk_rx) = bounded::<Vec<u8>>(8);
    let (out_tx, out_rx) = bounded::<Vec<u8>>(8);
    let hash_blob = opts.compression != Compression::None && !opts.skip_digests;
    let hash_tar = !opts.skip_digests;
    std::thread::scope(|s| {
        let producer = s.spawn(move || produce(ChunkSender(chunk_tx)));
        // write(2) gets a thread of its own so that it overlaps hashing and compression.
        let writer = s.spawn(move || -> Result<W> {
            let mut out = out;
            for chunk in out_rx {
                out.write_all(&chunk).map_err(Error::output)?;
            }
            out.flush().map_err(Error::output)?;
            Ok(out)
        });
        // `move`: when this stage fails, its receiver must drop so the producer's sends fail
        // instead of blocking forever.
        let sink = (move || -> Result<(String, String, u64)> {
            let to_writer = io::BufWriter::with_capacity(1 << 20, ChunkSender(out_tx));
            let hashed = HashWriter::new(to_writer, hash_blob);
            let mut enc = Encoder::new(opts.compression, hashed, jobs, opts.level)
                .map_err(|e| Error::Usage(e.to_string()))?;
            let mut diff_id = hash_tar.then(Hasher::default);
            let io_err = |e: io::Error| stop_if_pipe(Error::output(e));
            for chunk in chunk_rx {
                if let Some(h) = &mut diff_id {
                    h.update(&chunk);
                }
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
            let diff_id = diff_id.map(Hasher::finish).unwrap_or_default();
            // Uncompressed: the blob is the tar, so one hash serves as both digests.
            let digest = if hash_blob { digest } else { diff_id.clone() };
            Ok((digest, diff_id, size))
        })();
        let produced = producer.join().expect("producer panicked");
        let written = writer.join().expect("writer panicked");
        let mut outcomes = Outcomes::default();
        let r = outcomes.take(produced);
        let done = outcomes.take(sink);
        let out = outcomes.take(written);
        outcomes.result()?;
        let (digest, diff_id, size) = done.expect("no error");
        let descriptor = Descriptor {
            media_type: opts.compression.media_type().to_string(),
            digest,
            size,
            diff_id,
        };
        Ok((descriptor, r.expect("no error"), out.expect("no error")))
    })
}

/// Where `-o PATH` puts the bytes.
enum Target {
    /// An existing device or FIFO (or a symlink to one): written in place, as `tar -f` does; a
    /// rename over it would replace the node (turn `/dev/null` into a file, orphan a FIFO's reader).
    Through(std::fs::File),
    /// A regular file or a new name: a temporary file beside it, renamed onto it when complete.
    Staged { dir: Arc<OwnedFd>, name: Vec<u8> },
}

/// Decide where `path` is written, before any work: a directory or a socket is refused here, not
/// after the whole layer was made.
fn target(path: &Path) -> Result<Target> {
    let usage = |why: &str| Error::Usage(format!("{}: {why}", path.display()));
    match sys::stat_path(path, true) {
        Ok(st) => match sys::file_type(&st) {
            sys::FileType::Directory => Err(usage("is a directory; -o names the layer file")),
            sys::FileType::Socket => Err(usage("is a socket; -o takes a file, a device or a FIFO")),
            sys::FileType::RegularFile => {
                let is_link = sys::stat_path(path, false)
                    .is_ok_and(|l| sys::file_type(&l) == sys::FileType::Symlink);
                // Through a symlink, the file it points at is replaced and the link kept.
                let real = if is_link {
                    std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?
                } else {
                    path.to_path_buf()
                };
                staged(&real)
            }
            _ => Ok(Target::Through(
                sys::open_write_through(path).map_err(|e| Error::io(path, e))?,
            )),
        },
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            if sys::stat_path(path, false).is_ok() {
                return Err(usage("is a symlink to nothing; name the file itself"));
            }
            staged(path)
        }
        Err(e) => Err(Error::io(path, e)),
    }
}

fn staged(path: &Path) -> Result<Target> {
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a file name", path.display())))?;
    Ok(Target::Staged {
        dir: Arc::new(sys::open_dir(&dir).map_err(|e| Error::io(path, e))?),
        name: name.as_encoded_bytes().to_vec(),
    })
}

/// Write the file `path` through `fill`. A regular file or new name is staged under a temporary
/// name in the same directory and renamed into place only when complete (a failure or a signal
/// leaves no partial file, an existing file stays intact); a device or FIFO is written through.
pub fn to_file<T>(
    path: &Path,
    fill: impl FnOnce(io::BufWriter<std::fs::File>) -> Result<(T, io::BufWriter<std::fs::File>)>,
) -> Result<T> {
    let finish = |w: io::BufWriter<std::fs::File>| -> Result<std::fs::File> {
        w.into_inner().map_err(|e| Error::io(path, e.into_error()))
    };
    match target(path)? {
        Target::Through(f) => {
            let (t, w) =
                fill(io::BufWriter::with_capacity(1 << 20, f)).map_err(|e| name_output(e, path))?;
            finish(w)?;
            Ok(t)
        }
        Target::Staged { dir, name } => {
            // Dropping `tmp` on any error below removes the temporary file.
            let (tmp, file) = staging::file(dir, &name).map_err(|e| Error::io(path, e))?;
            let (t, w) = fill(io::BufWriter::with_capacity(1 << 20, file))
                .map_err(|e| name_output(e, path))?;
            drop(finish(w)?);
            tmp.publish(&name).map_err(|e| Error::io(path, e))?;
            Ok(t)
        }
    }
}

/// The pipeline only knows "the output"; name it for the user.
pub(crate) fn name_output(e: Error, path: &Path) -> Error {
    match e {
        Error::Output { path: None, source } => Error::Output {
            path: Some(path.to_path_buf()),
            source,
        },
        other => other,
    }
}
