//! Where an image's files are: an OCI layout directory, or a tar of one (oci-archive, and
//! `docker save` output, which may hold a layout too). Names are paths inside the layout; a tar is
//! indexed once (headers only) and its members are read in place, never extracted.

use std::collections::HashMap;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result, Rule};
use crate::input::Source;
use crate::path::RelPath;
use crate::sys;
use crate::tar::read::Reader;
use crate::tar::to_entry;

/// The most bytes of a JSON document (index, manifest, config, manifest.json) layerkit reads: far
/// beyond real ones (registries cap manifests at 4 MiB), and a bound on what a hostile image costs.
pub(crate) const MAX_JSON: u64 = 16 << 20;

/// An image's files.
pub(crate) enum Files {
    /// A layout directory.
    Dir(PathBuf),
    /// A tar: member name -> (data offset, size).
    Tar {
        file: PathBuf,
        members: HashMap<Vec<u8>, (u64, u64)>,
    },
}

impl Files {
    /// A directory as it is.
    pub(crate) fn dir(p: &Path) -> Result<Files> {
        let st = sys::stat_path(p, true).map_err(|e| Error::io(p, e))?;
        if sys::file_type(&st) != sys::FileType::Directory {
            return Err(Error::io(
                p,
                io::Error::other("not a directory (an oci: layout is one)"),
            ));
        }
        Ok(Files::Dir(p.to_path_buf()))
    }

    /// A tar archive, indexed: regular files only (a layout holds nothing else that matters).
    pub(crate) fn tar(p: &Path) -> Result<Files> {
        let label = p.display().to_string();
        let f = open(p)?;
        let mut head = [0u8; 4];
        let n = (&f).read(&mut head).map_err(|e| Error::io(p, e))?;
        if crate::compress::Compression::sniff(&head[..n]) != crate::compress::Compression::None {
            return Err(Error::io(
                p,
                io::Error::other(
                    "a compressed archive: decompress it first (an image archive is a plain tar)",
                ),
            ));
        }
        (&f).seek(SeekFrom::Start(0)).map_err(|e| Error::io(p, e))?;
        let buf = io::BufReader::with_capacity(1 << 16, f);
        let mut rd = Reader::with_skip(buf, label.as_str(), |r, n| r.seek_relative(n as i64));
        let mut members = HashMap::new();
        while let Some(te) = rd.next_entry()? {
            let e = to_entry(&te)?;
            if let crate::entry::Kind::File { size } = e.kind {
                members.insert(e.path.into_bytes(), (te.data_offset, size));
            }
        }
        Ok(Files::Tar {
            file: p.to_path_buf(),
            members,
        })
    }

    /// Whether `name` is there (a regular file).
    pub(crate) fn has(&self, name: &str) -> bool {
        match self {
            Files::Dir(d) => sys::stat_path(&d.join(name), false)
                .is_ok_and(|st| sys::file_type(&st) == sys::FileType::RegularFile),
            Files::Tar { members, .. } => members.contains_key(name.as_bytes()),
        }
    }

    /// `name`'s bytes: a JSON document, at most [`MAX_JSON`].
    pub(crate) fn read_small(&self, name: &str) -> Result<Vec<u8>> {
        let name = clean(name)?;
        let (mut r, len, shown) = self.open_member(&name)?;
        if len > MAX_JSON {
            return Err(Error::rejected(
                shown,
                Rule::ImageFormat,
                format!(
                    "{len} bytes, more than the {MAX_JSON} a JSON document of an image may have"
                ),
            ));
        }
        let mut v = Vec::with_capacity(len as usize);
        (&mut r)
            .take(len)
            .read_to_end(&mut v)
            .map_err(|e| Error::io(&shown, e))?;
        if (v.len() as u64) != len {
            return Err(Error::io(&shown, io::ErrorKind::UnexpectedEof.into()));
        }
        Ok(v)
    }

    /// `name`'s size in bytes.
    pub(crate) fn size(&self, name: &str) -> Result<u64> {
        let name = clean(name)?;
        match self {
            // From the index: no need to open the archive.
            Files::Tar { members, .. } => members
                .get(&name)
                .map(|&(_, len)| len)
                .ok_or_else(|| missing(self, &name)),
            Files::Dir(_) => Ok(self.open_member(&name)?.1),
        }
    }

    /// Where `name`'s bytes are, for the layer pipeline (read once, verified as they stream).
    pub(crate) fn source(&self, name: &str) -> Result<Source> {
        let name = clean(name)?;
        match self {
            Files::Dir(d) => {
                let p = d.join(String::from_utf8_lossy(&name).as_ref());
                // Every layer is looked for before any is read: a missing one fails the image
                // before anything is unpacked.
                match sys::stat_path(&p, true) {
                    Ok(_) => Ok(Source::Path(p)),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => Err(missing(self, &name)),
                    Err(e) => Err(Error::io(&p, e)),
                }
            }
            Files::Tar { file, members } => {
                let (offset, len) = members
                    .get(&name)
                    .copied()
                    .ok_or_else(|| missing(self, &name))?;
                Ok(Source::Range {
                    path: file.clone(),
                    offset,
                    len,
                })
            }
        }
    }

    fn open_member(&self, name: &[u8]) -> Result<(Box<dyn Read>, u64, String)> {
        match self {
            Files::Dir(d) => {
                let p = d.join(String::from_utf8_lossy(name).as_ref());
                let f = open(&p).map_err(|e| match e {
                    Error::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                        missing(self, name)
                    }
                    e => e,
                })?;
                let len = f.metadata().map_err(|e| Error::io(&p, e))?.len();
                Ok((Box::new(f), len, p.display().to_string()))
            }
            Files::Tar { file, members } => {
                let (offset, len) = members
                    .get(name)
                    .copied()
                    .ok_or_else(|| missing(self, name))?;
                let mut f = open(file)?;
                f.seek(SeekFrom::Start(offset))
                    .map_err(|e| Error::io(file, e))?;
                Ok((
                    Box::new(f),
                    len,
                    format!("{}:{}", file.display(), String::from_utf8_lossy(name)),
                ))
            }
        }
    }

    /// The image's location, for messages.
    pub(crate) fn shown(&self) -> String {
        match self {
            Files::Dir(d) => d.display().to_string(),
            Files::Tar { file, .. } => file.display().to_string(),
        }
    }
}

/// A member name as a layout path: clean, relative (names come from untrusted JSON).
fn clean(name: &str) -> Result<Vec<u8>> {
    let stripped = name.strip_prefix("./").unwrap_or(name);
    RelPath::new(stripped.as_bytes().to_vec())
        .ok()
        .filter(|p| !p.is_empty())
        .map(RelPath::into_bytes)
        .ok_or_else(|| {
            Error::rejected(
                name,
                Rule::ImageFormat,
                "not a relative path inside the image",
            )
        })
}

fn missing(files: &Files, name: &[u8]) -> Error {
    Error::rejected(
        format!("{}: {}", files.shown(), String::from_utf8_lossy(name)),
        Rule::ImageFormat,
        "missing from the image",
    )
}

fn open(p: &Path) -> Result<std::fs::File> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| Error::Usage(format!("{}: bad path", p.display())))?;
    sys::openat_file(rustix::fs::CWD, &c).map_err(|e| Error::io(p, e))
}
