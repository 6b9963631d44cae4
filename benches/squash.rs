//! `layerkit squash` against the naive way and the peers, on the same inputs, in the same run.
//!
//! ```sh
//! cargo build --release
//! cargo bench --bench squash                          # all groups
//! cargo bench --bench squash -- --runs 5 stack-zst    # some groups, N timed runs each
//! ```
//!
//! Groups (one table each; the last row, layerkit squash, is the reference):
//! - `stack-zst`: the corpus's real L0+L1+L2 `.tar` -> one `.tar.zst`;
//! - `stack-tar`: the same -> one uncompressed `.tar`;
//! - `stack-zst-in`: L0+L1+L2 `.tar.zst` -> `.tar.zst`;
//! - `synth10`: ten synthetic layers (`gen-synth.py`, generated once into `$BENCH_TMP/synth`) ->
//!   `.tar.zst`;
//! - `image-gz`: the corpus's gzip OCI image -> a squashed image (`layerkit squash IMAGE -o oci:`,
//!   all layers or the top two), against `buildah commit --squash` to an `oci:` dir, compressed and
//!   not (its container made from the same image once, untimed).
//!
//! The naive way is `../shared/bench/naive-squash.sh` (GNU tar extracts every layer in order into
//! one dir, a script applies the whiteouts first, then `tar -c`), piped into `zstd -T0 -3` where
//! the output is compressed. Peers where installed: umoci (`raw unpack` + GNU tar) and buildah
//! (`commit --squash`, from an image put into a private containers-storage once, untimed); both
//! flatten, so `layerkit squash --flatten` has a row of its own. layerkit's spool for compressed
//! layers and the naive script's tree both go to `$BENCH_TMP/work` (`TMPDIR`). Every run: output removed and
//! `sync` before (untimed); one untimed warm-up per command; rounds interleaved; wall time and
//! peak RSS from `/usr/bin/time`. After each group (untimed) the `--flatten` output, extracted
//! with GNU tar, is compared with the naive tree (types, modes, owners, file sizes, link counts,
//! symlink targets, file content).

#![allow(clippy::disallowed_methods, clippy::disallowed_types)] // bench code: std::fs is fine here

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

mod common;
use common::{first_line, have, q, sh_ok, size, sync, time_shell, Runs};

const USAGE: &str = "\
usage: cargo bench --bench squash [-- [--runs N] [--out FILE] [GROUP...]]
  GROUP     stack-zst stack-tar stack-zst-in synth10 image-gz (default: all)
  --runs N  timed runs per command (default 3)
  --out F   also write the report to F
env: LAYERKIT (binary, default target/release/layerkit), LAYERKIT_CORPUS (default /work/corpus),
     BENCH_TMP (scratch, default /var/tmp/layerkit-bench-squash; not tmpfs)";

const GROUPS: [&str; 5] = [
    "stack-zst",
    "stack-tar",
    "stack-zst-in",
    "synth10",
    "image-gz",
];

struct Cmd {
    label: String,
    shell: String,
    /// Removed before every run.
    out: PathBuf,
    /// The output file whose size is reported (None: a directory, not reported).
    file: Option<PathBuf>,
    runs: Runs,
}

impl Cmd {
    fn new(label: &str, out: &Path, shell: String) -> Cmd {
        Cmd {
            label: label.into(),
            shell,
            out: out.to_path_buf(),
            file: Some(out.to_path_buf()),
            runs: Runs::default(),
        }
    }

