//! `layerkit squash` against its law (semantics.md A9): for every base B,
//! `B + squash(L1..Ln)` is the tree `B + L1 + ... + Ln`, and with `--flatten` the same holds for
//! the empty base and the output has no `.wh.` entry at all. The truth never comes from layerkit:
//!
//! - Hand-written stacks (written by `gen_layers.py`, Python tarfile) for each case the issue names:
//!   a path deleted and re-created (it must hide the base's dir: `.wh.X` + `X/`, or an opaque `X/`),
//!   file/dir/symlink replacing each other,
//!   opaque markers in every layer, whiteouts of paths only the base has, markers made redundant by
//!   upper layers, hardlinks whose target a later layer overwrites or deletes, the latest dir header
//!   winning, and an every-type stack. Each is applied over four bases (empty; the bottom layer
//!   itself; every mentioned path a dir with children; every mentioned path a regular file where the
//!   stack stays valid) by the independent flat applier `apply_flat.py`, once as the stack and once
//!   as the squash output, and the two trees must match in `dump.py`'s dump (type, mode, owner,
//!   content, symlink target, xattrs, hardlink groups) and in nanosecond mtimes. Some are also
//!   unpacked by `layerapply --store` and mounted by the kernel: merged view of the stack = merged
//!   view of the squash = apply_flat's tree.
//! - Random stacks (proptest; layers written by the `tar` crate): a reference model of the OCI rules
//!   (a flat path map, `model.rs`) reads the layers and the squash output with the `tar` crate;
//!   `model(B + stack) == model(B + squash)` for the four bases and the flatten law. A few random
//!   stacks also go through apply_flat and the kernel, which cross-checks the model itself.
//! - Raw output, read by Python tarfile and GNU tar (or the `tar` crate for random stacks): no
//!   duplicate paths, parents before children, every hardlink after its target, an opaque marker
//!   right after its dir, no marker another marker or entry of the output makes redundant, no
//!   `.wh.` with `--flatten`.
//! - A hardlink in the range to a base file that the range later changes (the one thing squash
//!   cannot express): exit 1, one stderr line, no output. Bad layers (truncated, corrupt gzip/zstd,
//!   garbage, empty, missing) likewise; usage errors exit 2.
//! - Determinism (byte-identical at -j 1/2/4, same tar inside none/gzip/zstd, compressed inputs
//!   give the same result) and `--json` digests checked with sha256sum, gzip and zstd.
//! - The checks can fail: tampered squash outputs (opaque markers or whiteouts dropped, links moved
//!   before their targets) are rejected by the same law and raw checks.
//!
//! Two readings are stated where appliers disagree: an opaque marker for a missing dir makes the
//! dir (semantics.md A2.2, the kernel, moby; apply_flat.py does not, which only `--flatten` shows,
//! see `Case::law_flatten`); and an implied dir that the range empties and never deleted first
//! cannot be said for every base by one layer (`Fs::drop_inexpressible`). Random stacks keep
//! ill-formed markers out (markers in non-dirs or in symlinks, markers for dirs the same layer
//! whites out, markers for dirs that are missing below the layer and get no entry in it), which
//! appliers also disagree on.
//!
//! Where things are: `model.rs` holds the reference model and the layers it reads and writes
//! (the `tar` crate parser and writer, gen_layers.py spec sections, the four bases); `raw.rs`
//! the raw output checks; `cases.rs` the hand-written stacks (`Case`, apply_flat, the kernel),
//! the refused hardlinks, bad layers, usage errors, determinism, `--json` and the tampered
//! outputs against apply_flat and the kernel; `random.rs` the proptest stacks, the model law and
//! the tampered outputs against the model. This file has the command helpers they share.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::support::*;

// The reference model of the OCI rules, its layer parser and writer, the standard bases.
mod model;
// Raw output checks: order, duplicates, redundant markers.
mod raw;
// Hand-written stacks over four bases, the kernel, and the CLI contract.
mod cases;
// Random stacks against the model (and a few through apply_flat and the kernel).
mod random;

// ---------------------------------------------------------------------------------------------
// Commands and trees

/// A tree as text: its dump, then its ns mtimes.
fn tree_text(root: &Path) -> String {
    format!(
        "{}--- mtimes (ns)\n{}",
        dump_tree(root),
        stat_list(root, "mtime")
    )
}

/// `layerkit squash`.
/// A tree dump without its hardlink groups (`link=` fields), where groups may differ.
fn no_links(t: &str) -> String {
    t.lines()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').filter(|f| !f.starts_with("link=")).collect();
            format!("{}\n", f.join(" "))
        })
        .collect()
}

fn squash_cmd() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_layerkit"));
    c.arg("squash");
    c
}

/// Run a command that must succeed with nothing but `warning: ` lines on stderr.
fn quiet(cmd: &mut Command) -> Output {
    let out = run(cmd);
    let err = String::from_utf8_lossy(&out.stderr);
    for l in err.lines() {
        assert!(
            l.starts_with("warning: ") || l.contains(": warning: "),
            "{cmd:?}: success, yet a stderr line is not a warning: {l:?}"
        );
    }
    out
}

/// `layerkit squash ARGS -o OUT LAYERS`, which must succeed.
fn squash_to(layers: &[PathBuf], out: &Path, args: &[&str]) -> Output {
    quiet(squash_cmd().args(args).arg("-o").arg(out).args(layers))
}

/// The uncompressed tar inside a file, by `gzip -dc` / `zstd -dc` (never by layerkit).
fn plain_tar(p: &Path) -> Vec<u8> {
    let bytes = std::fs::read(p).unwrap();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        run(Command::new("gzip").arg("-dc").arg(p)).stdout
    } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        run(Command::new("zstd").args(["-q", "-dc"]).arg(p)).stdout
    } else {
        bytes
    }
}

/// A unique name for a scratch entry.
fn fresh(prefix: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!("{prefix}-{}", N.fetch_add(1, Ordering::Relaxed))
}
