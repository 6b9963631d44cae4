//! Streaming tar reader for untrusted layers.
//!
//! It agrees with GNU tar, Go's `archive/tar` and Python's `tarfile` on what an archive contains, and
//! refuses the inputs where those readers disagree or where a lax reader could be made to see a
//! different archive (the TARmageddon class, CVE-2025-62518):
//! - PAX records are walked by their length prefix, never split on newlines (values may hold `\n`);
//! - precedence PAX > GNU `L`/`K` > ustar prefix+name, as Go;
//! - a PAX `size` overrides the header's, and must parse and fit;
//! - header-only types (links, devices, dirs, fifos) with a non-zero size, a lone zero block
//!   mid-stream, a bad checksum, a truncated entry, a missing end-of-archive marker and PAX sparse
//!   files are errors, not guesses;
//! - a PAX global header that sets anything but `comment` is refused (GNU tar and Python apply it to
//!   the members after it, Go ignores it), and so is a GNU `L`/`K` record whose block holds bytes
//!   past its declared size (GNU tar and Python read them, Go does not);
//! - a size above `i64::MAX` is refused (no reader can seek past it), and all offsets are checked;
//! - the extension records of one member are capped in total ([`MAX_META`]) and only the ones a
//!   layer needs are kept, so memory per member is bounded whatever the headers.

use crate::entry::Xattrs;
use std::io::{self, Read};

use crate::error::{Error, Result, Rule};
use crate::tar::{BLOCK, PAX_XATTR_PREFIX};

/// Largest total of the extension records (PAX, GNU long names) of one member, and so the most
/// memory one member's metadata can take (tar-core uses the same 1 MiB default per record).
pub const MAX_META: u64 = 1 << 20;

/// Bytes of unneeded PAX records a member may carry and still be copied byte for byte by squash;
/// past this, junk (a megabyte comment) is not passed on.
pub const MAX_DROPPED_COPY: u64 = 1024;

/// PAX records a layer member can need; everything else (comments, atime, charset, vendor keys) is
/// read past and dropped.
fn pax_needed(k: &[u8]) -> bool {
    matches!(
        k,
        b"path" | b"linkpath" | b"size" | b"uid" | b"gid" | b"mtime"
    ) || k.starts_with(PAX_XATTR_PREFIX)
        || k.starts_with(b"GNU.sparse.")
}

/// One archive member as the archive states it: raw path (not cleaned), typeflag, attributes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TarEntry {
    /// Path after PAX / GNU long name / ustar prefix resolution; not cleaned.
    pub path: Vec<u8>,
    /// Link target for hardlinks and symlinks.
    pub linkname: Vec<u8>,
    /// Typeflag byte (`0` regular, `\0` and `7` normalised to `0`).
    pub typeflag: u8,
    /// Data size in bytes (zero for header-only types).
    pub size: u64,
    /// Permission bits (low 12 bits of the mode field).
    pub mode: u32,
    /// Numeric owner.
    pub uid: u64,
    /// Numeric group.
    pub gid: u64,
    /// Modification time, seconds.
    pub mtime: i64,
    /// Nanoseconds of the modification time (PAX only).
    pub mtime_nsec: u32,
    /// Device major (char/block).
    pub devmajor: u32,
    /// Device minor (char/block).
    pub devminor: u32,
    /// `SCHILY.xattr.*` records, name without the prefix, in archive order.
    pub xattrs: Xattrs,
    /// Offset of the first header block belonging to this member (extension headers included).
    pub header_offset: u64,
    /// Offset of the member's data.
    pub data_offset: u64,
    /// A PAX global header stood among this member's extension headers (copying the member's
    /// bytes elsewhere would carry it to the members after it).
    pub global: bool,
    /// Its extension headers say nothing beyond what this struct states but a little that no
    /// reader needs (at most 1 KiB, e.g. GNU tar's atime and ctime), no key
    /// twice, no global header: its raw bytes may be copied as they are.
    pub canonical: bool,
}

