//! The command line: parse, call one library job, print its result. Errors are printed once, on one
//! line, here; the library never prints.

mod args;

use std::io::{self, IsTerminal, Write};
use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;

use crate::apply::apply_into;
use crate::compress::Compression;
use crate::diff::{diff, diff_to_file, diff_to_image, DiffOptions, DiffReport};
use crate::error::{Error, Result};
use crate::image::ImageMeta;
use crate::image::{ImageRef, PlatformChoice};
use crate::input::{Input, Source};
use crate::output::BlobOptions;
use crate::overlay::read::upper::WalkOptions;
use crate::overlay::Namespace;
use crate::progress::Meter;
use crate::rootfs::{apply_image_rootfs, apply_rootfs, RootfsReport};
use crate::squash::{squash, squash_image, squash_to_file, SquashOptions};
use crate::store::{apply_image, apply_store};
use crate::tar::write::WriteOptions;
use crate::unpack::{ApplyOptions, ApplyReport};

pub use args::{ApplyArgs, ApplyCli, Command, DiffArgs, DiffCli, LayerkitCli, SquashArgs};

/// Which binary is running: the three share this entry point.
#[derive(Debug, Clone, Copy)]
pub enum Personality {
    /// `layerkit SUBCOMMAND`.
    Layerkit,
    /// `layerdiff`.
    Diff,
    /// `layerapply`.
    Apply,
}

/// Run the CLI as `who`; returns the process exit code (0 ok, 1 failed, 2 usage).
pub fn main(who: Personality) -> ExitCode {
    // Ctrl-C, kill and a closed terminal remove what this run staged before it dies.
    if let Err(e) = crate::staging::remove_on_signals() {
        eprintln!(
            "warning: cannot catch signals ({e}): an interrupted run may leave temporary files"
        );
    }
    let (prog, result) = match who {
        Personality::Layerkit => match LayerkitCli::parse().command {
            Command::Diff(a) => ("layerkit diff", run_diff(a)),
            Command::Apply(a) => ("layerkit apply", run_apply(a)),
            Command::Squash(a) => ("layerkit squash", run_squash(a)),
        },
        Personality::Diff => ("layerdiff", run_diff(DiffCli::parse().args)),
        Personality::Apply => ("layerapply", run_apply(ApplyCli::parse().args)),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(Error::Usage(m)) => {
            eprintln!("{prog}: {m}");
            ExitCode::from(2)
        }
        // The one output the library cannot name is ours.
        Err(Error::Output { path: None, source }) => {
            eprintln!("{prog}: <stdout>: {}", one_line(&source.to_string()));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{prog}: {}", one_line(&e.to_string()));
            ExitCode::FAILURE
        }
    }
}

/// Progress on stderr, as `skopeo copy` shows it, when stderr is a terminal and `-q` is not given;
/// the line is rewritten in place and ended when the job ends.
fn meter(quiet: bool) -> Option<Arc<Meter>> {
    if quiet || !io::stderr().is_terminal() {
        return None;
    }
    Some(Meter::new(Duration::from_millis(200), |p| {
        if p.layers == 0 {
            return;
        }
        let mb = |n: u64| n as f64 / 1e6;
        let total = if p.total > 0 {
            format!(" / {:.1} MB", mb(p.total))
        } else {
            " MB".to_string()
        };
        eprint!(
            "\r\x1b[Klayers {}/{} read, {:.1}{total}",
            p.done,
            p.layers,
            mb(p.read)
        );
    }))
}

/// The last progress line, ended, so that what follows starts on a line of its own.
fn end_meter(m: &Option<Arc<Meter>>) {
    if let Some(m) = m {
        if m.progress().layers > 0 {
            m.show_now();
            eprintln!();
        }
    }
}

/// `inputs`, counted into `m` when progress is shown.
fn watch(inputs: Vec<Input>, m: &Option<Arc<Meter>>) -> Vec<Input> {
    match m {
        Some(m) => inputs.into_iter().map(|i| i.metered(m)).collect(),
        None => inputs,
    }
}

fn one_line(s: &str) -> String {
    s.replace('\n', "\\n")
}

