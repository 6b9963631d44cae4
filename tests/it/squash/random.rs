//! Random stacks (proptest, layers written by the `tar` crate) checked against the model, a few
//! through apply_flat and the kernel; tampered outputs must fail the model law.

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};

use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};

use super::cases::{
    gen_layers, merged_view, read_layer, tamper, Case, BASE_ONLY, HARDLINKS, RECREATE,
};
use super::model::{
    ancestors, dirs_base, files_base, parse_layer, write_tar, Attrs, Change, Fs, Kind, Render,
};
use super::raw::{raw_from_tar, raw_problems};
use super::{no_links, squash_cmd};
use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Random stacks: the model is the truth

/// A path alphabet small enough for frequent collisions (and one GNU long name).
fn gen_path(i: u8) -> String {
    const P: [&str; 9] = [
        "a", "b", "c", "a/a", "a/b", "b/a", "a/b/c", "a/a/a", "b/a/b",
    ];
    match P.get(i as usize % 10) {
        Some(p) => p.to_string(),
        None => format!("a/{}", "l".repeat(110)),
    }
}

const OPAQUE_DIRS: [&str; 5] = ["a", "b", "a/b", "b/a", "a/a"];
const SYMLINK_TARGETS: [&str; 6] = ["a", "b", "../c", "/a/b", "a/b/c", "nowhere"];

/// One random layer member before it is made valid.
#[derive(Clone, Debug)]
struct RawOp {
    kind: u8,
    path: u8,
    pick: u8,
    data: u8,
    mode: u8,
    owner: u8,
    time: u8,
    xattr: u8,
}

fn raw_op() -> impl Strategy<Value = RawOp> {
    (
        0u8..20,
        any::<u8>(),
        any::<u8>(),
        0u8..4,
        0u8..4,
        0u8..3,
        any::<u8>(),
        0u8..3,
    )
        .prop_map(|(kind, path, pick, data, mode, owner, time, xattr)| RawOp {
            kind,
            path,
            pick,
            data,
            mode,
            owner,
            time,
            xattr,
        })
}

/// A generated stack (its Debug output is a readable listing, bottom layer first).
#[derive(Clone)]
struct Stack(Vec<Vec<Change>>);

impl fmt::Debug for Stack {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f)?;
        for (i, l) in self.0.iter().enumerate() {
            writeln!(f, "=== L{}", i + 1)?;
            for c in l {
                let attrs = |a: &Attrs| {
                    let mut s = format!(
                        "mode={:o} uid={} gid={} mtime={}.{:09}",
                        a.mode,
                        a.uid,
                        a.gid,
                        a.mtime_ns / 1_000_000_000,
                        a.mtime_ns % 1_000_000_000
                    );
                    for (k, v) in &a.xattrs {
                        s.push_str(&format!(" x.{k}={}", String::from_utf8_lossy(v)));
                    }
                    s
                };
                match c {
                    Change::Whiteout(p) => writeln!(f, "w {p}  (whiteout)")?,
                    Change::Opaque(d) => writeln!(f, "o {d:?}  (opaque marker)")?,
                    Change::Link(p, t) => writeln!(f, "h {p} -> {t}")?,
                    Change::Node(p, Kind::File(d), a) => {
                        let head = String::from_utf8_lossy(&d[..d.len().min(8)]).into_owned();
                        writeln!(f, "f {p} {} bytes {head:?} {}", d.len(), attrs(a))?
                    }
                    Change::Node(p, Kind::Dir, a) => writeln!(f, "d {p} {}", attrs(a))?,
                    Change::Node(p, Kind::Symlink(t), a) => {
                        writeln!(f, "l {p} -> {t} {}", attrs(a))?
                    }
                    Change::Node(p, k, a) => writeln!(f, "{k:?} {p} {}", attrs(a))?,
                }
            }
        }
        Ok(())
    }
}

