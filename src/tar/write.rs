//! Deterministic PAX tar writer: the [`Sink`] at the end of the diff and squash pipelines.
//!
//! Every header is ustar; a PAX `x` record set precedes it only when a value does not fit (long
//! names, large ids or sizes, negative times) or the entry has xattrs. Owner names stay empty
//! (layer.md: uid/gid win), mtimes are whole seconds, and whiteouts/opaque markers have fixed
//! metadata (mode 0, uid/gid 0, mtime 0) so the same tree always gives the same bytes.

use std::io::{self, Read, Write};

use crate::entry::{Entry, Kind, Meta, Sink};
use crate::error::{Error, Result, Rule};
use crate::path::show;
use crate::tar::{representable, BLOCK, OPAQUE_MARKER, PAX_XATTR_PREFIX, WHITEOUT_PREFIX};

/// Buffered output is handed on in chunks of this size, the unit the compressors work on.
const CHUNK: usize = 1 << 20;

/// Writer options.
#[derive(Debug, Clone, Copy, Default)]
pub struct WriteOptions {
    /// Clamp every mtime to at most this (`SOURCE_DATE_EPOCH`, as `tar --clamp-mtime`).
    pub clamp_mtime: Option<i64>,
    /// Keep nanoseconds of mtimes (a PAX `mtime` record when they are not zero). Squash keeps what
    /// its input layers said; a diff writes whole seconds, as moby, containerd and umoci do.
    pub subsecond: bool,
}

/// Writes entries as a tar stream into `W`.
pub struct TarWriter<W: Write> {
    out: W,
    /// Output staging. Its length only grows (every byte stays initialised, so reads go straight
    /// into it without zeroing it first); `fill` bytes of it are pending.
    buf: Vec<u8>,
    fill: usize,
    opts: WriteOptions,
    /// Uncompressed bytes written so far.
    written: u64,
}

impl<W: Write> TarWriter<W> {
    /// A writer over `out`.
    pub fn new(out: W, opts: WriteOptions) -> Self {
        TarWriter {
            out,
            buf: vec![0; CHUNK + 64 * 1024],
            fill: 0,
            opts,
            written: 0,
        }
    }

    /// Write the end-of-archive marker (two zero blocks), flush, and hand back the output.
    pub fn finish(mut self) -> io::Result<W> {
        self.push(&[0u8; 2 * BLOCK]);
        self.flush_buf()?;
        self.out.flush()?;
        Ok(self.out)
    }

    /// Copy `len` bytes of already-encoded members (headers, data, padding) from `raw` verbatim.
    /// `len` must be a whole number of blocks, so the stream stays block-aligned.
    pub fn put_raw(&mut self, raw: &mut dyn Read, len: u64) -> Result<()> {
        debug_assert_eq!(len % BLOCK as u64, 0);
        self.data(b"<raw>", len, raw)?;
        Ok(())
    }

    /// Bytes of tar written so far.
    pub fn written(&self) -> u64 {
        self.written + self.fill as u64
    }

    fn flush_buf(&mut self) -> io::Result<()> {
        if self.fill > 0 {
            self.out.write_all(&self.buf[..self.fill])?;
            self.written += self.fill as u64;
            self.fill = 0;
        }
        Ok(())
    }

    fn push(&mut self, b: &[u8]) {
        let end = self.fill + b.len();
        if self.buf.len() < end {
            self.buf.resize(end, 0);
        }
        self.buf[self.fill..end].copy_from_slice(b);
        self.fill = end;
    }

    /// Zero-fill to the next block boundary of the stream. The buffer may have been flushed in the
    /// middle of a member's data, so only the stream position tells where the boundary is.
    fn pad(&mut self) {
        let rem = ((self.written + self.fill as u64) % BLOCK as u64) as usize;
        if rem != 0 {
            self.push(&[0u8; BLOCK][..BLOCK - rem]);
        }
    }

    fn maybe_flush(&mut self) -> io::Result<()> {
        if self.fill >= CHUNK {
            self.flush_buf()?;
        }
        Ok(())
    }

