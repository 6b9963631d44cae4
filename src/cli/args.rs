//! clap definitions only; no behaviour lives here.

use std::path::PathBuf;

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
    #[arg(short, long, value_enum)]
    pub compression: Option<Compression>,
    /// Compression level (gzip 1-9, default 6; zstd 1-19, default 3).
    #[arg(long, value_name = "N")]
    pub level: Option<i32>,
    /// A lower dir of the mount, topmost first (the order of `lowerdir=`); repeatable. Needed for
    /// metacopy files and redirected dirs; also drops opaque markers that hide nothing.
    #[arg(short = 'l', long = "lower", value_name = "DIR")]
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
}
