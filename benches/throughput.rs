//! layerdiff against GNU tar, zstd, gzip and pigz on the same inputs, in the same run.
//!
//! `cargo build --release && cargo bench --bench throughput [-- --quick] [--runs N]`
//!
//! Inputs come from `LAYERKIT_CORPUS` (default `/work/corpus`), built by
//! `../shared/bench/make-corpus.sh`: `upper/upper1` (a real `apt-get install python3 gcc ...` upper),
//! `upper/upper2`, `stress/small` (200,000 small files) and `stress/bigrand` (2 GiB random). Each pair
//! runs interleaved (A, B, A, B, ...) after one warm-up, with the previous output deleted and `sync`
//! before every run (untimed). Prints median seconds, MB/s of uncompressed tar, output size, peak RSS
//! and the ratio baseline/layerdiff (> 1: layerdiff is faster).

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // test code: std::fs is fine here

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

struct Row {
    label: String,
    cmd: String,
    out: PathBuf,
}

fn sh(cmd: &str) -> (f64, u64) {
    let rss = std::env::temp_dir().join("lk-bench-rss");
    let t = Instant::now();
    let st = Command::new("/usr/bin/time")
        .args(["-f", "%M", "-o"])
        .arg(&rss)
        .args(["bash", "-c", cmd])
        .status()
        .expect("spawn");
    let secs = t.elapsed().as_secs_f64();
    assert!(st.success(), "failed: {cmd}");
    let kb = std::fs::read_to_string(&rss)
        .ok()
        .and_then(|s| s.lines().last().and_then(|l| l.trim().parse().ok()))
        .unwrap_or(0);
    (secs, kb)
}

