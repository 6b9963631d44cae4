//! The apply job for one layer: bytes -> decompressor -> tar reader -> overlay-native writer.
//!
//! ```text
//! reader thread: file/stdin -> sha256 (blob) -> gzip/zstd/none -> sha256 (diffID) ──1 MiB chunks──>
//! caller's thread: tar::read -> tar::entry -> overlay::write::LayerWriter (syscalls)
//! ```
//! The channel is bounded, so memory stays a few MiB whatever the layer size, and decompression runs
//! beside file creation. The stream is always read to its end, even past the tar's end-of-archive
//! marker: the diffID covers every byte, and a gzip CRC or zstd checksum is only checked there.
//!
//! [`apply_into`] unpacks one layer into a directory (`--into`); the store (`crate::store`) runs
//! several of these at once and settles what each layer owes its lowers.

use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};
use serde::Serialize;
use sha2::{Digest as _, Sha256};

use crate::compress::decoder;
use crate::digest;
use crate::entry::Sink;
use crate::error::{Error, Result};
use crate::overlay::write::LayerWriter;
use crate::overlay::Namespace;
use crate::staging;
use crate::sys;
use crate::tar::entry::to_entry;
use crate::tar::read::Reader;

/// Where a layer's bytes come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file.
    Path(PathBuf),
    /// Standard input.
    Stdin,
}

/// One layer argument.
#[derive(Debug, Clone)]
pub struct Input {
    /// How the user named it (for messages and reports).
    pub label: String,
    /// Its bytes.
    pub source: Source,
}

impl Input {
    /// `-` is standard input, anything else a file.
    pub fn from_arg(p: &Path) -> Input {
        Input {
            label: p.display().to_string(),
            source: if p == Path::new("-") {
                Source::Stdin
            } else {
                Source::Path(p.to_path_buf())
            },
        }
    }

    fn open(&self) -> Result<Box<dyn Read + Send>> {
        Ok(match &self.source {
            Source::Stdin => Box::new(io::stdin()),
            Source::Path(p) => {
                let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
                    .map_err(|_| Error::Usage(format!("{}: bad path", self.label)))?;
                Box::new(
                    sys::openat_file(rustix::fs::CWD, &c).map_err(|e| Error::io(&self.label, e))?,
                )
            }
        })
    }
}

/// What to write.
#[derive(Debug, Clone, Copy, Default)]
pub struct ApplyOptions {
    /// Marker namespace (`user` for `userxattr` mounts).
    pub ns: Namespace,
    /// Layers unpacked at once (0 = all cores).
    pub jobs: usize,
    /// `--into` only: leave out the diffID (the store always needs it for ids). Hashing is a
    /// quarter of the CPU time of a one-layer unpack, wasted when nobody reads the digest.
    pub skip_digests: bool,
}

/// One unpacked layer.
#[derive(Debug, Clone, Serialize)]
pub struct LayerReport {
    /// The layer argument as given.
    pub layer: String,
    /// sha256 of the uncompressed tar (None only with [`ApplyOptions::skip_digests`]).
    #[serde(rename = "diffID", skip_serializing_if = "Option::is_none")]
    pub diff_id: Option<String>,
    /// OCI chainID of the stack up to this layer (None as `diff_id`).
    #[serde(rename = "chainID", skip_serializing_if = "Option::is_none")]
    pub chain_id: Option<String>,
    /// The layer dir.
    pub path: String,
    /// Already in the store: not unpacked again.
    pub reused: bool,
}

/// The result of an apply.
#[derive(Debug, Clone, Serialize)]
pub struct ApplyReport {
    /// Bottom first.
    pub layers: Vec<LayerReport>,
    /// The `lowerdir=` value: layer dirs, topmost first, `:`-separated (`:` and `\` escaped).
    pub lowerdir: String,
    /// Things users should hear about (duplicates, skipped xattrs).
    #[serde(skip)]
    pub warnings: Vec<String>,
}

/// A layer's bytes as read: the digests of the blob and of the uncompressed tar.
#[derive(Debug, Clone)]
pub struct Digests {
    /// sha256 of the bytes as given (compressed).
    pub blob: String,
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
}

/// Hashes the blob as read. Switched off once the stream turns out to be uncompressed: then the
/// blob digest is the diffID, and hashing the same bytes twice would cost a third of the run.
struct HashRead<R> {
    inner: R,
    h: Sha256,
    on: Arc<AtomicBool>,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if self.on.load(Ordering::Relaxed) {
            self.h.update(&buf[..n]);
        }
        Ok(n)
    }
}

/// The consumer end of the decompressor's channel; spent chunks go back for reuse.
struct Chunks {
    rx: Receiver<io::Result<Vec<u8>>>,
    back: Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
}

