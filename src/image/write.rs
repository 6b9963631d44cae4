//! Writing an OCI image layout (`oci:DIR:REF`): blobs content-addressed and written atomically
//! (a temporary name, then renamed to the digest; a blob already there is reused), `index.json`
//! replaced atomically with the other refs kept. A crash leaves the layout as it was, plus at most
//! a temporary blob that the next writer reaps.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result, Rule};
use crate::staging;
use crate::sys;

/// An open layout, made when missing.
pub(crate) struct LayoutWriter {
    path: PathBuf,
    fd: OwnedFd,
    blobs: Arc<OwnedFd>,
}

const EMPTY_INDEX: &str = r#"{"schemaVersion":2,"manifests":[]}"#;

impl LayoutWriter {
    /// The layout at `path`: a new or empty directory becomes one; an existing layout is kept;
    /// anything else is refused before anything is written.
    pub(crate) fn open(path: &Path) -> Result<LayoutWriter> {
        let e = |err: io::Error| Error::io(path, err);
        sys::mkdir_p(path, 0o755).map_err(e)?;
        let fd = sys::open_dir(path).map_err(e)?;
        let names = sys::read_dir_names(&fd).map_err(e)?;
        let is_layout = names.iter().any(|n| n == b"oci-layout");
        if !is_layout && !names.is_empty() {
            return Err(Error::rejected(
                path,
                Rule::ImageFormat,
                "neither an OCI layout nor an empty directory: refusing to write an image there",
            ));
        }
        if !is_layout {
            sys::mkdirat_exist_ok(&fd, b"blobs", 0o755).map_err(e)?;
            let b = sys::openat_dir(&fd, b"blobs").map_err(e)?;
            sys::mkdirat_exist_ok(&b, b"sha256", 0o755).map_err(e)?;
            sys::write_file_atomic(fd.as_fd(), b"index.json", EMPTY_INDEX.as_bytes(), 0o644)
                .map_err(e)?;
            sys::write_file_atomic(
                fd.as_fd(),
                b"oci-layout",
                br#"{"imageLayoutVersion":"1.0.0"}"#,
                0o644,
            )
            .map_err(e)?;
        }
        let b = sys::openat_dir(&fd, b"blobs").map_err(e)?;
        sys::mkdirat_exist_ok(&b, b"sha256", 0o755).map_err(e)?;
        let blobs = Arc::new(sys::openat_dir(&b, b"sha256").map_err(e)?);
        Ok(LayoutWriter {
            path: path.to_path_buf(),
            fd,
            blobs,
        })
    }

    /// A blob written by `fill` (which returns the blob's sha256 digest as it computed it), renamed
    /// to that digest when complete.
    pub(crate) fn put_with<T>(
        &self,
        fill: impl FnOnce(
            io::BufWriter<std::fs::File>,
        ) -> Result<(T, String, io::BufWriter<std::fs::File>)>,
    ) -> Result<T> {
        let e = |err: io::Error| Error::io(self.path.join("blobs/sha256"), err);
        let (tmp, f) = staging::file(self.blobs.clone(), b"blob").map_err(e)?;
        let (t, digest, w) = fill(io::BufWriter::with_capacity(1 << 20, f))?;
        let f = w.into_inner().map_err(|err| e(err.into_error()))?;
        f.sync_all().map_err(e)?;
        drop(f);
        let hex = digest
            .strip_prefix("sha256:")
            .unwrap_or(&digest)
            .to_string();
        tmp.publish(hex.as_bytes()).map_err(e)?;
        Ok(t)
    }

    /// A blob of these bytes; returns `(digest, size)`.
    pub(crate) fn put_bytes(&self, bytes: &[u8]) -> Result<(String, u64)> {
        let digest = format!("sha256:{}", hex::encode(Sha256::digest(bytes)));
        if !self.has(&digest) {
            self.put_with(|mut w| {
                w.write_all(bytes)
                    .map_err(|e| Error::io(self.path.join("blobs/sha256"), e))?;
                Ok(((), digest.clone(), w))
            })?;
        }
        Ok((digest, bytes.len() as u64))
    }