fn gen_attrs(l: usize, i: usize, op: &RawOp, dir: bool, long: bool) -> Attrs {
    let mode = if dir {
        [0o755, 0o700, 0o1777, 0o750][op.mode as usize]
    } else {
        [0o644, 0o600, 0o755, 0o4755][op.mode as usize]
    };
    let (uid, gid) = [(0, 0), (1, 2), (1000, 1000)][op.owner as usize];
    let secs = 1_600_000_000 + (l as i128) * 100_000 + (i as i128) * 100 + (op.time % 7) as i128;
    let nanos = if long {
        0
    } else {
        [0, 0, 500_000_000, 123_456_789][op.time as usize % 4]
    };
    let mut xattrs = BTreeMap::new();
    if !long && op.xattr > 0 {
        let k = if op.xattr == 1 { "user.k" } else { "user.j" };
        xattrs.insert(k.to_string(), format!("L{l}.{i}").into_bytes());
    }
    Attrs {
        mode,
        uid,
        gid,
        mtime_ns: secs * 1_000_000_000 + nanos,
        xattrs,
    }
}

fn gen_data(l: usize, i: usize, d: u8) -> Vec<u8> {
    let tag = format!("L{l}.{i};");
    let n = [0, tag.len(), 700, 3000][d as usize];
    tag.into_bytes().into_iter().cycle().take(n).collect()
}