    fn header(&mut self, h: &Header<'_>) {
        let mut pax: Vec<u8> = Vec::new();
        let mut block = [0u8; BLOCK];
        if h.name.len() <= 100 {
            block[..h.name.len()].copy_from_slice(&h.name);
        } else {
            pax_record(&mut pax, b"path", &h.name);
            let keep = truncate_utf8(&h.name, 100);
            block[..keep.len()].copy_from_slice(keep);
        }
        octal(&mut block[100..108], u64::from(h.mode));
        if !octal_fits(&mut block[108..116], h.uid) {
            pax_record(&mut pax, b"uid", h.uid.to_string().as_bytes());
        }
        if !octal_fits(&mut block[116..124], h.gid) {
            pax_record(&mut pax, b"gid", h.gid.to_string().as_bytes());
        }
        if !octal_fits(&mut block[124..136], h.size) {
            pax_record(&mut pax, b"size", h.size.to_string().as_bytes());
        }
        let fits = octal_fits(&mut block[136..148], h.mtime.max(0) as u64);
        if h.mtime_nsec != 0 {
            // `mtime` is floored (-1.25 s is seconds -2 plus 0.75 s): a negative time is written
            // as the sign, then the magnitude (-1.25), never as "-2.75".
            let (sign, whole, ns) = if h.mtime < 0 {
                ("-", -(h.mtime + 1), 1_000_000_000 - h.mtime_nsec)
            } else {
                ("", h.mtime, h.mtime_nsec)
            };
            let frac = format!("{ns:09}");
            let v = format!("{sign}{whole}.{}", frac.trim_end_matches('0'));
            pax_record(&mut pax, b"mtime", v.as_bytes());
        } else if h.mtime < 0 || !fits {
            pax_record(&mut pax, b"mtime", h.mtime.to_string().as_bytes());
        }
        block[156] = h.typeflag;
        if h.linkname.len() <= 100 {
            block[157..157 + h.linkname.len()].copy_from_slice(h.linkname);
        } else {
            pax_record(&mut pax, b"linkpath", h.linkname);
            let keep = truncate_utf8(h.linkname, 100);
            block[157..157 + keep.len()].copy_from_slice(keep);
        }
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        if h.typeflag == b'3' || h.typeflag == b'4' {
            numeric(&mut block[329..337], u64::from(h.dev.0));
            numeric(&mut block[337..345], u64::from(h.dev.1));
        }
        for (k, v) in h.xattrs {
            let mut key = PAX_XATTR_PREFIX.to_vec();
            key.extend_from_slice(k);
            pax_record(&mut pax, &key, v);
        }
        if !pax.is_empty() {
            let mut x = [0u8; BLOCK];
            // Go and GNU name the extension header after the entry; readers ignore it, so keep it
            // short and fixed-shape.
            let base = h
                .name
                .rsplit(|&b| b == b'/')
                .find(|s| !s.is_empty())
                .unwrap_or(b"");
            let mut xname = b"PaxHeaders/".to_vec();
            xname.extend_from_slice(truncate_utf8(base, 100 - xname.len()));
            x[..xname.len()].copy_from_slice(&xname);
            octal(&mut x[100..108], 0o644);
            octal(&mut x[108..116], 0);
            octal(&mut x[116..124], 0);
            octal(&mut x[124..136], pax.len() as u64);
            octal(&mut x[136..148], h.mtime.max(0) as u64 & 0o77777777777);
            x[156] = b'x';
            x[257..263].copy_from_slice(b"ustar\0");
            x[263..265].copy_from_slice(b"00");
            checksum(&mut x);
            self.push(&x);
            self.push(&pax);
            self.pad();
        }
        checksum(&mut block);
        self.push(&block);
    }

    /// Copy exactly `size` bytes from `data`, then make sure it had no more: a file that shrinks or
    /// grows while we read it would otherwise give a corrupt or silently cut archive.
    fn data(&mut self, path: &[u8], size: u64, data: &mut dyn Read) -> Result<()> {
        let mut left = size;
        while left > 0 {
            let start = self.fill;
            let want = left.min((CHUNK - start.min(CHUNK / 2)) as u64) as usize;
            if self.buf.len() < start + want {
                self.buf.resize(start + want, 0);
            }
            let n = match data.read(&mut self.buf[start..start + want]) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
                Err(e) => {
                    return Err(Error::io(lossy(path), e));
                }
            };
            self.fill = start + n;
            if n == 0 {
                return Err(Error::rejected(
                    lossy(path),
                    Rule::ChangedWhileReading,
                    format!("expected {size} bytes, got {}", size - left),
                ));
            }
            left -= n as u64;
            self.maybe_flush().map_err(Error::output)?;
        }
        let mut probe = [0u8; 1];
        loop {
            match data.read(&mut probe) {
                Ok(0) => break,
                Ok(_) => {
                    return Err(Error::rejected(
                        lossy(path),
                        Rule::ChangedWhileReading,
                        format!("more than the {size} bytes it had when listed"),
                    ));
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(lossy(path), e)),
            }
        }
        self.pad();
        Ok(())
    }
}

fn lossy(p: &[u8]) -> String {
    String::from_utf8_lossy(p).into_owned()
}

struct Header<'a> {
    name: Vec<u8>,
    mode: u32,
    uid: u64,
    gid: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: u32,
    typeflag: u8,
    linkname: &'a [u8],
    dev: (u32, u32),
    xattrs: &'a [(Vec<u8>, Vec<u8>)],
}