    /// A blob copied from `src` (another image's), checked as it is copied against `expect` (its
    /// descriptor's digest, sha256 or sha512) when one is known; returns its sha256 digest, under
    /// which it is stored.
    fn copy_blob(&self, src: &mut dyn Read, expect: Option<&str>, label: &str) -> Result<String> {
        self.put_with(|mut w| {
            let mut h = Sha256::new();
            let mut h512 = expect
                .is_some_and(|d| d.starts_with("sha512:"))
                .then(sha2::Sha512::new);
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = match src.read(&mut buf) {
                    Ok(0) => break,
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(Error::io(label, e)),
                };
                h.update(&buf[..n]);
                if let Some(h) = &mut h512 {
                    h.update(&buf[..n]);
                }
                w.write_all(&buf[..n])
                    .map_err(|e| Error::io(self.path.join("blobs/sha256"), e))?;
            }
            let sha256 = format!("sha256:{}", hex::encode(h.finalize()));
            let got = match h512 {
                Some(h) => format!("sha512:{}", hex::encode(h.finalize())),
                None => sha256.clone(),
            };
            if let Some(want) = expect.filter(|&want| want != got) {
                return Err(Error::rejected(
                    label,
                    Rule::BlobDigest,
                    format!("digest {got}, its descriptor says {want}"),
                ));
            }
            Ok((sha256.clone(), sha256, w))
        })
    }

    /// The blobs of `image`'s first `n` layers, copied as they are (verified as they are copied)
    /// where the layout lacks them; returns their descriptors here. The bytes are the same; only a
    /// sha512 digest becomes the sha256 of the same blob (this writer's layouts are sha256), and a
    /// classic docker-archive's compressed layer, whose digest nothing names, gets one.
    pub(crate) fn copy_layers(&self, image: &super::Image, n: usize) -> Result<Vec<LayerDesc>> {
        let mut descs = Vec::with_capacity(n);
        for (input, d) in image.layers[..n].iter().zip(&image.descs) {
            let mut d = d.clone();
            if !(d.digest.starts_with("sha256:") && self.has(&d.digest)) {
                let known = (!d.digest.is_empty()).then_some(d.digest.as_str());
                d.digest = self.copy_blob(&mut input.open()?, known, &input.label)?;
            }
            descs.push(d);
        }
        Ok(descs)
    }

    /// Whether the layout has the blob `digest` (sha256).
    pub(crate) fn has(&self, digest: &str) -> bool {
        digest
            .strip_prefix("sha256:")
            .is_some_and(|hex| sys::lstatat(&*self.blobs, hex.as_bytes()).is_ok())
    }

    /// Point `name` at the manifest `desc`, keeping every other entry; `index.json` is replaced
    /// atomically.
    pub(crate) fn set_ref(&self, mut desc: Value, name: &str) -> Result<()> {
        let e = |err: io::Error| Error::io(self.path.join("index.json"), err);
        let bytes = sys::read_file_at(&self.fd, b"index.json").map_err(e)?;
        let mut index: Value = serde_json::from_slice(&bytes).map_err(|err| {
            Error::rejected(
                self.path.join("index.json"),
                Rule::ImageFormat,
                err.to_string(),
            )
        })?;
        let manifests = index
            .get_mut("manifests")
            .and_then(Value::as_array_mut)
            .ok_or_else(|| {
                Error::rejected(
                    self.path.join("index.json"),
                    Rule::ImageFormat,
                    "no manifests list",
                )
            })?;
        manifests.retain(|m| {
            m.pointer("/annotations/org.opencontainers.image.ref.name")
                .and_then(Value::as_str)
                != Some(name)
        });
        desc["annotations"] = json!({ "org.opencontainers.image.ref.name": name });
        manifests.push(desc);
        let text = serde_json::to_vec(&index).expect("serialisable");
        sys::write_file_atomic(self.fd.as_fd(), b"index.json", &text, 0o644).map_err(e)
    }
}

/// One layer of an image being written: its descriptor and diffID.
#[derive(Debug, Clone)]
pub(crate) struct LayerDesc {
    pub media_type: String,
    pub digest: String,
    pub size: u64,
    pub diff_id: String,
}

impl LayerDesc {
    fn descriptor(&self) -> Value {
        json!({"mediaType": self.media_type, "digest": self.digest, "size": self.size})
    }
}