/// Streaming reader: call [`Reader::next_entry`], read the data with [`Reader::data`] if wanted
/// (unread data is skipped by the next call).
pub struct Reader<R: Read> {
    r: R,
    pos: u64,
    /// Unread data + padding of the current member.
    skip: u64,
    /// Unread data of the current member.
    left: u64,
    done: bool,
    /// Name used in error messages (the layer).
    label: String,
    /// Passes over data nobody reads without copying it (a seekable source).
    seek: Option<fn(&mut R, u64) -> io::Result<()>>,
}

#[derive(Default)]
struct Pending {
    /// Needed PAX records, each key once (a later header's value wins, as in Go and Python).
    pax: Xattrs,
    gnu_name: Option<Vec<u8>>,
    gnu_link: Option<Vec<u8>>,
    start: Option<u64>,
    global: bool,
    /// A PAX header was seen.
    x_headers: bool,
    /// A key was given twice in the PAX header (every reader keeps the last; not copied as is).
    extra: bool,
    /// Bytes of PAX records dropped as not needed (atime, ctime, comments, vendor keys).
    dropped: u64,
    /// Bytes of extension records read for this member so far.
    meta: u64,
}

fn bad(label: &str, at: u64, what: impl Into<String>) -> Error {
    Error::rejected(
        label,
        Rule::MalformedTar,
        format!("at byte {at}: {}", what.into()),
    )
}

impl<R: Read> Reader<R> {
    /// A reader over `r`; `label` names the layer in errors.
    pub fn new(r: R, label: impl Into<String>) -> Self {
        Reader {
            r,
            pos: 0,
            skip: 0,
            left: 0,
            done: false,
            label: label.into(),
            seek: None,
        }
    }

    /// A reader that passes over unread data with `skip` (a seek) instead of reading it. A
    /// truncated archive is still caught: the next header or the end marker is missing.
    pub fn with_skip(
        r: R,
        label: impl Into<String>,
        skip: fn(&mut R, u64) -> io::Result<()>,
    ) -> Self {
        Reader {
            seek: Some(skip),
            ..Reader::new(r, label)
        }
    }

    /// The underlying reader, positioned after the end-of-archive marker once `next_entry` returned
    /// `None`.
    pub fn into_inner(self) -> R {
        self.r
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn read_exact_or(&mut self, buf: &mut [u8], what: &str) -> Result<()> {
        let mut got = 0;
        while got < buf.len() {
            match self.r.read(&mut buf[got..]) {
                Ok(0) => {
                    return Err(bad(
                        &self.label,
                        self.pos + got as u64,
                        format!("truncated {what}"),
                    ))
                }
                Ok(n) => got += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io(&self.label, e)),
            }
        }
        self.pos += buf.len() as u64;
        Ok(())
    }

    fn skip_bytes(&mut self, mut n: u64) -> Result<()> {
        if let (Some(f), true) = (self.seek, n > 0) {
            self.pos = self
                .pos
                .checked_add(n)
                .filter(|&p| p <= i64::MAX as u64)
                .ok_or_else(|| bad(&self.label, self.pos, "offset beyond any file"))?;
            f(&mut self.r, n).map_err(|e| Error::io(&self.label, e))?;
            return Ok(());
        }
        let mut buf = [0u8; 8192];
        while n > 0 {
            let k = n.min(buf.len() as u64) as usize;
            self.read_exact_or(&mut buf[..k], "entry data")?;
            n -= k as u64;
        }
        Ok(())
    }

    /// One extension record's data. `used` is what this member's records took so far: the total
    /// is capped. With `exact`, the block padding after the data must be zero: GNU tar and Python
    /// read a GNU long name to the first NUL of the whole block, Go to the declared size.
    fn read_meta(&mut self, size: u64, used: &mut u64, what: &str, exact: bool) -> Result<Vec<u8>> {
        let total = used.saturating_add(size);
        if total > MAX_META {
            return Err(bad(
                &self.label,
                self.pos,
                format!(
                    "{what}: extension records of {total} bytes for one member exceed the \
                     {MAX_META}-byte limit"
                ),
            ));
        }
        *used = total;
        let mut v = vec![0u8; size as usize];
        self.read_exact_or(&mut v, what)?;
        let pad = padding(size);
        if exact {
            let at = self.pos;
            let mut p = [0u8; BLOCK];
            self.read_exact_or(&mut p[..pad as usize], what)?;
            if p.iter().any(|&b| b != 0) {
                return Err(bad(
                    &self.label,
                    at,
                    format!(
                        "{what} has bytes past its declared size of {size} (GNU tar and Python \
                         would read a longer name than Go)"
                    ),
                ));
            }
        } else {
            self.skip_bytes(pad)?;
        }
        Ok(v)
    }

