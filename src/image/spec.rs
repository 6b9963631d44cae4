//! The JSON an image is made of (OCI image-spec `image-index.md`, `manifest.md`, `descriptor.md`,
//! `config.md`; Docker's schema2 and `docker save`'s `manifest.json`), as far as layerkit reads it.
//! Unknown fields are ignored; the config is kept as raw bytes (its digest is over them) and read
//! as a JSON value.

use std::collections::BTreeMap;

use serde::Deserialize;

/// Media types layerkit reads, by what they are.
pub(crate) mod media {
    pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
    pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
    pub const DOCKER_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
    pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
    pub const DOCKER_SCHEMA1: &[&str] = &[
        "application/vnd.docker.distribution.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v1+prettyjws",
    ];
    pub const CONFIGS: &[&str] = &[
        "application/vnd.oci.image.config.v1+json",
        "application/vnd.docker.container.image.v1+json",
    ];
}

/// What a layer blob's media type says it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LayerType {
    /// A tar, plain or compressed (the compression is told by the bytes, as for layer files).
    Tar,
}

/// Classify a layer media type: OCI (distributable or not), Docker (and its foreign form).
pub(crate) fn layer_type(media_type: &str) -> Option<LayerType> {
    const KNOWN: &[&str] = &[
        "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.oci.image.layer.v1.tar+zstd",
        "application/vnd.oci.image.layer.nondistributable.v1.tar",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip",
        "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd",
        "application/vnd.docker.image.rootfs.diff.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "application/vnd.docker.image.rootfs.diff.tar.zstd",
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
    ];
    KNOWN.contains(&media_type).then_some(LayerType::Tar)
}

/// A content descriptor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Descriptor {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    #[serde(default)]
    pub platform: Option<Platform>,
}

/// The platform of an index entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub(crate) struct Platform {
    pub architecture: String,
    pub os: String,
    #[serde(default)]
    pub variant: Option<String>,
}

impl std::fmt::Display for Platform {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.os, self.architecture)?;
        if let Some(v) = &self.variant {
            write!(f, "/{v}")?;
        }
        Ok(())
    }
}

/// An image index (or Docker manifest list).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Index {
    pub manifests: Vec<Descriptor>,
}

/// An image manifest (OCI or Docker schema2).
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Manifest {
    pub schema_version: u32,
    pub config: Descriptor,
    pub layers: Vec<Descriptor>,
}

/// One image of `docker save`'s `manifest.json`.
#[derive(Debug, Clone, Deserialize)]
pub(crate) struct DockerSaved {
    #[serde(rename = "Config")]
    pub config: String,
    #[serde(rename = "RepoTags", default)]
    pub repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers")]
    pub layers: Vec<String>,
}

/// The ref name annotation of an index entry.
pub(crate) const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A digest layerkit can verify: `sha256:` + 64 or `sha512:` + 128 lowercase hex digits. Checked
/// strictly, since the hex names a file (`blobs/<alg>/<hex>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Digest {
    pub algorithm: Algorithm,
    pub hex: String,
}

/// A digest algorithm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    Sha256,
    Sha512,
}

impl Digest {
    pub(crate) fn parse(s: &str) -> Option<Digest> {
        let (alg, hex) = s.split_once(':')?;
        let (algorithm, len) = match alg {
            "sha256" => (Algorithm::Sha256, 64),
            "sha512" => (Algorithm::Sha512, 128),
            _ => return None,
        };
        let ok = hex.len() == len
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        ok.then(|| Digest {
            algorithm,
            hex: hex.to_string(),
        })
    }

    /// `blobs/<alg>/<hex>`, the blob's path in a layout.
    pub(crate) fn blob_path(&self) -> String {
        format!("blobs/{}/{}", self.algorithm.name(), self.hex)
    }
}

impl Algorithm {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Algorithm::Sha256 => "sha256",
            Algorithm::Sha512 => "sha512",
        }
    }
}

impl std::fmt::Display for Digest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.algorithm.name(), self.hex)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_parsed_strictly() {
        let h = "a".repeat(64);
        assert!(Digest::parse(&format!("sha256:{h}")).is_some());
        assert!(Digest::parse(&format!("sha512:{}", "0".repeat(128))).is_some());
        for bad in [
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("sha384:{}", "a".repeat(96)),
            format!("sha256:../../{}", "a".repeat(58)),
            "sha256".to_string(),
        ] {
            assert!(Digest::parse(&bad).is_none(), "{bad}");
        }
        assert_eq!(
            Digest::parse(&format!("sha256:{h}")).unwrap().blob_path(),
            format!("blobs/sha256/{h}")
        );
    }
}