    fn run(&mut self, rss: &Path, timed: bool) {
        if self.runs.error.is_some() {
            return;
        }
        let _ = std::fs::remove_dir_all(&self.out);
        let _ = std::fs::remove_file(&self.out);
        sync();
        let res = time_shell(&self.shell, rss);
        self.runs.record(res, timed, &self.label, &self.shell);
    }
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
    } = common::Paths::from_env("LAYERKIT", "layerkit", "/var/tmp/layerkit-bench-squash");
    let layers = corpus.join("layers");
    if !layers.join("L2.tar").exists() {
        println!(
            "no corpus at {}: build it with `STAGES=\"base uppers oci stress sizes\" \
             ../shared/bench/make-corpus.sh {}` (as root); skipping",
            corpus.display(),
            corpus.display()
        );
        return ExitCode::SUCCESS;
    }
    if !lk_src.exists() {
        eprintln!("{} missing: run cargo build --release", lk_src.display());
        return ExitCode::FAILURE;
    }
    let naive = root.join("../shared/bench/naive-squash.sh");
    if !naive.exists() {
        eprintln!("{} missing (the naive baseline)", naive.display());
        return ExitCode::FAILURE;
    }
    let work = tmp.join("work");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work).expect("scratch dir");
    if first_line(&format!("stat -f -c %T {}", q(&work))) == "tmpfs" {
        eprintln!("BENCH_TMP is on tmpfs; use a disk");
        return ExitCode::FAILURE;
    }
    let lk = tmp.join("layerkit");
    std::fs::copy(&lk_src, &lk).expect("copy layerkit");
    let rss = work.join("rss");
    let synth = tmp.join("synth");
    let synth_layers: Vec<PathBuf> = (0..10).map(|i| synth.join(format!("S{i}.tar"))).collect();
    let want = |g: &str| only.is_empty() || only.iter().any(|o| o == g);
    if want("synth10") && !synth_layers.iter().all(|p| p.exists()) {
        eprintln!(
            "generating the synthetic stack into {} (once)",
            synth.display()
        );
        let gen = root.join("benches/gen-synth.py");
        if !sh_ok(&format!("python3 {} {}", q(&gen), q(&synth))) {
            eprintln!("gen-synth.py failed");
            return ExitCode::FAILURE;
        }
    }
    let buildah = have("buildah") && have("skopeo") && setup_buildah(&tmp, &corpus);

    let mut report = String::new();
    let _ = writeln!(report, "# layerkit squash throughput\n");
    let _ = writeln!(
        report,
        "- machine: nproc {}, kernel {}, load before: {}",
        first_line("nproc"),
        first_line("uname -r"),
        first_line("cut -d' ' -f1-3 /proc/loadavg")
    );
    let _ = writeln!(
        report,
        "- tools: {}; {}; {}; {}",
        first_line("tar --version"),
        first_line("zstd --version"),
        first_line("umoci --version 2>/dev/null || echo umoci: none"),
        first_line("buildah --version 2>/dev/null || echo buildah: none")
    );
    let _ = writeln!(
        report,
        "- layerkit: {} (git {}); scratch {}\n",
        lk_src.display(),
        first_line(&format!("git -C {} rev-parse --short HEAD", q(&root))),
        work.display()
    );
    let _ = writeln!(
        report,
        "Wall seconds, median and min of {runs} timed runs after one warm-up, interleaved; RSS = \
         largest single process. ratio = that row's median / layerkit squash's median (> 1: \
         layerkit faster). `flatten` rows produce a tree for an empty base (no whiteouts), the \
         default squash keeps the whiteouts any base needs; no peer does that.\n"
    );
    print!("{report}");
    let mut summary = Vec::new();
    let tar_ext = |ext: &str| -> Vec<PathBuf> {
        (0..3).map(|i| layers.join(format!("L{i}.{ext}"))).collect()
    };
    for g in GROUPS {
        if !want(g) {
            continue;
        }
        let (inputs, zst_out, title) = match g {
            "stack-zst" => (tar_ext("tar"), true, "L0+L1+L2 .tar -> .tar.zst"),
            "stack-tar" => (tar_ext("tar"), false, "L0+L1+L2 .tar -> .tar"),
            "stack-zst-in" => (tar_ext("tar.zst"), true, "L0+L1+L2 .tar.zst -> .tar.zst"),
            "image-gz" => (
                tar_ext("tar.gz"),
                false,
                "the corpus image (3 gzip layers, OCI layout) -> a squashed image",
            ),
            _ => (
                synth_layers.clone(),
                true,
                "10 synthetic layers .tar -> .tar.zst",
            ),
        };
        let in_bytes: u64 = inputs.iter().filter_map(|p| size(p)).sum();
        let ins = inputs.iter().map(|p| q(p)).collect::<Vec<_>>().join(" ");
        let ext = if zst_out { "tar.zst" } else { "tar" };
        let o = |n: &str| work.join(format!("{n}.{ext}"));
        let zstd = |tar_cmd: String| {
            if zst_out {
                format!("{tar_cmd} | zstd -q -T0 -3 > {}", q(&o("naive")))
            } else {
                format!("{tar_cmd} > {}", q(&o("naive")))
            }
        };
        let naive_tmp = work.join("naive-tmp");
        let _ = std::fs::create_dir_all(&naive_tmp);
        let mut cmds = vec![Cmd::new(
            "naive: naive-squash.sh (GNU tar -x each, whiteouts by script, tar -c)",
            &o("naive"),
            zstd(format!(
                "TMPDIR={} {} /dev/stdout {ins}",
                q(&naive_tmp),
                q(&naive)
            )),
        )];
        let oci = match g {
            "stack-zst-in" => None, // umoci 0.4.7 cannot read zstd layers
            "synth10" => None,
            _ => Some(corpus.join("oci/image-tar")),
        };
        if let (Some(oci), true) = (oci, have("umoci")) {
            let d = work.join("umoci");
            let t = format!(
                "umoci raw unpack --image {}:latest {} && tar -C {} --xattrs --numeric-owner -cf - .",
                q(&oci),
                q(&d),
                q(&d)
            );
            let shell = if zst_out {
                format!("{t} | zstd -q -T0 -3 > {}", q(&o("umoci")))
            } else {
                format!("{t} > {}", q(&o("umoci")))
            };
            let mut c = Cmd::new("umoci raw unpack + GNU tar -c (flatten)", &d, shell);
            c.file = Some(o("umoci"));
            cmds.push(c);
        }
        if buildah && matches!(g, "stack-zst" | "stack-tar") {
            let d = work.join("buildah");
            let mut c = Cmd::new(
                "buildah commit --squash (flatten; uncompressed oci: dir)",
                &d,
                format!(
                    "{} commit -q --squash --format oci lk-sq oci:{} >/dev/null",
                    buildah_cmd(&tmp),
                    q(&d)
                ),
            );
            c.file = None;
            cmds.push(c);
        }
        if zst_out {
            // The floor: compressing the squashed tar alone, which every row has to do.
            let plain = work.join("floor-input.tar");
            let made = sh_ok(&format!(
                "TMPDIR={} {} squash -o {} {ins}",
                q(&naive_tmp),
                q(&lk),
                q(&plain)
            ));
            if made {
                cmds.push(Cmd::new(
                    "floor: zstd -T0 -3 of the squashed .tar alone",
                    &o("floor"),
                    format!("zstd -q -T0 -3 < {} > {}", q(&plain), q(&o("floor"))),
                ));
            }
        }
        cmds.push(Cmd::new(
            "layerkit squash --flatten",
            &o("flat"),
            format!(
                "TMPDIR={} {} squash --flatten -o {} {ins}",
                q(&naive_tmp),
                q(&lk),
                q(&o("flat"))
            ),
        ));
        cmds.push(Cmd::new(
            "layerkit squash --json (diffID and blob sha256 too)",
            &o("json"),
            format!(
                "TMPDIR={} {} squash --json -o {} {ins} > /dev/null",
                q(&naive_tmp),
                q(&lk),
                q(&o("json"))
            ),
        ));
        cmds.push(Cmd::new(
            "layerkit squash",
            &o("squash"),
            format!(
                "TMPDIR={} {} squash -o {} {ins}",
                q(&naive_tmp),
                q(&lk),
                q(&o("squash"))
            ),
        ));
        if g == "image-gz" {
            cmds = image_cmds(&lk, &corpus, &work, &tmp, buildah);
        }
        let t0 = Instant::now();
        for c in &mut cmds {
            c.run(&rss, false);
        }
        for _ in 0..runs {
            for c in &mut cmds {
                c.run(&rss, true);
            }
        }
        let check = if g == "image-gz" {
            "not compared here (tests/it/images.rs checks squashed images against umoci)".into()
        } else {
            compare_flat(&work, &o("flat"), &o("naive"), zst_out)
        };
        let mut t = String::new();
        let _ = writeln!(
            t,
            "### {g}: {title} ({:.1} MB of input)\n",
            in_bytes as f64 / 1e6
        );
        let _ = writeln!(
            t,
            "| command | median s | min s | output MB | peak RSS MiB | ratio |\n|---|---:|---:|---:|---:|---:|"
        );
        let lk_med = cmds.last().and_then(|c| c.runs.median());
        for c in &cmds {
            let label = c.label.replace('|', r"\|");
            let Some(med) = c.runs.median() else {
                let why = c.runs.error.as_deref().unwrap_or("no runs");
                let _ = writeln!(
                    t,
                    "| {label} | failed: {} | | | | |",
                    why.replace('|', r"\|")
                );
                continue;
            };
            let ratio = lk_med.map_or("–".into(), |l| format!("{:.2}", med / l));
            let out_mb = c
                .file
                .as_deref()
                .and_then(size)
                .map_or("–".into(), |b| format!("{:.1}", b as f64 / 1e6));
            let _ = writeln!(
                t,
                "| {label} | {med:.2} | {:.2} | {out_mb} | {:.0} | {ratio} |",
                c.runs.min().unwrap_or(med),
                c.runs.rss_kib as f64 / 1024.0
            );
            if !std::ptr::eq(c, cmds.last().expect("a reference row")) {
                summary.push(format!(
                    "{g}: {} {ratio}",
                    c.label.split([':', '(']).next().unwrap_or("").trim()
                ));
            }
        }
        let _ = writeln!(
            t,
            "\n`--flatten` output vs the naive tree: {check}. Wall time for this group: {:.0} s.\n",
            t0.elapsed().as_secs_f64()
        );
        print!("{t}");
        report.push_str(&t);
        if let Some(f) = &out_file {
            let _ = std::fs::write(f, &report);
        }
        // A group's outputs (several GB for the stack) go before the next group runs.
        for e in std::fs::read_dir(&work).into_iter().flatten().flatten() {
            if e.path() != rss {
                let _ =
                    std::fs::remove_dir_all(e.path()).or_else(|_| std::fs::remove_file(e.path()));
            }
        }
        if cmds
            .iter()
            .any(|c| c.runs.error.is_some() && c.label.starts_with("layerkit"))
        {
            eprintln!("layerkit failed in group {g}");
            return ExitCode::FAILURE;
        }
    }
    let s = format!(
        "Summary (ratio = other / layerkit squash): {}\n",
        summary.join("; ")
    );
    print!("\n{s}");
    report.push('\n');
    report.push_str(&s);
    if let Some(f) = &out_file {
        let _ = std::fs::write(f, &report);
    }
    let _ = std::fs::remove_dir_all(&work);
    ExitCode::SUCCESS
}

