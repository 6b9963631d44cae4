//! Raw output checks: no duplicate paths, parents before children, hardlinks after their
//! targets, opaque markers right after their dir, no redundant markers, no `.wh.` with --flatten.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use super::model::{ancestors, base_of, clean, io_err, join, parent_of, OPQ};
use crate::support::*;

// ---------------------------------------------------------------------------------------------
// Raw output checks

/// A member as the raw checks see it: cleaned name, typeflag, cleaned link target.
#[derive(Clone, Debug)]
pub(super) struct Raw {
    pub(super) name: String,
    typ: char,
    link: String,
}

pub(super) fn raw_from_members(ms: &[Member]) -> Vec<Raw> {
    ms.iter()
        .map(|m| Raw {
            name: clean(&m.name).unwrap_or_else(|e| panic!("{e}")),
            typ: m.typ,
            link: if m.typ == '1' {
                clean(&m.link).unwrap_or_else(|e| panic!("{e}"))
            } else {
                m.link.clone()
            },
        })
        .collect()
}

pub(super) fn raw_from_tar(data: &[u8]) -> Result<Vec<Raw>, String> {
    let mut out = Vec::new();
    let mut ar = tar::Archive::new(data);
    for e in ar.entries().map_err(io_err("tar"))? {
        let e = e.map_err(io_err("tar entry"))?;
        let typ = e.header().entry_type();
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned())
            .unwrap_or_default();
        out.push(Raw {
            name: clean(&String::from_utf8_lossy(&e.path_bytes()))?,
            typ: typ.as_byte() as char,
            link: if typ == tar::EntryType::Link {
                clean(&link)?
            } else {
                link
            },
        });
    }
    Ok(out)
}

/// What is wrong with the order and the markers of a squash output (empty when nothing is).
pub(super) fn raw_problems(ms: &[Raw], flatten: bool) -> Vec<String> {
    let mut probs = Vec::new();
    let is_wh = |n: &str| base_of(n).starts_with(".wh.");
    let mut first: HashMap<&str, usize> = HashMap::new();
    for (i, m) in ms.iter().enumerate() {
        if let Some(j) = first.insert(&m.name, i) {
            probs.push(format!("duplicate path {:?} (members {j} and {i})", m.name));
            first.insert(&m.name, j);
        }
    }
    let opaque: BTreeSet<&str> = ms
        .iter()
        .filter(|m| base_of(&m.name) == OPQ)
        .map(|m| parent_of(&m.name))
        .collect();
    let whited: BTreeSet<String> = ms
        .iter()
        .filter(|m| is_wh(&m.name) && base_of(&m.name) != OPQ)
        .map(|m| join(parent_of(&m.name), &base_of(&m.name)[4..]))
        .collect();
    let non_dirs: BTreeSet<&str> = ms
        .iter()
        .filter(|m| !is_wh(&m.name) && m.typ != '5')
        .map(|m| m.name.as_str())
        .collect();
    for (i, m) in ms.iter().enumerate() {
        let n = m.name.as_str();
        if flatten && n.split('/').any(|c| c.starts_with(".wh.")) {
            probs.push(format!("--flatten output has {n:?}"));
        }
        let parent = parent_of(n);
        if let Some(&j) = first.get(parent) {
            if j > i {
                probs.push(format!(
                    "{n:?} (member {i}) comes before its parent (member {j})"
                ));
            }
        }
        if m.typ == '1' {
            // A target the output does not have is a base file (never with --flatten).
            match first.get(m.link.as_str()) {
                Some(&j) if j < i && ms[j].typ != '5' && !is_wh(&ms[j].name) => {}
                None if !flatten => {}
                _ => probs.push(format!(
                    "hardlink {n:?} (member {i}) -> {:?} does not follow its target",
                    m.link
                )),
            }
        }
        if base_of(n) == OPQ {
            if let Some(&j) = first.get(parent).filter(|_| !parent.is_empty()) {
                if j + 1 != i {
                    probs.push(format!(
                        "opaque marker {n:?} (member {i}) is not right after its dir (member {j})"
                    ));
                }
            }
        } else if is_wh(n) {
            let target = join(parent, &base_of(n)[4..]);
            // (A whiteout with a dir of the same name is the other way to say "a fresh dir".)
            if non_dirs.contains(target.as_str()) {
                probs.push(format!("redundant {n:?}: the output also has {target:?}"));
            }
            let mut up: Vec<&str> = vec![""];
            up.extend(ancestors(&target));
            if let Some(d) = up.iter().find(|d| opaque.contains(**d)) {
                probs.push(format!("redundant {n:?}: {d:?} is opaque in the output"));
            }
            if let Some(a) = ancestors(&target).iter().find(|a| whited.contains(**a)) {
                probs.push(format!(
                    "redundant {n:?}: {a:?} is whited out in the output"
                ));
            }
        }
    }
    probs
}

pub(super) fn assert_raw_ok(tar: &Path, flatten: bool) {
    let ms = raw_from_members(&tar_members(tar));
    let probs = raw_problems(&ms, flatten);
    assert!(
        probs.is_empty(),
        "{}: {}\nmembers:\n{}",
        tar.display(),
        probs.join("\n"),
        ms.iter()
            .map(|m| format!("  {} {} {}", m.typ, m.name, m.link))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Dirs with an opaque marker in a tar.
pub(super) fn opaque_dirs(tar: &Path) -> BTreeSet<String> {
    raw_from_members(&tar_members(tar))
        .iter()
        .filter(|m| base_of(&m.name) == OPQ)
        .map(|m| parent_of(&m.name).to_string())
        .collect()
}

/// Dirs of a tar that hide whatever the base has below them: opaque, or whited out and re-made.
pub(super) fn fresh_dirs(tar: &Path) -> BTreeSet<String> {
    let ms = raw_from_members(&tar_members(tar));
    let wh: BTreeSet<String> = whiteouts(tar).into_iter().collect();
    let mut out = opaque_dirs(tar);
    out.extend(
        ms.iter()
            .filter(|m| m.typ == '5' && wh.contains(&m.name))
            .map(|m| m.name.clone()),
    );
    out
}

/// Whiteout targets in a tar.
pub(super) fn whiteouts(tar: &Path) -> Vec<String> {
    raw_from_members(&tar_members(tar))
        .iter()
        .filter(|m| base_of(&m.name).starts_with(".wh.") && base_of(&m.name) != OPQ)
        .map(|m| join(parent_of(&m.name), &base_of(&m.name)[4..]))
        .collect()
}
