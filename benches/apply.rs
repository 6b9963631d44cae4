//! layerapply against GNU tar (and, when installed, umoci and skopeo -> containers-storage) on the
//! same layer tars, in the same run.
//!
//! ```sh
//! cargo build --release
//! cargo bench --bench apply                      # full: stack, layer, small; tar, gzip, zstd
//! cargo bench --bench apply -- --quick           # stack + layer, tar and zstd only
//! cargo bench --bench apply -- --runs 5 stack zstd --out /tmp/apply.md
//! ```
//!
//! Uses the already built `target/release/layerapply` (or `$LAYERAPPLY`), copied once into the scratch
//! dir so that a concurrent `cargo build` cannot swap it mid-run. Inputs come from `$LAYERKIT_CORPUS`
//! (default `/work/corpus`, built by `make-corpus.sh`); without a corpus the bench prints how to build
//! one and exits 0. Outputs go to `$BENCH_TMP` (default `/var/tmp/layerkit-bench-apply`, not tmpfs).
//! Needs root (owners, device nodes, `trusted.*` xattrs), as does `tar -xp --numeric-owner`.
//!
//! Every group (baselines plus the layerapply command that does the same job) runs one untimed
//! warm-up per command, then N interleaved rounds (A, B, C, A, B, C, ...); before every run the
//! previous output is deleted and `sync` runs, both untimed. Wall time comes from `Instant` around
//! `/usr/bin/time -f %M`, which supplies the peak RSS. See `benches/README.md`.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // bench code: std::fs is fine here

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use std::time::Instant;

mod common;
use common::{first_line, have, q, size, sync, time_shell, Runs};

const USAGE: &str = "\
usage: cargo bench --bench apply [-- [--quick] [--runs N] [--out FILE] [SELECT...]]
  SELECT         sections: stack layer small (default: all; --quick: stack layer)
                 compressions: tar gzip zstd (default: all; --quick: tar zstd)
  --quick        stack + one layer only, tar and zstd only
  --runs N       timed runs per command (default 3)
  --out FILE     also write the report (header, tables, summary) to FILE
env: LAYERAPPLY (binary, default target/release/layerapply), LAYERKIT_CORPUS (default /work/corpus),
     BENCH_TMP (scratch dir for outputs, default /var/tmp/layerkit-bench-apply; not tmpfs)";

const SECTIONS: [&str; 3] = ["stack", "layer", "small"];
/// (name, file suffix, OCI layout dir under `$CORPUS/oci`)
const COMPS: [(&str, &str, &str); 3] = [
    ("tar", "tar", "image-tar"),
    ("gzip", "tar.gz", "image-gzip"),
    ("zstd", "tar.zst", "image-zstd"),
];
/// GNU tar options of the peers.md baseline.
const TS: &str = "--xattrs --xattrs-include='*' --numeric-owner";

struct Opts {
    quick: bool,
    runs: usize,
    baselines_only: bool,
    out: Option<PathBuf>,
    sections: Vec<String>,
    comps: Vec<String>,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        quick: false,
        runs: 3,
        baselines_only: false,
        out: None,
        sections: Vec::new(),
        comps: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bench" => {} // passed by `cargo bench`
            "--quick" => o.quick = true,
            // Hidden: time only the baselines (harness dry runs without a working layerapply).
            "--baselines-only" => o.baselines_only = true,
            "--runs" => {
                let n = it
                    .next()
                    .and_then(|s| s.parse::<usize>().ok())
                    .filter(|&n| n > 0);
                o.runs = n.ok_or("--runs needs a positive integer")?;
            }
            "--out" => o.out = Some(PathBuf::from(it.next().ok_or("--out needs a file name")?)),
            "-h" | "--help" => return Err(String::new()),
            s if SECTIONS.contains(&s) => o.sections.push(s.to_string()),
            s if COMPS.iter().any(|c| c.0 == s) => o.comps.push(s.to_string()),
            s => return Err(format!("unknown argument {s:?}")),
        }
    }
    Ok(o)
}

