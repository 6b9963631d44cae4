//! What a store knows besides its layer dirs, under `.layerkit/` (README "The store's metadata"):
//!
//! ```text
//! images/<config hex>.json      ImageRecord      (and <config hex>.config: the config, byte for byte)
//! containers/<cid>.json         ContainerRecord
//! layers/<id>                   the layer's diffID ("sha256:...")
//! ```
//!
//! Every record is written atomically (temp + rename) under the store lock, after what it names
//! exists and before it is removed, so a crash leaves either a whole record or none, and the next
//! command can tell leftovers (dirs no record names, records whose dirs are gone) and tidy them.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::sys;

use super::Store;

/// An image applied to the store.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ImageRecord {
    /// The reference as given (`oci:DIR:REF`, ...).
    #[serde(rename = "ref")]
    pub reference: String,
    /// The same with an absolute path: where `commit -o IMAGE` finds the image's blobs again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Its manifest's digest (none for a classic `docker save` archive).
    pub manifest: Option<String>,
    /// Its config's digest: the image's id.
    pub config: String,
    /// `rootfs.diff_ids`, bottom first.
    #[serde(rename = "diffIDs")]
    pub diff_ids: Vec<String>,
    /// Store ids of its layers, bottom first.
    pub layers: Vec<String>,
}

/// A container: an init layer and a writable layer on an image's (or a layer stack's) layers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ContainerRecord {
    /// 64 hex chars; the dirs are `<id>` and `<id>-init`.
    pub id: String,
    /// Unique in the store.
    pub name: String,
    /// The image's config digest, when made from an image.
    pub image: Option<String>,
    /// What it was made from, as given (an image reference, or the layer files).
    pub from: Vec<String>,
    /// Store ids of the layers below the init layer, bottom first.
    pub layers: Vec<String>,
    /// Their diffIDs, bottom first.
    #[serde(rename = "diffIDs")]
    pub diff_ids: Vec<String>,
    /// When it was made (RFC 3339).
    pub created: String,
}

fn bad(path: String, e: impl std::fmt::Display) -> Error {
    Error::io(
        path,
        io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
    )
}