/// The `image-gz` group: squashing a whole image, layout to layout.
fn image_cmds(lk: &Path, corpus: &Path, work: &Path, tmp: &Path, buildah: bool) -> Vec<Cmd> {
    let image = format!("oci:{}", q(&corpus.join("oci/image-gzip")));
    let mut cmds = Vec::new();
    if buildah {
        for (label, flag, name) in [
            (
                "buildah commit --squash (flatten; uncompressed, its default)",
                "",
                "buildah",
            ),
            (
                "buildah commit --squash --disable-compression=false (gzip)",
                " --disable-compression=false",
                "buildah-gz",
            ),
        ] {
            let d = work.join(name);
            let mut c = Cmd::new(
                label,
                &d,
                format!(
                    "{} commit -q --squash{flag} --format oci lk-sq oci:{} >/dev/null",
                    buildah_cmd(tmp),
                    q(&d)
                ),
            );
            c.file = None;
            cmds.push(c);
        }
    }
    for (label, flag, name) in [
        (
            "layerkit squash IMAGE -c none (flatten, uncompressed)",
            " -c none",
            "lk-none",
        ),
        (
            "layerkit squash IMAGE --from -2 (top two into one, gzip)",
            " --from -2",
            "lk-top2",
        ),
        (
            "layerkit squash IMAGE (flatten, gzip as the image's top layer)",
            "",
            "lk",
        ),
    ] {
        let d = work.join(name);
        let mut c = Cmd::new(
            label,
            &d,
            format!(
                "TMPDIR={} {} squash {image}{flag} -o oci:{}:sq",
                q(work),
                q(lk),
                q(&d)
            ),
        );
        c.file = None;
        cmds.push(c);
    }
    cmds
}

