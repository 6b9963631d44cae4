//! Where layer bytes come from: a file or standard input, read to its end on a thread of its own,
//! decompressed, with the digests of the blob and of the plain tar taken on the way.
//!
//! ```text
//! reader thread: file/stdin -> sha256 (blob) -> gzip/zstd/none -> sha256 (diffID) ──1 MiB chunks──>
//! caller's thread: whatever reads the plain tar (the apply jobs' tar reader)
//! ```
//! The channel is bounded, so memory stays a few MiB whatever the layer size, and decompression runs
//! beside whatever consumes it. The stream is always read to its end, even past the tar's
//! end-of-archive marker: the diffID covers every byte, and a gzip CRC or zstd checksum is only
//! checked there.

use std::io::{self, Read, Seek};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crossbeam_channel::{bounded, Receiver, Sender};
use sha2::{Digest as _, Sha256, Sha512};

use crate::compress::{decoder, Compression};
use crate::digest;
use crate::error::{Error, Result, Rule};
use crate::progress::{Meter, Metered};
use crate::sys;

/// Where a layer's bytes come from. Standard input can be read once, so jobs that would read a
/// file twice (the store's reuse check) read stdin once.
#[derive(Debug, Clone)]
pub enum Source {
    /// A file.
    Path(PathBuf),
    /// Standard input.
    Stdin,
    /// `len` bytes of a file from `offset` (a blob inside an image archive).
    Range {
        /// The file.
        path: PathBuf,
        /// Where the bytes start.
        offset: u64,
        /// How many.
        len: u64,
    },
}

/// What a layer's bytes must be, from its image: checked in the same pass that unpacks them, so a
/// blob is never read twice, and a layer that fails is never committed.
#[derive(Debug, Clone, Default)]
pub(crate) struct Expect {
    /// The blob's digest (`sha256:` or `sha512:`), from its descriptor.
    pub blob: Option<String>,
    /// The blob's size, from its descriptor.
    pub size: Option<u64>,
    /// The uncompressed tar's sha256, from the config's `rootfs.diff_ids`.
    pub diff_id: Option<String>,
}

/// A layer as the user named it: the name is what every error and report says.
#[derive(Debug, Clone)]
pub struct Input {
    /// How the user named it (for messages and reports).
    pub label: String,
    /// Its bytes.
    pub source: Source,
    /// What its bytes must be (a layer of an image).
    pub(crate) expect: Option<Expect>,
    /// Where its reads are counted, if anyone watches.
    pub(crate) meter: Option<Arc<Meter>>,
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
            expect: None,
            meter: None,
        }
    }

    /// A blob of an image, with what it must verify as.
    pub(crate) fn blob(label: String, source: Source, expect: Expect) -> Input {
        Input {
            label,
            source,
            expect: Some(expect),
            meter: None,
        }
    }

    /// Count its reads into `meter` (and its size, when known beforehand, into the total).
    pub fn metered(mut self, meter: &Arc<Meter>) -> Input {
        let size = match &self.source {
            Source::Stdin => None,
            Source::Path(p) => sys::stat_path(p, true)
                .ok()
                .filter(|st| sys::file_type(st) == rustix::fs::FileType::RegularFile)
                .map(|st| st.st_size as u64),
            Source::Range { len, .. } => Some(*len),
        };
        meter.add_layer(size);
        self.meter = Some(meter.clone());
        self
    }

    /// The diffID its image promises, known before reading it.
    pub(crate) fn promised_diff_id(&self) -> Option<&str> {
        self.expect.as_ref()?.diff_id.as_deref()
    }

    pub(crate) fn open(&self) -> Result<Box<dyn Read + Send>> {
        Ok(self.metered_reader(self.open_raw()?))
    }

    /// `r` (this input's bytes, opened some other way) counted into its meter, if any.
    pub(crate) fn metered_reader<'a>(
        &self,
        r: Box<dyn Read + Send + 'a>,
    ) -> Box<dyn Read + Send + 'a> {
        match &self.meter {
            Some(m) => Box::new(Metered {
                inner: r,
                meter: m.clone(),
                ended: false,
            }),
            None => r,
        }
    }

    /// Count `n` bytes read, and the layer done, at once (for a tar read in place, by seeks).
    pub(crate) fn metered_whole(&self, n: u64) {
        if let Some(m) = &self.meter {
            m.whole(n);
        }
    }

    fn open_raw(&self) -> Result<Box<dyn Read + Send>> {
        Ok(match &self.source {
            Source::Stdin => Box::new(io::stdin()),
            Source::Path(p) => Box::new(open_layer_file(&self.label, p)?),
            Source::Range { path, offset, len } => {
                let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
                    .map_err(|_| Error::Usage(format!("{}: bad path", self.label)))?;
                let mut f =
                    sys::openat_file(rustix::fs::CWD, &c).map_err(|e| Error::io(&self.label, e))?;
                f.seek(io::SeekFrom::Start(*offset))
                    .map_err(|e| Error::io(&self.label, e))?;
                Box::new(f.take(*len))
            }
        })
    }

    /// Whether its image says what its bytes must be.
    pub(crate) fn verifies(&self) -> bool {
        self.expect.is_some()
    }

    /// Whether its blob digest is a sha512.
    pub(crate) fn expects_sha512(&self) -> bool {
        self.expect
            .as_ref()
            .and_then(|x| x.blob.as_deref())
            .is_some_and(|b| b.starts_with("sha512:"))
    }

    /// Check what was read against what the image says; the error names the blob and the rule.
    pub(crate) fn verify(&self, d: &Digests) -> Result<()> {
        let Some(x) = &self.expect else {
            return Ok(());
        };
        let bad = |rule, detail: String| Err(Error::rejected(&self.label, rule, detail));
        if let Some(size) = x.size {
            if size != d.size {
                return bad(
                    Rule::BlobDigest,
                    format!("{} bytes, its descriptor says {size}", d.size),
                );
            }
        }
        if let Some(want) = &x.blob {
            if *want != d.blob {
                return bad(
                    Rule::BlobDigest,
                    format!("digest {}, its descriptor says {want}", d.blob),
                );
            }
        }
        if let Some(want) = &x.diff_id {
            if *want != d.diff_id {
                return bad(
                    Rule::DiffId,
                    format!("uncompressed digest {}, the config says {want}", d.diff_id),
                );
            }
        }
        Ok(())
    }
}