/// A layer on stdout leaves no room for --json, and never goes to a terminal.
fn check_stdout(to_stdout: bool, json: bool) -> Result<()> {
    if to_stdout && json {
        return Err(Error::Usage(
            "--json prints on stdout, so the layer needs -o FILE".into(),
        ));
    }
    if to_stdout && io::stdout().is_terminal() {
        return Err(Error::Usage(
            "refusing to write a layer to a terminal; use -o FILE or a pipe".into(),
        ));
    }
    Ok(())
}

/// The blob's compression: `-c`, else from the `-o` name (none on stdout); checked with the level
/// before any work, so an option is never silently ignored.
fn compression(
    flag: Option<Compression>,
    level: Option<i32>,
    output: Option<&Path>,
) -> Result<Compression> {
    let c = match (flag, output) {
        (Some(c), _) => c,
        (None, None) => Compression::None,
        (None, Some(p)) if p == Path::new("-") => Compression::None,
        (None, Some(p)) => Compression::from_path(p).ok_or_else(|| {
            Error::Usage(format!(
                "{}: unknown extension (layerkit writes .tar, .tar.gz/.tgz, .tar.zst/.tzst); \
                 name the compression with -c none|gzip|zstd",
                p.display()
            ))
        })?,
    };
    c.level(level).map_err(Error::Usage)?;
    Ok(c)
}

fn run_diff(a: DiffArgs) -> Result<()> {
    let m = meter(a.quiet);
    let r = run_diff_with(a, &m);
    end_meter(&m);
    r
}

fn run_diff_with(a: DiffArgs, m: &Option<Arc<Meter>>) -> Result<()> {
    if let Some(target) = a
        .output
        .as_deref()
        .and_then(|p| p.to_str())
        .and_then(ImageRef::parse)
    {
        return run_diff_image(&a, target, m);
    }
    if a.base.is_some() || a.message.is_some() || a.platform.is_some() {
        return Err(Error::Usage(
            "--base, --message and --platform go with an image output (-o oci:DIR[:REF])".into(),
        ));
    }
    let to_stdout = a.output.as_deref().is_none_or(|p| p == Path::new("-"));
    let compression = compression(a.compression, a.level, a.output.as_deref())?;
    check_stdout(to_stdout, a.json)?;
    let opts = diff_options(&a, compression);
    let report: DiffReport = if to_stdout {
        let out = io::BufWriter::with_capacity(1 << 20, io::stdout());
        diff(&a.upper, out, &opts)?.0
    } else {
        diff_to_file(&a.upper, a.output.as_deref().expect("checked"), &opts)?
    };
    for w in &report.warnings {
        eprintln!("warning: {}", one_line(w));
    }
    if a.json {
        let mut out = io::stdout().lock();
        let json = serde_json::to_string(&report.descriptor).expect("serialisable");
        writeln!(out, "{json}").map_err(Error::output)?;
    }
    Ok(())
}

/// `layerkit squash IMAGE -o (oci:DIR[:REF] | FILE) [--from N] [--message M]`.
fn run_squash_image(a: &SquashArgs, image: ImageRef, m: &Option<Arc<Meter>>) -> Result<()> {
    let mut image = crate::image::open(&image, &platform(a.platform.as_deref())?)?;
    image.layers = watch(image.layers, m);
    let keep = crate::squash::from_layer(a.from, image.layers.len())?;
    let out = a.output.to_str().and_then(ImageRef::parse);
    // The new layer is compressed as the image's top layer was, unless -c says otherwise.
    let top = image
        .descs
        .last()
        .map(|d| d.media_type.as_str())
        .unwrap_or("");
    let inherited = if top.ends_with("+gzip") {
        Compression::Gzip
    } else if top.ends_with("+zstd") {
        Compression::Zstd
    } else {
        Compression::None
    };
    let compression = match (&out, a.compression) {
        (_, Some(c)) => c,
        (Some(_), None) => inherited,
        (None, None) => compression(None, a.level, Some(&a.output))?,
    };
    compression.level(a.level).map_err(Error::Usage)?;
    let opts = SquashOptions {
        blob: BlobOptions {
            compression,
            level: a.level,
            jobs: a.jobs.unwrap_or(0),
            skip_digests: false,
        },
        flatten: a.flatten || keep == 0,
        spool_dir: None,
    };
    let json = match out {
        Some(target) => {
            let meta = ImageMeta {
                created: a.source_date_epoch,
                message: a.message.clone(),
            };
            let r = squash_image(&image, a.from, &target.target(), &opts, &meta)?;
            serde_json::to_string(&r).expect("serialisable")
        }
        None => {
            let to_stdout = a.output == Path::new("-");
            check_stdout(to_stdout, a.json)?;
            let d = if to_stdout {
                let out = io::BufWriter::with_capacity(1 << 20, io::stdout());
                squash(&image.layers[keep..], out, &opts)?.0
            } else {
                squash_to_file(&image.layers[keep..], &a.output, &opts)?
            };
            serde_json::to_string(&d).expect("serialisable")
        }
    };
    if a.json {
        writeln!(io::stdout().lock(), "{json}").map_err(Error::output)?;
    }
    Ok(())
}

