//! Compression of layer blobs: none, gzip (pigz-style parallel, one gzip member), zstd (libzstd's
//! multithreaded mode). Output bytes depend only on the level and block size, never on the thread
//! count, so digests are reproducible at any `--jobs`.

use std::collections::VecDeque;
use std::io::{self, Read as _, Write};
use std::path::Path;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};
use flate2::{Compress, FlushCompress, Status};

/// A layer's compression.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    /// Plain tar.
    #[default]
    None,
    /// gzip (RFC 1952), written in parallel blocks like pigz.
    Gzip,
    /// zstd (RFC 8878).
    Zstd,
}

impl Compression {
    /// Its name, for messages.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "tar",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }

    /// From an output file name: `.tar` and no extension at all (`/dev/null`, a blob named by its
    /// digest) a plain tar, `.gz`/`.tgz` gzip, `.zst`/`.tzst` zstd. `None` for any other extension
    /// (`.xz`, `.bz2`, ...): writing a plain tar under such a name would mislead every reader.
    pub fn from_path(p: &Path) -> Option<Compression> {
        match p.extension().map(|e| e.as_encoded_bytes()) {
            None | Some(b"tar") => Some(Compression::None),
            Some(b"gz" | b"tgz") => Some(Compression::Gzip),
            Some(b"zst" | b"tzst") => Some(Compression::Zstd),
            Some(_) => None,
        }
    }

    /// The level to use: `level`, or the format's default. A level out of the format's range, or
    /// any level for a plain tar (where it would do nothing), is an error.
    pub fn level(self, level: Option<i32>) -> Result<i32, String> {
        let (range, default) = match self {
            Compression::None => {
                return match level {
                    None => Ok(0),
                    Some(_) => Err(
                        "--level has no effect on a plain tar; choose -c gzip or -c zstd".into(),
                    ),
                }
            }
            Compression::Gzip => (1..=9, GZIP_LEVEL as i32),
            Compression::Zstd => (1..=19, ZSTD_LEVEL),
        };
        match level {
            None => Ok(default),
            Some(l) if range.contains(&l) => Ok(l),
            Some(l) => Err(format!(
                "{} level {l} is not in {}..={}",
                self.name(),
                range.start(),
                range.end()
            )),
        }
    }

    /// OCI media type of a layer with this compression.
    pub fn media_type(self) -> &'static str {
        match self {
            Compression::None => "application/vnd.oci.image.layer.v1.tar",
            Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }

    /// Detect from the first bytes of a blob (gzip `1f 8b`, zstd frame `28 b5 2f fd`).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// A reader of the uncompressed stream in `r`, whose compression is read from its first bytes:
/// gzip (every member, as `gzip -d` reads concatenated members), zstd (every frame), or none. A
/// corrupt stream (bad CRC, truncated member or frame, garbage after the last member) is an error.
pub fn decoder<'a, R: io::Read + Send + 'a>(
    mut r: R,
) -> io::Result<(Compression, Box<dyn io::Read + Send + 'a>)> {
    let mut head = [0u8; 4];
    let mut n = 0;
    while n < head.len() {
        match r.read(&mut head[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let c = Compression::sniff(&head[..n]);
    let whole = io::Cursor::new(head[..n].to_vec()).chain(r);
    Ok((
        c,
        match c {
            Compression::None => Box::new(whole),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(
                io::BufReader::with_capacity(1 << 18, whole),
            )),
            Compression::Zstd => {
                let mut d = zstd::stream::read::Decoder::with_buffer(
                    io::BufReader::with_capacity(1 << 18, whole),
                )?;
                // Layers written with --long need the larger window; zstd caps it at 2 GiB.
                d.window_log_max(31)?;
                Box::new(d)
            }
        },
    ))
}

/// zstd level: `zstd`'s default; measured 228 MB/s on 2 workers here (rust-ecosystem.md).
pub const ZSTD_LEVEL: i32 = 3;
/// gzip level: `gzip`'s default.
pub const GZIP_LEVEL: u32 = 6;
/// Input per gzip block. pigz uses 128 KiB; each block is independent work with the previous
/// block's last 32 KiB as dictionary, so the ratio stays within ~1% of single-stream gzip.
const GZ_BLOCK: usize = 128 * 1024;
const GZ_DICT: usize = 32 * 1024;

/// A compressing writer; `finish` ends the stream and returns the inner writer.
pub(crate) enum Encoder<W: Write + Send + 'static> {
    /// Pass-through.
    Plain(W),
    /// Parallel gzip.
    Gzip(ParGz<W>),
    /// zstd.
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write + Send + 'static> Encoder<W> {
    /// An encoder for `c` on `jobs` worker threads (at least one), at `level` (`None`: the format's
    /// usual default; gzip 1-9, zstd 1-19).
    pub fn new(c: Compression, out: W, jobs: usize, level: Option<i32>) -> io::Result<Self> {
        let jobs = jobs.max(1);
        let l = c
            .level(level)
            .map_err(|m| io::Error::new(io::ErrorKind::InvalidInput, m))?;
        Ok(match c {
            Compression::None => Encoder::Plain(out),
            Compression::Gzip => Encoder::Gzip(ParGz::new(out, jobs, l as u32)),
            Compression::Zstd => {
                let mut e = zstd::stream::write::Encoder::new(out, l)?;
                // Always multithreaded, even with one worker: libzstd's single-threaded mode gives
                // different bytes, and digests must not depend on --jobs (rust-ecosystem.md).
                e.multithread(jobs as u32)?;
                e.include_checksum(true)?;
                Encoder::Zstd(e)
            }
        })
    }

    /// End the compressed stream.
    pub fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(mut w) => {
                w.flush()?;
                Ok(w)
            }
            Encoder::Gzip(g) => g.finish(),
            Encoder::Zstd(z) => {
                let mut w = z.finish()?;
                w.flush()?;
                Ok(w)
            }
        }
    }
}

impl<W: Write + Send + 'static> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(g) => g.write(buf),
            Encoder::Zstd(z) => z.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.write_all(buf),
            Encoder::Gzip(g) => g.write_all(buf),
            Encoder::Zstd(z) => z.write_all(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(_) => Ok(()),
            Encoder::Zstd(z) => z.flush(),
        }
    }
}

struct Block {
    /// Dictionary tail of the previous block followed by this block.
    data: Arc<Vec<u8>>,
    dict_len: usize,
    last: bool,
    done: Sender<io::Result<Vec<u8>>>,
}

/// pigz-layout gzip: one member whose deflate stream is the concatenation of independently
/// compressed blocks, each ended by a sync flush (the last by a final block), each primed with the
/// previous 32 KiB. Any gzip reader sees one ordinary member.
pub(crate) struct ParGz<W: Write> {
    out: W,
    block: Vec<u8>,
    dict: Vec<u8>,
    crc: crc32fast::Hasher,
    len: u64,
    pending: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    max_pending: usize,
    jobs: Option<Sender<Block>>,
    workers: Vec<JoinHandle<()>>,
    header_written: bool,
}

impl<W: Write> ParGz<W> {
    fn new(out: W, threads: usize, level: u32) -> Self {
        let (tx, rx) = bounded::<Block>(threads * 2);
        let workers = (0..threads)
            .map(|_| {
                let rx = rx.clone();
                std::thread::spawn(move || {
                    for job in rx {
                        // A fresh compressor per block: with zlib-rs, `reset()` + `set_dictionary`
                        // still gives bytes that depend on the previous stream, so a reused one
                        // made each block depend on which blocks its worker did before (-j, timing).
                        let mut c = Compress::new(flate2::Compression::new(level), false);
                        let r = deflate_block(&mut c, &job.data, job.dict_len, job.last);
                        let _ = job.done.send(r);
                    }
                })
            })
            .collect();
        ParGz {
            out,
            block: Vec::with_capacity(GZ_BLOCK),
            dict: Vec::new(),
            crc: crc32fast::Hasher::new(),
            len: 0,
            pending: VecDeque::new(),
            max_pending: threads * 4,
            jobs: Some(tx),
            workers,
            header_written: false,
        }
    }

