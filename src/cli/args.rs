//! clap definitions only; no behaviour lives here.

use std::path::PathBuf;

use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Args, Parser, Subcommand};

use crate::compress::Compression;

/// `layerkit`: convert container image layers between overlayfs dirs and OCI layer tars.
#[derive(Debug, Parser)]
#[command(name = "layerkit", version, about)]
pub struct LayerkitCli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands of `layerkit`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Turn an overlayfs upper dir into an OCI layer tar (same as `layerdiff`).
    Diff(DiffArgs),
    /// Unpack OCI layer tars into overlay-native layer dirs (same as `layerapply`).
    Apply(ApplyArgs),
    /// Merge a stack of layer tars into one layer that does the same to any base.
    Squash(SquashArgs),
    /// Make a container on a store: apply what is missing, then its init and writable layers.
    Create(CreateArgs),
    /// Mount a container's overlay at `STORE/ID/merged` (nothing to do when mounted).
    Mount(ContainerArgs),
    /// Unmount a container's overlay (nothing to do when not mounted).
    Umount(ContainerArgs),
    /// A container's GraphDriver dirs and layers, in docker inspect's JSON shape.
    Inspect(ContainerArgs),
    /// A container's changes as a layer file, or as an image (its image plus that layer).
    Commit(CommitArgs),
    /// Layers, images and containers in a store.
    Ls(LsArgs),
    /// Remove containers (a mounted one only with -f).
    Rm(RmArgs),
    /// Forget images (their layers stay until prune).
    Rmi(RmiArgs),
    /// Remove layers nothing uses, and what interrupted runs left.
    Prune(LsArgs),
}

/// Options of `layerkit create`.
#[derive(Debug, Args)]
pub struct CreateArgs {
    /// The store (made when missing, as layerapply --store makes it).
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,
    /// A name, unique in the store (default: lk- and the id's first 12 chars).
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// One image (oci:, oci-archive:, docker-archive:) or layer files, bottom first.
    #[arg(required = true, value_name = "IMAGE|LAYER")]
    pub layers: Vec<PathBuf>,
    /// A new store's markers are user.overlay.* (rootless `userxattr` mounts).
    #[arg(long)]
    pub userxattr: bool,
    /// Print {"Id", "Name"} as JSON instead of the id alone.
    #[arg(long)]
    pub json: bool,
    /// Worker threads (default: all cores).
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,
    /// No progress on stderr (shown only when stderr is a terminal).
    #[arg(short, long)]
    pub quiet: bool,
    /// In a multi-platform image, the platform to take (default: this host's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
}

/// A store and one container in it.
#[derive(Debug, Args)]
pub struct ContainerArgs {
    /// The store.
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,
    /// Its id, a unique prefix of the id, or its name.
    #[arg(value_name = "CONTAINER")]
    pub container: String,
}

/// Options of `layerkit commit`.
#[derive(Debug, Args)]
pub struct CommitArgs {
    /// The store.
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,
    /// Its id, a unique prefix of the id, or its name.
    #[arg(value_name = "CONTAINER")]
    pub container: String,
    /// A layer file (.tar, .tar.gz, .tar.zst) or an image (`oci:DIR[:REF]`, `oci-archive:`, `docker-archive:`).
    #[arg(short, long, value_name = "FILE|IMAGE")]
    pub output: PathBuf,
    /// Compression; default from the file's extension, gzip for an image.
    #[arg(short, long, value_parser = compression())]
    pub compression: Option<Compression>,
    /// Compression level (gzip 1-9, default 6; zstd 1-19, default 3).
    #[arg(long, value_name = "N")]
    pub level: Option<i32>,
    /// With an image output: the new layer's history comment.
    #[arg(long, value_name = "M")]
    pub message: Option<String>,
    /// Print the result (descriptor and diffID; for an image, its manifest too) as JSON.
    #[arg(long)]
    pub json: bool,
    /// Clamp every mtime to N seconds since the epoch (and the image's `created`).
    #[arg(long, value_name = "N", env = "SOURCE_DATE_EPOCH")]
    pub source_date_epoch: Option<i64>,
    /// Worker threads (default: all cores).
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,
    /// No progress on stderr (shown only when stderr is a terminal).
    #[arg(short, long)]
    pub quiet: bool,
}