/// Open a layer file; a directory (an OCI layout, say) is refused with a hint.
pub(crate) fn open_layer_file(label: &str, p: &Path) -> Result<std::fs::File> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Usage(format!("{label}: bad path")))?;
    let f = sys::openat_file(rustix::fs::CWD, &c).map_err(|e| Error::io(label, e))?;
    if sys::fstat(&f).is_ok_and(|st| sys::file_type(&st) == sys::FileType::Directory) {
        if let Some(e) = crate::image::layout_hint(label, p) {
            return Err(e);
        }
    }
    Ok(f)
}

/// What was read through a [`Hashing`] reader: sha256 (and sha512, when asked) and the count.
#[derive(Default)]
pub(crate) struct Hashed {
    sha256: Sha256,
    sha512: Option<Sha512>,
    n: u64,
}

impl Hashed {
    /// `(sha256, sha512 if asked, bytes)`.
    pub(crate) fn finish(self) -> (String, Option<String>, u64) {
        (
            digest::format(&self.sha256.finalize()),
            self.sha512
                .map(|h| format!("sha512:{}", hex::encode(h.finalize()))),
            self.n,
        )
    }
}

/// A reader that hashes and counts what passes through it, into a state its owner keeps (the
/// reader itself may be moved into a decoder).
pub(crate) struct Hashing<R> {
    inner: R,
    /// Off: the bytes only pass (nothing to verify, and hashing costs a pass over them).
    on: bool,
    state: Arc<std::sync::Mutex<Hashed>>,
}

impl<R> Hashing<R> {
    pub(crate) fn new(inner: R, on: bool, sha512: bool) -> (Self, Arc<std::sync::Mutex<Hashed>>) {
        let state = Arc::new(std::sync::Mutex::new(Hashed {
            sha512: sha512.then(Sha512::new),
            ..Hashed::default()
        }));
        (
            Hashing {
                inner,
                on,
                state: state.clone(),
            },
            state,
        )
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if !self.on {
            return Ok(n);
        }
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.sha256.update(&buf[..n]);
        if let Some(h) = &mut s.sha512 {
            h.update(&buf[..n]);
        }
        s.n += n as u64;
        Ok(n)
    }
}

/// The state a [`Hashing`] reader left, once it is gone.
pub(crate) fn take_hashed(state: Arc<std::sync::Mutex<Hashed>>) -> Hashed {
    std::mem::take(&mut *state.lock().unwrap_or_else(|p| p.into_inner()))
}