impl<W: Write> Sink for TarWriter<W> {
    fn put(&mut self, entry: &Entry, data: &mut dyn Read) -> Result<()> {
        // A real file under a whiteout's name would read back as a deletion, and a whiteout of
        // such a name as an AUFS marker or an opaque marker (`.wh..wh..opq`). Sources refuse
        // these names first (the upper walk, the tar reader); this is the backstop.
        if entry.kind != Kind::Opaque && !representable(split_last(&entry.path).1) {
            return Err(Error::rejected(show(&entry.path), Rule::WhiteoutPrefix, ""));
        }
        let Meta {
            mode,
            uid,
            gid,
            mtime,
            mtime_nsec,
            ref xattrs,
        } = entry.meta;
        let (mtime, mtime_nsec) = match self.opts.clamp_mtime {
            Some(c) if mtime >= c => (c, 0),
            _ if !self.opts.subsecond => (mtime, 0),
            _ => (mtime, mtime_nsec),
        };
        let mut h = Header {
            name: entry.path.to_vec(),
            mode: mode & 0o7777,
            uid,
            gid,
            size: 0,
            mtime,
            mtime_nsec,
            typeflag: b'0',
            linkname: b"",
            dev: (0, 0),
            xattrs,
        };
        let fixed = |name: Vec<u8>| Header {
            name,
            mode: 0,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 0,
            mtime_nsec: 0,
            typeflag: b'0',
            linkname: b"",
            dev: (0, 0),
            xattrs: &[],
        };
        match &entry.kind {
            Kind::File { size } => {
                h.size = *size;
                self.header(&h);
                self.data(&entry.path, *size, data)?;
            }
            Kind::Dir => {
                h.name.push(b'/');
                h.typeflag = b'5';
                self.header(&h);
            }
            Kind::Symlink { target } => {
                h.typeflag = b'2';
                h.linkname = target;
                self.header(&h);
            }
            Kind::Hardlink { target } => {
                h.typeflag = b'1';
                h.linkname = target;
                self.header(&h);
            }
            Kind::Char { major, minor } => {
                h.typeflag = b'3';
                h.dev = (*major, *minor);
                self.header(&h);
            }
            Kind::Block { major, minor } => {
                h.typeflag = b'4';
                h.dev = (*major, *minor);
                self.header(&h);
            }
            Kind::Fifo => {
                h.typeflag = b'6';
                self.header(&h);
            }
            Kind::Whiteout => {
                let (dir, name) = split_last(&entry.path);
                let mut n = dir.to_vec();
                n.extend_from_slice(WHITEOUT_PREFIX);
                n.extend_from_slice(name);
                self.header(&fixed(n));
            }
            Kind::Opaque => {
                // An empty path is the layer root: `.wh..wh..opq` at the top.
                let mut n = entry.path.to_vec();
                if !n.is_empty() {
                    n.push(b'/');
                }
                n.extend_from_slice(OPAQUE_MARKER);
                self.header(&fixed(n));
            }
        }
        self.maybe_flush().map_err(Error::output)
    }
}

/// `("a/b/", "c")` for `a/b/c`; `("", "c")` for `c`.
fn split_last(p: &[u8]) -> (&[u8], &[u8]) {
    match p.iter().rposition(|&b| b == b'/') {
        Some(i) => (&p[..=i], &p[i + 1..]),
        None => (&[], p),
    }
}