    /// A refused member: the layer, the member's name as stored, the rule.
    fn bad_entry(&self, path: &[u8], rule: Rule, detail: &str) -> Error {
        Error::Layer {
            layer: self.label.clone(),
            source: Box::new(Error::rejected(crate::path::show(path), rule, detail)),
        }
    }

    /// The next member, or `None` after the end-of-archive marker.
    pub fn next_entry(&mut self) -> Result<Option<TarEntry>> {
        if self.done {
            return Ok(None);
        }
        let s = self.skip;
        self.skip = 0;
        self.left = 0;
        self.skip_bytes(s)?;
        let mut p = Pending::default();
        loop {
            let at = self.pos;
            let mut block = [0u8; BLOCK];
            if at == 0 {
                // Distinguish "empty input" from a truncated header for the error message.
                let n =
                    read_some(&mut self.r, &mut block).map_err(|e| Error::io(&self.label, e))?;
                if n == 0 {
                    return Err(bad(&self.label, 0, "empty input, not a tar archive"));
                }
                self.pos = n as u64;
                if n < BLOCK {
                    return Err(bad(&self.label, 0, "truncated header (not a tar archive?)"));
                }
            } else {
                self.read_exact_or(&mut block, "header")?;
            }
            if block.iter().all(|&b| b == 0) {
                let mut second = [0u8; BLOCK];
                self.read_exact_or(&mut second, "end-of-archive marker")?;
                if second.iter().any(|&b| b != 0) {
                    return Err(bad(
                        &self.label,
                        at,
                        "lone zero block in the middle of the archive",
                    ));
                }
                if p.start.is_some() {
                    return Err(bad(&self.label, at, "extension header without a member"));
                }
                self.done = true;
                return Ok(None);
            }
            verify_checksum(&block).map_err(|m| bad(&self.label, at, m))?;
            // Every numeric field of every header must parse, read or not: Python refuses the
            // header (and ends the archive there) where GNU tar and Go read on.
            for (r, what) in [
                (100..108, "mode"),
                (108..116, "uid"),
                (116..124, "gid"),
                (329..337, "devmajor"),
                (337..345, "devminor"),
            ] {
                parse_num(&block[r]).map_err(|m| bad(&self.label, at, format!("{what}: {m}")))?;
            }
            parse_signed(&block[136..148])
                .map_err(|m| bad(&self.label, at, format!("mtime: {m}")))?;
            // Python prepends the prefix field of any header to the name, GNU tar and Go only
            // that of a POSIX ustar one.
            if &block[257..263] != b"ustar\0" && block[345] != 0 {
                return Err(bad(
                    &self.label,
                    at,
                    "bytes in the prefix field of a header that is not POSIX ustar (Python reads \
                     them as a path prefix, GNU tar and Go do not)",
                ));
            }
            p.start.get_or_insert(at);
            let size = parse_num(&block[124..136])
                .map_err(|m| bad(&self.label, at, format!("size: {m}")))?;
            let typeflag = block[156];
            match typeflag {
                b'x' => {
                    // Go keeps only the last PAX header of a member, Python merges them with the
                    // first one winning: with two, they read different members.
                    if p.x_headers {
                        return Err(bad(&self.label, at, "a second PAX header for one member"));
                    }
                    p.x_headers = true;
                    let data = self.read_meta(size, &mut p.meta, "PAX header", false)?;
                    let recs = parse_pax(&data).map_err(|m| bad(&self.label, at, m))?;
                    drop(data);
                    for (k, v) in recs {
                        if !pax_needed(&k) {
                            p.dropped += (k.len() + v.len()) as u64;
                        } else if let Some(old) = p.pax.iter_mut().find(|(o, _)| *o == k) {
                            old.1 = v;
                            p.extra = true;
                        } else {
                            p.pax.push((k, v));
                        }
                    }
                    continue;
                }
                b'g' => {
                    // GNU tar and Python apply global records to every later member, Go ignores
                    // them: any record that would change a member is a disagreement. A comment
                    // (git archive writes its commit id there) changes nothing.
                    let data = self.read_meta(size, &mut p.meta, "PAX global header", false)?;
                    let recs = parse_pax(&data).map_err(|m| bad(&self.label, at, m))?;
                    if let Some((k, _)) = recs.iter().find(|(k, _)| k != b"comment") {
                        return Err(bad(
                            &self.label,
                            at,
                            format!(
                                "PAX global header sets {:?}: GNU tar and Python apply it to the \
                                 members after it, Go ignores it",
                                String::from_utf8_lossy(k)
                            ),
                        ));
                    }
                    p.global = true;
                    continue;
                }
                b'L' | b'K' => {
                    let what = if typeflag == b'L' {
                        "GNU long name"
                    } else {
                        "GNU long link name"
                    };
                    // Go keeps the last, Python the first of two.
                    if p.gnu_name.is_some() && typeflag == b'L'
                        || p.gnu_link.is_some() && typeflag == b'K'
                    {
                        return Err(bad(
                            &self.label,
                            at,
                            format!("a second {what} for one member"),
                        ));
                    }
                    let mut data = self.read_meta(size, &mut p.meta, what, true)?;
                    if let Some(i) = data.iter().position(|&b| b == 0) {
                        data.truncate(i);
                    }
                    if typeflag == b'L' {
                        p.gnu_name = Some(data)
                    } else {
                        p.gnu_link = Some(data)
                    }
                    continue;
                }
                _ => {}
            }
            let ustar = &block[257..263] == b"ustar\0";
            let mut e = TarEntry {
                typeflag: match typeflag {
                    0 | b'7' => b'0',
                    t => t,
                },
                size,
                header_offset: p.start.unwrap_or(at),
                global: p.global,
                canonical: !p.extra && !p.global && p.dropped <= MAX_DROPPED_COPY,
                ..Default::default()
            };
            let num = |f: &[u8], what: &str| {
                parse_num(f).map_err(|m| bad(&self.label, at, format!("{what}: {m}")))
            };
            e.mode = (num(&block[100..108], "mode")? & 0o7777) as u32;
            e.uid = num(&block[108..116], "uid")?;
            e.gid = num(&block[116..124], "gid")?;
            e.mtime = parse_signed(&block[136..148])
                .map_err(|m| bad(&self.label, at, format!("mtime: {m}")))?;
            let dev = if matches!(e.typeflag, b'3' | b'4') {
                Some((
                    num(&block[329..337], "devmajor")?,
                    num(&block[337..345], "devminor")?,
                ))
            } else {
                None
            };
            e.path = cstr(&block[0..100]).to_vec();
            if ustar {
                let prefix = cstr(&block[345..500]);
                if !prefix.is_empty() {
                    let mut full = prefix.to_vec();
                    full.push(b'/');
                    full.extend_from_slice(&e.path);
                    e.path = full;
                }
            }
            e.linkname = cstr(&block[157..257]).to_vec();
            if let Some(n) = p.gnu_name.take() {
                e.path = n;
            }
            if let Some(l) = p.gnu_link.take() {
                e.linkname = l;
            }
            for (k, v) in std::mem::take(&mut p.pax) {
                let dec = |v: &[u8], what: &str| -> Result<u64> {
                    std::str::from_utf8(v)
                        .ok()
                        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|s| s.parse::<u64>().ok())
                        .ok_or_else(|| {
                            bad(
                                &self.label,
                                at,
                                format!("PAX {what} is not a number that fits"),
                            )
                        })
                };
                match k.as_slice() {
                    b"path" => e.path = v,
                    b"linkpath" => e.linkname = v,
                    b"size" => e.size = dec(&v, "size")?,
                    b"uid" => e.uid = dec(&v, "uid")?,
                    b"gid" => e.gid = dec(&v, "gid")?,
                    b"mtime" => {
                        let (s, ns) = parse_pax_time(&v)
                            .ok_or_else(|| bad(&self.label, at, "PAX mtime is malformed"))?;
                        if s < 0 && ns > 0 {
                            return Err(bad(
                                &self.label,
                                at,
                                "PAX mtime before 1970 with a fraction (GNU tar reads its \
                                 fraction the other way than Go and Python)",
                            ));
                        }
                        e.mtime = s;
                        e.mtime_nsec = ns;
                    }
                    k if k.starts_with(PAX_XATTR_PREFIX) => {
                        e.xattrs.push((k[PAX_XATTR_PREFIX.len()..].to_vec(), v));
                    }
                    k if k.starts_with(b"GNU.sparse.") => {
                        return Err(self.bad_entry(
                            &e.path,
                            Rule::UnsupportedType,
                            "PAX sparse files are not supported (layer.md: SHOULD NOT be used)",
                        ));
                    }
                    _ => {}
                }
            }
            if e.typeflag == b'0' && e.path.ends_with(b"/") {
                // Old tars mark a dir so: Go and Python do for typeflag NUL only, GNU tar for `0`
                // too, and Python looks at the ustar name only.
                return Err(self.bad_entry(
                    &e.path,
                    Rule::MalformedTar,
                    "a regular file named with a trailing slash (readers disagree on whether it \
                     is a directory)",
                ));
            }
            if let Some((major, minor)) = dev {
                let fit = |v: u64| u32::try_from(v).ok();
                match (fit(major), fit(minor)) {
                    (Some(a), Some(b)) => (e.devmajor, e.devminor) = (a, b),
                    _ => {
                        return Err(self.bad_entry(
                            &e.path,
                            Rule::DeviceRange,
                            &format!("{major}:{minor}"),
                        ))
                    }
                }
            }
            if matches!(e.typeflag, b'1' | b'2' | b'3' | b'4' | b'5' | b'6') && e.size != 0 {
                return Err(bad(
                    &self.label,
                    at,
                    format!(
                        "{}: {} entry declares {} bytes of data",
                        String::from_utf8_lossy(&e.path),
                        type_name(e.typeflag),
                        e.size
                    ),
                ));
            }
            if e.typeflag == b'S' {
                return Err(self.bad_entry(
                    &e.path,
                    Rule::UnsupportedType,
                    "GNU sparse files are not supported (layer.md: SHOULD NOT be used)",
                ));
            }
            // No reader can seek past this (Go's archive/tar refuses it, lseek takes an i64).
            if e.size > i64::MAX as u64 {
                return Err(bad(
                    &self.label,
                    at,
                    format!(
                        "{}: size {} is above the largest a file can have",
                        String::from_utf8_lossy(&e.path),
                        e.size
                    ),
                ));
            }
            e.data_offset = self.pos;
            self.left = e.size;
            self.skip = e.size + padding(e.size);
            return Ok(Some(e));
        }
    }

    /// Reader over the current member's data.
    pub fn data(&mut self) -> Data<'_, R> {
        Data { rd: self }
    }
}