/// Whether `s` is a store or container id: 64 lowercase hex chars, nothing that could name
/// another place when joined into a path.
pub(crate) fn is_id(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// What every record must hold before any of it names a path: ids that are ids.
trait Checked {
    /// Whether the record is sound for the file stem it was read from.
    fn sound(&self, stem: &str) -> bool;
}

impl Checked for ContainerRecord {
    fn sound(&self, stem: &str) -> bool {
        self.id == stem && is_id(&self.id) && self.layers.iter().all(|l| is_id(l))
    }
}

impl Checked for ImageRecord {
    fn sound(&self, stem: &str) -> bool {
        is_id(stem) && self.layers.iter().all(|l| is_id(l))
    }
}

/// The stems of every `*.json` record in `dir` (parsed or not: a record that cannot be read still
/// claims its name). A dir that cannot be listed is an error, never "no records".
pub(crate) fn stems(dir: &OwnedFd, path: &std::path::Path) -> Result<Vec<String>> {
    let mut names = sys::read_dir_names(dir).map_err(|e| Error::io(path, e))?;
    names.sort();
    Ok(names
        .into_iter()
        .filter(|n| !n.starts_with(b"."))
        .filter_map(|n| {
            n.strip_suffix(b".json")
                .map(|s| String::from_utf8_lossy(s).into_owned())
        })
        .collect())
}

/// Every sound `*.json` record in `dir`, parsed; unreadable or unsound ones are left out (a record
/// is written atomically, so only another program's file can be half or hostile; they are never
/// acted on).
fn read_all<T: for<'de> Deserialize<'de> + Checked>(dir: &OwnedFd) -> Vec<(String, T)> {
    let mut out = Vec::new();
    let mut names = sys::read_dir_names(dir).unwrap_or_default();
    names.sort();
    for n in names {
        // `.tmp-*`: a record a killed writer never renamed into place.
        if n.starts_with(b".") {
            continue;
        }
        let Some(stem) = n.strip_suffix(b".json") else {
            continue;
        };
        let Ok(bytes) = sys::read_file_at(dir, &n) else {
            continue;
        };
        let stem = String::from_utf8_lossy(stem).into_owned();
        if let Ok(rec) = serde_json::from_slice::<T>(&bytes) {
            if rec.sound(&stem) {
                out.push((stem, rec));
            }
        }
    }
    out
}

impl Store {
    /// Every image record, by config hex.
    pub(crate) fn image_records(&self) -> Vec<(String, ImageRecord)> {
        read_all(&self.images)
    }

    /// Every container record.
    pub(crate) fn container_records(&self) -> Vec<ContainerRecord> {
        read_all(&self.containers)
            .into_iter()
            .map(|(_, r)| r)
            .collect()
    }

    /// Write a container record. Under the lock.
    pub(crate) fn put_container(&self, rec: &ContainerRecord) -> Result<()> {
        let name = format!("{}.json", rec.id);
        sys::write_file_atomic(
            self.containers.as_fd(),
            name.as_bytes(),
            &serde_json::to_vec_pretty(rec).expect("serialisable"),
            0o644,
        )
        .map_err(|e| Error::io(self.path.join(".layerkit/containers").join(&name), e))
    }

    /// Remove a container record. Under the lock.
    pub(crate) fn drop_container(&self, id: &str) -> Result<()> {
        if !is_id(id) {
            return Err(bad(id.to_string(), "not a container id"));
        }
        let name = format!("{id}.json");
        match sys::unlinkat(&self.containers, name.as_bytes(), false) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(Error::io(
                self.path.join(".layerkit/containers").join(&name),
                e,
            )),
            _ => Ok(()),
        }
    }

    /// Remove an image record and its config. Under the lock.
    pub(crate) fn drop_image(&self, hex: &str) -> Result<()> {
        for name in [format!("{hex}.json"), format!("{hex}.config")] {
            match sys::unlinkat(&self.images, name.as_bytes(), false) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => {
                    return Err(Error::io(self.path.join(".layerkit/images").join(&name), e))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// The config of a recorded image, byte for byte.
    pub(crate) fn image_config(&self, hex: &str) -> Result<Vec<u8>> {
        let name = format!("{hex}.config");
        sys::read_file_at(&self.images, name.as_bytes())
            .map_err(|e| Error::io(self.path.join(".layerkit/images").join(&name), e))
    }

    /// The diffID recorded for a layer, if any.
    pub(crate) fn layer_diff_id(&self, id: &str) -> Option<String> {
        let v = sys::read_file_at(&self.layer_records, id.as_bytes()).ok()?;
        let s = String::from_utf8(v).ok()?;
        s.starts_with("sha256:").then_some(s)
    }

    /// The container named `what`: its full id, its name, or a unique prefix of its id.
    pub(crate) fn find_container(&self, what: &str) -> Result<ContainerRecord> {
        let all = self.container_records();
        // A full id first, as docker: a name can never shadow an id.
        if let Some(c) = all.iter().find(|c| c.id == what) {
            return Ok(c.clone());
        }
        if let Some(c) = all.iter().find(|c| c.name == what) {
            return Ok(c.clone());
        }
        let hits: Vec<&ContainerRecord> = all
            .iter()
            .filter(|c| !what.is_empty() && c.id.starts_with(what))
            .collect();
        match hits.as_slice() {
            [one] => Ok((*one).clone()),
            [] => Err(bad(
                self.path.display().to_string(),
                format!("no container {what}"),
            )),
            _ => Err(bad(
                self.path.display().to_string(),
                format!(
                    "{what} names {} containers; give more of the id",
                    hits.len()
                ),
            )),
        }
    }
}