/// Table label of the GNU tar baseline for one compression.
fn tar_label(comp: &str) -> &'static str {
    match comp {
        "gzip" => "tar -xzpf",
        "zstd" => "zstd -dc | tar -xpf -",
        _ => "tar -xpf",
    }
}

fn is_dir(p: &Path) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// Unmount everything mounted at or below `dir`, deepest first (containers-storage bind-mounts
/// `ROOT/overlay` onto itself and leaves it mounted; `rm -rf` fails with EBUSY until then).
fn umount_under(dir: &Path) {
    let _ = Command::new("bash")
        .args([
            "-c",
            &format!(
                "findmnt -rn -o TARGET | awk -v p={} '$0==p || index($0,p\"/\")==1' | sort -r | \
                 while read -r m; do umount \"$m\" 2>/dev/null || umount -l \"$m\"; done; true",
                q(dir)
            ),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// Remove `dir` (unmounting under it first when asked).
fn clear(dir: &Path, mounts: bool) {
    if mounts {
        umount_under(dir);
    }
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("warning: cannot remove {}: {e}", dir.display());
        }
    }
}

/// Number of entries below `dir` (not counting `dir`), without following symlinks.
fn count_entries(dir: &Path) -> Option<u64> {
    let mut n = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).ok()? {
            let e = e.ok()?;
            n += 1;
            if e.file_type().ok()?.is_dir() {
                stack.push(e.path());
            }
        }
    }
    Some(n)
}

#[derive(Clone, Copy, PartialEq)]
enum Role {
    /// The command under test (one per group, last).
    Layerapply,
    /// GNU tar: its failure fails the bench.
    Baseline,
    /// umoci / skopeo: a failure (e.g. umoci 0.4.7 cannot read zstd layers) is reported, not fatal.
    Peer,
}

/// One command of a group. It writes only below `dir`, which is removed (and re-created empty)
/// before every run.
struct Cmd {
    label: String,
    short: String,
    shell: String,
    dir: PathBuf,
    mounts: bool,
    role: Role,
    runs: Runs,
}

impl Cmd {
    fn new(label: &str, short: &str, role: Role, dir: PathBuf, shell: String) -> Self {
        Cmd {
            label: label.into(),
            short: short.into(),
            shell,
            dir,
            mounts: false,
            role,
            runs: Runs::default(),
        }
    }

    /// Delete the previous output, sync (untimed), run once under `/usr/bin/time`, then (untimed)
    /// unmount what the command left mounted.
    fn run(&mut self, rss_file: &Path, timed: bool) {
        if self.runs.error.is_some() {
            return;
        }
        clear(&self.dir, self.mounts);
        if let Err(e) = std::fs::create_dir_all(&self.dir) {
            self.runs.error = Some(format!("cannot create {}: {e}", self.dir.display()));
            return;
        }
        sync();
        let res = time_shell(&self.shell, rss_file);
        if self.mounts {
            umount_under(&self.dir);
        }
        self.runs.record(res, timed, &self.label, &self.shell);
    }

    fn median(&self) -> Option<f64> {
        self.runs.median()
    }

    fn min(&self) -> Option<f64> {
        self.runs.min()
    }
}

/// Baselines plus (last, unless --baselines-only) the layerapply command doing the same job.
struct Group {
    section: &'static str,
    comp: &'static str,
    title: String,
    tar_bytes: Option<u64>,
    cmds: Vec<Cmd>,
}

impl Group {
    fn run(&mut self, runs: usize, rss_file: &Path) {
        for c in &mut self.cmds {
            eprintln!("  warm-up: {}", c.label);
            c.run(rss_file, false); // page cache hot, binaries loaded
        }
        for r in 0..runs {
            eprintln!("  round {}/{runs}", r + 1);
            for c in &mut self.cmds {
                c.run(rss_file, true);
            }
        }
    }

    fn la(&self) -> Option<&Cmd> {
        self.cmds.iter().find(|c| c.role == Role::Layerapply)
    }

    fn by_role(&self, role: Role) -> Option<&Cmd> {
        self.cmds.iter().find(|c| c.role == role)
    }