/// `layerkit ls` / `prune`.
#[derive(Debug, Args)]
pub struct LsArgs {
    /// The store.
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `layerkit rm`.
#[derive(Debug, Args)]
pub struct RmArgs {
    /// The store.
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,
    /// Unmount a mounted container first.
    #[arg(short, long)]
    pub force: bool,
    /// Ids, unique id prefixes or names.
    #[arg(required = true, value_name = "CONTAINER")]
    pub containers: Vec<String>,
}

/// `layerkit rmi`.
#[derive(Debug, Args)]
pub struct RmiArgs {
    /// The store.
    #[arg(long, value_name = "DIR")]
    pub store: PathBuf,
    /// Forget it even while containers use it (they keep their layers).
    #[arg(short, long)]
    pub force: bool,
    /// References as applied, config digests, or unique prefixes of their hex.
    #[arg(required = true, value_name = "IMAGE")]
    pub images: Vec<String>,
}

/// `layerdiff`: an overlayfs upper dir becomes an OCI layer tar.
#[derive(Debug, Parser)]
#[command(
    name = "layerdiff",
    version,
    about = "Turn an overlayfs upper dir into an OCI layer tar"
)]
pub struct DiffCli {
    /// The options.
    #[command(flatten)]
    pub args: DiffArgs,
}

/// Options of `layerdiff` / `layerkit diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The overlayfs upper dir (the `upperdir=` of the mount).
    pub upper: PathBuf,
    /// Output path; absent or "-" = stdout.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Compression; default from the output's extension (.tar, .tar.gz/.tgz, .tar.zst/.tzst), none on stdout.
    #[arg(short, long, value_parser = compression())]
    pub compression: Option<Compression>,
    /// Compression level (gzip 1-9, default 6; zstd 1-19, default 3).
    #[arg(long, value_name = "N")]
    pub level: Option<i32>,
    /// A lower dir of the mount, topmost first (the order of `lowerdir=`); repeatable, and each
    /// may be a colon-separated lowerdir string or an overlay2 `lower` file (its l/SHORT names
    /// resolved against that store). Needed for metacopy files and redirected dirs; also drops
    /// opaque markers that hide nothing.
    #[arg(short = 'l', long = "lower", value_name = "DIR|DIR:DIR...|LOWER_FILE")]
    pub lowers: Vec<PathBuf>,
    /// The upper belongs to a `userxattr` mount: markers are user.overlay.*.
    #[arg(long)]
    pub userxattr: bool,
    /// Print the OCI descriptor (mediaType, digest, size) and the diffID as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Clamp every mtime to N seconds since the epoch.
    #[arg(long, value_name = "N", env = "SOURCE_DATE_EPOCH")]
    pub source_date_epoch: Option<i64>,
    /// Worker threads (default: all cores).
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,
    /// No progress on stderr (shown only when stderr is a terminal).
    #[arg(short, long)]
    pub quiet: bool,
    /// With `-o oci:DIR[:REF]`: the image the new one is built on (its layers plus the diff).
    #[arg(long, value_name = "IMAGE")]
    pub base: Option<String>,
    /// With `-o oci:DIR[:REF]`: the new layer's history comment.
    #[arg(long, value_name = "M")]
    pub message: Option<String>,
    /// In a multi-platform --base, the platform to take (default: this host's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
}

/// `layerapply`: OCI layer tars become overlay-native layer dirs.
#[derive(Debug, Parser)]
#[command(
    name = "layerapply",
    version,
    about = "Unpack OCI layer tars into overlay-native layer dirs or an overlay2-style store"
)]
pub struct ApplyCli {
    /// The options.
    #[command(flatten)]
    pub args: ApplyArgs,
}