fn diff_options(a: &DiffArgs, compression: Compression) -> DiffOptions {
    DiffOptions {
        walk: WalkOptions {
            ns: if a.userxattr {
                Namespace::User
            } else {
                Namespace::Trusted
            },
            lowers: a.lowers.clone(),
        },
        compression,
        level: a.level,
        jobs: a.jobs.unwrap_or(0),
        write: WriteOptions {
            clamp_mtime: a.source_date_epoch,
            subsecond: false,
        },
    }
}

/// `layerdiff UPPER -o oci:DIR[:REF] [--base IMAGE] [--message M]`.
fn run_diff_image(a: &DiffArgs, target: ImageRef, m: &Option<Arc<Meter>>) -> Result<()> {
    let base = match &a.base {
        Some(b) => {
            let r = ImageRef::parse(b).ok_or_else(|| {
                Error::Usage(format!(
                    "--base {b}: an image (oci:, oci-archive:, docker-archive:)"
                ))
            })?;
            let mut image = crate::image::open(&r, &platform(a.platform.as_deref())?)?;
            image.layers = watch(image.layers, m);
            Some(image)
        }
        None => None,
    };
    let compression = a.compression.unwrap_or(Compression::Gzip);
    compression.level(a.level).map_err(Error::Usage)?;
    let opts = diff_options(a, compression);
    let meta = ImageMeta {
        created: a.source_date_epoch,
        message: a.message.clone(),
    };
    let report = diff_to_image(&a.upper, &target.target(), base.as_ref(), &opts, &meta)?;
    for w in &report.warnings {
        eprintln!("warning: {}", one_line(w));
    }
    if a.json {
        let text = serde_json::to_string(&report).expect("serialisable");
        writeln!(io::stdout().lock(), "{text}").map_err(Error::output)?;
    }
    Ok(())
}

/// Layer arguments; stdin can be read only once.
fn layer_inputs(layers: &[std::path::PathBuf]) -> Result<Vec<Input>> {
    let inputs: Vec<Input> = layers.iter().map(|p| Input::from_arg(p)).collect();
    if inputs
        .iter()
        .filter(|i| matches!(i.source, Source::Stdin))
        .count()
        > 1
    {
        return Err(Error::Usage("stdin (-) can be given only once".into()));
    }
    // An OCI layout given as a layer is refused before any layer is read.
    for p in layers {
        if let Some(e) = crate::image::layout_hint(&p.display().to_string(), p) {
            return Err(e);
        }
    }
    Ok(inputs)
}

fn run_squash(a: SquashArgs) -> Result<()> {
    let m = meter(a.quiet);
    let r = run_squash_with(a, &m);
    end_meter(&m);
    r
}

fn run_squash_with(a: SquashArgs, m: &Option<Arc<Meter>>) -> Result<()> {
    if let Some(image) = image_arg(&a.layers)? {
        return run_squash_image(&a, image, m);
    }
    if a.from != 0 || a.message.is_some() || a.platform.is_some() {
        return Err(Error::Usage(
            "--from, --message and --platform go with an image (layerkit squash IMAGE -o ...)"
                .into(),
        ));
    }
    let to_stdout = a.output == Path::new("-");
    let compression = compression(a.compression, a.level, Some(&a.output))?;
    check_stdout(to_stdout, a.json)?;
    let inputs = watch(layer_inputs(&a.layers)?, m);
    let opts = SquashOptions {
        blob: BlobOptions {
            compression,
            level: a.level,
            jobs: a.jobs.unwrap_or(0),
            skip_digests: !a.json,
        },
        flatten: a.flatten,
        spool_dir: None,
    };
    let descriptor = if to_stdout {
        let out = io::BufWriter::with_capacity(1 << 20, io::stdout());
        squash(&inputs, out, &opts)?.0
    } else {
        squash_to_file(&inputs, &a.output, &opts)?
    };
    if a.json {
        let mut out = io::stdout().lock();
        let json = serde_json::to_string(&descriptor).expect("serialisable");
        writeln!(out, "{json}").map_err(Error::output)?;
    }
    Ok(())
}