/// The current member's data; errors if the archive ends early.
pub struct Data<'a, R: Read> {
    rd: &'a mut Reader<R>,
}

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let rd = &mut *self.rd;
        if rd.left == 0 {
            return Ok(0);
        }
        let k = (buf.len() as u64).min(rd.left) as usize;
        let n = rd.r.read(&mut buf[..k])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!("{}: truncated entry data at byte {}", rd.label, rd.pos),
            ));
        }
        rd.pos += n as u64;
        rd.left -= n as u64;
        rd.skip -= n as u64;
        Ok(n)
    }
}

fn read_some(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn type_name(t: u8) -> &'static str {
    match t {
        b'1' => "hardlink",
        b'2' => "symlink",
        b'3' => "char device",
        b'4' => "block device",
        b'5' => "directory",
        _ => "fifo",
    }
}

fn padding(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn cstr(f: &[u8]) -> &[u8] {
    match f.iter().position(|&b| b == 0) {
        Some(i) => &f[..i],
        None => f,
    }
}

/// Checksum over the header with the checksum field as spaces; both the unsigned (POSIX) and the
/// signed (old Sun/GNU) sums are accepted, as every reader does.
fn verify_checksum(block: &[u8; BLOCK]) -> std::result::Result<(), String> {
    let stored = parse_octal(&block[148..156]).map_err(|m| format!("checksum field: {m}"))?;
    let mut u: u64 = 0;
    let mut s: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        let b = if (148..156).contains(&i) { b' ' } else { b };
        u += u64::from(b);
        s += i64::from(b as i8);
    }
    if stored == u || stored as i64 == s {
        Ok(())
    } else {
        Err(format!("header checksum mismatch (stored {stored}, computed {u}); not a tar archive or corrupt"))
    }
}

