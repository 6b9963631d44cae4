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
use std::path::{Path, PathBuf};

use crossbeam_channel::bounded;

use crate::compress::{Compression, Encoder};
use crate::digest::{Descriptor, HashWriter, Hasher};
use crate::error::{Error, Result};
use crate::sys;

/// How to encode the blob.
#[derive(Debug, Clone, Copy, Default)]
pub struct BlobOptions {
    /// Blob compression.
    pub compression: Compression,
    /// Compression level (`None`: gzip 6, zstd 3).
    pub level: Option<i32>,
    /// Compression worker threads (0 = all cores).
    pub jobs: usize,
    /// Leave out both sha256 digests (the descriptor's `digest` and `diff_id` come back empty):
    /// a caller that shows no descriptor saves a hash of every byte, twice.
    pub skip_digests: bool,
}

/// Default worker count: the cores this process may use.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
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

/// Placeholder path of errors writing the blob, replaced by the real name where it is known
/// ([`name_output`]).
pub const OUTPUT: &str = "<output>";

/// Our channels report a closed receiver as `BrokenPipe`: that stage stopped because a later one
/// failed, and the later one's error is the one to show.
pub fn stop_if_pipe(e: Error) -> Error {
    match e {
        Error::Io { source, .. } if source.kind() == io::ErrorKind::BrokenPipe => Error::Stopped,
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
    let jobs = if opts.jobs == 0 {
        default_jobs()
    } else {
        opts.jobs
    };
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
                out.write_all(&chunk).map_err(|e| Error::io(OUTPUT, e))?;
            }
            out.flush().map_err(|e| Error::io(OUTPUT, e))?;
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
            let io_err = |e: io::Error| stop_if_pipe(Error::io(OUTPUT, e));
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
        // A stage that stopped because another failed reports Stopped; show the real cause.
        let mut errors = Vec::new();
        let r = produced.map_err(|e| errors.push(e)).ok();
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
        Ok((descriptor, r.expect("no error"), out.expect("no error")))
    })
}

/// Write the file `path` through `fill`, staged under a temporary name in the same directory and
/// renamed into place only when complete: a failure leaves no partial file, and an existing file
/// stays intact.
pub fn to_file<T>(
    path: &Path,
    fill: impl FnOnce(io::BufWriter<std::fs::File>) -> Result<(T, io::BufWriter<std::fs::File>)>,
) -> Result<T> {
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
    let result = fill(io::BufWriter::with_capacity(1 << 20, file)).and_then(|(t, w)| {
        w.into_inner()
            .map_err(|e| Error::io(path, e.into_error()))?;
        Ok(t)
    });
    match result {
        Ok(t) => {
            sys::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
            Ok(t)
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