/// A layer's bytes as read: the digests of the blob and of the uncompressed tar.
#[derive(Debug, Clone)]
pub struct Digests {
    /// Digest of the bytes as given (compressed): sha256, or sha512 when the image's descriptor
    /// uses it.
    pub blob: String,
    /// sha256 of the uncompressed tar.
    pub diff_id: String,
    /// Bytes as given.
    pub size: u64,
}

/// The blob's hash, in the algorithm its descriptor uses.
enum BlobHash {
    Sha256(Sha256),
    Sha512(Sha512),
}

/// Hashes and counts the blob as read. The sha256 is switched off once the stream turns out to be
/// uncompressed: then the blob digest is the diffID, and hashing the same bytes twice would cost a
/// third of the run.
struct HashRead<R> {
    inner: R,
    h: BlobHash,
    on: Arc<AtomicBool>,
    n: u64,
}

impl<R: Read> Read for HashRead<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.n += n as u64;
        match &mut self.h {
            BlobHash::Sha256(h) if self.on.load(Ordering::Relaxed) => h.update(&buf[..n]),
            BlobHash::Sha256(_) => {}
            BlobHash::Sha512(h) => h.update(&buf[..n]),
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

/// Read `input` decompressed: `consume` gets the plain tar bytes while a thread of its own reads
/// and decompresses them; after `consume` returns, the rest of the stream is read too (record
/// padding counts for the diffID, and the compressed formats check their CRC / checksum only at
/// the end). Digests are computed (and returned) only when `hash` is set.
pub(crate) fn read_plain<T>(
    input: &Input,
    hash: bool,
    consume: impl FnOnce(&mut dyn Read) -> Result<T>,
) -> Result<(T, Option<Digests>)> {
    let label = input.label.as_str();
    let src = input.open()?;
    // An image's blob is always verified.
    let hash = hash || input.expect.is_some();
    let sha512 = input
        .expect
        .as_ref()
        .and_then(|x| x.blob.as_deref())
        .is_some_and(|b| b.starts_with("sha512:"));
    let (tx, rx) = bounded::<io::Result<Vec<u8>>>(8);
    let (back, spare) = bounded::<Vec<u8>>(16);
    std::thread::scope(|s| {
        let reader = s.spawn(move || decode(src, hash, sha512, tx, &spare));
        let mut chunks = Chunks {
            rx,
            back,
            cur: Vec::new(),
            pos: 0,
        };
        let result = consume(&mut chunks).and_then(|t| {
            io::copy(&mut chunks, &mut io::sink()).map_err(|e| Error::io(label, e))?;
            Ok(t)
        });
        // On failure, stop the reader: dropping the receiver makes its sends fail.
        drop(chunks);
        let digests = reader.join().expect("reader thread panicked");
        let t = result?;
        if let Some(d) = &digests {
            input.verify(d)?;
        }
        Ok((t, digests))
    })
}

/// The reader thread: `src` -> blob hash -> decompressor -> diffID hash -> chunks on `tx`.
fn decode(
    src: Box<dyn Read + Send>,
    hash: bool,
    sha512: bool,
    tx: Sender<io::Result<Vec<u8>>>,
    spare: &Receiver<Vec<u8>>,
) -> Option<Digests> {
    let on = Arc::new(AtomicBool::new(hash));
    let mut raw = HashRead {
        inner: src,
        h: if sha512 {
            BlobHash::Sha512(Sha512::new())
        } else {
            BlobHash::Sha256(Sha256::new())
        },
        on: on.clone(),
        n: 0,
    };
    let mut plain = false;
    let mut diff = Sha256::new();
    let fail = |e: io::Error| {
        let _ = tx.send(Err(e));
    };
    match decoder(&mut raw) {
        Err(e) => fail(e),
        Ok((kind, mut d)) => loop {
            if kind == Compression::None {
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
                Err(e) if kind == Compression::None => {
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
    // End of stream for the consumer before the digests are finished.
    drop(tx);
    if !hash {
        return None;
    }
    let diff_id = digest::format(&diff.finalize());
    Some(Digests {
        blob: match raw.h {
            BlobHash::Sha512(h) => format!("sha512:{}", hex::encode(h.finalize())),
            BlobHash::Sha256(_) if plain => diff_id.clone(),
            BlobHash::Sha256(h) => digest::format(&h.finalize()),
        },
        diff_id,
        size: raw.n,
    })
}