    fn header(&mut self) -> io::Result<()> {
        if !self.header_written {
            // ID1 ID2 CM=deflate FLG=0 MTIME=0 XFL=0 OS=255(unknown): no name, no time, reproducible.
            self.out
                .write_all(&[0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff])?;
            self.header_written = true;
        }
        Ok(())
    }

    fn drain(&mut self, keep: usize) -> io::Result<()> {
        while self.pending.len() > keep {
            let rx = self.pending.pop_front().expect("non-empty");
            let bytes = rx
                .recv()
                .map_err(|_| io::Error::other("gzip worker died"))??;
            self.out.write_all(&bytes)?;
        }
        Ok(())
    }

    fn submit(&mut self, last: bool) -> io::Result<()> {
        self.header()?;
        let block = std::mem::replace(&mut self.block, Vec::with_capacity(GZ_BLOCK));
        let mut data = Vec::with_capacity(self.dict.len() + block.len());
        data.extend_from_slice(&self.dict);
        data.extend_from_slice(&block);
        let dict_len = self.dict.len();
        let tail = block.len().min(GZ_DICT);
        self.dict.clear();
        self.dict.extend_from_slice(&block[block.len() - tail..]);
        let (done, rx) = bounded(1);
        let job = Block {
            data: Arc::new(data),
            dict_len,
            last,
            done,
        };
        self.jobs
            .as_ref()
            .expect("open")
            .send(job)
            .map_err(|_| io::Error::other("gzip workers gone"))?;
        self.pending.push_back(rx);
        self.drain(self.max_pending)
    }