/// RFC 3339 UTC of `secs` since the epoch (the image-spec's `created`), without a date crate.
pub(crate) fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The config of `base` (or a minimal one for this host) with `layer` on top: its diffID appended
/// to `rootfs.diff_ids` and one history entry for it, so that the non-empty history entries still
/// pair with the layers; `created` is the image's and the entry's time.
pub(crate) fn config_with(
    base: Option<&[u8]>,
    layer: &LayerDesc,
    created: &str,
    by: &str,
    comment: Option<&str>,
) -> Result<Vec<u8>> {
    let mut v: Value = match base {
        Some(b) => serde_json::from_slice(b)
            .map_err(|e| Error::rejected("config", Rule::ImageFormat, e.to_string()))?,
        None => {
            let (os, arch) = super::host_platform();
            json!({"architecture": arch, "os": os, "config": {}, "rootfs": {"type": "layers", "diff_ids": []}})
        }
    };
    let ids = v
        .pointer_mut("/rootfs/diff_ids")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| Error::rejected("config", Rule::ImageFormat, "no rootfs.diff_ids"))?;
    ids.push(json!(layer.diff_id));
    let mut entry = json!({"created": created, "created_by": by});
    if let Some(c) = comment {
        entry["comment"] = json!(c);
    }
    match v.get_mut("history").and_then(Value::as_array_mut) {
        Some(h) => h.push(entry),
        None => v["history"] = json!([entry]),
    }
    v["created"] = json!(created);
    Ok(serde_json::to_vec(&v).expect("serialisable"))
}

/// An OCI image manifest of `config` (`(digest, size)`) and `layers`.
pub(crate) fn manifest_of(config: (&str, u64), layers: &[LayerDesc]) -> Vec<u8> {
    let m = json!({
        "schemaVersion": 2,
        "mediaType": super::spec::media::OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config.0,
            "size": config.1,
        },
        "layers": layers.iter().map(LayerDesc::descriptor).collect::<Vec<_>>(),
    });
    serde_json::to_vec(&m).expect("serialisable")
}

/// The config of an image whose layers from `keep` up were squashed into `layer`: diff_ids cut at
/// `keep` plus the new one, and the history cut after the entry of layer `keep - 1` plus one entry
/// for the new layer, so that the non-empty history entries still pair with the layers. A base
/// without history gets none.
pub(crate) fn config_squashed(
    base: &[u8],
    keep: usize,
    layer: &LayerDesc,
    created: &str,
    comment: Option<&str>,
) -> Result<Vec<u8>> {
    let bad = |d: &str| Error::rejected("config", Rule::ImageFormat, d.to_string());
    let mut v: Value = serde_json::from_slice(base).map_err(|e| bad(&e.to_string()))?;
    let ids = v
        .pointer_mut("/rootfs/diff_ids")
        .and_then(Value::as_array_mut)
        .ok_or_else(|| bad("no rootfs.diff_ids"))?;
    ids.truncate(keep);
    ids.push(json!(layer.diff_id));
    if let Some(h) = v.get_mut("history").and_then(Value::as_array_mut) {
        let mut kept = Vec::new();
        let mut layers = 0;
        for e in h.drain(..) {
            let empty = e.get("empty_layer").and_then(Value::as_bool) == Some(true);
            if !empty {
                if layers == keep {
                    break;
                }
                layers += 1;
            }
            kept.push(e);
        }
        let mut entry = json!({"created": created, "created_by": "layerkit squash"});
        if let Some(c) = comment {
            entry["comment"] = json!(c);
        }
        kept.push(entry);
        *h = kept;
    }
    v["created"] = json!(created);
    Ok(serde_json::to_vec(&v).expect("serialisable"))
}

/// Where a new image goes.
#[derive(Debug, Clone)]
pub enum ImageTarget {
    /// `oci:DIR[:REF]`: an OCI layout, made when missing; an existing one keeps its other images.
    Layout {
        /// The layout directory.
        dir: PathBuf,
        /// The ref name (`org.opencontainers.image.ref.name`).
        name: String,
    },
    /// `oci-archive:FILE[:REF]`: a tar of a layout holding this one image, written atomically.
    OciArchive {
        /// The archive.
        file: PathBuf,
        /// The ref name.
        name: String,
    },
    /// `docker-archive:FILE[:NAME:TAG]`: what `docker load` / `podman load` read, written
    /// atomically. The classic form (`manifest.json` naming blobs), without Docker 25's
    /// `index.json`: podman tries an archive as an OCI layout first and would then take the image's
    /// name from the ref annotation instead of `RepoTags`.
    DockerArchive {
        /// The archive.
        file: PathBuf,
        /// `NAME:TAG` for `RepoTags`, if any.
        tag: Option<String>,
    },
}