fn buildah_cmd(tmp: &Path) -> String {
    format!(
        "buildah --root {} --runroot {} --storage-driver overlay",
        q(&tmp.join("cs")),
        q(&tmp.join("cs-run"))
    )
}

/// Once: the corpus image in a private containers-storage and a working container on it.
fn setup_buildah(tmp: &Path, corpus: &Path) -> bool {
    let b = buildah_cmd(tmp);
    if sh_ok(&format!("{b} inspect --type container lk-sq")) {
        return true;
    }
    eprintln!(
        "setup: corpus image into {} for buildah (once)",
        tmp.join("cs").display()
    );
    let ok = sh_ok(&format!(
        "skopeo copy -q oci:{}:latest 'containers-storage:[overlay@{}+{}]localhost/corpus:l2' && \
         {b} from --pull-never --name lk-sq localhost/corpus:l2",
        q(&corpus.join("oci/image-tar")),
        tmp.join("cs").display(),
        tmp.join("cs-run").display()
    ));
    if !ok {
        eprintln!("buildah setup failed; no buildah row");
    }
    ok
}

/// The flattened squash, extracted with GNU tar, against the naive tree (extracted likewise):
/// every entry's type, mode, owner, size (not of dirs: ext4 dirs keep their size after deletions),
/// link count and symlink target, and file content. Mtimes are not compared: the naive script's
/// deletions re-time the dirs they touch.
fn compare_flat(work: &Path, flat: &Path, naive: &Path, zst: bool) -> String {
    if size(flat).is_none() || size(naive).is_none() {
        return "skipped (an output is missing)".into();
    }
    let dz = if zst { "zstd -qdc" } else { "cat" };
    let script = format!(
        "set -e; cd {w}; rm -rf xa xb; mkdir xa xb
         {dz} {f} | tar -C xa --numeric-owner -xpf -
         {dz} {n} | tar -C xb --numeric-owner -xpf -
         for d in xa xb; do (cd $d && find . -mindepth 1 -printf '%p %y %m %U %G %s %n %l\\n' | sort |
             awk '$2==\"d\" {{$6=\"-\"}} 1'
           find . -type f -print0 | sort -z | xargs -0 -r md5sum) > $d.list; done
         cmp -s xa.list xb.list; echo \"$(wc -l < xa.list) lines\"; rm -rf xa xb",
        w = q(work),
        f = q(flat),
        n = q(naive)
    );
    let out = std::process::Command::new("bash")
        .args(["-c", &script])
        .output();
    match out {
        Ok(o) if o.status.success() => {
            format!("identical ({})", String::from_utf8_lossy(&o.stdout).trim())
        }
        _ => "DIFFERENT".into(),
    }
}