fn parse_octal(f: &[u8]) -> std::result::Result<u64, String> {
    // Python stops at a leading NUL (0), GNU tar skips one: digits after a leading NUL are read
    // differently by each (a size read so smuggles members), so only an all-NUL field may start so.
    if f.first() == Some(&0) && f.iter().any(|&b| b != 0) {
        return Err("NUL before the digits of a number".into());
    }
    let t: &[u8] = {
        let start = f
            .iter()
            .position(|&b| b != b' ' && b != 0)
            .unwrap_or(f.len());
        let rest = &f[start..];
        let end = rest
            .iter()
            .position(|&b| b == b' ' || b == 0)
            .unwrap_or(rest.len());
        if rest[end..].iter().any(|&b| b != b' ' && b != 0) {
            return Err("garbage after octal number".into());
        }
        &rest[..end]
    };
    let mut v: u64 = 0;
    for &b in t {
        if !(b'0'..=b'7').contains(&b) {
            return Err(format!("invalid octal digit {:?}", b as char));
        }
        v = v
            .checked_mul(8)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .ok_or("octal overflow")?;
    }
    Ok(v)
}

/// Octal or GNU base-256 (high bit of the first byte set), non-negative.
fn parse_num(f: &[u8]) -> std::result::Result<u64, String> {
    if f[0] & 0x80 != 0 && f[0] != 0x80 && f[0] != 0xff {
        // GNU tar and Python refuse other lead bytes; masking the top bit would read a number
        // nobody else sees.
        return Err(format!("base-256 number with lead byte {:#04x}", f[0]));
    }
    if f[0] & 0x80 != 0 {
        let v = parse_signed(f)?;
        return u64::try_from(v).map_err(|_| "negative number".to_string());
    }
    parse_octal(f)
}

