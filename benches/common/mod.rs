//! What the benches need: shell quoting and probes, and one timed run of a shell command under
//! `/usr/bin/time` (wall seconds from `Instant`, peak RSS from `%M`), with medians.

// Each bench compiles this module on its own and uses part of it.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// Single-quote for bash.
pub fn q(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

/// `bash -c cmd` succeeds (output discarded).
pub fn sh_ok(cmd: &str) -> bool {
    Command::new("bash")
        .args(["-c", cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// `tool` is on the PATH.
pub fn have(tool: &str) -> bool {
    sh_ok(&format!("command -v {tool}"))
}

/// First line of `bash -c cmd`'s stdout (tool versions and the like).
pub fn first_line(cmd: &str) -> String {
    Command::new("bash")
        .args(["-c", cmd])
        .stderr(Stdio::null())
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(|l| l.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

/// `sync`, so one run's writeback is not charged to the next.
pub fn sync() {
    let _ = Command::new("sync").status();
}

/// A file's size.
pub fn size(p: &Path) -> Option<u64> {
    std::fs::metadata(p).ok().map(|m| m.len())
}

/// Run `bash -o pipefail -c shell` once under `/usr/bin/time -f %M`: wall seconds and peak RSS
/// (KiB, the largest single process), or the status and last meaningful stderr line.
pub fn time_shell(shell: &str, rss_file: &Path) -> Result<(f64, u64), String> {
    let _ = std::fs::remove_file(rss_file);
    let t = Instant::now();
    let res = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(rss_file)
        .args(["bash", "-o", "pipefail", "-c", shell])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output();
    let secs = t.elapsed().as_secs_f64();
    match res {
        Ok(o) if o.status.success() => {
            let kib = std::fs::read_to_string(rss_file)
                .ok()
                .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()))
                .unwrap_or(0);
            Ok((secs, kib))
        }
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr);
            let full = err
                .lines()
                .map(str::trim)
                .rev()
                .find(|l| !l.is_empty() && !l.starts_with("Command exited with non-zero"))
                .unwrap_or("");
            let mut last: String = full.chars().take(160).collect();
            if full.chars().count() > 160 {
                last.push('…');
            }
            Err(format!("{} ({last})", o.status))
        }
        Err(e) => Err(format!("cannot spawn /usr/bin/time: {e}")),
    }
}

/// Median of timed runs.
pub fn median(times: &[f64]) -> Option<f64> {
    let mut v = times.to_vec();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// Fastest timed run.
pub fn min(times: &[f64]) -> Option<f64> {
    times.iter().copied().min_by(f64::total_cmp)
}

/// What the timed runs of one command produced: wall times, peak RSS, or the first failure
/// (after which the command is not run again).
#[derive(Default)]
pub struct Runs {
    pub times: Vec<f64>,
    pub rss_kib: u64,
    pub error: Option<String>,
}

impl Runs {
    /// Keep one result of [`time_shell`]; warm-up runs (`timed` false) only count if they fail.
    pub fn record(
        &mut self,
        res: Result<(f64, u64), String>,
        timed: bool,
        label: &str,
        shell: &str,
    ) {
        match res {
            Ok((secs, kib)) => {
                if timed {
                    self.times.push(secs);
                    self.rss_kib = self.rss_kib.max(kib);
                }
            }
            Err(msg) => {
                eprintln!("FAILED: {label}\n  {shell}\n  {msg}");
                self.error = Some(msg);
            }
        }
    }

    pub fn median(&self) -> Option<f64> {
        median(&self.times)
    }

    pub fn min(&self) -> Option<f64> {
        min(&self.times)
    }
}

/// What a bench was asked for: `[--runs N] [--out FILE] [GROUP...]`.
pub struct Args {
    pub runs: usize,
    pub out_file: Option<std::path::PathBuf>,
    /// Groups named (empty: all).
    pub only: Vec<String>,
}

impl Args {
    /// Parse the command line; `Err` is the exit code (usage printed, or `--help`).
    pub fn parse(usage: &str, groups: &[&str]) -> Result<Args, std::process::ExitCode> {
        let mut a = Args {
            runs: 3,
            out_file: None,
            only: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--bench" => {}
                "--runs" => match args.next().and_then(|n| n.parse().ok()) {
                    Some(n) if n > 0 => a.runs = n,
                    _ => {
                        eprintln!("{usage}");
                        return Err(std::process::ExitCode::from(2));
                    }
                },
                "--out" => a.out_file = args.next().map(std::path::PathBuf::from),
                "-h" | "--help" => {
                    println!("{usage}");
                    return Err(std::process::ExitCode::SUCCESS);
                }
                g if groups.contains(&g) => a.only.push(g.to_string()),
                other => {
                    eprintln!("unknown argument {other:?}\n{usage}");
                    return Err(std::process::ExitCode::from(2));
                }
            }
        }
        Ok(a)
    }
}

/// Where a bench finds things: the repo, the built binary (`$env_bin`, default
/// `target/release/NAME`), the corpus (`$LAYERKIT_CORPUS`) and its scratch dir (`$BENCH_TMP`).
pub struct Paths {
    pub root: std::path::PathBuf,
    pub bin: std::path::PathBuf,
    pub corpus: std::path::PathBuf,
    pub tmp: std::path::PathBuf,
}

impl Paths {
    pub fn from_env(env_bin: &str, name: &str, default_tmp: &str) -> Paths {
        let root = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let var = |k: &str| std::env::var_os(k).map(std::path::PathBuf::from);
        Paths {
            bin: var(env_bin).unwrap_or_else(|| root.join("target/release").join(name)),
            corpus: var("LAYERKIT_CORPUS").unwrap_or_else(|| "/work/corpus".into()),
            tmp: var("BENCH_TMP").unwrap_or_else(|| default_tmp.into()),
            root,
        }
    }
}
