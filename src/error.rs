//! One error type for the library. Every entry-level failure names the path it concerns and, for
//! rejected input, the [`Rule`] it broke, so callers (and tests) match on the rule, not on text.

use std::io;
use std::path::PathBuf;

/// Why an input was refused. Part of the contract: tests match these, users read their text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Rule {
    /// A name beginning with `.wh.` cannot be represented in an OCI layer (image-spec layer.md).
    WhiteoutPrefix,
    /// A metacopy file or redirected dir needs `--lower` to find its data (semantics.md A1).
    NeedsLower,
    /// The data a metacopy file or redirect points at is missing from every lower.
    LowerMissing,
    /// A file changed size while it was being read: the archive would be corrupt.
    ChangedWhileReading,
    /// The tar stream is malformed (bad checksum, truncated, bad PAX record, ...).
    MalformedTar,
    /// A path in the tar holds a `..` component or a NUL byte (or is unusable after cleaning).
    BadPath,
    /// A whiteout name with nothing to delete (`.wh.`, `.wh..`, `.wh...`), an AUFS `.wh..wh.*`
    /// name, or `.wh.` on a directory component (image-spec layer.md "Whiteouts").
    WhiteoutName,
    /// A char device 0/0 under a normal name would be a whiteout in an overlay layer.
    DeviceIsWhiteout,
    /// Device numbers the kernel cannot represent (they would alias another device).
    DeviceRange,
    /// A hardlink to a directory, to a missing target, or to one outside the layer.
    Hardlink,
    /// An entry for the layer root that is not a directory.
    RootType,
    /// An opaque marker at the layer root cannot be represented without the lower layers.
    RootOpaque,
    /// A parent of the entry is a non-directory in this layer.
    NotDir,
    /// Too many symlinks while resolving a parent path (a loop).
    SymlinkLoop,
    /// A tar entry type that has no meaning in a layer (sparse, volume, ...).
    UnsupportedType,
    /// An owner id Linux cannot hold (over 32 bits, or 4294967295, which chown(2) reads as "no
    /// change").
    IdRange,
    /// A path deeper than [`crate::entry::MAX_DEPTH`] components, as named or once resolved
    /// through symlinks.
    PathTooDeep,
    /// A whiteout or opaque marker whose path passes through a symlink its own layer made: it
    /// names the lower path (where that symlink does not exist) or the symlink's target, and
    /// appliers disagree on which (moby and containerd follow the link; the image-spec says a
    /// marker only concerns the layers below).
    MarkerThroughSymlink,
    /// An xattr no Linux filesystem can hold: empty or over-long name, no namespace, NUL byte,
    /// value over 64 KiB (xattr(7)).
    XattrName,
    /// An image blob whose bytes do not match its descriptor (digest or size).
    BlobDigest,
    /// A layer whose uncompressed digest is not the config's `rootfs.diff_ids` entry for it.
    DiffId,
    /// An image whose index, manifest, config or archive layerkit cannot use (missing, malformed,
    /// a media type or schema it does not read, layers and diffIDs that do not pair up).
    ImageFormat,
}

impl std::fmt::Display for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Rule::WhiteoutPrefix => {
                "names beginning with .wh. cannot be represented in an OCI layer"
            }
            Rule::NeedsLower => "metacopy/redirect entries need --lower to be converted",
            Rule::LowerMissing => "the lower data it refers to is missing",
            Rule::ChangedWhileReading => "file changed size while being read",
            Rule::MalformedTar => "malformed tar",
            Rule::BadPath => "invalid path",
            Rule::WhiteoutName => "invalid whiteout name",
            Rule::DeviceIsWhiteout => {
                "a char device 0/0 not named .wh.* is indistinguishable from a whiteout"
            }
            Rule::DeviceRange => "device number out of range",
            Rule::Hardlink => "invalid hardlink",
            Rule::RootType => "refusing to change the type of the layer root",
            Rule::RootOpaque => {
                "an opaque marker at the layer root needs the lower layers (use --store)"
            }
            Rule::NotDir => "a parent path is not a directory in this layer",
            Rule::SymlinkLoop => "too many levels of symlinks in a parent path",
            Rule::UnsupportedType => "unsupported entry type",
            Rule::XattrName => "invalid xattr",
            Rule::PathTooDeep => "path too deep",
            Rule::IdRange => "owner id out of range",
            Rule::BlobDigest => "blob does not match its descriptor",
            Rule::DiffId => "layer does not match its diffID",
            Rule::ImageFormat => "unusable image",
            Rule::MarkerThroughSymlink => {
                "a whiteout or opaque marker passes through a symlink of its own layer (ambiguous)"
            }
        })
    }
}