/// Make raw ops a valid stack (over the empty base), with the model: markers act first on the
/// state below the layer, entries whose parent is a non-dir are dropped, hardlinks pick an
/// existing non-dir, ill-formed opaque markers are dropped. `strict` (for the kernel path): drop opaque markers for dirs the layer
/// whites out (or a parent of), or that get no entry in the layer and are missing below (a
/// native applier makes an empty dir for those, apply_flat does not); and put each layer's
/// markers first.
fn build_stack(raw: &[Vec<RawOp>], strict: bool) -> Stack {
    let mut fs = Fs::default();
    let mut layers = Vec::new();
    for (l, ops) in raw.iter().enumerate() {
        let pre = fs.clone();
        // Candidate members per op, in op order.
        let cands: Vec<Vec<Change>> = ops
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let p = gen_path(op.path);
                let long = p.len() > 100;
                match op.kind {
                    0..=5 => vec![Change::Node(
                        p,
                        Kind::File(gen_data(l, i, op.data)),
                        gen_attrs(l, i, op, false, long),
                    )],
                    6..=9 => vec![Change::Node(p, Kind::Dir, gen_attrs(l, i, op, true, long))],
                    10..=11 => {
                        let t = SYMLINK_TARGETS[op.pick as usize % SYMLINK_TARGETS.len()];
                        let mut a = gen_attrs(l, i, op, false, long);
                        a.mode = 0o777;
                        a.xattrs.clear();
                        vec![Change::Node(p, Kind::Symlink(t.into()), a)]
                    }
                    12..=14 => vec![Change::Link(p, String::new())], // target picked below
                    15..=17 => vec![Change::Whiteout(p)],
                    _ => {
                        let d = if op.path % 12 == 11 {
                            String::new()
                        } else {
                            OPAQUE_DIRS[op.path as usize % OPAQUE_DIRS.len()].to_string()
                        };
                        let mut v = Vec::new();
                        if op.kind == 19 && !d.is_empty() {
                            v.push(Change::Node(
                                d.clone(),
                                Kind::Dir,
                                gen_attrs(l, i, op, true, false),
                            ));
                        }
                        v.push(Change::Opaque(d));
                        v
                    }
                }
            })
            .collect();
        let mut kept: Vec<Vec<Change>> = vec![Vec::new(); ops.len()];
        // Markers first, on the state below the layer.
        for (i, cs) in cands.iter().enumerate() {
            for c in cs.iter().filter(|c| c.is_marker()) {
                let mut t = fs.clone();
                if t.apply_marker(c).is_ok() {
                    fs = t;
                    kept[i].push(c.clone());
                }
            }
        }
        let markers: Vec<Change> = kept.iter().flatten().cloned().collect();
        fs.make_marker_dirs(&markers);
        // Then the entries, in order.
        for (i, cs) in cands.iter().enumerate() {
            let mut entries = Vec::new();
            for c in cs.iter().filter(|c| !c.is_marker()) {
                let c = match c {
                    Change::Link(p, _) => {
                        let prefix = format!("{p}/");
                        let targets: Vec<String> = fs
                            .non_dirs()
                            .into_iter()
                            .filter(|t| t != p && !t.starts_with(&prefix))
                            .collect();
                        if targets.is_empty() {
                            continue;
                        }
                        let t = targets[ops[i].pick as usize % targets.len()].clone();
                        Change::Link(p.clone(), t)
                    }
                    c => c.clone(),
                };
                let mut t = fs.clone();
                if t.apply_entry(&c).is_ok() {
                    fs = t;
                    entries.push(c);
                }
            }
            // An opaque-with-dir op: the dir entry goes before its marker.
            kept[i].splice(0..0, entries);
        }
        let mut layer: Vec<Change> = kept.into_iter().flatten().collect();
        // Ill-formed markers, on which appliers disagree (see
        // `opaque_marker_below_a_same_layer_file`): below a non-dir of the same layer; below a
        // non-dir of the layers under it; in a symlink (apply_flat follows it, overlay does
        // not); in a lower non-dir the layer does not replace by a dir.
        let non_dirs: Vec<String> = layer
            .iter()
            .filter_map(|c| match c {
                Change::Node(p, k, _) if *k != Kind::Dir => Some(p.clone()),
                Change::Link(p, _) => Some(p.clone()),
                _ => None,
            })
            .collect();
        let dir_entries: BTreeSet<String> = layer
            .iter()
            .filter_map(|c| match c {
                Change::Node(p, Kind::Dir, _) => Some(p.clone()),
                _ => None,
            })
            .collect();
        // A marker for a dir the same layer whites out (or a parent of): appliers that go in
        // tar order (moby) and those that take markers first disagree, and over a base with a
        // file above the dir no single layer says what the stack says.
        let whited: BTreeSet<String> = layer
            .iter()
            .filter_map(|c| match c {
                Change::Whiteout(p) => Some(p.clone()),
                _ => None,
            })
            .collect();
        let gone = |d: &str| whited.contains(d) || ancestors(d).iter().any(|a| whited.contains(*a));
        // A marker for a dir that is not there below the layer, which the layer gives no entry:
        // appliers disagree on whether it makes the dir (apply_flat and umoci do not, moby and
        // the kernel path do), and where they make it, whether the layer's own dir entries
        // above it count; no single layer says for every base what a stack of such markers
        // says. Dropped here; the hand-written cases keep the simple ones.
        let layer_dirs: BTreeSet<String> = layer
            .iter()
            .filter_map(|c| match c {
                Change::Node(p, Kind::Dir, _) => Some(p.clone()),
                _ => None,
            })
            .collect();
        layer.retain(|c| {
            let Change::Opaque(d) = c else { return true };
            let under = |p: &str| p == d || d.starts_with(&format!("{p}/"));
            !gone(d)
                && (layer_dirs.contains(d) || pre.is_dir(d))
                && !non_dirs.iter().any(|p| under(p))
                && ancestors(d)
                    .iter()
                    .all(|a| pre.kind(a).is_none_or(|k| *k == Kind::Dir))
                && match pre.kind(d) {
                    None | Some(Kind::Dir) => true,
                    Some(Kind::Symlink(_)) => false,
                    Some(_) => dir_entries.contains(d),
                }
        });
        // A marker through a symlink of its own layer is refused by layerapply and squash
        // (`Rule::MarkerThroughSymlink`; see the hostile suite): dropped, with markers through a
        // lower symlink when the layer makes any symlink (it may point into one of them).
        // A hardlink to a symlink is a symlink too.
        let mut own_links: BTreeSet<String> = BTreeSet::new();
        for c in &layer {
            match c {
                Change::Node(p, Kind::Symlink(_), _) => {
                    own_links.insert(p.clone());
                }
                Change::Link(p, t)
                    if own_links.contains(t) || matches!(pre.kind(t), Some(Kind::Symlink(_))) =>
                {
                    own_links.insert(p.clone());
                }
                _ => {}
            }
        }
        if !own_links.is_empty() {
            layer.retain(|c| {
                let dir = match c {
                    Change::Opaque(d) => d.as_str(),
                    Change::Whiteout(p) => p.rsplit_once('/').map_or("", |(d, _)| d),
                    _ => return true,
                };
                let mut on_the_way = ancestors(dir);
                if !dir.is_empty() {
                    on_the_way.push(dir);
                }
                !on_the_way.iter().any(|a| {
                    own_links.contains(*a) || matches!(pre.kind(a), Some(Kind::Symlink(_)))
                })
            });
        }
        if strict {
            let dirs: BTreeSet<String> = layer
                .iter()
                .filter_map(|c| match c {
                    Change::Node(p, Kind::Dir, _) => Some(p.clone()),
                    _ => None,
                })
                .collect();
            layer.retain(|c| match c {
                Change::Opaque(d) => dirs.contains(d) || pre.is_dir(d),
                _ => true,
            });
            // layerapply gives an implied dir the lower's attributes when the same layer's
            // whiteout of that dir comes later in the tar: markers first, as diff tools write.
            layer.sort_by_key(|c| !c.is_marker());
        }
        // The markers dropped above had acted on `fs`: replay what is left on the state below
        // the layer, dropping entries that no longer apply (a file whose whiteout went, say).
        fs = pre.clone();
        layer.retain(|c| {
            !c.is_marker()
                || fs.clone().apply_marker(c).is_ok() && {
                    fs.apply_marker(c).unwrap();
                    true
                }
        });
        let markers: Vec<Change> = layer.iter().filter(|c| c.is_marker()).cloned().collect();
        fs.make_marker_dirs(&markers);
        layer.retain(|c| {
            if c.is_marker() {
                return true;
            }
            let mut t = fs.clone();
            let ok = t.apply_entry(c).is_ok();
            if ok {
                fs = t;
            }
            ok
        });
        layers.push(layer);
    }
    Stack(layers)
}

