//! Images, not just layers: an image reference is opened, its manifest chosen (ref, platform,
//! nested indexes), and its layers handed to the jobs as inputs that verify themselves as they
//! are read (blob digest and size against the descriptor, uncompressed digest against the
//! config's `rootfs.diff_ids`). Every JSON document read on the way is verified against the
//! descriptor that named it.
//!
//! ```text
//! oci:DIR[:REF] ──┐                       index.json -> (ref) -> [index -> (platform)]* -> manifest
//! oci-archive:F ──┴─ source::Files ──>    -> config (diff_ids) + layer descriptors -> Input::blob
//! docker-archive:F[:NAME:TAG] ─────────>  manifest.json -> (tag) -> config + layer files
//! ```

pub(crate) mod reference;
pub(crate) mod source;
pub(crate) mod spec;
pub(crate) mod write;

use sha2::{Digest as _, Sha256, Sha512};

use crate::error::{Error, Result, Rule};
use crate::input::{Expect, Input};
pub use reference::ImageRef;
use source::Files;
use spec::{media, Descriptor, Digest, DockerSaved, Index, Manifest, Platform};
pub use write::{ImageMeta, ImageTarget, ManifestDescriptor};

/// An opened image: what the jobs need to apply, squash or extend it.
#[derive(Debug, Clone)]
pub struct Image {
    /// The reference as given.
    pub label: String,
    /// The manifest's digest (`None` for a classic `docker save` archive, which has none).
    pub manifest: Option<String>,
    /// The config's digest.
    pub config: String,
    /// The config, byte for byte.
    pub config_bytes: Vec<u8>,
    /// `rootfs.diff_ids`, bottom first.
    pub diff_ids: Vec<String>,
    /// The layers, bottom first, each verifying itself as it is read.
    pub layers: Vec<Input>,
    /// The layers' descriptors (OCI media types), for an image built on this one.
    pub(crate) descs: Vec<write::LayerDesc>,
}

/// The OCI media type of a layer media type (Docker's become their OCI equivalents).
fn oci_layer_type(media_type: &str) -> String {
    match media_type {
        "application/vnd.docker.image.rootfs.diff.tar" => "application/vnd.oci.image.layer.v1.tar",
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        }
        "application/vnd.docker.image.rootfs.diff.tar.zstd" => {
            "application/vnd.oci.image.layer.v1.tar+zstd"
        }
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
        }
        other => other,
    }
    .to_string()
}

/// The most bytes of a root-level `oci-layout` or `manifest.json` member read to tell an image
/// archive from a layer that happens to hold such a file.
pub(crate) const SNIFF_MAX: u64 = 64 << 10;

/// Whether the tar member `path` (a regular file of `size` bytes) may show that the "layer" is an
/// image archive; then its bytes go to [`archive_hint`].
pub(crate) fn may_be_image_member(path: &[u8], size: u64) -> bool {
    size <= SNIFF_MAX && (path == b"oci-layout" || path == b"manifest.json")
}

/// A layer file that is an image archive: the error that names the right prefix. A layer holding
/// a file of that name is told apart by the content (a layout version; `docker save`'s list of
/// images with their Config and Layers).
pub(crate) fn archive_hint(label: &str, path: &[u8], data: &[u8]) -> Option<Error> {
    let is_image = match path {
        b"oci-layout" => serde_json::from_slice::<serde_json::Value>(data)
            .ok()
            .is_some_and(|v| v.get("imageLayoutVersion").is_some()),
        b"manifest.json" => serde_json::from_slice::<Vec<DockerSaved>>(data).is_ok(),
        _ => false,
    };
    let prefix = if path == b"oci-layout" {
        "oci-archive"
    } else {
        "docker-archive"
    };
    is_image.then(|| {
        format_error(
            label,
            format!("an image archive, not a layer: name it {prefix}:{label}"),
        )
    })
}