    /// The markdown table; ratio = baseline median / layerapply median.
    fn table(&self, runs: usize, out: &mut String) {
        let _ = writeln!(
            out,
            "\n### {} ({}, {runs} timed run{})\n",
            self.title,
            self.tar_bytes.map_or("?".into(), |b| format!(
                "{:.1} MB of uncompressed tar",
                b as f64 / 1e6
            )),
            if runs == 1 { "" } else { "s" }
        );
        let _ = writeln!(
            out,
            "| command | median s | min s | MB/s | peak RSS MiB | baseline/layerapply |"
        );
        let _ = writeln!(out, "|---|---:|---:|---:|---:|---:|");
        let la_med = self.la().and_then(Cmd::median);
        for c in &self.cmds {
            let is_la = c.role == Role::Layerapply;
            let label = c.label.replace('|', r"\|");
            let label = if is_la { format!("**{label}**") } else { label };
            let Some(med) = c.median() else {
                let why = c.runs.error.as_deref().unwrap_or("no runs");
                let what = if c.role == Role::Peer {
                    "failed (reference only)"
                } else {
                    "FAILED"
                };
                let _ = writeln!(
                    out,
                    "| {label} | {what}: {} | | | | |",
                    why.replace('|', r"\|")
                );
                continue;
            };
            let mbps = self
                .tar_bytes
                .map_or("–".into(), |b| format!("{:.0}", b as f64 / 1e6 / med));
            let ratio = if is_la {
                "ref".into()
            } else {
                la_med.map_or("–".into(), |l| format!("{:.2}", med / l))
            };
            let _ = writeln!(
                out,
                "| {label} | {med:.2} | {:.2} | {mbps} | {:.0} | {ratio} |",
                c.min().unwrap_or(med),
                c.runs.rss_kib as f64 / 1024.0,
            );
        }
    }

    /// `name ratio, ...` for the summary line.
    fn ratios(&self) -> String {
        if self.la().is_some_and(|c| c.runs.error.is_some()) {
            return "layerapply failed".into();
        }
        let la = self.la().and_then(Cmd::median);
        self.cmds
            .iter()
            .filter(|c| c.role != Role::Layerapply)
            .map(|c| match (c.median(), la) {
                (Some(b), Some(l)) => format!("{} {:.2}", c.short, b / l),
                (Some(_), None) => format!("{} –", c.short),
                (None, _) => format!("{} failed", c.short),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Untimed check of a `--store` run: stdout is one lowerdir line of 3 absolute `STORE/<id>/diff`
/// dirs that exist; the staging area is empty. Returns the ids, topmost first.
fn check_store(dir: &Path) -> Result<Vec<String>, String> {
    let store = std::fs::canonicalize(dir.join("store")).map_err(|e| format!("store: {e}"))?;
    let stdout = std::fs::read_to_string(dir.join("lowerdir"))
        .map_err(|e| format!("stdout not captured: {e}"))?;
    let line = stdout.strip_suffix('\n').unwrap_or(&stdout);
    if line.contains('\n') {
        return Err(format!("stdout has more than one line: {stdout:?}"));
    }
    let parts: Vec<&str> = line.split(':').collect();
    if parts.len() != 3 {
        return Err(format!(
            "lowerdir has {} entries, want 3: {line:?}",
            parts.len()
        ));
    }
    let mut ids = Vec::new();
    for p in parts {
        let p = Path::new(p);
        if !p.is_absolute() {
            return Err(format!("{} is not absolute", p.display()));
        }
        if !is_dir(p) {
            return Err(format!("{} is not a directory", p.display()));
        }
        let id_dir = p
            .parent()
            .filter(|_| p.file_name() == Some("diff".as_ref()));
        let in_store = id_dir
            .and_then(Path::parent)
            .and_then(|s| std::fs::canonicalize(s).ok())
            .is_some_and(|s| s == store);
        let id = id_dir
            .and_then(Path::file_name)
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        if !in_store || id.len() != 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("{} is not STORE/<64 hex>/diff", p.display()));
        }
        ids.push(id);
    }
    let staging = store.join(".layerkit/staging");
    if is_dir(&staging) && std::fs::read_dir(&staging).is_ok_and(|mut d| d.next().is_some()) {
        return Err(format!("{} is not empty", staging.display()));
    }
    Ok(ids)
}

/// Untimed check of an `--into` run: the dir exists and is not empty; entry count next to tar's
/// (equal when the layer has no `.wh..wh..opq`: tar leaves `.wh.X` as a file, layerapply makes `X`).
fn check_into(la_out: &Path, tar_out: Option<&Path>) -> Result<String, String> {
    let n = count_entries(la_out).ok_or_else(|| format!("{} unreadable", la_out.display()))?;
    if n == 0 {
        return Err(format!("{} is empty", la_out.display()));
    }
    Ok(match tar_out.and_then(count_entries) {
        Some(m) if m == n => format!("ok, {n} entries (tar -x: the same)"),
        Some(m) => format!("ok, {n} entries (tar -x: {m})"),
        None => format!("ok, {n} entries"),
    })
}

fn main() -> ExitCode {
    let opts = match parse_args() {
        Ok(o) => o,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("{e}");
            }
            eprintln!("{USAGE}");
            return ExitCode::from(if e.is_empty() { 0 } else { 2 });
        }
    };