fn stack_strategy(strict: bool) -> impl Strategy<Value = Stack> {
    prop::collection::vec(prop::collection::vec(raw_op(), 0..8), 2..=5)
        .prop_map(move |raw| build_stack(&raw, strict))
}

fn proptest_config(default_cases: u32) -> ProptestConfig {
    let cases = std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_cases);
    ProptestConfig {
        cases,
        failure_persistence: None,
        max_shrink_iters: 400,
        ..ProptestConfig::default()
    }
}

/// A random stack on disk: its layer tars and the bases, written by the `tar` crate.
struct Written {
    tmp: tempfile::TempDir,
    tars: Vec<PathBuf>,
    /// (name, layer members); the empty base has none.
    bases: Vec<(&'static str, Vec<Change>)>,
}

fn write_stack(stack: &Stack) -> Written {
    let tmp = scratch();
    let mut tars = Vec::new();
    for (i, l) in stack.0.iter().enumerate() {
        let p = tmp.path().join(format!("L{}.tar", i + 1));
        std::fs::write(&p, write_tar(l)).unwrap();
        tars.push(p);
    }
    let layers: Vec<&[Change]> = stack.0.iter().map(|l| &l[..]).collect();
    let bases = vec![
        ("empty", Vec::new()),
        ("bottom layer", stack.0[0].clone()),
        ("dirs", dirs_base(&layers)),
        ("files", files_base(&layers)),
    ];
    Written { tmp, tars, bases }
}

/// The law on the model for one stack, its squash output and its --flatten output (plain tars):
/// model(B + stack) == model(B + squash) for every base B over which the stack is valid (the
/// empty and the dirs base always are), the raw checks, and the flatten law.
fn model_law(w: &Written, squashed: &[u8], flattened: &[u8]) -> Result<(), String> {
    let parsed: Vec<Vec<Change>> = w
        .tars
        .iter()
        .map(|t| parse_layer(&std::fs::read(t).unwrap()))
        .collect::<Result<_, _>>()?;
    let sq = parse_layer(squashed).map_err(|e| format!("squash output: {e}"))?;
    let probs = raw_problems(&raw_from_tar(squashed)?, false);
    if !probs.is_empty() {
        return Err(format!("squash output: {}", probs.join("\n")));
    }
    let probe = {
        let mut stack: Vec<&[Change]> = vec![&w.bases[2].1];
        stack.extend(parsed.iter().map(|l| &l[..]));
        Fs::of(&stack).map_err(|e| format!("dirs base + stack does not apply: {e}"))?
    };
    for (name, base) in &w.bases {
        let mut stack: Vec<&[Change]> = vec![base];
        stack.extend(parsed.iter().map(|l| &l[..]));
        let want = match Fs::of(&stack) {
            Ok(fs) => fs,
            Err(e) if matches!(*name, "bottom layer" | "files") => {
                let _ = e; // the stack does not apply over this base: nothing to compare
                continue;
            }
            Err(e) => return Err(format!("base {name} + stack does not apply: {e}")),
        };
        let got = Fs::of(&[base, &sq])
            .map_err(|e| format!("base {name} + squash does not apply: {e}"))?;
        let mut want = want;
        want.drop_inexpressible(&got, &Fs::of(&[base])?, &probe);
        let (want, got) = (want.render(Render::Exact), got.render(Render::Exact));
        if want != got {
            return Err(format!(
                "base {name}: base + squash differs from base + stack\n{}",
                unified_diff(&want, &got)
            ));
        }
    }
    let fl = parse_layer(flattened).map_err(|e| format!("--flatten output: {e}"))?;
    let probs = raw_problems(&raw_from_tar(flattened)?, true);
    if !probs.is_empty() {
        return Err(format!("--flatten output: {}", probs.join("\n")));
    }
    let stack: Vec<&[Change]> = parsed.iter().map(|l| &l[..]).collect();
    let want = Fs::of(&stack)?.render(Render::Exact);
    let got = Fs::of(&[&fl])
        .map_err(|e| format!("--flatten output does not apply: {e}"))?
        .render(Render::Exact);
    if want != got {
        return Err(format!(
            "flatten: apply(squash --flatten) differs from apply(stack)\n{}",
            unified_diff(&want, &got)
        ));
    }
    Ok(())
}

/// Squash a written stack (plain and --flatten) at `jobs`; the two plain tars.
fn squash_written(w: &Written, jobs: usize) -> Result<(Vec<u8>, Vec<u8>), String> {
    let mut outs = Vec::new();
    for (name, flags) in [("sq.tar", &[][..]), ("fl.tar", &["--flatten"][..])] {
        let out = w.tmp.path().join(name);
        let r = squash_cmd()
            .args(flags)
            .args(["-j", &jobs.to_string(), "-o"])
            .arg(&out)
            .args(&w.tars)
            .output()
            .unwrap();
        if !r.status.success() {
            return Err(format!(
                "squash {flags:?} failed ({}): {}",
                r.status,
                String::from_utf8_lossy(&r.stderr).trim()
            ));
        }
        outs.push(std::fs::read(&out).unwrap());
    }
    let fl = outs.pop().unwrap();
    Ok((outs.pop().unwrap(), fl))
}

#[test]
fn random_stacks_obey_the_law_on_the_model() {
    let mut runner = TestRunner::new(proptest_config(64));
    let result = runner.run(&(stack_strategy(false), 1usize..=4), |(stack, jobs)| {
        let w = write_stack(&stack);
        let (sq, fl) = squash_written(&w, jobs)
            .map_err(|e| TestCaseError::fail(format!("-j {jobs}: {e}\nstack:{stack:?}")))?;
        model_law(&w, &sq, &fl)
            .map_err(|e| TestCaseError::fail(format!("-j {jobs}: {e}\nstack:{stack:?}")))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

#[test]
fn random_stacks_on_the_kernel_match_the_model_and_apply_flat() {
    if !need_root("apply_flat.py (chown) and overlay mounts") {
        return;
    }
    let cases = std::env::var("LAYERKIT_KERNEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8);
    let mut config = proptest_config(cases);
    config.cases = cases;
    config.max_shrink_iters = 40;
    let mut runner = TestRunner::new(config);
    let result = runner.run(&stack_strategy(true), |stack| {
        kernel_law(&stack).map_err(|e| TestCaseError::fail(format!("{e}\nstack:{stack:?}")))
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

/// For the empty and the dirs base, the model's tree of base + stack (in dump.py's format) is
/// what apply_flat builds and what the kernel shows for `layerapply --store` of base + squash.
/// Where layerapply's view of base + stack differs, a note is printed.
fn kernel_law(stack: &Stack) -> Result<(), String> {
    let w = write_stack(stack);
    let (sq, _) = squash_written(&w, 2)?;
    let sq_path = w.tmp.path().join("sq.tar");
    std::fs::write(&sq_path, &sq).unwrap();
    let c = Case {
        tmp: scratch(),
        tars: w.tars.clone(),
        bases: Vec::new(),
        want: OnceCell::new(),
    };
    for (name, base) in w
        .bases
        .iter()
        .filter(|(n, _)| matches!(*n, "empty" | "dirs"))
    {
        let base_tar = (!base.is_empty()).then(|| {
            let p = w.tmp.path().join(format!("base-{name}.tar"));
            std::fs::write(&p, write_tar(base)).unwrap();
            p
        });
        let mut layers: Vec<&[Change]> = vec![base];
        layers.extend(stack.0.iter().map(|l| &l[..]));
        let fs = Fs::of(&layers)?;
        let model = format!(
            "{}--- mtimes (ns)\n{}",
            fs.render(Render::Dump),
            fs.render(Render::Times)
        );
        let stack_tars: Vec<&Path> = w.tars.iter().map(|p| p.as_path()).collect();
        let flat = c.flat(&Case::with_base(&base_tar, &stack_tars))?;
        if flat != model {
            return Err(format!(
                "base {name}: apply_flat of the stack differs from the model (a test bug)\n{}",
                unified_diff(&model, &flat)
            ));
        }
        let k_squash = merged_view(
            c.tmp.path(),
            &c.store(&Case::with_base(&base_tar, &[&sq_path])),
        )?;
        // What one layer cannot say for every base (`Fs::drop_inexpressible`), as in the model
        // law: judged against the model's reading of the squash output over this base.
        let got = Fs::of(&[base, &parse_layer(&sq)?])?;
        let probe = {
            let mut l: Vec<&[Change]> = vec![&w.bases[2].1];
            l.extend(stack.0.iter().map(|l| &l[..]));
            Fs::of(&l)?
        };
        let mut want = fs.clone();
        want.drop_inexpressible(&got, &Fs::of(&[base])?, &probe);
        let model = format!(
            "{}--- mtimes (ns)\n{}",
            want.render(Render::Dump),
            want.render(Render::Times)
        );
        if k_squash != model {
            return Err(format!(
                "base {name}: kernel view of base + squash differs from the model\n{}",
                unified_diff(&model, &k_squash)
            ));
        }
        // The stack itself through layerapply: its quirks are not squash's, so they are noted,
        // not failed (semantics.md A4: links to lower files are copies, so groups may differ).
        let k_stack = c
            .try_store(&Case::with_base(&base_tar, &stack_tars))
            .and_then(|ld| merged_view(c.tmp.path(), &ld));
        match k_stack {
            Ok(k) if no_links(&k) == no_links(&model) => {}
            Ok(k) => eprintln!(
                "note: layerapply (not squash): kernel view of base {name} + stack differs from \
                 the model\nstack:{stack:?}\n{}",
                unified_diff(&no_links(&model), &no_links(&k))
            ),
            Err(e) => eprintln!("note: layerapply (not squash): {e}\nstack:{stack:?}"),
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The checks can fail: tampered squash outputs are rejected

/// A hand-written spec as a stack of the model (read back from gen_layers.py's tars).
fn stack_of_spec(spec: &str) -> Stack {
    let t = scratch();
    Stack(
        gen_layers(t.path(), spec)
            .iter()
            .map(|p| read_layer(p))
            .collect(),
    )
}

/// Squash `spec` (rewritten by the `tar` crate), tamper with the plain output, and return the
/// model law's verdict on the tampered output.
fn model_verdict_on_tampered(spec: &str, mode: &str) -> Result<(), String> {
    let w = write_stack(&stack_of_spec(spec));
    let (sq, fl) = squash_written(&w, 1).unwrap_or_else(|e| panic!("{e}"));
    model_law(&w, &sq, &fl).unwrap_or_else(|e| panic!("untampered output must pass: {e}"));
    let path = w.tmp.path().join("sq.tar");
    let bad = tamper(&path, mode);
    let before = raw_from_tar(&sq).unwrap();
    let after = raw_from_tar(&std::fs::read(&bad).unwrap()).unwrap();
    let moved = before
        .iter()
        .map(|m| &m.name)
        .ne(after.iter().map(|m| &m.name));
    assert!(
        moved,
        "{mode}: the tamper changed nothing; is the output missing markers?"
    );
    model_law(&w, &std::fs::read(&bad).unwrap(), &fl)
}

#[test]
fn tampered_outputs_fail_the_model_law() {
    let e = model_verdict_on_tampered(RECREATE, "drop-opaque")
        .expect_err("dropping the opaque markers must break the law");
    assert!(e.contains("differs from base + stack"), "{e}");
    let e = model_verdict_on_tampered(BASE_ONLY, "drop-whiteouts")
        .expect_err("dropping the whiteouts must break the law");
    assert!(e.contains("base dirs: base + squash differs"), "{e}");
    let e = model_verdict_on_tampered(HARDLINKS, "links-first")
        .expect_err("links before their targets must fail the raw checks");
    assert!(e.contains("does not follow its target"), "{e}");
}