/// A directory given as a layer that is an OCI layout: the error that names the right prefix.
pub(crate) fn layout_hint(label: &str, dir: &std::path::Path) -> Option<Error> {
    let layout = crate::sys::stat_path(&dir.join("oci-layout"), true);
    layout
        .is_ok_and(|st| crate::sys::file_type(&st) == crate::sys::FileType::RegularFile)
        .then(|| {
            format_error(
                label,
                format!("an OCI image layout, not a layer: name it oci:{label}"),
            )
        })
}

/// The platform images are chosen for by default: this host's.
pub fn host_platform() -> (String, String) {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        other => other,
    };
    ("linux".to_string(), arch.to_string())
}

/// How to choose among platforms: `OS/ARCH[/VARIANT]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlatformChoice {
    /// e.g. `linux`.
    pub os: String,
    /// e.g. `amd64`.
    pub architecture: String,
    /// e.g. `v8`; `None` matches any.
    pub variant: Option<String>,
}

impl PlatformChoice {
    /// This host's platform.
    pub fn host() -> Self {
        let (os, architecture) = host_platform();
        PlatformChoice {
            os,
            architecture,
            variant: None,
        }
    }

    /// `OS/ARCH[/VARIANT]`.
    pub fn parse(s: &str) -> Option<Self> {
        let mut it = s.split('/');
        let os = it.next().filter(|s| !s.is_empty())?.to_string();
        let architecture = it.next().filter(|s| !s.is_empty())?.to_string();
        let variant = it.next().map(str::to_string);
        if it.next().is_some() {
            return None;
        }
        Some(PlatformChoice {
            os,
            architecture,
            variant,
        })
    }

    fn matches(&self, p: &Platform) -> bool {
        p.os == self.os
            && p.architecture == self.architecture
            && (self.variant.is_none() || self.variant == p.variant)
    }
}

/// Open the image `r` names, choosing `platform` in multi-platform indexes.
pub fn open(r: &ImageRef, platform: &PlatformChoice) -> Result<Image> {
    let label = r.label();
    let e = |err: Error| err.in_layer(&label);
    match r {
        ImageRef::Oci { dir, name } => {
            let files = Files::dir(dir).map_err(e)?;
            oci(&files, &label, name.as_deref(), platform).map_err(e)
        }
        ImageRef::OciArchive { file, name } => {
            let files = Files::tar(file).map_err(e)?;
            oci(&files, &label, name.as_deref(), platform).map_err(e)
        }
        ImageRef::DockerArchive { file, tag } => {
            let files = Files::tar(file).map_err(e)?;
            docker(&files, &label, tag.as_deref()).map_err(e)
        }
    }
}

/// The image whose config is `config` in the source `r` names, whatever ref names it now: `r`
/// itself, else each ref (or tag) the source holds. For finding an image again after its layout
/// gained others (a container's commit into its image's own layout).
pub fn open_config(r: &ImageRef, platform: &PlatformChoice, config: &str) -> Result<Image> {
    let first = open(r, platform);
    if let Ok(i) = &first {
        if i.config == config {
            return first;
        }
    }
    let label = r.label();
    let names: Vec<String> = match r {
        ImageRef::Oci { dir, .. } => Files::dir(dir).ok().and_then(|f| ref_names_of(&f)),
        ImageRef::OciArchive { file, .. } => Files::tar(file).ok().and_then(|f| ref_names_of(&f)),
        ImageRef::DockerArchive { file, .. } => Files::tar(file).ok().and_then(|f| {
            let saved: Vec<DockerSaved> = json(&f.read_small("manifest.json").ok()?, "").ok()?;
            Some(
                saved
                    .into_iter()
                    .flat_map(|s| s.repo_tags.unwrap_or_default())
                    .collect(),
            )
        }),
    }
    .unwrap_or_default();
    for n in names {
        let named = match r.clone() {
            ImageRef::Oci { dir, .. } => ImageRef::Oci { dir, name: Some(n) },
            ImageRef::OciArchive { file, .. } => ImageRef::OciArchive {
                file,
                name: Some(n),
            },
            ImageRef::DockerArchive { file, .. } => ImageRef::DockerArchive { file, tag: Some(n) },
        };
        if let Ok(i) = open(&named, platform) {
            if i.config == config {
                return Ok(i);
            }
        }
    }
    match first {
        Ok(i) => Err(format_error(
            label,
            format!("holds image {}, not {config}", i.config),
        )),
        Err(e) => Err(e),
    }
}

