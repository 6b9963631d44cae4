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

pub use args::{
    ApplyArgs, ApplyCli, Command, CommitArgs, ContainerArgs, CreateArgs, DiffArgs, DiffCli,
    LayerkitCli, LsArgs, RmArgs, RmiArgs, SquashArgs,
};

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
            Command::Create(a) => ("layerkit create", run_create(a)),
            Command::Mount(a) => ("layerkit mount", run_mount(a)),
            Command::Umount(a) => ("layerkit umount", run_umount(a)),
            Command::Inspect(a) => ("layerkit inspect", run_inspect(a)),
            Command::Commit(a) => ("layerkit commit", run_commit(a)),
            Command::Ls(a) => ("layerkit ls", run_ls(a)),
            Command::Rm(a) => ("layerkit rm", run_rm(a)),
            Command::Rmi(a) => ("layerkit rmi", run_rmi(a)),
            Command::Prune(a) => ("layerkit prune", run_prune(a)),
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

/// What the job says a user should hear about, one line each.
fn warn(warnings: &[String]) {
    for w in warnings {
        eprintln!("warning: {}", one_line(w));
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

/// The blob's compression where `-o` may name an image: `-c`, else `image_default` for an image,
/// else from the file's name; checked with the level before any work.
fn out_compression(
    image_out: bool,
    image_default: Compression,
    flag: Option<Compression>,
    level: Option<i32>,
    output: &Path,
) -> Result<Compression> {
    if !image_out {
        return compression(flag, level, Some(output));
    }
    let c = flag.unwrap_or(image_default);
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
    let opts = diff_options(&a, compression)?;
    let report: DiffReport = if to_stdout {
        let out = io::BufWriter::with_capacity(1 << 20, io::stdout());
        diff(&a.upper, out, &opts)?.0
    } else {
        diff_to_file(&a.upper, a.output.as_deref().expect("checked"), &opts)?
    };
    warn(&report.warnings);
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
    let compression = out_compression(out.is_some(), inherited, a.compression, a.level, &a.output)?;
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

fn diff_options(a: &DiffArgs, compression: Compression) -> Result<DiffOptions> {
    Ok(DiffOptions {
        walk: WalkOptions {
            ns: if a.userxattr {
                Namespace::User
            } else {
                Namespace::Trusted
            },
            lowers: expand_lowers(&a.lowers)?,
        },
        compression,
        level: a.level,
        jobs: a.jobs.unwrap_or(0),
        write: WriteOptions {
            clamp_mtime: a.source_date_epoch,
            subsecond: false,
        },
    })
}

/// `-l` values as dirs, topmost first: a dir; a `lowerdir=` string (`:`-separated, `\:` escaped;
/// relative items are relative to here, as for `mount`); or an overlay2 `lower` file, whose
/// `l/SHORT` items are relative to its store (the dir above the layer dir holding the file).
fn expand_lowers(args: &[std::path::PathBuf]) -> Result<Vec<std::path::PathBuf>> {
    let mut out = Vec::new();
    for a in args {
        let kind = crate::sys::stat_path(a, true)
            .ok()
            .map(|st| crate::sys::file_type(&st));
        if kind == Some(crate::sys::FileType::Directory) {
            // A dir is a dir, whatever its name holds (a colon too).
            out.push(a.clone());
        } else if kind == Some(crate::sys::FileType::RegularFile) {
            // Through any symlink to the real file: its store is the dir above its layer dir.
            let real = std::fs::canonicalize(a).map_err(|e| Error::io(a, e))?;
            let size = crate::sys::stat_path(&real, true).map_or(0, |st| st.st_size as u64);
            if size > 64 << 10 {
                return Err(Error::Usage(format!(
                    "-l {}: a file of {size} bytes is not an overlay2 lower file",
                    a.display()
                )));
            }
            let text =
                crate::sys::read_file_at(rustix::fs::CWD, real.as_os_str().as_encoded_bytes())
                    .map_err(|e| Error::io(a, e))?;
            let store = real
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .unwrap_or_default();
            for d in crate::overlay::split_lowerdir(String::from_utf8_lossy(&text).trim_end()) {
                out.push(store.join(d));
            }
        } else if let Some(s) = a.to_str().filter(|s| s.contains(':') || s.contains('\\')) {
            out.extend(
                crate::overlay::split_lowerdir(s)
                    .into_iter()
                    .map(Into::into),
            );
        } else {
            out.push(a.clone());
        }
    }
    Ok(out)
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
    let compression = out_compression(
        true,
        Compression::Gzip,
        a.compression,
        a.level,
        Path::new(""),
    )?;
    let opts = diff_options(a, compression)?;
    let meta = ImageMeta {
        created: a.source_date_epoch,
        message: a.message.clone(),
    };
    let report = diff_to_image(&a.upper, &target.target(), base.as_ref(), &opts, &meta)?;
    warn(&report.warnings);
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
    warn(&report.warnings);
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
    warn(&report.warnings);
    let mut out = io::stdout().lock();
    let mut report = report.clone();
    if a.short {
        report.lowerdir = report.short_lowerdir.clone();
    }
    let text = if a.json {
        serde_json::to_string(&report).expect("serialisable")
    } else if a.store.is_some() {
        report.lowerdir.clone()
    } else {
        return Ok(());
    };
    writeln!(out, "{text}").map_err(Error::output)
}

fn json_line<T: serde::Serialize>(v: &T) -> Result<()> {
    let text = serde_json::to_string(v).expect("serialisable");
    writeln!(io::stdout().lock(), "{text}").map_err(Error::output)
}

fn line(text: &str) -> Result<()> {
    writeln!(io::stdout().lock(), "{text}").map_err(Error::output)
}

fn run_create(a: CreateArgs) -> Result<()> {
    use crate::containers::{create, ContainerBase};
    let m = meter(a.quiet);
    let opts = ApplyOptions {
        ns: if a.userxattr {
            Namespace::User
        } else {
            Namespace::Trusted
        },
        jobs: a.jobs.unwrap_or(0),
        skip_digests: false,
    };
    let result = (|| {
        if let Some(image) = image_arg(&a.layers)? {
            let mut image = crate::image::open(&image, &platform(a.platform.as_deref())?)?;
            image.layers = watch(image.layers, &m);
            create(
                &a.store,
                ContainerBase::Image(&image),
                a.name.as_deref(),
                &opts,
            )
        } else {
            let inputs = watch(layer_inputs(&a.layers)?, &m);
            create(
                &a.store,
                ContainerBase::Layers(&inputs),
                a.name.as_deref(),
                &opts,
            )
        }
    })();
    end_meter(&m);
    let c = result?;
    warn(&c.apply.warnings);
    if a.json {
        json_line(&c)
    } else {
        line(&c.id)
    }
}

fn run_mount(a: ContainerArgs) -> Result<()> {
    let merged = crate::containers::mount(&a.store, &a.container)?;
    line(&merged.display().to_string())
}

fn run_umount(a: ContainerArgs) -> Result<()> {
    crate::containers::umount(&a.store, &a.container)?;
    Ok(())
}

fn run_inspect(a: ContainerArgs) -> Result<()> {
    let text = serde_json::to_string_pretty(&crate::containers::inspect(&a.store, &a.container)?)
        .expect("serialisable");
    line(&text)
}

fn run_commit(a: CommitArgs) -> Result<()> {
    use crate::containers::{commit_to_file, commit_to_image};
    let target = a.output.to_str().and_then(ImageRef::parse);
    let compression = out_compression(
        target.is_some(),
        Compression::Gzip,
        a.compression,
        a.level,
        &a.output,
    )?;
    if a.output == Path::new("-") {
        return Err(Error::Usage(
            "commit writes a file or an image: -o FILE or -o oci:DIR[:REF]".into(),
        ));
    }
    let opts = DiffOptions {
        walk: WalkOptions::default(),
        compression,
        level: a.level,
        jobs: a.jobs.unwrap_or(0),
        write: WriteOptions {
            clamp_mtime: a.source_date_epoch,
            subsecond: false,
        },
    };
    let text = match target {
        Some(t) => {
            let meta = ImageMeta {
                created: a.source_date_epoch,
                message: a.message.clone(),
            };
            let r = commit_to_image(&a.store, &a.container, &t.target(), &opts, &meta)?;
            warn(&r.warnings);
            serde_json::to_string(&r).expect("serialisable")
        }
        None => {
            if a.message.is_some() {
                return Err(Error::Usage(
                    "--message goes with an image output (-o oci:DIR[:REF])".into(),
                ));
            }
            let r = commit_to_file(&a.store, &a.container, &a.output, &opts)?;
            warn(&r.warnings);
            serde_json::to_string(&r.descriptor).expect("serialisable")
        }
    };
    if a.json {
        line(&text)?;
    }
    Ok(())
}

fn mb(bytes: u64) -> String {
    format!("{:.1} MB", bytes as f64 / 1e6)
}

fn run_ls(a: LsArgs) -> Result<()> {
    let l = crate::containers::list(&a.store)?;
    if a.json {
        return json_line(&l);
    }
    let mut out = String::new();
    out.push_str("LAYER         DIFF ID               SIZE        USED BY\n");
    for x in &l.layers {
        let diff = x
            .diff_id
            .as_deref()
            .map_or("-".to_string(), |d| d.chars().take(19).collect());
        out.push_str(&format!(
            "{:<13} {:<21} {:>10}  {}\n",
            &x.id[..12],
            diff,
            mb(x.size),
            if x.used_by.is_empty() {
                "-".to_string()
            } else {
                x.used_by.join(", ")
            }
        ));
    }
    out.push_str("\nIMAGE                 LAYERS  REF\n");
    for i in &l.images {
        out.push_str(&format!(
            "{:<21} {:>6}  {}\n",
            i.config.chars().take(19).collect::<String>(),
            i.layers.len(),
            i.reference
        ));
    }
    out.push_str("\nCONTAINER     NAME                 MOUNTED   SIZE        IMAGE\n");
    for c in &l.containers {
        out.push_str(&format!(
            "{:<13} {:<20} {:<9} {:>10}  {}\n",
            &c.id[..12],
            c.name,
            if c.mounted { "yes" } else { "no" },
            mb(c.size),
            c.image
                .as_deref()
                .map_or("-".to_string(), |i| i.chars().take(19).collect())
        ));
    }
    write!(io::stdout().lock(), "{out}").map_err(Error::output)
}

fn run_rm(a: RmArgs) -> Result<()> {
    each(&a.containers, "rm", |c| {
        line(&crate::containers::remove(&a.store, c, a.force)?)
    })
}

fn run_rmi(a: RmiArgs) -> Result<()> {
    each(&a.images, "rmi", |i| {
        let config = crate::containers::forget_image(&a.store, i, a.force)?;
        line(&format!("forgot {config}"))
    })
}

fn run_prune(a: LsArgs) -> Result<()> {
    let p = crate::containers::prune(&a.store)?;
    if a.json {
        return json_line(&p);
    }
    let mut out = String::new();
    for l in &p.layers {
        out.push_str(&format!("deleted layer {} ({})\n", l.id, mb(l.size)));
    }
    for t in &p.tidied {
        out.push_str(&format!("removed {t}\n"));
    }
    out.push_str(&format!(
        "freed {} in {} layer(s)\n",
        mb(p.bytes),
        p.layers.len()
    ));
    write!(io::stdout().lock(), "{out}").map_err(Error::output)
}

/// `job` for every argument, as docker does: one failing does not stop the others. Every failure
/// but the first is shown as it happens; the first is returned (and shown last, once).
fn each(args: &[String], verb: &str, mut job: impl FnMut(&str) -> Result<()>) -> Result<()> {
    let mut first = None;
    for a in args {
        if let Err(e) = job(a) {
            if first.is_none() {
                first = Some(e);
            } else {
                eprintln!("layerkit {verb}: {}", one_line(&e.to_string()));
            }
        }
    }
    first.map_or(Ok(()), Err)
}
