//! `-j N` is one thread budget (src/threads.rs): every job's peak thread count, sampled from
//! `/proc/PID/task` while it runs, stays within its documented bound at `-j 1` and `-j 3`. Sampling
//! can only miss a peak, never invent one, so a failure is real.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::*;

/// A tree of many small files (the file pool's work) and some noise (the compressors').
fn tree(dir: &Path, seed: u64) {
    noise_files(&dir.join("noise"), 8, seed);
    for d in 0..20 {
        let sub = dir.join(format!("d{d}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..150 {
            std::fs::write(sub.join(format!("f{f}")), vec![(d * f) as u8; 3000 + f]).unwrap();
        }
    }
}

/// Run `cmd` to completion; the most threads it had at once, as sampled.
fn peak_threads(cmd: &mut Command) -> usize {
    let mut child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let task = format!("/proc/{}/task", child.id());
    let mut peak = 0;
    loop {
        if let Ok(d) = std::fs::read_dir(&task) {
            peak = peak.max(d.count());
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            assert!(status.success(), "{cmd:?} failed: {err}");
            return peak;
        }
        std::thread::sleep(Duration::from_micros(300));
    }
}

#[test]
fn jobs_bound_the_threads_of_every_job() {
    let t = scratch();
    let root = t.path();
    let mut layers = Vec::new();
    for (i, z) in ["gzip", "zstd", "none"].iter().enumerate() {
        let src = root.join(format!("src{i}"));
        tree(&src, i as u64 + 1);
        let tar = root.join(format!("l{i}.tar"));
        gnu_tar(&src, &tar);
        let layer = match *z {
            "gzip" => {
                let out = root.join(format!("l{i}.tar.gz"));
                compress(&tar, &["gzip", "-c"], &out);
                out
            }
            "zstd" => {
                let out = root.join(format!("l{i}.tar.zst"));
                compress(&tar, &["zstd", "-q", "-c"], &out);
                out
            }
            _ => tar,
        };
        layers.push(layer);
    }
    let upper = root.join("src0");
    for n in [1usize, 3] {
        let j = n.to_string();
        let out = root.join(format!("out{n}"));
        std::fs::create_dir_all(&out).unwrap();
        // The CLI adds one thread to the library's counts: the signal handler's.
        let cases: Vec<(&str, usize, Command)> = vec![
            ("layerdiff -c zstd", n + 5, {
                let mut c = layerdiff();
                c.arg(&upper)
                    .arg("-o")
                    .arg(out.join("d.tar.zst"))
                    .args(["-j", &j]);
                c
            }),
            ("layerdiff -c gzip", n + 5, {
                let mut c = layerdiff();
                c.arg(&upper)
                    .arg("-o")
                    .arg(out.join("d.tar.gz"))
                    .args(["-j", &j]);
                c
            }),
            ("layerapply --into", n + 3, {
                let mut c = layerapply();
                c.arg("--into")
                    .arg(out.join("into"))
                    .arg(&layers[0])
                    .args(["-j", &j]);
                c
            }),
            ("layerapply --store", 3 * n + 2, {
                let mut c = layerapply();
                c.arg("--store")
                    .arg(out.join("store"))
                    .args(&layers)
                    .args(["-j", &j]);
                c
            }),
            ("layerkit squash", n + 4, {
                let mut c = Command::new(env!("CARGO_BIN_EXE_layerkit"));
                c.arg("squash")
                    .args(&layers)
                    .arg("-o")
                    .arg(out.join("s.tar.gz"))
                    .args(["-j", &j]);
                c
            }),
        ];
        for (what, bound, mut cmd) in cases {
            let peak = peak_threads(&mut cmd);
            eprintln!("-j {n}: {what}: peak {peak} threads (bound {bound})");
            assert!(
                peak >= 2,
                "{what}: the sampler saw {peak} threads (main + signals at least)"
            );
            assert!(
                peak <= bound,
                "{what} -j {n}: {peak} threads at once, more than {bound}"
            );
        }
    }
}
