//! Read one layer into an index: every member as a changeset entry plus where its bytes lie, so
//! that the output can copy them verbatim later, in any order.
//!
//! An uncompressed layer that is a regular file is read in place (`pread` later). Any other layer
//! (gzip, zstd, stdin, a pipe) is decompressed once and its tar spooled into an anonymous temporary
//! file as it is parsed: the output needs random access to the members, and decompressing twice
//! would cost more than the page-cache copy. Memory holds only the index (paths and metadata).

use std::fs::File;
use std::io::{self, Read, Seek, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};

use crate::compress::{decoder, Compression};
use crate::entry::Entry;
use crate::error::{Error, Result};
use crate::input::{take_hashed, Digests, Hashing, Input, Source};
use crate::sys;
use crate::tar::entry::to_entry;
use crate::tar::read::Reader;
use crate::tar::BLOCK;

/// One member of a layer.
#[derive(Debug, Clone)]
pub struct Member {
    /// What the member says (path cleaned, markers decoded).
    pub entry: Entry,
    /// The member's bytes in the layer's tar: extension headers, header, data, padding.
    pub start: u64,
    /// End of those bytes (block-aligned).
    pub end: u64,
    /// Where the data starts (files).
    pub data: u64,
    /// The bytes can be copied as they are (see `TarEntry::canonical`).
    pub copyable: bool,
    /// It has xattrs; their values are not kept here (see [`xattrs_at`]).
    pub has_xattrs: bool,
}

/// A layer's index: what the merge reads, pure data (the bytes stay in [`Layer::tar`]).
#[derive(Debug, Clone, Default)]
pub struct LayerIndex {
    /// The layer as the user named it.
    pub label: String,
    /// Members in archive order.
    pub members: Vec<Member>,
}

/// A layer as read: its index and the uncompressed tar the index points into.
#[derive(Debug)]
pub struct Layer {
    /// The members and where their bytes lie.
    pub index: LayerIndex,
    /// The uncompressed tar: the input file itself or the spool.
    pub tar: File,
}

/// Tees everything read into the spool. A failed spool write (a full `$TMPDIR`) is kept aside, so
/// that the error blames the spool, not the layer being read.
struct Spool<R> {
    inner: R,
    out: io::BufWriter<File>,
    failed: Arc<Mutex<Option<io::Error>>>,
}

impl<R: Read> Read for Spool<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Err(e) = self.out.write_all(&buf[..n]) {
            let kind = e.kind();
            *self.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
            return Err(io::Error::new(kind, "spool write failed"));
        }
        Ok(n)
    }
}

/// A spool write that failed, said of the spool's directory with what it is for.
fn spool_error(tmp: &Path, e: io::Error) -> Error {
    Error::io(
        tmp,
        io::Error::new(
            e.kind(),
            format!(
                "{e} (while spooling a compressed layer uncompressed for squash; \
                 set TMPDIR to a directory with room)"
            ),
        ),
    )
}

/// Index `input`; the spool (if needed) goes into `tmp`.
pub fn index(input: &Input, tmp: &Path) -> Result<Layer> {
    let label = input.label.as_str();
    let file = match &input.source {
        Source::Path(p) => Some(crate::input::open_layer_file(label, p)?),
        Source::Stdin | Source::Range { .. } => None,
    };
    let src: Box<dyn Read + Send> = match &file {
        Some(f) => input.metered_reader(Box::new(f.try_clone().map_err(|e| Error::io(label, e))?)),
        None => input.open()?,
    };
    // An image's layer is verified in this one pass: the blob as read, the tar as decoded.
    let verify = input.verifies();
    let (src, raw_hash) = Hashing::new(src, verify, input.expects_sha512());
    let (kind, dec) = decoder(src).map_err(|e| Error::io(label, e))?;
    let (dec, plain_hash) = Hashing::new(dec, verify, false);
    let in_place = kind == Compression::None && file.as_ref().is_some_and(sys::is_regular);
    let (members, tar) = if in_place {
        drop(dec);
        let f = file.expect("in place means a file");
        let mut buf =
            io::BufReader::with_capacity(1 << 16, f.try_clone().map_err(|e| Error::io(label, e))?);
        buf.rewind().map_err(|e| Error::io(label, e))?;
        if input.verifies() {
            // Every byte read (no skipping) and hashed: the blob is the tar.
            let (hashing, state) = Hashing::new(buf, true, input.expects_sha512());
            let rd = Reader::new(io::BufReader::with_capacity(1 << 16, hashing), label);
            let members = read_members(rd, label)?.0;
            let (sha256, sha512, size) = take_hashed(state).finish();
            input.verify(&Digests {
                blob: sha512.unwrap_or_else(|| sha256.clone()),
                diff_id: sha256,
                size,
            })?;
            (members, f)
        } else {
            let rd = Reader::with_skip(buf, label, |r, n| {
                r.seek_relative(i64::try_from(n).map_err(|_| io::ErrorKind::InvalidInput)?)
            });
            (read_members(rd, label)?.0, f)
        }
    } else {
        let spool = sys::tmpfile_in(tmp).map_err(|e| spool_error(tmp, e))?;
        let out = spool.try_clone().map_err(|e| spool_error(tmp, e))?;
        let failed = Arc::new(Mutex::new(None));
        let s = Spool {
            inner: Named { inner: dec, kind },
            out: io::BufWriter::with_capacity(1 << 20, out),
            failed: failed.clone(),
        };
        let (members, mut s) = match read_members(Reader::new(s, label), label) {
            Ok(r) => r,
            Err(e) => {
                let spooled = failed.lock().unwrap_or_else(|p| p.into_inner()).take();
                return Err(spooled.map_or(e, |s| spool_error(tmp, s)));
            }
        };
        s.out.flush().map_err(|e| spool_error(tmp, e))?;
        drop(s);
        if input.verifies() {
            let (sha256, sha512, size) = take_hashed(raw_hash).finish();
            let (diff_id, _, _) = take_hashed(plain_hash).finish();
            input.verify(&Digests {
                blob: sha512.unwrap_or(sha256),
                diff_id,
                size,
            })?;
        }
        (members, spool)
    };
    if in_place {
        input.metered_whole(tar.metadata().map_or(0, |m| m.len()));
    }
    Ok(Layer {
        index: LayerIndex {
            label: label.to_string(),
            members,
        },
        tar,
    })
}

