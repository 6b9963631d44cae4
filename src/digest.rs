//! sha256 digests as the image-spec writes them, a hashing writer, and the OCI descriptor.

use std::io::{self, Write};

use serde::Serialize;
use sha2::{Digest as _, Sha256};

/// `sha256:<hex>`.
pub(crate) fn format(hash: &[u8]) -> String {
    format!("sha256:{}", hex::encode(hash))
}

/// A writer that hashes and counts what passes through it.
pub(crate) struct HashWriter<W: Write> {
    inner: W,
    hasher: Option<Sha256>,
    count: u64,
}

impl<W: Write> HashWriter<W> {
    /// Wrap `inner`; with `hash` false it only counts (when another hash already covers the bytes).
    pub fn new(inner: W, hash: bool) -> Self {
        HashWriter {
            inner,
            hasher: hash.then(Sha256::new),
            count: 0,
        }
    }

    /// Count `n` bytes that reached the inner writer by another route.
    pub fn count(&mut self, n: usize) {
        self.count += n as u64;
    }

    /// The inner writer.
    pub fn get_mut(&mut self) -> &mut W {
        &mut self.inner
    }

    /// The inner writer, the `sha256:` digest (empty when not hashing) and the byte count.
    pub fn finish(self) -> (W, String, u64) {
        let digest = self
            .hasher
            .map(|h| format(&h.finalize()))
            .unwrap_or_default();
        (self.inner, digest, self.count)
    }
}

impl<W: Write> Write for HashWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        if let Some(h) = &mut self.hasher {
            h.update(&buf[..n]);
        }
        self.count += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// A sha256 accumulator for the uncompressed stream (the diffID), fed chunk by chunk.
#[derive(Default)]
pub(crate) struct Hasher(Sha256);

impl Hasher {
    /// Add bytes.
    pub fn update(&mut self, b: &[u8]) {
        self.0.update(b);
    }

    /// `sha256:<hex>`.
    pub fn finish(self) -> String {
        format(&self.0.finalize())
    }
}

/// So that `io::copy` can hash a stream.
impl Write for Hasher {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.update(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The OCI content descriptor of a layer blob, plus its diffID (the digest of the uncompressed tar,
/// which the image config's `rootfs.diff_ids` lists).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Descriptor {
    /// `application/vnd.oci.image.layer.v1.tar[+gzip|+zstd]`.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// Digest of the blob as written.
    pub digest: String,
    /// Size of the blob as written.
    pub size: u64,
    /// Digest of the uncompressed tar.
    #[serde(rename = "diffID")]
    pub diff_id: String,
}

/// OCI chainID of a stack, bottom first (image-spec config.md "Layer ChainID"):
/// `ChainID(L0) = DiffID(L0)`, `ChainID(L0..Ln) = sha256(ChainID(L0..Ln-1) + " " + DiffID(Ln))`.
pub fn chain_id(diff_ids: &[String]) -> Option<String> {
    let mut it = diff_ids.iter();
    let mut chain = it.next()?.clone();
    for d in it {
        let mut h = Sha256::new();
        h.update(chain.as_bytes());
        h.update(b" ");
        h.update(d.as_bytes());
        chain = format(&h.finalize());
    }
    Some(chain)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_sha256() {
        let (_, d, n) = HashWriter::new(Vec::new(), true).finish();
        assert_eq!(
            d,
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(n, 0);
    }

    #[test]
    fn chain_id_of_two() {
        let a = "sha256:a".to_string();
        let b = "sha256:b".to_string();
        let want = format(&Sha256::digest(b"sha256:a sha256:b"));
        assert_eq!(chain_id(std::slice::from_ref(&a)), Some(a.clone()));
        assert_eq!(chain_id(&[a, b]), Some(want));
    }
}