/// What the new image says besides its layers. `created` decides the config's bytes: the same
/// inputs and time give the same image, byte for byte.
#[derive(Debug, Clone, Default)]
pub struct ImageMeta {
    /// Seconds since the epoch (`SOURCE_DATE_EPOCH`); `None`: now.
    pub created: Option<i64>,
    /// The history entry's comment.
    pub message: Option<String>,
}

impl ImageMeta {
    /// `created` as the image-spec writes it: the given time, else now.
    pub(crate) fn created_rfc3339(&self) -> String {
        rfc3339(self.created.unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() as i64)
        }))
    }
}

/// An image manifest's descriptor.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ManifestDescriptor {
    /// `application/vnd.oci.image.manifest.v1+json`.
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// sha256 of the manifest.
    pub digest: String,
    /// Its size in bytes.
    pub size: u64,
}

/// Build an image into `target`: `build` gets a layout and the ref to set. An archive is built
/// in a temporary layout beside it (removed however the run ends) and written from it.
pub(crate) fn write_to<T>(
    target: &ImageTarget,
    build: impl FnOnce(&LayoutWriter, &str) -> Result<T>,
) -> Result<T> {
    let (file, name, tag) = match target {
        ImageTarget::Layout { dir, name } if is_layout(dir)? => {
            return build(&LayoutWriter::open(dir)?, name)
        }
        ImageTarget::Layout { dir, name } => (dir, name.as_str(), None),
        ImageTarget::OciArchive { file, name } => (file, name.as_str(), None),
        ImageTarget::DockerArchive { file, tag } => (file, "latest", Some(tag.as_deref())),
    };
    let parent = match file.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let final_name = file
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a file name", file.display())))?
        .as_bytes();
    sys::mkdir_p(&parent, 0o755).map_err(|e| Error::io(&parent, e))?;
    let pfd = Arc::new(sys::open_dir(&parent).map_err(|e| Error::io(&parent, e))?);
    let (tmp, _fd) =
        staging::directory(pfd, final_name, 0o755).map_err(|e| Error::io(&parent, e))?;
    let dir = parent.join(String::from_utf8_lossy(tmp.name()).as_ref());
    let w = LayoutWriter::open(&dir)?;
    let t = build(&w, name)?;
    if let ImageTarget::Layout { .. } = target {
        // A new layout appears whole or not at all (a rename may replace an empty directory).
        drop(w);
        tmp.publish(final_name).map_err(|e| Error::io(file, e))?;
        return Ok(t);
    }
    crate::output::to_file(file, |out| Ok(((), archive(&w, name, tag, out)?)))?;
    drop(tmp);
    Ok(t)
}