fn prepare(out: &Path) {
    let _ = std::fs::remove_file(out);
    let _ = Command::new("sync").status();
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let runs_arg = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1))
        .and_then(|s| s.parse().ok());
    let corpus =
        PathBuf::from(std::env::var("LAYERKIT_CORPUS").unwrap_or_else(|_| "/work/corpus".into()));
    if !corpus.join("upper/upper1").is_dir() {
        println!("corpus not found at {}: build it with ../shared/bench/make-corpus.sh DIR and set LAYERKIT_CORPUS", corpus.display());
        return;
    }
    let ld = std::env::var("LAYERDIFF")
        .map(PathBuf::from)
        .unwrap_or_else(|_| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/layerdiff"));
    if !ld.exists() {
        println!("{} missing: run cargo build --release first", ld.display());
        return;
    }
    let tmp = PathBuf::from(
        std::env::var("BENCH_TMP").unwrap_or_else(|_| "/var/tmp/layerkit-bench".into()),
    );
    std::fs::create_dir_all(&tmp).unwrap();
    let pigz = Command::new("sh")
        .args(["-c", "command -v pigz"])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);

    let mut inputs = vec![
        ("upper1", "upper/upper1", 5),
        ("upper2", "upper/upper2", 5),
        ("small", "stress/small", 3),
    ];
    if !quick {
        inputs.push(("bigrand", "stress/bigrand", 3));
    }
    for (name, rel, default_runs) in inputs {
        let dir = corpus.join(rel);
        let runs = runs_arg.unwrap_or(default_runs);
        let o = |ext: &str| tmp.join(format!("{name}.{ext}"));
        let tar = format!("tar --xattrs -C {} -cf - .", dir.display());
        let ldc = |out: &Path| format!("{} {} -o {}", ld.display(), dir.display(), out.display());
        let mut pairs: Vec<(Row, Row)> = vec![
            (
                Row { label: "GNU tar > file".into(), cmd: format!("{tar} > {}", o("gnu.tar").display()), out: o("gnu.tar") },
                Row { label: "layerdiff -o .tar".into(), cmd: ldc(&o("tar")), out: o("tar") },
            ),
            (
                Row { label: "tar | zstd -T0 -3".into(), cmd: format!("{tar} | zstd -q -T0 -3 > {}", o("gnu.tar.zst").display()), out: o("gnu.tar.zst") },
                Row { label: "layerdiff -o .tar.zst".into(), cmd: ldc(&o("tar.zst")), out: o("tar.zst") },
            ),
            (
                Row {
                    label: "tar | tee sha256 | zstd | tee sha256 (both digests)".into(),
                    cmd: format!("{tar} | tee >(sha256sum >/dev/null) | zstd -q -T0 -3 | tee >(sha256sum >/dev/null) > {}", o("gnu2.tar.zst").display()),
                    out: o("gnu2.tar.zst"),
                },
                Row { label: "layerdiff -o .tar.zst".into(), cmd: ldc(&o("tar.zst")), out: o("tar.zst") },
            ),
        ];
        // The zstd level that buys speed: same baseline, layerdiff one level lower.
        pairs.push((
            Row {
                label: "tar | zstd -T0 -3".into(),
                cmd: format!("{tar} | zstd -q -T0 -3 > {}", o("gnu.tar.zst").display()),
                out: o("gnu.tar.zst"),
            },
            Row {
                label: "layerdiff --level 2 -o .tar.zst".into(),
                cmd: format!("{} --level 2", ldc(&o("l2.tar.zst"))),
                out: o("l2.tar.zst"),
            },
        ));
        let big = name == "small" || name == "bigrand";
        // gzip of 2 GiB of random data takes minutes per run and says nothing new.
        if !(quick && big) && name != "bigrand" {
            pairs.push((
                Row {
                    label: "tar | gzip".into(),
                    cmd: format!("{tar} | gzip > {}", o("gnu.tar.gz").display()),
                    out: o("gnu.tar.gz"),
                },
                Row {
                    label: "layerdiff -o .tar.gz".into(),
                    cmd: ldc(&o("tar.gz")),
                    out: o("tar.gz"),
                },
            ));
            if pigz {
                pairs.push((
                    Row {
                        label: "tar | pigz".into(),
                        cmd: format!("{tar} | pigz > {}", o("pigz.tar.gz").display()),
                        out: o("pigz.tar.gz"),
                    },
                    Row {
                        label: "layerdiff -o .tar.gz".into(),
                        cmd: ldc(&o("tar.gz")),
                        out: o("tar.gz"),
                    },
                ));
            }
        }
        // Uncompressed tar size for MB/s.
        prepare(&o("tar"));
        sh(&ldc(&o("tar")));
        let tar_bytes = std::fs::metadata(o("tar")).unwrap().len() as f64;
        println!(
            "\n### {name} ({}, {:.0} MB of tar, {runs} runs, median)\n",
            dir.display(),
            tar_bytes / 1e6
        );
        println!("| baseline | s | MB/s | out MB | RSS MiB | layerdiff | s | MB/s | out MB | RSS MiB | speed-up |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for (a, b) in &pairs {
            let (mut ta, mut tb, mut ra, mut rb) = (Vec::new(), Vec::new(), 0, 0);
            for r in &[a, b] {
                prepare(&r.out);
                sh(&r.cmd); // warm-up
            }
            for _ in 0..runs {
                for (r, t, rss) in [(a, &mut ta, &mut ra), (b, &mut tb, &mut rb)] {
                    prepare(&r.out);
                    let (s, kb) = sh(&r.cmd);
                    t.push(s);
                    *rss = (*rss).max(kb);
                }
            }
            let (ma, mb) = (median(&mut ta), median(&mut tb));
            let size = |p: &Path| {
                std::fs::metadata(p)
                    .map(|m| m.len() as f64 / 1e6)
                    .unwrap_or(0.0)
            };
            println!(
                "| {} | {:.2} | {:.0} | {:.1} | {} | {} | {:.2} | {:.0} | {:.1} | {} | **{:.2}x** |",
                a.label.replace('|', "\\|"), ma, tar_bytes / 1e6 / ma, size(&a.out), ra / 1024, b.label, mb, tar_bytes / 1e6 / mb, size(&b.out), rb / 1024, ma / mb
            );
        }
    }
}