fn run_apply(a: ApplyArgs) -> Result<()> {
    let m = meter(a.quiet);
    let r = run_apply_with(a, &m);
    end_meter(&m);
    r
}

fn run_apply_with(a: ApplyArgs, m: &Option<Arc<Meter>>) -> Result<()> {
    let opts = ApplyOptions {
        ns: if a.userxattr {
            Namespace::User
        } else {
            Namespace::Trusted
        },
        jobs: a.jobs.unwrap_or(0),
        // Without --json, --into reports nothing that needs a digest.
        skip_digests: !a.json,
    };
    if let Some(image) = image_arg(&a.layers)? {
        let platform = platform(a.platform.as_deref())?;
        if a.into.is_some() {
            return Err(Error::Usage(
                "an image is unpacked with --store DIR or --rootfs DIR (--into takes one layer file)"
                    .into(),
            ));
        }
        let mut image = crate::image::open(&image, &platform)?;
        image.layers = watch(image.layers, m);
        if let Some(dir) = &a.rootfs {
            return print_rootfs(&apply_image_rootfs(dir, &image, &opts)?, a.json);
        }
        let dir = a.store.as_deref().expect("one target");
        let report = apply_image(dir, &image, &opts)?;
        return print_apply(&report, &a);
    }
    let inputs = watch(layer_inputs(&a.layers)?, m);
    if let Some(dir) = &a.rootfs {
        return print_rootfs(&apply_rootfs(dir, &inputs, &opts)?, a.json);
    }
    let report = match (&a.into, &a.store) {
        (Some(dir), None) => {
            if inputs.len() != 1 {
                return Err(Error::Usage(format!(
                    "--into takes exactly one LAYER, got {}",
                    inputs.len()
                )));
            }
            apply_into(dir, &inputs[0], &opts)?
        }
        (None, Some(dir)) => apply_store(dir, &inputs, &opts)?,
        _ => {
            return Err(Error::Usage(
                "give exactly one of --into DIR or --store DIR".into(),
            ))
        }
    };
    print_apply(&report, &a)
}

fn print_rootfs(report: &RootfsReport, json: bool) -> Result<()> {
    for w in &report.warnings {
        eprintln!("warning: {}", one_line(w));
    }
    if json {
        let text = serde_json::to_string(report).expect("serialisable");
        writeln!(io::stdout().lock(), "{text}").map_err(Error::output)?;
    }
    Ok(())
}

/// `--platform OS/ARCH[/VARIANT]`, or this host's.
fn platform(arg: Option<&str>) -> Result<PlatformChoice> {
    match arg {
        Some(p) => PlatformChoice::parse(p)
            .ok_or_else(|| Error::Usage(format!("--platform {p}: expected OS/ARCH[/VARIANT]"))),
        None => Ok(PlatformChoice::host()),
    }
}

/// An image reference among the layer arguments: it must be the only one.
fn image_arg(args: &[std::path::PathBuf]) -> Result<Option<ImageRef>> {
    let refs: Vec<Option<ImageRef>> = args
        .iter()
        .map(|p| p.to_str().and_then(ImageRef::parse))
        .collect();
    match refs.as_slice() {
        [Some(r)] => Ok(Some(r.clone())),
        _ if refs.iter().any(Option::is_some) => Err(Error::Usage(
            "an image (oci:, oci-archive:, docker-archive:) must be the only LAYER argument".into(),
        )),
        _ => Ok(None),
    }
}

fn print_apply(report: &ApplyReport, a: &ApplyArgs) -> Result<()> {
    for w in &report.warnings {
        eprintln!("warning: {}", one_line(w));
    }
    let mut out = io::stdout().lock();
    let text = if a.json {
        serde_json::to_string(&report).expect("serialisable")
    } else if a.store.is_some() {
        report.lowerdir.clone()
    } else {
        return Ok(());
    };
    writeln!(out, "{text}").map_err(Error::output)
}