/// The ref names of a layout's index.
fn ref_names_of(files: &Files) -> Option<Vec<String>> {
    let index: Index = json(&files.read_small("index.json").ok()?, "index.json").ok()?;
    Some(
        index
            .manifests
            .iter()
            .filter_map(|m| m.annotations.get(spec::REF_NAME).cloned())
            .collect(),
    )
}

fn format_error(what: impl Into<String>, detail: impl Into<String>) -> Error {
    Error::rejected(what.into(), Rule::ImageFormat, detail)
}

/// A blob named by a descriptor, read and checked against it.
fn read_blob(files: &Files, d: &Descriptor) -> Result<Vec<u8>> {
    let digest = Digest::parse(&d.digest)
        .ok_or_else(|| format_error(&d.digest, "not a sha256 or sha512 digest"))?;
    let bytes = files.read_small(&digest.blob_path())?;
    check_bytes(&bytes, &digest, Some(d.size))?;
    Ok(bytes)
}

fn check_bytes(bytes: &[u8], digest: &Digest, size: Option<u64>) -> Result<()> {
    if let Some(size) = size {
        if bytes.len() as u64 != size {
            return Err(Error::rejected(
                digest.to_string(),
                Rule::BlobDigest,
                format!("{} bytes, its descriptor says {size}", bytes.len()),
            ));
        }
    }
    let got = match digest.algorithm {
        spec::Algorithm::Sha256 => hex::encode(Sha256::digest(bytes)),
        spec::Algorithm::Sha512 => hex::encode(Sha512::digest(bytes)),
    };
    if got != digest.hex {
        return Err(Error::rejected(
            digest.to_string(),
            Rule::BlobDigest,
            format!("its bytes hash to {}:{got}", digest.algorithm.name()),
        ));
    }
    Ok(())
}

fn json<T: serde::de::DeserializeOwned>(bytes: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(bytes).map_err(|e| format_error(what, e.to_string()))
}

fn ref_names(index: &Index) -> Vec<String> {
    index
        .manifests
        .iter()
        .map(|m| {
            m.annotations
                .get(spec::REF_NAME)
                .cloned()
                .unwrap_or_else(|| format!("(no ref) {}", m.digest))
        })
        .collect()
}

/// An OCI layout (a directory or an archive of one).
fn oci(files: &Files, label: &str, name: Option<&str>, platform: &PlatformChoice) -> Result<Image> {
    if !files.has("oci-layout") {
        return Err(format_error(
            files.shown(),
            "not an OCI image layout (no oci-layout file)",
        ));
    }
    let index: Index = json(&files.read_small("index.json")?, "index.json")?;
    let chosen: Vec<&Descriptor> = match name {
        Some(n) => index
            .manifests
            .iter()
            .filter(|m| m.annotations.get(spec::REF_NAME).map(String::as_str) == Some(n))
            .collect(),
        None => index.manifests.iter().collect(),
    };
    let top = match chosen.as_slice() {
        [one] => (*one).clone(),
        [] if name.is_some() => {
            return Err(format_error(
                "index.json",
                format!(
                    "no image named {:?}; it has: {}",
                    name.unwrap_or_default(),
                    ref_names(&index).join(", ")
                ),
            ))
        }
        [] => return Err(format_error("index.json", "no images")),
        many => {
            // Several entries: one ref may name one manifest per platform.
            let list = Index {
                manifests: many.iter().map(|d| (*d).clone()).collect(),
            };
            if name.is_none() && !all_platforms(&list) {
                return Err(format_error(
                    "index.json",
                    format!(
                        "holds {} images; name one with oci:PATH:REF (refs: {})",
                        many.len(),
                        ref_names(&index).join(", ")
                    ),
                ));
            }
            pick_platform(&list, platform)?
        }
    };
    let (manifest_desc, manifest) = resolve(files, top, platform, 0)?;
    image_of(files, label, &manifest_desc, &manifest)
}

