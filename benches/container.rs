//! The container loop against podman and buildah, on the same inputs, in the same run.
//!
//! ```sh
//! cargo build --release
//! BENCH_TMP=/mnt/bench/c cargo bench --bench container                 # both groups, 3 runs
//! cargo bench --bench container -- --runs 5 create                      # one group
//! ```
//!
//! Groups (one table each; the last row is layerkit's, the reference):
//! - `create`: the corpus image (3 layers, gzip OCI layout) into a fresh store, a container made
//!   on it and mounted: `layerkit create` + `layerkit mount`, against `podman create` + `podman
//!   mount` and `buildah from` + `buildah mount`, each into a private storage root (overlay driver)
//!   that starts empty every run.
//! - `commit`: a container on the corpus's base image (L0 alone) whose writable layer holds the
//!   corpus's real `apt-get install` upper (`upper/upper1`, copied into the container's upper dir
//!   untimed), committed as a new image into an `oci:` layout: `layerkit commit` against `buildah
//!   commit`, uncompressed (buildah's default) and gzip.
//!
//! Every run: the previous run's mounts and outputs removed and `sync` (untimed); one untimed
//! warm-up per command; rounds interleaved; wall time and peak RSS from `/usr/bin/time`.

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // bench code: std::fs is fine here

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

mod common;
use common::{first_line, have, q, sh_ok, sync, time_shell, Runs};

const USAGE: &str = "\
usage: cargo bench --bench container [-- [--runs N] [--out FILE] [GROUP...]]
  GROUP     create commit (default: both)
  --runs N  timed runs per command (default 3)
  --out F   also write the report to F
env: LAYERKIT (binary, default target/release/layerkit), LAYERKIT_CORPUS (default /work/corpus),
     BENCH_TMP (scratch, default /var/tmp/layerkit-bench-container; not tmpfs)";

const GROUPS: [&str; 2] = ["create", "commit"];

/// One command: `setup` runs untimed before every run, then `shell` is timed.
struct Cmd {
    label: String,
    setup: String,
    shell: String,
    runs: Runs,
}

impl Cmd {
    fn new(label: &str, setup: String, shell: String) -> Cmd {
        Cmd {
            label: label.into(),
            setup,
            shell,
            runs: Runs::default(),
        }
    }

    fn run(&mut self, rss: &Path, timed: bool) {
        if self.runs.error.is_some() {
            return;
        }
        if !sh_ok(&self.setup) {
            self.runs.error = Some(format!("setup failed: {}", self.setup));
            eprintln!("FAILED setup: {}\n  {}", self.label, self.setup);
            return;
        }
        sync();
        let res = time_shell(&self.shell, rss);
        self.runs.record(res, timed, &self.label, &self.shell);
    }
}

/// Unmount everything mounted below `dir`, then remove it.
fn wipe(dir: &Path) -> String {
    format!(
        "grep -o ' {d}[^ ]*' /proc/self/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null; rm -rf {d}",
        d = q(dir).trim_matches('\'')
    )
}

fn podman(root: &Path) -> String {
    format!(
        "podman --root {} --runroot {} --storage-driver overlay",
        q(&root.join("root")),
        q(&root.join("run"))
    )
}

fn buildah(root: &Path) -> String {
    format!(
        "buildah --root {} --runroot {} --storage-driver overlay",
        q(&root.join("root")),
        q(&root.join("run"))
    )
}