fn parse_signed(f: &[u8]) -> std::result::Result<i64, String> {
    if f[0] & 0x80 != 0 && f[0] != 0x80 && f[0] != 0xff {
        return Err(format!("base-256 number with lead byte {:#04x}", f[0]));
    }
    if f[0] & 0x80 == 0 {
        return i64::try_from(parse_octal(f)?).map_err(|_| "number too large".to_string());
    }
    // Base-256, two's complement; 0xff lead byte = negative.
    let neg = f[0] == 0xff;
    let mut v: i128 = if neg { -1 } else { i128::from(f[0] & 0x7f) };
    for &b in &f[1..] {
        v = (v << 8) | i128::from(b);
        if v > i128::from(i64::MAX) || v < i128::from(i64::MIN) {
            return Err("base-256 number too large".into());
        }
    }
    Ok(v as i64)
}

/// `-?SECONDS(.FRACTION)?`; fraction truncated to nanoseconds.
fn parse_pax_time(v: &[u8]) -> Option<(i64, u32)> {
    let s = std::str::from_utf8(v).ok()?;
    let (neg, s) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s),
    };
    let (secs, frac) = match s.split_once('.') {
        Some((a, b)) => (a, b),
        None => (s, ""),
    };
    if secs.is_empty()
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || !frac.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let secs: i64 = secs.parse().ok()?;
    let mut ns: u32 = 0;
    for (i, b) in frac.bytes().take(9).enumerate() {
        ns += u32::from(b - b'0') * 10u32.pow(8 - i as u32);
    }
    if neg {
        // -1.5 is 1.5 seconds before the epoch: seconds -2, nanoseconds 500000000. GNU tar reads
        // the fraction the other way (-0.5): the readers disagree, so the caller refuses.
        if ns > 0 {
            Some((-secs - 1, 1_000_000_000 - ns))
        } else {
            Some((-secs, 0))
        }
    } else {
        Some((secs, ns))
    }
}