/// Whether `dir` is a layout already (written in place) rather than missing or empty (built
/// beside it and renamed into place). Anything else is refused by [`LayoutWriter::open`].
fn is_layout(dir: &Path) -> Result<bool> {
    match sys::open_dir(dir) {
        Ok(fd) => {
            let names = sys::read_dir_names(&fd).map_err(|e| Error::io(dir, e))?;
            Ok(!names.is_empty())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Write the layout as a tar into `out`, deterministically: fixed times and owners, sorted names.
/// With `docker`, a `manifest.json` for `docker load` takes the place of `oci-layout` and `index.json`.
fn archive<W: Write>(
    w: &LayoutWriter,
    name: &str,
    docker: Option<Option<&str>>,
    out: W,
) -> Result<W> {
    use crate::entry::{Entry, Kind, Meta, Sink};
    use crate::path::RelPath;
    use crate::tar::{TarWriter, WriteOptions};
    let mut t = TarWriter::new(out, WriteOptions::default());
    let meta = |mode: u32| Meta {
        mode,
        ..Meta::default()
    };
    let file = |t: &mut TarWriter<W>, path: &str, data: &[u8]| {
        t.put(
            &Entry {
                path: RelPath::new(path.as_bytes().to_vec()).expect("a layout name"),
                kind: Kind::File {
                    size: data.len() as u64,
                },
                meta: meta(0o644),
            },
            &mut &data[..],
        )
    };
    let e = |err: io::Error| Error::io(&w.path, err);
    let index = sys::read_file_at(&w.fd, b"index.json").map_err(e)?;
    if let Some(tag) = docker {
        let idx: Value = serde_json::from_slice(&index)
            .map_err(|err| Error::rejected(&w.path, Rule::ImageFormat, err.to_string()))?;
        let desc = idx["manifests"]
            .as_array()
            .and_then(|m| {
                m.iter().find(|d| {
                    d.pointer("/annotations/org.opencontainers.image.ref.name")
                        .and_then(Value::as_str)
                        == Some(name)
                })
            })
            .ok_or_else(|| {
                Error::rejected(&w.path, Rule::ImageFormat, "no manifest for the ref")
            })?;
        let hex = |d: &Value| {
            d.as_str()
                .unwrap_or_default()
                .trim_start_matches("sha256:")
                .to_string()
        };
        let m: Value = serde_json::from_slice(
            &sys::read_file_at(&*w.blobs, hex(&desc["digest"]).as_bytes()).map_err(e)?,
        )
        .map_err(|err| Error::rejected(&w.path, Rule::ImageFormat, err.to_string()))?;
        let layers: Vec<String> = m["layers"]
            .as_array()
            .map(|l| {
                l.iter()
                    .map(|d| format!("blobs/sha256/{}", hex(&d["digest"])))
                    .collect()
            })
            .unwrap_or_default();
        let saved = json!([{
            "Config": format!("blobs/sha256/{}", hex(&m["config"]["digest"])),
            "RepoTags": tag.map(|t| vec![t]).unwrap_or_default(),
            "Layers": layers,
        }]);
        file(
            &mut t,
            "manifest.json",
            &serde_json::to_vec(&saved).expect("serialisable"),
        )?;
    } else {
        file(&mut t, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        file(&mut t, "index.json", &index)?;
    }
    for dir in ["blobs", "blobs/sha256"] {
        t.put(
            &Entry {
                path: RelPath::new(dir.as_bytes().to_vec()).expect("a layout name"),
                kind: Kind::Dir,
                meta: meta(0o755),
            },
            &mut io::empty(),
        )?;
    }
    let mut names = sys::read_dir_names(&*w.blobs).map_err(e)?;
    names.sort();
    for n in names {
        if n.starts_with(b".") {
            continue;
        }
        let f = sys::openat_file(
            &*w.blobs,
            &std::ffi::CString::new(n.clone())
                .map_err(|_| e(io::ErrorKind::InvalidInput.into()))?,
        )
        .map_err(e)?;
        let size = f.metadata().map_err(e)?.len();
        let path = format!("blobs/sha256/{}", String::from_utf8_lossy(&n));
        t.put(
            &Entry {
                path: RelPath::new(path.into_bytes()).expect("a layout name"),
                kind: Kind::File { size },
                meta: meta(0o644),
            },
            &mut io::BufReader::with_capacity(1 << 20, f),
        )?;
    }
    t.finish().map_err(|err| Error::io(&w.path, err))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn squashed_history_pairs_with_the_layers() {
        let base = br#"{"rootfs":{"type":"layers","diff_ids":["sha256:a","sha256:b","sha256:c"]},
            "history":[{"created_by":"l0"},{"created_by":"env","empty_layer":true},
                       {"created_by":"l1"},{"created_by":"cmd","empty_layer":true},{"created_by":"l2"}]}"#;
        let layer = LayerDesc {
            media_type: String::new(),
            digest: String::new(),
            size: 0,
            diff_id: "sha256:n".into(),
        };
        let v: Value =
            serde_json::from_slice(&config_squashed(base, 1, &layer, "T", Some("m")).unwrap())
                .unwrap();
        assert_eq!(v["rootfs"]["diff_ids"], json!(["sha256:a", "sha256:n"]));
        let by: Vec<&str> = v["history"]
            .as_array()
            .unwrap()
            .iter()
            .map(|h| h["created_by"].as_str().unwrap())
            .collect();
        // Layer 0's entry and the empty one after it stay; the squashed ones go.
        assert_eq!(by, ["l0", "env", "layerkit squash"]);
        assert_eq!(v["history"][2]["comment"], "m");
        assert_eq!(v["created"], "T");
        let flat: Value =
            serde_json::from_slice(&config_squashed(base, 0, &layer, "T", None).unwrap()).unwrap();
        assert_eq!(flat["history"].as_array().unwrap().len(), 1);
        assert_eq!(flat["rootfs"]["diff_ids"], json!(["sha256:n"]));
    }

    #[test]
    fn created_times_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(rfc3339(4_102_444_799), "2099-12-31T23:59:59Z");
    }
}