impl Read for Chunks {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos == self.cur.len() {
            match self.rx.recv() {
                Ok(Ok(c)) => {
                    let spent = std::mem::replace(&mut self.cur, c);
                    if spent.capacity() > 0 {
                        let _ = self.back.try_send(spent);
                    }
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.pos);
        buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Unpack `input` through `writer`. `stop` is polled between entries (another layer failed).
/// Digests are computed (and returned) only when `hash` is set.
pub fn unpack(
    input: &Input,
    writer: &mut LayerWriter,
    stop: &AtomicBool,
    hash: bool,
) -> Result<Option<Digests>> {
    let label = input.label.as_str();
    let src = input.open()?;
    let (tx, rx) = bounded::<io::Result<Vec<u8>>>(8);
    let (back, spare) = bounded::<Vec<u8>>(16);
    std::thread::scope(|s| {
        let reader = s.spawn(move || -> Option<Digests> {
            let on = Arc::new(AtomicBool::new(hash));
            let mut raw = HashRead {
                inner: src,
                h: Sha256::new(),
                on: on.clone(),
            };
            let mut plain = false;
            let mut diff = Sha256::new();
            let fail = |e: io::Error| {
                let _ = tx.send(Err(e));
            };
            match decoder(&mut raw) {
                Err(e) => fail(e),
                Ok((kind, mut d)) => loop {
                    if kind == crate::compress::Compression::None {
                        on.store(false, Ordering::Relaxed);
                        plain = true;
                    }
                    let mut chunk = spare.try_recv().unwrap_or_default();
                    chunk.resize(1 << 20, 0);
                    let mut n = 0;
                    // Fill whole chunks: fewer, larger handoffs.
                    let res = loop {
                        match d.read(&mut chunk[n..]) {
                            Ok(0) => break Ok(true),
                            Ok(k) => {
                                n += k;
                                if n == chunk.len() {
                                    break Ok(false);
                                }
                            }
                            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                            Err(e) => break Err(e),
                        }
                    };
                    chunk.truncate(n);
                    if hash {
                        diff.update(&chunk);
                    }
                    match res {
                        Ok(eof) => {
                            if n > 0 && tx.send(Ok(chunk)).is_err() {
                                break;
                            }
                            if eof {
                                break;
                            }
                        }
                        Err(e) if kind == crate::compress::Compression::None => {
                            fail(e);
                            break;
                        }
                        Err(e) => {
                            fail(io::Error::new(
                                e.kind(),
                                format!("corrupt {} stream: {e}", kind.name()),
                            ));
                            break;
                        }
                    }
                },
            }
            drop(tx);
            if !hash {
                return None;
            }
            let diff_id = digest::format(&diff.finalize());
            Some(Digests {
                blob: if plain {
                    diff_id.clone()
                } else {
                    digest::format(&raw.h.finalize())
                },
                diff_id,
            })
        });
        let mut chunks = Chunks {
            rx,
            back,
            cur: Vec::new(),
            pos: 0,
        };
        let result = (|| -> Result<()> {
            let mut rd = Reader::new(&mut chunks, label);
            while let Some(te) = rd.next_entry()? {
                if stop.load(Ordering::Relaxed) {
                    return Err(Error::Stopped);
                }
                let entry = to_entry(&te)?;
                if matches!(entry.kind, crate::entry::Kind::File { .. }) {
                    writer.put(&entry, &mut rd.data())?;
                } else {
                    writer.put(&entry, &mut io::empty())?;
                }
            }
            // The rest of the stream (record padding) still counts for the diffID, and the
            // compressed formats check their CRC / checksum only at the end.
            io::copy(&mut chunks, &mut io::sink()).map_err(|e| Error::io(label, e))?;
            Ok(())
        })();
        // On failure, stop the reader: dropping the receiver makes its sends fail.
        drop(chunks);
        let digests = reader.join().expect("reader thread panicked");
        result.map(|()| digests)
    })
}

/// `lowerdir=` escaping: the kernel splits on `:` and takes `\` as an escape.
pub fn escape_lowerdir(p: &str) -> String {
    p.replace('\\', "\\\\").replace(':', "\\:")
}

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
    let mut w = LayerWriter::new(
        root.try_clone().map_err(|e| Error::io(dir, e))?,
        opts.ns,
        false,
    );
    let d = unpack(input, &mut w, &AtomicBool::new(false), !opts.skip_digests)
        .map_err(|e| e.in_layer(&input.label))?;
    let warnings = w.finish().map_err(|e| e.in_layer(&input.label))?;
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
        warnings: warnings
            .into_iter()
            .map(|w| format!("{}: {w}", input.label))
            .collect(),
    })
}