    fn finish(mut self) -> io::Result<W> {
        self.submit(true)?;
        self.drain(0)?;
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let crc = self.crc.clone().finalize();
        self.out.write_all(&crc.to_le_bytes())?;
        self.out.write_all(&(self.len as u32).to_le_bytes())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl<W: Write> Write for ParGz<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(GZ_BLOCK - self.block.len());
        self.block.extend_from_slice(&buf[..n]);
        self.crc.update(&buf[..n]);
        self.len += n as u64;
        if self.block.len() == GZ_BLOCK {
            self.submit(false)?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Raw deflate of `data[dict_len..]` primed with `data[..dict_len]`, ended by a sync flush (or the
/// final block when `last`).
fn deflate_block(
    c: &mut Compress,
    data: &[u8],
    dict_len: usize,
    last: bool,
) -> io::Result<Vec<u8>> {
    if dict_len > 0 {
        c.set_dictionary(&data[..dict_len])
            .map_err(io::Error::other)?;
    }
    let input = &data[dict_len..];
    let mut out = Vec::with_capacity(input.len() + input.len() / 8 + 1024);
    let flush = if last {
        FlushCompress::Finish
    } else {
        FlushCompress::Sync
    };
    let start_in = c.total_in();
    loop {
        let consumed = (c.total_in() - start_in) as usize;
        let status = c
            .compress_vec(&input[consumed..], &mut out, flush)
            .map_err(io::Error::other)?;
        let consumed = (c.total_in() - start_in) as usize;
        let room = out.len() < out.capacity();
        match status {
            Status::StreamEnd => break,
            _ if !last && consumed == input.len() && room => break,
            _ => out.reserve(out.capacity().max(4096)),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn roundtrip(c: Compression, data: &[u8], jobs: usize) -> Vec<u8> {
        let mut e = Encoder::new(c, Vec::new(), jobs, None).unwrap();
        for chunk in data.chunks(70_000) {
            e.write_all(chunk).unwrap();
        }
        e.finish().unwrap()
    }

    fn sample() -> Vec<u8> {
        let mut v = Vec::new();
        let mut x: u32 = 1;
        for i in 0..600_000u32 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            v.push(if i % 3 == 0 {
                (x >> 24) as u8
            } else {
                b'a' + (i % 7) as u8
            });
        }
        v
    }

    #[test]
    fn gzip_is_one_valid_member_and_thread_count_independent() {
        let data = sample();
        let one = roundtrip(Compression::Gzip, &data, 1);
        let two = roundtrip(Compression::Gzip, &data, 3);
        assert_eq!(one, two);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&one[..])
            .read_to_end(&mut back)
            .unwrap();
        assert_eq!(back, data);
        let empty = roundtrip(Compression::Gzip, b"", 2);
        let mut back = Vec::new();
        flate2::read::GzDecoder::new(&empty[..])
            .read_to_end(&mut back)
            .unwrap();
        assert!(back.is_empty());
    }

    /// Text-like data of many gzip blocks: words, numbers and long repeats at varying distance,
    /// so blocks find matches in their dictionary and a compressor's stale state would show.
    fn many_blocks(len: usize) -> Vec<u8> {
        const WORDS: &[&str] = &[
            "usr", "lib", "share", "doc", "python3", "import", "def ", "return", "self", ".so",
            "\n", "    ", "0x", "error", "layer", "/", "=", "(", ")", "tar",
        ];
        let mut v = Vec::with_capacity(len + 64);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            match x % 16 {
                0 => v.extend_from_slice(format!("{}", x >> 40).as_bytes()),
                1 if v.len() > 70_000 => {
                    let back = 1 + (x >> 20) as usize % 60_000;
                    let n = 16 + (x >> 8) as usize % 200;
                    let from = v.len() - back;
                    for i in 0..n {
                        v.push(v[from + i]);
                    }
                }
                k => v.extend_from_slice(
                    WORDS[(k as usize + (x >> 32) as usize) % WORDS.len()].as_bytes(),
                ),
            }
        }
        v
    }

    #[test]
    fn gzip_bytes_do_not_depend_on_threads_runs_or_level() {
        // 48 blocks: each worker compresses many blocks, so history it kept between them shows.
        let data = many_blocks(48 * GZ_BLOCK + 1234);
        for level in [1, 6, 9] {
            let enc = |jobs| {
                let mut e = Encoder::new(Compression::Gzip, Vec::new(), jobs, Some(level)).unwrap();
                for chunk in data.chunks(1 << 20) {
                    e.write_all(chunk).unwrap();
                }
                e.finish().unwrap()
            };
            let first = enc(1);
            for jobs in [1, 2, 4, 2, 4] {
                assert!(
                    enc(jobs) == first,
                    "level {level}, {jobs} jobs: other bytes than 1 job"
                );
            }
            let mut back = Vec::new();
            flate2::read::GzDecoder::new(&first[..])
                .read_to_end(&mut back)
                .unwrap();
            assert!(back == data, "level {level}: round trip");
        }
    }

    #[test]
    fn zstd_is_thread_count_independent() {
        let data = sample();
        assert_eq!(
            roundtrip(Compression::Zstd, &data, 1),
            roundtrip(Compression::Zstd, &data, 2)
        );
        assert_eq!(
            zstd::decode_all(&roundtrip(Compression::Zstd, &data, 2)[..]).unwrap(),
            data
        );
    }

    #[test]
    fn detection() {
        let from = |p: &str| Compression::from_path(Path::new(p));
        assert_eq!(from("x.tar.gz"), Some(Compression::Gzip));
        assert_eq!(from("x.tgz"), Some(Compression::Gzip));
        assert_eq!(from("x.tzst"), Some(Compression::Zstd));
        assert_eq!(from("x.tar.zst"), Some(Compression::Zstd));
        assert_eq!(from("x.tar"), Some(Compression::None));
        assert_eq!(from("/dev/null"), Some(Compression::None));
        assert_eq!(from("x.tar.xz"), None);
        assert_eq!(from("x.bz2"), None);
        assert_eq!(
            Compression::sniff(&[0x28, 0xb5, 0x2f, 0xfd, 0]),
            Compression::Zstd
        );
    }

    #[test]
    fn levels() {
        assert_eq!(Compression::Gzip.level(None), Ok(6));
        assert_eq!(Compression::Zstd.level(Some(19)), Ok(19));
        assert!(Compression::Zstd.level(Some(20)).is_err());
        assert!(Compression::Gzip.level(Some(0)).is_err());
        assert!(Compression::None.level(Some(3)).is_err());
        assert_eq!(Compression::None.level(None), Ok(0));
    }
}