fn main() -> ExitCode {
    let common::Args {
        runs,
        out_file,
        only,
    } = match common::Args::parse(USAGE, &GROUPS) {
        Ok(a) => a,
        Err(code) => return code,
    };
    let common::Paths {
        root,
        bin: lk_src,
        corpus,
        tmp,
    } = common::Paths::from_env("LAYERKIT", "layerkit", "/var/tmp/layerkit-bench-container");
    let image = corpus.join("oci/image-gzip");
    if !image.join("index.json").exists() || !corpus.join("upper/upper1").exists() {
        println!(
            "no corpus at {}: build it with ../shared/bench/make-corpus.sh (as root); skipping",
            corpus.display()
        );
        return ExitCode::SUCCESS;
    }
    if !lk_src.exists() {
        eprintln!("{} missing: run cargo build --release", lk_src.display());
        return ExitCode::FAILURE;
    }
    let work = tmp.join("work");
    sh_ok(&wipe(&work));
    std::fs::create_dir_all(&work).expect("scratch dir");
    if first_line(&format!("stat -f -c %T {}", q(&work))) == "tmpfs" {
        eprintln!("BENCH_TMP is on tmpfs; use a disk");
        return ExitCode::FAILURE;
    }
    let lk = tmp.join("layerkit");
    std::fs::copy(&lk_src, &lk).expect("copy layerkit");
    let lk = q(&lk);
    let rss = tmp.join("rss");
    let want = |g: &str| only.is_empty() || only.iter().any(|o| o == g);

    let mut report = String::new();
    let _ = writeln!(
        report,
        "# The container loop: layerkit vs podman and buildah\n"
    );
    let _ = writeln!(
        report,
        "- machine: nproc {}, kernel {}, load before: {}",
        first_line("nproc"),
        first_line("uname -r"),
        first_line("cut -d' ' -f1-3 /proc/loadavg")
    );
    let _ = writeln!(
        report,
        "- tools: {}; {}",
        first_line("podman --version 2>/dev/null || echo podman: none"),
        first_line("buildah --version 2>/dev/null || echo buildah: none")
    );
    let _ = writeln!(
        report,
        "- layerkit: {} (git {}); scratch {} ({})\n",
        lk_src.display(),
        first_line(&format!("git -C {} rev-parse --short HEAD", q(&root))),
        work.display(),
        first_line(&format!("stat -f -c %T {}", q(&work)))
    );
    let _ = writeln!(
        report,
        "Wall seconds, median and min of {runs} timed runs after one warm-up, interleaved; RSS = \
         largest single process. ratio = that row's median / layerkit's median (> 1: layerkit \
         faster).\n"
    );
    print!("{report}");
    let mut summary = Vec::new();
    for g in GROUPS {
        if !want(g) {
            continue;
        }
        let (title, mut cmds) = match g {
            "create" => ("the corpus image (3 gzip layers, 801 MB of tar) -> a mounted container in a fresh store", create_cmds(&work, &image, &lk)),
            _ => match commit_cmds(&work, &corpus, &lk, &root) {
                Some(c) => ("a real apt upper (upper1, 440 MB, 10.6k entries) on the base image -> a committed image", c),
                None => {
                    eprintln!("commit setup failed; skipping the group");
                    continue;
                }
            },
        };
        for c in &mut cmds {
            c.run(&rss, false);
        }
        for _ in 0..runs {
            for c in &mut cmds {
                c.run(&rss, true);
            }
        }
        let mut t = String::new();
        let _ = writeln!(t, "### {g}: {title}\n");
        let _ = writeln!(
            t,
            "| command | median s | min s | peak RSS MiB | ratio |\n|---|---:|---:|---:|---:|"
        );
        let lk_med = cmds.last().and_then(|c| c.runs.median());
        for (i, c) in cmds.iter().enumerate() {
            let label = c.label.replace('|', r"\|");
            let Some(med) = c.runs.median() else {
                let why = c.runs.error.as_deref().unwrap_or("no runs");
                let _ = writeln!(t, "| {label} | failed: {} | | | |", why.replace('|', r"\|"));
                continue;
            };
            let ratio = lk_med.map_or("–".into(), |l| format!("{:.2}", med / l));
            let _ = writeln!(
                t,
                "| {label} | {med:.2} | {:.2} | {:.0} | {ratio} |",
                c.runs.min().unwrap_or(med),
                c.runs.rss_kib as f64 / 1024.0
            );
            if i + 1 != cmds.len() {
                summary.push(format!("{g}: {} {ratio}", c.label));
            }
        }
        let _ = writeln!(t);
        print!("{t}");
        report.push_str(&t);
        if let Some(f) = &out_file {
            let _ = std::fs::write(f, &report);
        }
        if cmds.last().is_some_and(|c| c.runs.error.is_some()) {
            eprintln!("layerkit failed in group {g}");
            return ExitCode::FAILURE;
        }
    }
    let s = format!(
        "Summary (ratio = other / layerkit): {}\n",
        summary.join("; ")
    );
    print!("\n{s}");
    report.push('\n');
    report.push_str(&s);
    if let Some(f) = &out_file {
        let _ = std::fs::write(f, &report);
    }
    sh_ok(&wipe(&work));
    ExitCode::SUCCESS
}