/// Options of `layerapply` / `layerkit apply`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("target").required(true).args(["into", "store", "rootfs"])))]
pub struct ApplyArgs {
    /// Layer tars, bottom first, or one image.
    #[arg(
        required = true,
        value_name = "LAYER",
        help = "Layer tars, bottom first: files (none, gzip or zstd, detected from the bytes) or \"-\" \
                for stdin; or one image: oci:DIR[:REF], oci-archive:FILE[:REF], \
                docker-archive:FILE[:NAME:TAG]"
    )]
    pub layers: Vec<PathBuf>,
    /// Unpack exactly one LAYER into DIR (created if missing, must be empty).
    #[arg(long, value_name = "DIR")]
    pub into: Option<PathBuf>,
    /// Unpack the LAYERs into an overlay2-style store under DIR; prints the `lowerdir=` value.
    #[arg(long, value_name = "DIR")]
    pub store: Option<PathBuf>,
    /// With --store: print the lowerdir as l/SHORT names relative to DIR (for a mount run from
    /// DIR; 128 layers fit the one page mount(2) takes).
    #[arg(long, requires = "store")]
    pub short: bool,
    /// Unpack the whole stack (LAYERs or an image) into DIR as one plain tree, deletions applied
    /// (created if missing, must be empty).
    #[arg(long, value_name = "DIR")]
    pub rootfs: Option<PathBuf>,
    /// Write user.overlay.* markers (for rootless `userxattr` mounts).
    #[arg(long)]
    pub userxattr: bool,
    /// Print the result as JSON: per layer diffID, chainID and path, plus the lowerdir value.
    #[arg(long)]
    pub json: bool,
    /// Worker threads (default: all cores).
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,
    /// No progress on stderr (shown only when stderr is a terminal).
    #[arg(short, long)]
    pub quiet: bool,
    /// In a multi-platform image, the platform to take (default: this host's, linux/amd64 here).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
}

/// Options of `layerkit squash`.
#[derive(Debug, Args)]
pub struct SquashArgs {
    /// Layer tars, bottom first: files (none, gzip or zstd, detected from the bytes) or "-" for stdin.
    #[arg(required = true, value_name = "LAYER")]
    pub layers: Vec<PathBuf>,
    /// Output path; "-" = stdout.
    #[arg(short, long, value_name = "FILE", required = true)]
    pub output: PathBuf,
    /// Compression; default from the output's extension (.tar, .tar.gz/.tgz, .tar.zst/.tzst), none on stdout.
    #[arg(short, long, value_parser = compression())]
    pub compression: Option<Compression>,
    /// Compression level (gzip 1-9, default 6; zstd 1-19, default 3).
    #[arg(long, value_name = "N")]
    pub level: Option<i32>,
    /// The result is for an empty base: a complete tree, no whiteouts, no opaque markers.
    #[arg(long)]
    pub flatten: bool,
    /// Print the OCI descriptor (mediaType, digest, size) and the diffID as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Worker threads: layers read at once, compression workers (default: all cores).
    #[arg(short, long, value_name = "N")]
    pub jobs: Option<usize>,
    /// No progress on stderr (shown only when stderr is a terminal).
    #[arg(short, long)]
    pub quiet: bool,
    /// With an image: squash layers N..top (0-based; negative counts from the top; 0 flattens).
    #[arg(
        long,
        value_name = "N",
        allow_negative_numbers = true,
        default_value_t = 0
    )]
    pub from: i64,
    /// With an image output: the squashed layer's history comment.
    #[arg(long, value_name = "M")]
    pub message: Option<String>,
    /// In a multi-platform image, the platform to take (default: this host's).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// With an image output: its `created`, seconds since the epoch (also read from SOURCE_DATE_EPOCH).
    #[arg(long, value_name = "N", env = "SOURCE_DATE_EPOCH")]
    pub source_date_epoch: Option<i64>,
}

/// `-c none|gzip|zstd`: the library's [`Compression`] stays free of clap.
fn compression() -> impl TypedValueParser<Value = Compression> {
    PossibleValuesParser::new([
        PossibleValue::new("none").help("Plain tar"),
        PossibleValue::new("gzip").help("gzip (RFC 1952), written in parallel blocks like pigz"),
        PossibleValue::new("zstd").help("zstd (RFC 8878)"),
    ])
    .map(|s| match s.as_str() {
        "gzip" => Compression::Gzip,
        "zstd" => Compression::Zstd,
        _ => Compression::None,
    })
}
