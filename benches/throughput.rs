//! layerdiff against GNU tar, zstd, gzip and pigz on the same inputs, in the same run.
//!
//! ```sh
//! cargo build --release
//! cargo bench --bench throughput                     # full: upper1 upper2 small bigrand
//! cargo bench --bench throughput -- --quick          # no bigrand, no gzip on small
//! cargo bench --bench throughput -- --runs 3 upper1  # only some inputs, N timed runs each
//! ```
//!
//! Uses the already built `target/release/layerdiff` (or `$LAYERDIFF`), copied once into the scratch
//! dir so that a concurrent `cargo build` cannot swap it mid-run. Inputs come from `$LAYERKIT_CORPUS`
//! (default `/work/corpus`, built by `make-corpus.sh`); without a corpus the bench prints how to build
//! one and exits 0. Outputs go to `$BENCH_TMP` (default `/var/tmp/layerkit-bench`, on disk).
//!
//! Every group (baselines plus the layerdiff command that does the same job) runs one untimed
//! warm-up per command, then N interleaved rounds (A, A', B, A, A', B, ...); before every run the
//! previous output is deleted and `sync` runs, both untimed. Wall time comes from `Instant` around
//! `/usr/bin/time -f %M`, which supplies the peak RSS. See `benches/README.md`.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // bench code: std::fs is fine here

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use std::time::Instant;

mod common;
use common::{first_line, have, q, size, sync, time_shell, Runs};

const USAGE: &str = "\
usage: cargo bench --bench throughput [-- [--quick] [--runs N] [--bigrand-gzip] [INPUT...]]
  INPUT          upper1 upper2 small bigrand (default: all; bigrand not with --quick)
  --quick        skip bigrand, and gzip on small/bigrand
  --runs N       timed runs per command (default 5; 3 for small and bigrand)
  --bigrand-gzip also the gzip group on bigrand (about 10 minutes more)
env: LAYERDIFF (binary, default target/release/layerdiff), LAYERKIT_CORPUS (default /work/corpus),
     BENCH_TMP (scratch dir for outputs, default /var/tmp/layerkit-bench; not tmpfs)";

/// (name, path under the corpus, default runs)
const INPUTS: [(&str, &str, usize); 4] = [
    ("upper1", "upper/upper1", 5),
    ("upper2", "upper/upper2", 5),
    ("small", "stress/small", 3),
    ("bigrand", "stress/bigrand", 3),
];

struct Opts {
    quick: bool,
    runs: Option<usize>,
    bigrand_gzip: bool,
    only: Vec<String>,
}

fn parse_args() -> Result<Opts, String> {
    let mut o = Opts {
        quick: false,
        runs: None,
        bigrand_gzip: false,
        only: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--bench" => {} // passed by `cargo bench`
            "--quick" => o.quick = true,
            "--bigrand-gzip" => o.bigrand_gzip = true,
            "--runs" => {
                let n = it
                    .next()
                    .and_then(|s| s.parse::<usize>().ok())
                    .filter(|&n| n > 0);
                o.runs = Some(n.ok_or("--runs needs a positive integer")?);
            }
            "-h" | "--help" => return Err(String::new()),
            s if INPUTS.iter().any(|i| i.0 == s) => o.only.push(s.to_string()),
            s => return Err(format!("unknown argument {s:?}")),
        }
    }
    Ok(o)
}

fn remove(p: &Path) {
    let _ = std::fs::remove_file(p);
}

/// One command of a group.
struct Cmd {
    label: String,
    shell: String,
    out: PathBuf,
    compressed: bool,
    runs: Runs,
}

impl Cmd {
    fn new(label: &str, shell: String, out: PathBuf, compressed: bool) -> Self {
        Cmd {
            label: label.into(),
            shell,
            out,
            compressed,
            runs: Runs::default(),
        }
    }

    /// Delete the previous output, sync (untimed), then run once under `/usr/bin/time`.
    fn run(&mut self, rss_file: &Path, timed: bool) {
        if self.runs.error.is_some() {
            return;
        }
        remove(&self.out);
        sync();
        let res = time_shell(&self.shell, rss_file);
        self.runs.record(res, timed, &self.label, &self.shell);
    }

    fn median(&self) -> Option<f64> {
        self.runs.median()
    }

    fn min(&self) -> Option<f64> {
        self.runs.min()
    }
}

/// Baselines plus the layerdiff command that does the same job (always last).
struct Group {
    cmds: Vec<Cmd>,
}