fn all_platforms(index: &Index) -> bool {
    index.manifests.iter().all(|m| m.platform.is_some())
}

fn pick_platform(index: &Index, platform: &PlatformChoice) -> Result<Descriptor> {
    if let [one] = index.manifests.as_slice() {
        if one.platform.is_none() {
            return Ok(one.clone());
        }
    }
    let hits: Vec<&Descriptor> = index
        .manifests
        .iter()
        .filter(|m| m.platform.as_ref().is_some_and(|p| platform.matches(p)))
        .collect();
    match hits.as_slice() {
        [first, ..] => Ok((*first).clone()),
        [] => {
            let have: Vec<String> = index
                .manifests
                .iter()
                .map(|m| {
                    m.platform
                        .as_ref()
                        .map_or_else(|| "(no platform)".into(), |p| p.to_string())
                })
                .collect();
            Err(format_error(
                "index",
                format!(
                    "no manifest for {}/{}{}; it has: {} (choose with --platform)",
                    platform.os,
                    platform.architecture,
                    platform
                        .variant
                        .as_ref()
                        .map(|v| format!("/{v}"))
                        .unwrap_or_default(),
                    have.join(", ")
                ),
            ))
        }
    }
}

/// Follow indexes down to one manifest.
fn resolve(
    files: &Files,
    d: Descriptor,
    platform: &PlatformChoice,
    depth: usize,
) -> Result<(Descriptor, Manifest)> {
    if depth > 8 {
        return Err(format_error(&d.digest, "indexes nested more than 8 deep"));
    }
    if media::DOCKER_SCHEMA1.contains(&d.media_type.as_str()) {
        return Err(format_error(
            &d.digest,
            format!(
                "{}: Docker schema1 manifests are not supported (convert with skopeo copy)",
                d.media_type
            ),
        ));
    }
    let bytes = read_blob(files, &d)?;
    match d.media_type.as_str() {
        media::OCI_INDEX | media::DOCKER_LIST => {
            let index: Index = json(&bytes, &d.digest)?;
            let next = pick_platform(&index, platform)?;
            resolve(files, next, platform, depth + 1)
        }
        media::OCI_MANIFEST | media::DOCKER_MANIFEST => {
            let m: Manifest = json(&bytes, &d.digest)?;
            if m.schema_version != 2 {
                return Err(format_error(
                    &d.digest,
                    format!("schemaVersion {} (layerkit reads 2)", m.schema_version),
                ));
            }
            Ok((d, m))
        }
        other => Err(format_error(
            &d.digest,
            format!("unknown manifest media type {other:?}"),
        )),
    }
}

/// The config's `rootfs.diff_ids`, checked to be sha256 digests.
fn diff_ids(config: &[u8], what: &str) -> Result<Vec<String>> {
    let v: serde_json::Value = json(config, what)?;
    let ids = v
        .pointer("/rootfs/diff_ids")
        .and_then(|x| x.as_array())
        .ok_or_else(|| format_error(what, "the config has no rootfs.diff_ids"))?;
    ids.iter()
        .map(|x| {
            x.as_str()
                .filter(|s| {
                    Digest::parse(s).is_some_and(|d| d.algorithm == spec::Algorithm::Sha256)
                })
                .map(str::to_string)
                .ok_or_else(|| format_error(what, format!("diff_id {x} is not a sha256 digest")))
        })
        .collect()
}