/// The library's error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An I/O error on a named path (relative to the tree being read, or a file the user named).
    #[error("{}: {source}", path.display())]
    Io {
        /// What we were touching.
        path: PathBuf,
        /// The OS error.
        source: io::Error,
    },
    /// An entry was refused; `detail` carries the values that broke the rule.
    #[error("{}: {rule}{}", path.display(), if detail.is_empty() { String::new() } else { format!(" ({detail})") })]
    Rejected {
        /// The entry.
        path: PathBuf,
        /// The rule it broke.
        rule: Rule,
        /// Values that explain the refusal (may be empty).
        detail: String,
    },
    /// Writing the result failed. `path` is where it went, once the job that opened the output
    /// names it (the pipeline itself only knows "the output"); `None` for a writer the caller
    /// passed in.
    #[error("{}: {source}", path.as_ref().map_or_else(|| "output".into(), |p| p.display().to_string()))]
    Output {
        /// The output file, when known.
        path: Option<PathBuf>,
        /// The OS error.
        source: io::Error,
    },
    /// A thread of the run could not start, or died (a panic).
    #[error("{what} failed: {source}")]
    Resource {
        /// What could not be started.
        what: &'static str,
        /// The OS error.
        source: io::Error,
    },
    /// A pipeline stage stopped because another stage failed; the other stage's error is the one
    /// reported, so users never see this.
    #[error("stopped because another stage failed")]
    Stopped,
    /// Usage errors found by the library (bad option combinations).
    #[error("{0}")]
    Usage(String),
    /// An error while unpacking one layer of several; names the layer as the user gave it.
    #[error("{layer}: {source}")]
    Layer {
        /// The layer argument.
        layer: String,
        /// What went wrong in it.
        source: Box<Error>,
    },
}

impl Error {
    /// An I/O error on `path`.
    pub fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// A rejected entry.
    pub fn rejected(path: impl Into<PathBuf>, rule: Rule, detail: impl Into<String>) -> Self {
        Error::Rejected {
            path: path.into(),
            rule,
            detail: detail.into(),
        }
    }

    /// The rule, when this is a rejection.
    pub fn rule(&self) -> Option<Rule> {
        match self {
            Error::Rejected { rule, .. } => Some(*rule),
            Error::Layer { source, .. } => source.rule(),
            _ => None,
        }
    }

    /// This error, said of `layer`.
    pub fn in_layer(self, layer: &str) -> Self {
        match self {
            e @ (Error::Usage(_) | Error::Layer { .. } | Error::Stopped) => e,
            // The tar reader already names the layer in its own errors.
            Error::Rejected { ref path, .. } | Error::Io { ref path, .. }
                if path.as_os_str() == layer =>
            {
                self
            }
            e => Error::Layer {
                layer: layer.to_string(),
                source: Box::new(e),
            },
        }
    }

    /// True when the underlying cause is a closed pipe (the CLI treats that as success).
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, Error::Io { source, .. } | Error::Output { source, .. }
            if source.kind() == io::ErrorKind::BrokenPipe)
    }

    /// Writing the output failed with `source`.
    pub(crate) fn output(source: io::Error) -> Self {
        Error::Output { path: None, source }
    }
}

/// The results of a pipeline's stages (or a stack's layers), taken in the order that decides which
/// error to show: the first that failed of its own accord, not one that stopped because another
/// stage failed. Every job reports a failed run through this, so users never see "stopped".
#[derive(Default)]
pub(crate) struct Outcomes {
    cause: Option<Error>,
}

impl Outcomes {
    /// Record one stage's result; its value if it succeeded.
    pub(crate) fn take<T>(&mut self, r: Result<T>) -> Option<T> {
        match r {
            Ok(t) => Some(t),
            Err(e) => {
                if matches!(self.cause, None | Some(Error::Stopped)) {
                    self.cause = Some(e);
                }
                None
            }
        }
    }

    /// The error to show, if any stage failed.
    pub(crate) fn result(self) -> Result<()> {
        self.cause.map_or(Ok(()), Err)
    }
}

/// Result with [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