/// Walk PAX records by their length prefix: `"<len> <key>=<value>\n"`.
fn parse_pax(mut data: &[u8]) -> std::result::Result<Xattrs, String> {
    let mut out = Vec::new();
    // Trailing NUL padding inside the declared size is tolerated by GNU and Python.
    while !data.is_empty() && data.iter().any(|&b| b != 0) {
        let sp = data
            .iter()
            .take(20)
            .position(|&b| b == b' ')
            .ok_or("PAX record without a length")?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse().ok())
            .ok_or("PAX record length is not a number")?;
        if len <= sp + 1 || len > data.len() {
            return Err(format!("PAX record length {len} out of range"));
        }
        let rec = &data[sp + 1..len];
        let Some((&b'\n', body)) = rec.split_last() else {
            return Err("PAX record does not end with a newline".into());
        };
        let eq = body
            .iter()
            .position(|&b| b == b'=')
            .ok_or("PAX record without '='")?;
        if eq == 0 {
            return Err("PAX record with an empty key".into());
        }
        if body[..eq].contains(&0) {
            // GNU tar drops the whole header, Python and Go read on.
            return Err("PAX record key with a NUL byte".into());
        }
        out.push((body[..eq].to_vec(), body[eq + 1..].to_vec()));
        data = &data[len..];
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_values_may_hold_newlines() {
        let mut d = Vec::new();
        crate::tar::write::pax_record(&mut d, b"SCHILY.xattr.user.x", b"a\n17 path=evil.txt\n");
        crate::tar::write::pax_record(&mut d, b"path", b"benign.txt");
        let r = parse_pax(&d).unwrap();
        assert_eq!(r[0].1, b"a\n17 path=evil.txt\n");
        assert_eq!(r[1], (b"path".to_vec(), b"benign.txt".to_vec()));
    }

    #[test]
    fn pax_bad_lengths() {
        assert!(parse_pax(b"99 path=x\n").is_err());
        assert!(parse_pax(b"5 a=b\n").is_err());
        assert!(parse_pax(b"x path=y\n").is_err());
    }

    #[test]
    fn pax_times() {
        assert_eq!(parse_pax_time(b"1.5"), Some((1, 500_000_000)));
        assert_eq!(parse_pax_time(b"-1.5"), Some((-2, 500_000_000)));
        assert_eq!(parse_pax_time(b"12"), Some((12, 0)));
        assert_eq!(parse_pax_time(b"1.1234567891"), Some((1, 123_456_789)));
        assert_eq!(parse_pax_time(b"a"), None);
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_num(b"0000644\0").unwrap(), 0o644);
        assert_eq!(parse_num(b"   644 \0").unwrap(), 0o644);
        assert_eq!(parse_num(&[0x80, 0, 0, 0, 0, 0, 1, 0]).unwrap(), 256);
        assert!(parse_num(b"0009\0\0\0\0").is_err());
        assert_eq!(parse_signed(&[0xff; 8]).unwrap(), -1);
    }

    #[test]
    fn empty_and_garbage_inputs_are_errors() {
        assert!(Reader::new(&b""[..], "l").next_entry().is_err());
        assert!(Reader::new(&[7u8; 1024][..], "l").next_entry().is_err());
        let only_zero = [0u8; 512];
        assert!(Reader::new(&only_zero[..], "l").next_entry().is_err());
    }
}