fn image_of(files: &Files, label: &str, md: &Descriptor, m: &Manifest) -> Result<Image> {
    if !media::CONFIGS.contains(&m.config.media_type.as_str()) {
        return Err(format_error(
            &m.config.digest,
            format!("unknown config media type {:?}", m.config.media_type),
        ));
    }
    let config_bytes = read_blob(files, &m.config)?;
    let diff_ids = diff_ids(&config_bytes, &m.config.digest)?;
    if diff_ids.len() != m.layers.len() {
        return Err(format_error(
            &md.digest,
            format!(
                "{} layers but the config lists {} diff_ids",
                m.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let mut layers = Vec::with_capacity(m.layers.len());
    let mut descs = Vec::with_capacity(m.layers.len());
    for (i, (l, id)) in m.layers.iter().zip(&diff_ids).enumerate() {
        descs.push(write::LayerDesc {
            media_type: oci_layer_type(&l.media_type),
            digest: l.digest.clone(),
            size: l.size,
            diff_id: id.clone(),
        });
        if spec::layer_type(&l.media_type).is_none() {
            return Err(format_error(
                &l.digest,
                format!("unknown layer media type {:?}", l.media_type),
            ));
        }
        let digest = Digest::parse(&l.digest)
            .ok_or_else(|| format_error(&l.digest, "not a sha256 or sha512 digest"))?;
        layers.push(Input::blob(
            format!("{label}: layer {i} ({digest})"),
            files.source(&digest.blob_path())?,
            Expect {
                blob: Some(digest.to_string()),
                size: Some(l.size),
                diff_id: Some(id.clone()),
            },
        ));
    }
    Ok(Image {
        label: label.to_string(),
        manifest: Some(md.digest.clone()),
        config: m.config.digest.clone(),
        config_bytes,
        diff_ids,
        layers,
        descs,
    })
}

/// Docker's reference normalisation: `busybox:1` is `docker.io/library/busybox:1`, `lk/app:v1` is
/// `docker.io/lk/app:v1`; a first component with a dot or a port, or `localhost`, is a registry.
fn normalized(tag: &str) -> String {
    let first = tag.split('/').next().unwrap_or_default();
    let has_registry =
        tag.contains('/') && (first.contains('.') || first.contains(':') || first == "localhost");
    if has_registry {
        tag.to_string()
    } else if tag.contains('/') {
        format!("docker.io/{tag}")
    } else {
        format!("docker.io/library/{tag}")
    }
}

fn same_tag(a: &str, b: &str) -> bool {
    normalized(a) == normalized(b)
}

/// `docker save` / `podman save` output: `manifest.json`, classic (`<id>/layer.tar`,
/// `<hex>.json`) or with an OCI layout inside (Docker 25+, `blobs/sha256/<hex>`).
fn docker(files: &Files, label: &str, tag: Option<&str>) -> Result<Image> {
    if !files.has("manifest.json") {
        return Err(format_error(
            files.shown(),
            if files.has("oci-layout") {
                "no manifest.json, but an oci-layout: use oci-archive:PATH"
            } else {
                "not a docker-archive (no manifest.json)"
            },
        ));
    }
    let saved: Vec<DockerSaved> = json(&files.read_small("manifest.json")?, "manifest.json")?;
    let tags = |s: &DockerSaved| s.repo_tags.clone().unwrap_or_default();
    let chosen: Vec<&DockerSaved> = match tag {
        Some(t) => saved
            .iter()
            .filter(|s| tags(s).iter().any(|x| same_tag(x, t)))
            .collect(),
        None => saved.iter().collect(),
    };
    let s = match chosen.as_slice() {
        [one] => *one,
        [] => {
            let all: Vec<String> = saved.iter().flat_map(tags).collect();
            return Err(format_error(
                "manifest.json",
                format!(
                    "no image tagged {:?}; it has: {}",
                    tag.unwrap_or_default(),
                    all.join(", ")
                ),
            ));
        }
        many => {
            let all: Vec<String> = many.iter().flat_map(|s| tags(s)).collect();
            return Err(format_error(
                "manifest.json",
                format!(
                    "holds {} images; name one with docker-archive:PATH:NAME:TAG (tags: {})",
                    many.len(),
                    all.join(", ")
                ),
            ));
        }
    };
    let config_bytes = files.read_small(&s.config)?;
    // The config's name carries its digest, in both forms: `<hex>.json` or `blobs/sha256/<hex>`.
    let config_hex = s
        .config
        .strip_prefix("blobs/sha256/")
        .or_else(|| s.config.strip_suffix(".json"))
        .unwrap_or_default();
    let config = Digest::parse(&format!("sha256:{config_hex}"))
        .ok_or_else(|| format_error(&s.config, "the config's name is not its sha256"))?;
    check_bytes(&config_bytes, &config, None)?;
    let diff_ids = diff_ids(&config_bytes, &s.config)?;
    if diff_ids.len() != s.layers.len() {
        return Err(format_error(
            "manifest.json",
            format!(
                "{} layers but the config lists {} diff_ids",
                s.layers.len(),
                diff_ids.len()
            ),
        ));
    }
    let mut layers = Vec::with_capacity(s.layers.len());
    let mut descs = Vec::with_capacity(s.layers.len());
    for (i, (l, id)) in s.layers.iter().zip(&diff_ids).enumerate() {
        // Docker 25+ names each layer by its blob digest; a classic archive by a directory.
        let blob = l
            .strip_prefix("blobs/sha256/")
            .and_then(|h| Digest::parse(&format!("sha256:{h}")))
            .map(|d| d.to_string());
        let input = Input::blob(
            format!("{label}: layer {i} ({l})"),
            files.source(l)?,
            Expect {
                blob: blob.clone(),
                size: None,
                diff_id: Some(id.clone()),
            },
        );
        // `docker save` writes plain tars (the blob is the diff), but loaders take compressed
        // layers too: the first bytes say which. A compressed blob that the archive names only by
        // path gets its digest when a new image copies it.
        let mut head = Vec::with_capacity(4);
        std::io::Read::read_to_end(&mut std::io::Read::take(input.open()?, 4), &mut head)
            .map_err(|e| Error::io(&input.label, e))?;
        let c = crate::compress::Compression::sniff(&head);
        descs.push(write::LayerDesc {
            media_type: c.media_type().into(),
            digest: match c {
                crate::compress::Compression::None => id.clone(),
                _ => blob.unwrap_or_default(),
            },
            size: files.size(l)?,
            diff_id: id.clone(),
        });
        layers.push(input);
    }
    Ok(Image {
        label: label.to_string(),
        manifest: None,
        config: config.to_string(),
        config_bytes,
        diff_ids,
        layers,
        descs,
    })
}

/// Now, as the image-spec writes times.
pub(crate) fn rfc3339_now() -> String {
    ImageMeta::default().created_rfc3339()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_tags_match_as_docker_normalises_them() {
        assert!(same_tag("docker.io/lk/img:v1", "lk/img:v1"));
        assert!(same_tag("docker.io/library/busybox:1.36", "busybox:1.36"));
        assert!(same_tag("localhost:5000/app:v2", "localhost:5000/app:v2"));
        assert!(!same_tag("localhost:5000/app:v2", "docker.io/app:v2"));
        assert!(!same_tag("quay.io/x/y:1", "x/y:1"));
        assert!(!same_tag("busybox:1", "busybox:2"));
    }

    #[test]
    fn platforms_parse() {
        let p = PlatformChoice::parse("linux/arm64/v8").unwrap();
        assert_eq!((p.os.as_str(), p.architecture.as_str()), ("linux", "arm64"));
        assert_eq!(p.variant.as_deref(), Some("v8"));
        assert!(PlatformChoice::parse("linux").is_none());
        assert!(PlatformChoice::parse("linux//").is_none());
        assert!(PlatformChoice::parse("a/b/c/d").is_none());
    }
}