/// Decoder errors name the compression, as `layerapply`'s do.
struct Named<R> {
    inner: R,
    kind: Compression,
}

impl<R: Read> Read for Named<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if self.kind == Compression::None {
                e
            } else {
                io::Error::new(
                    e.kind(),
                    format!("corrupt {} stream: {e}", self.kind.name()),
                )
            }
        })
    }
}

fn read_members<R: Read>(mut rd: Reader<R>, label: &str) -> Result<(Vec<Member>, R)> {
    let mut members = Vec::new();
    while let Some(te) = rd.next_entry()? {
        let mut entry = to_entry(&te).map_err(|e| e.in_layer(label))?;
        if let crate::entry::Kind::File { size } = entry.kind {
            if crate::image::may_be_image_member(&entry.path, size) {
                let mut data = Vec::new();
                rd.data()
                    .read_to_end(&mut data)
                    .map_err(|e| Error::io(label, e))?;
                if let Some(e) = crate::image::archive_hint(label, &entry.path, &data) {
                    return Err(e);
                }
            }
        }
        // Memory per member: the path and fixed fields, never xattr values (up to a megabyte).
        let has_xattrs = !entry.meta.xattrs.is_empty();
        entry.meta.xattrs = Vec::new();
        let padded = te.size.div_ceil(BLOCK as u64) * BLOCK as u64;
        members.push(Member {
            entry,
            start: te.header_offset,
            end: te.data_offset + padded,
            data: te.data_offset,
            // Dropped records (a comment, a key given twice) are not copied along: re-encoded.
            copyable: te.canonical,
            has_xattrs,
        });
    }
    // Read through the end-of-archive padding: gzip's CRC and zstd's checksum are checked only at
    // the end of the stream.
    let mut r = rd.into_inner();
    io::copy(&mut r, &mut io::sink()).map_err(|e| Error::io(label, e))?;
    Ok((members, r))
}

/// The xattrs of the member whose headers start at `start` in the tar of the layer `label`, read
/// again (the index does not hold them).
pub fn xattrs_at(tar: &File, label: &str, start: u64) -> Result<crate::entry::Xattrs> {
    let len = tar.metadata().map_err(|e| Error::io(label, e))?.len();
    let mut rd = Reader::new(Range::new(tar, start, len.saturating_sub(start)), label);
    match rd.next_entry()? {
        Some(te) => Ok(to_entry(&te)?.meta.xattrs),
        None => Ok(Vec::new()),
    }
}

/// A reader over `len` bytes of `f` from `off`; a short file is an error, not a short copy.
pub struct Range<'a> {
    f: &'a File,
    off: u64,
    left: u64,
}

impl<'a> Range<'a> {
    /// `len` bytes of `f` from `off`.
    pub fn new(f: &'a File, off: u64, len: u64) -> Self {
        Range { f, off, left: len }
    }
}

impl Read for Range<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.left == 0 {
            return Ok(0);
        }
        let k = (buf.len() as u64).min(self.left) as usize;
        let n = sys::read_at(self.f, &mut buf[..k], self.off)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "layer file shrank while squashing",
            ));
        }
        self.off += n as u64;
        self.left -= n as u64;
        Ok(n)
    }
}
