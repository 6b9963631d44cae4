//! Layer paths: a [`RelPath`] is what every entry's path is, and the byte-path helpers every module
//! shares (one `join`, one `split`, one printer for messages).
//!
//! A layer path is relative to the layer root, `/`-separated bytes (Linux names need not be
//! UTF-8), with no empty, `.` or `..` component and no leading or trailing `/`; the root is the
//! empty path. The tar reader makes them from archive names (cleaning `./`, refusing `..`), the
//! upper walk from directory listings; nothing else constructs one, so no consumer re-checks.

use std::fmt;
use std::ops::Deref;

use crate::entry::MAX_DEPTH;

/// A clean path inside a layer (see the module docs). Derefs to its bytes.
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelPath(Vec<u8>);

impl RelPath {
    /// The layer root (the empty path).
    pub fn root() -> RelPath {
        RelPath(Vec::new())
    }

    /// `bytes` if it is a clean layer path: no NUL, no empty, `.` or `..` component, no leading or
    /// trailing `/`.
    pub fn new(bytes: Vec<u8>) -> Result<RelPath, &'static str> {
        if bytes.is_empty() {
            return Ok(RelPath(bytes));
        }
        if bytes.contains(&0) {
            return Err("NUL byte in name");
        }
        for c in bytes.split(|&b| b == b'/') {
            match c {
                b"" => return Err("empty component"),
                b"." => return Err("'.' component"),
                b".." => return Err("'..' component"),
                _ => {}
            }
        }
        Ok(RelPath(bytes))
    }

    /// A path made by joining names that were clean already (directory listings, the names of
    /// entries read earlier): not checked again outside debug builds.
    pub(crate) fn from_clean(bytes: Vec<u8>) -> RelPath {
        debug_assert!(RelPath::new(bytes.clone()).is_ok(), "{bytes:?}");
        RelPath(bytes)
    }

    /// This path with one more component, `name` (a directory entry's name: no `/`, not `.` or
    /// `..`, which `readdir` never returns for a child).
    pub fn child(&self, name: &[u8]) -> RelPath {
        debug_assert!(RelPath::new(name.to_vec()).is_ok() && !name.contains(&b'/'));
        RelPath(join(&self.0, name))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

impl Deref for RelPath {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.0
    }
}

impl AsRef<[u8]> for RelPath {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

impl std::borrow::Borrow<[u8]> for RelPath {
    fn borrow(&self) -> &[u8] {
        &self.0
    }
}

impl PartialEq<[u8]> for RelPath {
    fn eq(&self, other: &[u8]) -> bool {
        self.0 == other
    }
}

impl PartialEq<&[u8]> for RelPath {
    fn eq(&self, other: &&[u8]) -> bool {
        self.0 == *other
    }
}

impl PartialEq<Vec<u8>> for RelPath {
    fn eq(&self, other: &Vec<u8>) -> bool {
        &self.0 == other
    }
}

impl<const N: usize> PartialEq<[u8; N]> for RelPath {
    fn eq(&self, other: &[u8; N]) -> bool {
        self.0 == other
    }
}

impl<const N: usize> PartialEq<&[u8; N]> for RelPath {
    fn eq(&self, other: &&[u8; N]) -> bool {
        self.0 == *other
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

impl fmt::Display for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&show(&self.0))
    }
}

/// `(dir, name)` of a path (`dir` empty at the top level).
pub(crate) fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&path[..0], path),
    }
}

/// `dir/name` (`name` alone when `dir` is the root).
pub(crate) fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(dir.len() + 1 + name.len());
    v.extend_from_slice(dir);
    if !v.is_empty() {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    v
}

/// `p` is `base` or below it.
pub(crate) fn is_within(p: &[u8], base: &[u8]) -> bool {
    base.is_empty() || p == base || (p.starts_with(base) && p.get(base.len()) == Some(&b'/'))
}

/// At most [`MAX_DEPTH`] components (checked when a member is read, before anything acts on it).
pub(crate) fn check_depth(path: &[u8]) -> std::result::Result<(), String> {
    let n = depth(path);
    if n > MAX_DEPTH {
        return Err(format!("{n} components, at most {MAX_DEPTH}"));
    }
    Ok(())
}

/// The number of components of a clean path ("" = the root, 0).
pub(crate) fn depth(path: &[u8]) -> usize {
    if path.is_empty() {
        0
    } else {
        1 + path.iter().filter(|&&b| b == b'/').count()
    }
}

/// Lossy text of a path for messages (`.` for the root). A path of more than 1 KiB keeps its
/// first and last 256 bytes around the count of those left out, so an error about a deep path is
/// still one readable line.
pub(crate) fn show(p: &[u8]) -> String {
    const KEEP: usize = 256;
    if p.is_empty() {
        ".".into()
    } else if p.len() > 4 * KEEP {
        format!(
            "{}[...{} bytes...]{}",
            String::from_utf8_lossy(&p[..KEEP]),
            p.len() - 2 * KEEP,
            String::from_utf8_lossy(&p[p.len() - KEEP..])
        )
    } else {
        String::from_utf8_lossy(p).into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_clean_paths_are_rel_paths() {
        for ok in [&b""[..], b"a", b"a/b", b"a/.b", b"..a/b..", b".wh.x"] {
            assert!(RelPath::new(ok.to_vec()).is_ok(), "{ok:?}");
        }
        for bad in [
            &b"/a"[..],
            b"a/",
            b"a//b",
            b"./a",
            b"a/./b",
            b"..",
            b"a/../b",
            b"a\0b",
        ] {
            assert!(RelPath::new(bad.to_vec()).is_err(), "{bad:?}");
        }
        assert_eq!(RelPath::root().child(b"a").child(b"b").as_bytes(), b"a/b");
        assert_eq!(split(b"a/b/c"), (&b"a/b"[..], &b"c"[..]));
        assert_eq!(split(b"c"), (&b""[..], &b"c"[..]));
        assert!(is_within(b"a/b", b"a") && is_within(b"a", b"a") && is_within(b"x", b""));
        assert!(!is_within(b"ab", b"a"));
    }
}