fn truncate_utf8(s: &[u8], max: usize) -> &[u8] {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    // Never cut inside a UTF-8 sequence: readers that decode the ustar name must not see garbage.
    while end > 0 && (s[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    &s[..end]
}

/// Zero-padded octal with a trailing NUL, the form GNU tar and Go write.
fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let mut v = v;
    for b in field[..digits].iter_mut().rev() {
        *b = b'0' + (v & 7) as u8;
        v >>= 3;
    }
    field[digits] = 0;
}

fn octal_fits(field: &mut [u8], v: u64) -> bool {
    let digits = field.len() - 1;
    if digits < 22 && v >= 1u64 << (3 * digits) {
        octal(field, 0);
        return false;
    }
    octal(field, v);
    true
}

/// Octal when it fits, else GNU base-256 (device numbers have no PAX key).
fn numeric(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    if v < 1u64 << (3 * digits) {
        octal(field, v);
    } else {
        field.fill(0);
        let n = field.len();
        for (i, b) in v.to_be_bytes().iter().rev().enumerate() {
            field[n - 1 - i] = *b;
        }
        field[0] |= 0x80;
    }
}

fn checksum(block: &mut [u8; BLOCK]) {
    block[148..156].fill(b' ');
    let sum: u32 = block.iter().map(|&b| u32::from(b)).sum();
    octal(&mut block[148..155], u64::from(sum));
    block[155] = b' ';
}

/// Append one PAX record: `"<len> <key>=<value>\n"`, where `<len>` counts the whole record, itself
/// included (POSIX pax "extended header"). Values are raw bytes; newlines and NULs are legal in them.
pub fn pax_record(out: &mut Vec<u8>, key: &[u8], value: &[u8]) {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    loop {
        let total = body + len.to_string().len();
        if total == len {
            break;
        }
        len = total;
    }
    out.extend_from_slice(len.to_string().as_bytes());
    out.push(b' ');
    out.extend_from_slice(key);
    out.push(b'=');
    out.extend_from_slice(value);
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_record_length_counts_itself() {
        for n in [0usize, 1, 5, 90, 95, 96, 994, 995, 996, 9994, 100_000] {
            let mut out = Vec::new();
            pax_record(&mut out, b"path", &vec![b'a'; n]);
            let sp = out.iter().position(|&b| b == b' ').unwrap();
            let len: usize = std::str::from_utf8(&out[..sp]).unwrap().parse().unwrap();
            assert_eq!(len, out.len(), "value length {n}");
        }
    }

    #[test]
    fn octal_overflow_is_reported() {
        let mut f = [0u8; 8];
        assert!(octal_fits(&mut f, 0o7777777));
        assert!(!octal_fits(&mut f, 0o10000000));
        let mut s = [0u8; 12];
        assert!(!octal_fits(&mut s, 8 << 30));
    }

    #[test]
    fn names_under_the_whiteout_prefix_are_refused_whatever_the_kind() {
        let entry = |p: &[u8], kind: Kind| Entry {
            path: crate::path::RelPath::new(p.to_vec()).unwrap(),
            kind,
            meta: Meta::default(),
        };
        for e in [
            entry(b"d/.wh.f", Kind::File { size: 0 }),
            entry(b".wh.d", Kind::Dir),
            entry(b"d/.wh..opq", Kind::Whiteout),
            entry(b"d/.wh.x", Kind::Whiteout),
        ] {
            let mut w = TarWriter::new(Vec::new(), WriteOptions::default());
            let err = w.put(&e, &mut std::io::empty()).unwrap_err();
            assert_eq!(err.rule(), Some(Rule::WhiteoutPrefix), "{:?}", e.path);
        }
        let mut w = TarWriter::new(Vec::new(), WriteOptions::default());
        w.put(&entry(b"d", Kind::Opaque), &mut std::io::empty())
            .unwrap();
        w.put(&entry(b"d/x.wh.", Kind::Whiteout), &mut std::io::empty())
            .unwrap();
    }

    fn file(size: u64) -> Entry {
        Entry {
            path: crate::path::RelPath::new(b"f".to_vec()).unwrap(),
            kind: Kind::File { size },
            meta: Meta::default(),
        }
    }

    #[test]
    fn a_file_that_shrinks_or_grows_while_read_is_an_error() {
        let mut w = TarWriter::new(Vec::new(), WriteOptions::default());
        let e = w.put(&file(10), &mut &b"short"[..]).unwrap_err();
        assert_eq!(e.rule(), Some(Rule::ChangedWhileReading));
        let mut w = TarWriter::new(Vec::new(), WriteOptions::default());
        let e = w.put(&file(3), &mut &b"longer"[..]).unwrap_err();
        assert_eq!(e.rule(), Some(Rule::ChangedWhileReading));
        let mut w = TarWriter::new(Vec::new(), WriteOptions::default());
        w.put(&file(3), &mut &b"abc"[..]).unwrap();
        let out = w.finish().unwrap();
        assert_eq!(out.len(), 512 * 4, "header, one data block, two end blocks");
    }

    #[test]
    fn negative_subsecond_mtimes_keep_their_value() {
        // -1.25 s is stored as seconds -2 plus 0.75 s; it was once written as "-2.75".
        for (s, ns, want) in [
            (-2, 750_000_000, "mtime=-1.25\n"),
            (-1, 500_000_000, "mtime=-0.5\n"),
            (1, 250_000_000, "mtime=1.25\n"),
        ] {
            let mut w = TarWriter::new(
                Vec::new(),
                WriteOptions {
                    clamp_mtime: None,
                    subsecond: true,
                },
            );
            let mut e = file(0);
            e.meta.mtime = s;
            e.meta.mtime_nsec = ns;
            w.put(&e, &mut &b""[..]).unwrap();
            let out = w.finish().unwrap();
            let pax = String::from_utf8_lossy(&out[512..1024]);
            assert!(pax.contains(want), "{s} s {ns} ns: {pax:?}");
        }
    }

    #[test]
    fn utf8_is_never_cut_midway() {
        let s = "ééé".as_bytes();
        assert_eq!(truncate_utf8(s, 3), "é".as_bytes());
    }
}