fn create_cmds(work: &Path, image: &Path, lk: &str) -> Vec<Cmd> {
    let img = format!("oci:{}", q(image));
    let mut cmds = Vec::new();
    if have("podman") {
        let r = work.join("podman");
        let p = podman(&r);
        cmds.push(Cmd::new(
            "podman create + podman mount (private root, overlay)",
            wipe(&r),
            format!("C=$({p} create -q {img} sh) && {p} mount $C"),
        ));
    }
    if have("buildah") {
        let r = work.join("buildah");
        let b = buildah(&r);
        cmds.push(Cmd::new(
            "buildah from + buildah mount (private root, overlay)",
            wipe(&r),
            format!("C=$({b} from -q {img}) && {b} mount $C"),
        ));
    }
    let s = work.join("lk");
    cmds.push(Cmd::new(
        "layerkit create + layerkit mount",
        wipe(&s),
        format!(
            "C=$({lk} create -q --store {s} {img}) && {lk} mount --store {s} $C",
            s = q(&s)
        ),
    ));
    cmds
}

/// Untimed, once: the base image (L0 alone) as a gzip layout, made with the tests' independent
/// layout writer. Then per command: a container on it whose upper gets upper1's files.
fn commit_cmds(work: &Path, corpus: &Path, lk: &str, root: &Path) -> Option<Vec<Cmd>> {
    let base = work.join("base-image");
    if !base.join("index.json").exists() {
        eprintln!("setup: the base image (L0) as a gzip layout, once");
        let spec = format!(
            r#"{{"layers": [{{"file": "{}", "compress": "gzip"}}], "refs": ["latest"]}}"#,
            corpus.join("layers/L0.tar").display()
        );
        if !sh_ok(&format!(
            "python3 {} {} '{spec}'",
            q(&root.join("tests/it/support/make_image.py")),
            q(&base)
        )) {
            return None;
        }
    }
    let img = format!("oci:{}:latest", q(&base));
    let upper = q(&corpus.join("upper/upper1"));
    let out = work.join("out");
    let mut cmds = Vec::new();
    if have("buildah") {
        let r = work.join("buildah-c");
        let b = buildah(&r);
        // The container's upper dir is <merged>/../diff; filled while unmounted.
        let setup = format!(
            "{w}; {wo}; C=$({b} from -q --name lkc {img}) && M=$({b} mount lkc) && {b} umount lkc >/dev/null && cp -a {upper}/. \"$(dirname \"$M\")/diff/\"",
            w = wipe(&r),
            wo = wipe(&out)
        );
        for (label, flag) in [
            ("buildah commit (uncompressed, its default)", ""),
            (
                "buildah commit --disable-compression=false (gzip)",
                " --disable-compression=false",
            ),
        ] {
            cmds.push(Cmd::new(
                label,
                format!("{b} rmi -a -f >/dev/null 2>&1; {setup}"),
                format!(
                    "{b} commit -q{flag} --format oci lkc oci:{}:c >/dev/null",
                    q(&out)
                ),
            ));
        }
    }
    let s = work.join("lk-c");
    let setup = format!(
        "{w}; {wo}; C=$({lk} create -q --store {s} --name lkc {img}) && cp -a {upper}/. {s}/$C/diff/",
        w = wipe(&s),
        wo = wipe(&out),
        s = q(&s)
    );
    cmds.push(Cmd::new(
        "layerkit commit -c none",
        setup.clone(),
        format!(
            "{lk} commit --store {} lkc -c none -o oci:{}:c",
            q(&s),
            q(&out)
        ),
    ));
    cmds.push(Cmd::new(
        "layerkit commit (gzip)",
        setup,
        format!("{lk} commit --store {} lkc -o oci:{}:c", q(&s), q(&out)),
    ));
    Some(cmds)
}