    let corpus =
        PathBuf::from(std::env::var("LAYERKIT_CORPUS").unwrap_or_else(|_| "/work/corpus".into()));
    let layers = corpus.join("layers");
    if !is_dir(&layers) {
        println!(
            "apply bench: no corpus at {} (set LAYERKIT_CORPUS). Build one (as root, outside any git repo;\n\
             needs debootstrap attr libcap2-bin buildah skopeo pigz zstd python3), e.g.:\n  \
             STAGES=\"base uppers oci stress sizes\" ../shared/bench/make-corpus.sh /work/corpus\n\
             Skipping.",
            corpus.display()
        );
        return ExitCode::SUCCESS;
    }
    if first_line("id -u") != "0" {
        println!(
            "apply bench: needs root (layerapply and `tar -xp --numeric-owner` set owners, create device \
             nodes and trusted.* xattrs). Skipping."
        );
        return ExitCode::SUCCESS;
    }

    let manifest = option_env!("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .or_else(|| std::env::current_dir().ok())
        .unwrap_or_else(|| PathBuf::from("."));
    // The already built release binary: next to this bench executable (target/release/deps/..),
    // which follows CARGO_TARGET_DIR, unless LAYERAPPLY says otherwise.
    let la_src = std::env::var_os("LAYERAPPLY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent()?.parent().map(|d| d.join("layerapply")))
                .filter(|p| p.is_file())
                .unwrap_or_else(|| manifest.join("target/release/layerapply"))
        });
    if !opts.baselines_only && !la_src.is_file() {
        eprintln!(
            "apply bench: layerapply binary not found at {}\n  build it first: cargo build --release \
             (or point LAYERAPPLY at a binary)",
            la_src.display()
        );
        return ExitCode::FAILURE;
    }
    for tool in [
        "tar",
        "zstd",
        "gzip",
        "findmnt",
        "umount",
        "sync",
        "/usr/bin/time",
    ] {
        if !have(tool) {
            eprintln!(
                "apply bench: `{tool}` not found (needs GNU tar, zstd, gzip, util-linux, GNU time)"
            );
            return ExitCode::FAILURE;
        }
    }
    let umoci = have("umoci");
    let skopeo = have("skopeo");