impl Group {
    fn run(&mut self, runs: usize, rss_file: &Path) {
        for c in &mut self.cmds {
            c.run(rss_file, false); // warm-up: page cache hot, binaries loaded
        }
        for _ in 0..runs {
            for c in &mut self.cmds {
                c.run(rss_file, true);
            }
        }
    }

    /// Markdown rows; the ratio columns are baseline / layerdiff.
    fn rows(&self, tar_bytes: Option<u64>, table: &mut String) {
        let ld = self.cmds.last().expect("group has a layerdiff command");
        let (ld_med, ld_size) = (ld.median(), size(&ld.out));
        for (i, c) in self.cmds.iter().enumerate() {
            let is_ld = i + 1 == self.cmds.len();
            let label = c.label.replace('|', r"\|");
            let label = if is_ld { format!("**{label}**") } else { label };
            let Some(med) = c.median() else {
                let why = c.runs.error.as_deref().unwrap_or("no runs");
                let _ = writeln!(
                    table,
                    "| {label} | FAILED: {} | | | | | | |",
                    why.replace('|', r"\|")
                );
                continue;
            };
            let f2 = |x: Option<f64>| x.map_or("–".into(), |x| format!("{x:.2}"));
            let mbps = tar_bytes.map_or("–".into(), |b| format!("{:.0}", b as f64 / 1e6 / med));
            let out = size(&c.out);
            let speed = if is_ld {
                "ref".into()
            } else {
                f2(ld_med.map(|l| med / l))
            };
            let size_ratio = match (is_ld, c.compressed, out, ld_size) {
                (false, true, Some(a), Some(b)) if b > 0 => format!("{:.3}", a as f64 / b as f64),
                (true, true, _, _) => "ref".into(),
                _ => "–".into(),
            };
            let _ = writeln!(
                table,
                "| {label} | {med:.2} | {} | {mbps} | {} | {:.0} | {speed} | {size_ratio} |",
                f2(c.min()),
                out.map_or("–".into(), |b| format!("{:.1}", b as f64 / 1e6)),
                c.runs.rss_kib as f64 / 1024.0,
            );
        }
    }
}