    let tmp = PathBuf::from(
        std::env::var("BENCH_TMP").unwrap_or_else(|_| "/var/tmp/layerkit-bench-apply".into()),
    );
    if let Err(e) = std::fs::create_dir_all(&tmp) {
        eprintln!(
            "apply bench: cannot create BENCH_TMP {}: {e}",
            tmp.display()
        );
        return ExitCode::FAILURE;
    }
    let tmp = std::fs::canonicalize(&tmp).unwrap_or(tmp);
    let fs_type = first_line(&format!("stat -f -c %T {}", q(&tmp)));
    if fs_type == "tmpfs" || fs_type == "ramfs" {
        eprintln!(
            "apply bench: BENCH_TMP {} is {fs_type}; file creation must hit a real disk (set BENCH_TMP)",
            tmp.display()
        );
        return ExitCode::FAILURE;
    }
    // All outputs live below `work`; leftovers of an interrupted run (incl. containers-storage
    // mounts) are removed first.
    let work = tmp.join("work");
    clear(&work, true);
    let rss_file = tmp.join("time-rss.txt");
    // A private copy: the other binary may be rebuilt while the bench runs.
    let la = tmp.join("layerapply.bench");
    if !opts.baselines_only {
        if let Err(e) = std::fs::copy(&la_src, &la) {
            eprintln!(
                "apply bench: cannot copy {} to {}: {e}",
                la_src.display(),
                la.display()
            );
            return ExitCode::FAILURE;
        }
        // Warn when the binary is older than the sources (the bench does not rebuild it).
        let newest_src = Command::new("bash")
            .args(["-c", &format!("find {0}/src {0}/Cargo.toml {0}/Cargo.lock -type f -printf '%T@\\n' | sort -n | tail -1", q(&manifest))])
            .output()
            .ok()
            .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok());
        let bin_mtime = std::fs::metadata(&la_src)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs_f64());
        if let (Some(s), Some(b)) = (newest_src, bin_mtime) {
            if s > b {
                eprintln!(
                    "WARNING: {} is older than the newest file in src/ (run cargo build --release)",
                    la_src.display()
                );
            }
        }
    }

    let mut report = String::new();
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let _ = writeln!(report, "# layerapply throughput\n");
    let _ = writeln!(
        report,
        "- date: {}",
        first_line("date -u '+%Y-%m-%d %H:%M UTC'")
    );
    let _ = writeln!(
        report,
        "- command: `cargo bench --bench apply{}`",
        if args.is_empty() {
            String::new()
        } else {
            format!(" -- {}", args.join(" "))
        }
    );
    let _ = writeln!(
        report,
        "- machine: nproc {}, kernel {}, {} MiB RAM, load before: {}, cpu pressure before: {}",
        first_line("nproc"),
        first_line("uname -r"),
        first_line("awk '/MemTotal/{print int($2/1024)}' /proc/meminfo"),
        first_line("cut -d' ' -f1-3 /proc/loadavg"),
        first_line("head -1 /proc/pressure/cpu | cut -d' ' -f2-3"),
    );
    let _ = writeln!(
        report,
        "- tools: {}; {}; {}; {}; {}",
        first_line("tar --version | head -1"),
        first_line("zstd --version | tr -d '*'"),
        first_line("gzip --version | head -1"),
        if umoci {
            first_line("umoci --version")
        } else {
            "umoci not installed".into()
        },
        if skopeo {
            first_line("skopeo --version")
        } else {
            "skopeo not installed".into()
        },
    );
    let mq = q(&manifest);
    if opts.baselines_only {
        let _ = writeln!(report, "- layerapply: not run (--baselines-only)");
    } else {
        let _ = writeln!(
            report,
            "- layerapply: {} ({}, git {}{})",
            la_src.display(),
            first_line(&format!("{} --version", q(&la))),
            first_line(&format!("git -C {mq} rev-parse --short HEAD")),
            first_line(&format!("git -C {mq} status --porcelain -- src Cargo.toml Cargo.lock | grep -q . && echo ', src dirty' || echo ''")),
        );
    }
    let _ = writeln!(
        report,
        "- corpus: {}; scratch: {} ({fs_type})",
        corpus.display(),
        tmp.display(),
    );
    let _ = writeln!(
        report,
        "\nTimes are wall seconds (median and min of the timed runs, after one warm-up per command; \
         runs interleaved; output deleted and `sync` before each run, both untimed). MB/s = bytes of \
         the *uncompressed* layer tars / median, for every row. Peak RSS = max over runs of the largest \
         single process (for a pipeline or a tar sequence: its biggest member, not the sum). \
         baseline/layerapply = baseline median / layerapply median (> 1: layerapply faster). GNU tar \
         output is not overlay-native (`.wh.*` stay plain files); umoci flattens all layers into one \
         rootfs (a reference point only); skopeo -> containers-storage is the overlay-native peer."
    );
    print!("{report}");

    // Sections and compressions to run.
    let sections: Vec<&str> = SECTIONS
        .into_iter()
        .filter(|s| {
            if opts.sections.is_empty() {
                !(opts.quick && *s == "small")
            } else {
                opts.sections.iter().any(|o| o == s)
            }
        })
        .collect();
    let comps: Vec<(&str, &str, &str)> = COMPS
        .into_iter()
        .filter(|c| {
            if opts.comps.is_empty() {
                !(opts.quick && c.0 == "gzip")
            } else {
                opts.comps.iter().any(|o| o == c.0)
            }
        })
        .collect();

    let la_q = q(&la);
    // `tar -x` of one (possibly compressed) tar into `dest`, as in peers.md.
    let tar_x = |file: &Path, comp: &str, dest: &Path| match comp {
        "gzip" => format!("tar -C {} {TS} -xzpf {}", q(dest), q(file)),
        "zstd" => format!("zstd -dc {} | tar -C {} {TS} -xpf -", q(file), q(dest)),
        _ => format!("tar -C {} {TS} -xpf {}", q(dest), q(file)),
    };

    let mut failed = false;
    let mut summary: Vec<String> = Vec::new();
    let mut stack_ids: Vec<(&str, Vec<String>)> = Vec::new();
    let t_all = Instant::now();
    for section in &sections {
        for &(comp, ext, oci) in &comps {
            let key = format!("{section}-{comp}");
            let d = |who: &str| work.join(format!("{key}-{who}"));
            let mut cmds = Vec::new();
            let (title, tar_bytes) = match *section {
                "stack" => {
                    let files: Vec<PathBuf> =
                        (0..3).map(|i| layers.join(format!("L{i}.{ext}"))).collect();
                    if let Some(f) = files.iter().find(|f| !f.is_file()) {
                        println!("\n### stack .{ext}: {} missing, skipped", f.display());
                        continue;
                    }
                    let tar_bytes = (0..3)
                        .map(|i| size(&layers.join(format!("L{i}.tar"))))
                        .sum::<Option<u64>>();
                    let dt = d("tar");
                    let seq = (0..3)
                        .map(|i| tar_x(&files[i], comp, &dt.join(i.to_string())))
                        .collect::<Vec<_>>()
                        .join(" && ");
                    cmds.push(Cmd::new(
                        &format!("{} x3, one dir per layer", tar_label(comp)),
                        "tar",
                        Role::Baseline,
                        dt.clone(),
                        format!(
                            "mkdir -p {} {} {} && {seq}",
                            q(&dt.join("0")),
                            q(&dt.join("1")),
                            q(&dt.join("2"))
                        ),
                    ));
                    let image = corpus.join("oci").join(oci);
                    let image_ok = image.join("index.json").is_file();
                    if umoci && image_ok {
                        let du = d("umoci");
                        cmds.push(Cmd::new(
                            &format!("umoci raw unpack oci/{oci} (flattened)"),
                            "umoci",
                            Role::Peer,
                            du.clone(),
                            format!(
                                "umoci raw unpack --image {}:latest {}",
                                q(&image),
                                q(&du.join("rootfs"))
                            ),
                        ));
                    }
                    if skopeo && image_ok {
                        let ds = d("skopeo");
                        let mut c = Cmd::new(
                            &format!("skopeo copy oci/{oci} -> containers-storage overlay"),
                            "skopeo",
                            Role::Peer,
                            ds.clone(),
                            format!(
                                "skopeo copy -q oci:{}:latest 'containers-storage:[overlay@{}+{}]localhost/bench:x'",
                                q(&image),
                                ds.join("root").display(),
                                ds.join("runroot").display()
                            ),
                        );
                        c.mounts = true;
                        cmds.push(c);
                    }
                    if image_ok && !opts.baselines_only {
                        // One flattened tree (issue 13): against umoci above and against the
                        // floor, GNU tar extracting the already-flattened stack (file creation
                        // alone). The flattened tar is made once, untimed, from our own tree.
                        let flat = work.join(format!("flat-{comp}.tar"));
                        if !flat.is_file() {
                            let _ = std::fs::create_dir_all(&work);
                            let tree = work.join(format!("flat-{comp}-tree"));
                            let _ = std::fs::remove_dir_all(&tree);
                            let ok = Command::new(&la)
                                .arg("--rootfs")
                                .arg(&tree)
                                .arg(format!("oci:{}:latest", image.display()))
                                .status()
                                .is_ok_and(|s| s.success())
                                && Command::new("tar")
                                    .args([
                                        "--xattrs",
                                        "--xattrs-include=*",
                                        "--numeric-owner",
                                        "-C",
                                    ])
                                    .arg(&tree)
                                    .arg("-cf")
                                    .arg(&flat)
                                    .arg(".")
                                    .status()
                                    .is_ok_and(|s| s.success());
                            let _ = std::fs::remove_dir_all(&tree);
                            if !ok {
                                let _ = std::fs::remove_file(&flat);
                            }
                        }
                        if flat.is_file() {
                            let df = d("flat-tar");
                            cmds.push(Cmd::new(
                                "tar -xpf of the flattened stack (floor: file creation alone)",
                                "tar",
                                Role::Baseline,
                                df.clone(),
                                format!(
                                    "mkdir -p {} && tar --xattrs --xattrs-include='*' -xpf {} -C {}",
                                    q(&df.join("t")),
                                    q(&flat),
                                    q(&df.join("t"))
                                ),
                            ));
                        }
                        let dr = d("la-rootfs");
                        cmds.push(Cmd::new(
                            &format!("layerapply --rootfs oci:oci/{oci} (verified, flattened)"),
                            "layerapply",
                            Role::Peer,
                            dr.clone(),
                            format!(
                                "{la_q} --rootfs {} oci:{}:latest",
                                q(&dr.join("rootfs")),
                                image.display()
                            ),
                        ));
                        // The same stack as an image: index, manifest, config and every blob
                        // verified in the unpacking pass (issue 13).
                        let di = d("la-image");
                        cmds.push(Cmd::new(
                            &format!("layerapply --store oci:oci/{oci} (verified image)"),
                            "layerapply",
                            Role::Peer,
                            di.clone(),
                            format!(
                                "{la_q} --store {} oci:{}:latest > /dev/null",
                                q(&di.join("store")),
                                image.display()
                            ),
                        ));
                    }
                    if !opts.baselines_only {
                        let dl = d("la");
                        cmds.push(Cmd::new(
                            "layerapply --store",
                            "layerapply",
                            Role::Layerapply,
                            dl.clone(),
                            format!(
                                "{la_q} --store {} {} > {}",
                                q(&dl.join("store")),
                                files.iter().map(|f| q(f)).collect::<Vec<_>>().join(" "),
                                q(&dl.join("lowerdir"))
                            ),
                        ));
                    }
                    (
                        format!("stack: L0+L1+L2 .{ext} from {}", layers.display()),
                        tar_bytes,
                    )
                }
                _ => {
                    let (file, tar_file) = if *section == "layer" {
                        (layers.join(format!("L1.{ext}")), layers.join("L1.tar"))
                    } else {
                        let s = corpus.join("stress");
                        (s.join(format!("small.{ext}")), s.join("small.tar"))
                    };
                    if !file.is_file() {
                        if !(*section == "small" && comp == "gzip") {
                            println!(
                                "\n### {section} .{ext}: {} missing, skipped",
                                file.display()
                            );
                        }
                        continue;
                    }
                    let dt = d("tar");
                    cmds.push(Cmd::new(
                        tar_label(comp),
                        "tar",
                        Role::Baseline,
                        dt.clone(),
                        format!(
                            "mkdir -p {} && {}",
                            q(&dt.join("out")),
                            tar_x(&file, comp, &dt.join("out"))
                        ),
                    ));
                    if !opts.baselines_only {
                        let dl = d("la");
                        cmds.push(Cmd::new(
                            "layerapply --into",
                            "layerapply",
                            Role::Layerapply,
                            dl.clone(),
                            format!("{la_q} --into {} {}", q(&dl.join("out")), q(&file)),
                        ));
                    }
                    let what = if *section == "layer" {
                        "one layer:"
                    } else {
                        "small (stress):"
                    };
                    (format!("{what} {}", file.display()), size(&tar_file))
                }
            };

            eprintln!(
                "{key}: {} commands x (1 warm-up + {} runs)",
                cmds.len(),
                opts.runs
            );
            let t_group = Instant::now();
            let mut g = Group {
                section,
                comp,
                title,
                tar_bytes,
                cmds,
            };
            g.run(opts.runs, &rss_file);

            // Untimed sanity check of layerapply's output (the last run's output is still there).
            let check = match g.la() {
                None => "layerapply not run".to_string(),
                Some(c) if c.runs.error.is_some() => "layerapply failed".to_string(),
                Some(c) if g.section == "stack" => match check_store(&c.dir) {
                    Ok(ids) => {
                        let short = ids.iter().map(|i| &i[..12]).collect::<Vec<_>>().join(":");
                        let same = stack_ids
                            .first()
                            .map(|(c0, ids0)| {
                                if *ids0 == ids {
                                    format!("; same ids as .{c0}")
                                } else {
                                    failed = true;
                                    format!("; DIFFERENT ids from .{c0}")
                                }
                            })
                            .unwrap_or_default();
                        stack_ids.push((g.comp, ids));
                        format!(
                            "ok: lowerdir has 3 existing diff dirs (ids {}, topmost first){same}",
                            short
                        )
                    }
                    Err(e) => {
                        failed = true;
                        format!("FAILED: {e}")
                    }
                },
                Some(c) => {
                    let tar_out = g
                        .by_role(Role::Baseline)
                        .filter(|b| b.runs.error.is_none())
                        .map(|b| b.dir.join("out"));
                    match check_into(&c.dir.join("out"), tar_out.as_deref()) {
                        Ok(s) => s,
                        Err(e) => {
                            failed = true;
                            format!("FAILED: {e}")
                        }
                    }
                }
            };
            for c in &g.cmds {
                if c.runs.error.is_some() && c.role != Role::Peer {
                    failed = true;
                }
                clear(&c.dir, c.mounts);
            }

            let mut table = String::new();
            g.table(opts.runs, &mut table);
            let _ = writeln!(
                table,
                "\nlayerapply output check: {check}. Wall time for this group: {:.0} s.",
                t_group.elapsed().as_secs_f64()
            );
            print!("{table}");
            report.push_str(&table);
            summary.push(format!("{} .{}: {}", g.section, ext, g.ratios()));
            if let Some(f) = &opts.out {
                let _ = std::fs::write(f, &report);
            }
        }
    }
    let _ = std::fs::remove_file(&rss_file);
    let _ = std::fs::remove_file(&la);
    clear(&work, true);

    let mut tail = String::new();
    let _ = writeln!(
        tail,
        "\nSummary (baseline/layerapply, > 1: layerapply faster): {}",
        if summary.is_empty() {
            "nothing run".to_string()
        } else {
            summary.join("; ")
        }
    );
    let _ = writeln!(
        tail,
        "\nTotal bench time: {:.0} s; load after: {}",
        t_all.elapsed().as_secs_f64(),
        first_line("cut -d' ' -f1-3 /proc/loadavg")
    );
    print!("{tail}");
    report.push_str(&tail);
    if let Some(f) = &opts.out {
        if let Err(e) = std::fs::write(f, &report) {
            eprintln!("apply bench: cannot write {}: {e}", f.display());
            failed = true;
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