/// Untimed sanity check: the compressed layerdiff outputs decompress to exactly the .tar output.
fn check_same_tar(tar: &Path, compressed: &Path, decomp: &str) -> String {
    if size(tar).is_none() || size(compressed).is_none() {
        return "skipped (output missing)".into();
    }
    let ok = Command::new("bash")
        .args([
            "-o",
            "pipefail",
            "-c",
            &format!("{decomp} -dc {} | cmp -s - {}", q(compressed), q(tar)),
        ])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if ok {
        "ok".into()
    } else {
        "DIFFERENT".into()
    }
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
    if !corpus.join("upper/upper1").is_dir() {
        println!(
            "throughput bench: no corpus at {} (set LAYERKIT_CORPUS). Build one (as root, outside any git repo;\n\
             needs debootstrap attr libcap2-bin buildah skopeo pigz zstd python3), e.g.:\n  \
             STAGES=\"base uppers stress sizes\" /work/shared/bench/make-corpus.sh /work/corpus\n\
             Skipping.",
            corpus.display()
        );
        return ExitCode::SUCCESS;
    }

    // The already built release binary: next to this bench executable (target/release/deps/..),
    // which follows CARGO_TARGET_DIR, unless LAYERDIFF says otherwise.
    let ld_src = std::env::var_os("LAYERDIFF")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            std::env::current_exe()
                .ok()
                .and_then(|e| e.parent()?.parent().map(|d| d.join("layerdiff")))
                .filter(|p| p.is_file())
                .unwrap_or_else(|| {
                    Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/layerdiff")
                })
        });
    if !ld_src.is_file() {
        eprintln!(
            "throughput bench: layerdiff binary not found at {}\n  build it first: cargo build --release \
             (or point LAYERDIFF at a binary)",
            ld_src.display()
        );
        return ExitCode::FAILURE;
    }
    for tool in [
        "tar",
        "zstd",
        "gzip",
        "sha256sum",
        "cmp",
        "mkfifo",
        "/usr/bin/time",
    ] {
        if !have(tool) {
            eprintln!("throughput bench: `{tool}` not found (needs GNU tar, zstd, gzip, coreutils, GNU time)");
            return ExitCode::FAILURE;
        }
    }
    let pigz = have("pigz");

    let tmp = PathBuf::from(
        std::env::var("BENCH_TMP").unwrap_or_else(|_| "/var/tmp/layerkit-bench".into()),
    );
    if let Err(e) = std::fs::create_dir_all(&tmp) {
        eprintln!(
            "throughput bench: cannot create BENCH_TMP {}: {e}",
            tmp.display()
        );
        return ExitCode::FAILURE;
    }
    let rss_file = tmp.join("time-rss.txt");
    // A private copy: the other binary may be rebuilt while the bench runs.
    let ld = tmp.join("layerdiff.bench");
    if let Err(e) = std::fs::copy(&ld_src, &ld) {
        eprintln!(
            "throughput bench: cannot copy {} to {}: {e}",
            ld_src.display(),
            ld.display()
        );
        return ExitCode::FAILURE;
    }

    // Warn when the binary is older than the sources (the bench does not rebuild it).
    let newest_src = Command::new("bash")
        .args(["-c", &format!("find {0}/src {0}/Cargo.toml {0}/Cargo.lock -type f -printf '%T@\\n' | sort -n | tail -1", q(Path::new(env!("CARGO_MANIFEST_DIR"))))])
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse::<f64>().ok());
    let bin_mtime = std::fs::metadata(&ld_src)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs_f64());
    if let (Some(s), Some(b)) = (newest_src, bin_mtime) {
        if s > b {
            eprintln!(
                "WARNING: {} is older than the newest file in src/ (run cargo build --release)",
                ld_src.display()
            );
        }
    }

    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let manifest = q(Path::new(env!("CARGO_MANIFEST_DIR")));
    println!("# layerdiff throughput\n");
    println!("- date: {}", first_line("date -u '+%Y-%m-%d %H:%M UTC'"));
    println!(
        "- command: `cargo bench --bench throughput{}`",
        if args.is_empty() {
            String::new()
        } else {
            format!(" -- {}", args.join(" "))
        }
    );
    println!(
        "- machine: nproc {}, kernel {}, {} MiB RAM, load before: {}",
        first_line("nproc"),
        first_line("uname -r"),
        first_line("awk '/MemTotal/{print int($2/1024)}' /proc/meminfo"),
        first_line("cut -d' ' -f1-3 /proc/loadavg"),
    );
    println!(
        "- tools: {}; {}; {}; {}",
        first_line("zstd --version | tr -d '*'"),
        first_line("tar --version | head -1"),
        first_line("gzip --version | head -1"),
        if pigz {
            first_line("pigz --version 2>&1")
        } else {
            "pigz not installed".into()
        },
    );
    println!(
        "- layerdiff: {} ({}, git {}{})",
        ld_src.display(),
        first_line(&format!("{} --version", q(&ld))),
        first_line(&format!("git -C {manifest} rev-parse --short HEAD")),
        first_line(&format!("git -C {manifest} status --porcelain -- src Cargo.toml Cargo.lock | grep -q . && echo ', src dirty' || echo ''")),
    );
    println!(
        "- corpus: {}; scratch: {} ({})",
        corpus.display(),
        tmp.display(),
        first_line(&format!("stat -f -c %T {}", q(&tmp)))
    );
    println!(
        "\nTimes are wall seconds (median and min of the timed runs, after one warm-up; output deleted and \
         `sync` before each run). MB/s = bytes of layerdiff's uncompressed .tar / median. Peak RSS = max over \
         runs of the largest single process (for a pipeline: its biggest member, not the sum). speed = \
         baseline median / layerdiff median (> 1: layerdiff faster); size = baseline output / layerdiff output \
         (> 1: layerdiff smaller)."
    );

    let mut failed = false;
    let t_all = Instant::now();
    for (name, rel, default_runs) in INPUTS {
        let selected = if opts.only.is_empty() {
            !(opts.quick && name == "bigrand")
        } else {
            opts.only.iter().any(|o| o == name)
        };
        if !selected {
            continue;
        }
        let dir = corpus.join(rel);
        if !dir.is_dir() {
            println!("\n### {name}: {} missing, skipped", dir.display());
            continue;
        }
        let t_input = Instant::now();
        let runs = opts.runs.unwrap_or(default_runs);
        let big = name == "small" || name == "bigrand";
        let gzip = !(opts.quick && big) && (name != "bigrand" || opts.bigrand_gzip);
        let o = |ext: &str| tmp.join(format!("{name}.{ext}"));
        let tar = format!("tar --xattrs -C {} -cf - .", q(&dir));
        let ldc = |out: &Path| format!("{} {} -o {}", q(&ld), q(&dir), q(out));

        let mut groups = vec![
            Group {
                cmds: vec![
                    Cmd::new("tar > .tar", format!("{tar} > {}", q(&o("gnu.tar"))), o("gnu.tar"), false),
                    Cmd::new("layerdiff -o .tar", ldc(&o("tar")), o("tar"), false),
                ],
            },
            Group {
                cmds: vec![
                    Cmd::new(
                        "tar | zstd -T0 -3",
                        format!("{tar} | zstd -q -T0 -3 > {}", q(&o("gnu.tar.zst"))),
                        o("gnu.tar.zst"),
                        true,
                    ),
                    // Both digests, as layerdiff computes them; fifos instead of >(...) so that bash
                    // waits for both sha256sum processes.
                    Cmd::new(
                        "tar | tee sha256 | zstd -T0 -3 | tee sha256",
                        format!(
                            "d=$(mktemp -d {t}/fifo.XXXXXX) && mkfifo \"$d/a\" \"$d/b\" && \
                             {{ sha256sum < \"$d/a\" > /dev/null & a=$!; sha256sum < \"$d/b\" > /dev/null & b=$!; \
                             {tar} | tee \"$d/a\" | zstd -q -T0 -3 | tee \"$d/b\" > {out}; s=$?; \
                             wait $a && wait $b && rm -r \"$d\" && exit $s; }}",
                            t = q(&tmp),
                            out = q(&o("gnu2.tar.zst"))
                        ),
                        o("gnu2.tar.zst"),
                        true,
                    ),
                    Cmd::new("layerdiff -o .tar.zst", ldc(&o("tar.zst")), o("tar.zst"), true),
                ],
            },
        ];
        if gzip {
            let mut cmds = vec![Cmd::new(
                "tar | gzip",
                format!("{tar} | gzip > {}", q(&o("gnu.tar.gz"))),
                o("gnu.tar.gz"),
                true,
            )];
            if pigz {
                cmds.push(Cmd::new(
                    "tar | pigz",
                    format!("{tar} | pigz > {}", q(&o("pigz.tar.gz"))),
                    o("pigz.tar.gz"),
                    true,
                ));
            }
            cmds.push(Cmd::new(
                "layerdiff -o .tar.gz",
                ldc(&o("tar.gz")),
                o("tar.gz"),
                true,
            ));
            groups.push(Group { cmds });
        }

        for g in &mut groups {
            g.run(runs, &rss_file);
        }
        let tar_bytes = size(&o("tar"));
        let mut table = String::new();
        let _ = writeln!(
            table,
            "\n### {name} ({}, {} of tar, {runs} timed runs)\n",
            dir.display(),
            tar_bytes.map_or("?".into(), |b| format!("{:.1} MB", b as f64 / 1e6))
        );
        let _ = writeln!(
            table,
            "| command | median s | min s | MB/s | out MB | peak RSS MiB | speed | size |"
        );
        let _ = writeln!(table, "|---|---:|---:|---:|---:|---:|---:|---:|");
        for (i, g) in groups.iter().enumerate() {
            if i > 0 {
                let _ = writeln!(table, "| | | | | | | | |");
            }
            g.rows(tar_bytes, &mut table);
            failed |= g.cmds.iter().any(|c| c.runs.error.is_some());
        }
        let mut checks = vec![format!(
            ".tar.zst {}",
            check_same_tar(&o("tar"), &o("tar.zst"), "zstd")
        )];
        if gzip {
            checks.push(format!(
                ".tar.gz {}",
                check_same_tar(&o("tar"), &o("tar.gz"), "gzip")
            ));
        }
        let _ = writeln!(
            table,
            "\nlayerdiff outputs decompress to its .tar: {}. Wall time for this input: {:.0} s.",
            checks.join(", "),
            t_input.elapsed().as_secs_f64()
        );
        if checks.iter().any(|c| c.contains("DIFFERENT")) {
            failed = true;
        }
        print!("{table}");
        for g in &groups {
            for c in &g.cmds {
                remove(&c.out);
            }
        }
    }
    remove(&rss_file);
    remove(&ld);
    println!(
        "\nTotal bench time: {:.0} s; load after: {}",
        t_all.elapsed().as_secs_f64(),
        first_line("cut -d' ' -f1-3 /proc/loadavg")
    );
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
