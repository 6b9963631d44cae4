//! overlayfs on-disk conventions: which xattr namespace holds the markers, what is private to the
//! kernel, and how an image's own `<ns>.overlay.*` xattrs are escaped (overlayfs.rst, "Nesting overlayfs
//! mounts"; kernel `fs/overlayfs/util.c` `ovl_xattr_table`).

pub(crate) mod read;
pub(crate) mod write;

use crate::entry::Xattrs;
use crate::sys::{self, FileType};

/// The namespace of the overlay-private xattrs: `trusted.overlay.*` for ordinary mounts,
/// `user.overlay.*` for `userxattr` (rootless) mounts. The other namespace is plain image data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Namespace {
    /// `trusted.overlay.*`
    #[default]
    Trusted,
    /// `user.overlay.*`
    User,
}

impl Namespace {
    /// `trusted.overlay.` or `user.overlay.`.
    pub fn prefix(self) -> &'static [u8] {
        match self {
            Namespace::Trusted => b"trusted.overlay.",
            Namespace::User => b"user.overlay.",
        }
    }

    /// Full name of marker `suffix` (`opaque`, `redirect`, ...) in this namespace.
    pub fn name(self, suffix: &str) -> Vec<u8> {
        let mut v = self.prefix().to_vec();
        v.extend_from_slice(suffix.as_bytes());
        v
    }
}

/// A whiteout on disk: a char device 0/0, whatever its mode, owner or link count.
pub(crate) fn is_whiteout(st: &sys::Stat) -> bool {
    sys::file_type(st) == FileType::CharacterDevice && sys::rdev(st) == (0, 0)
}

/// A dir as one item of a `lowerdir=` mount option: the kernel splits the list on `:` and takes
/// `\` as an escape (overlayfs.rst, "Multiple lower layers").
pub fn escape_lowerdir(p: &str) -> String {
    p.replace('\\', "\\\\").replace(':', "\\:")
}

/// The dirs of a `lowerdir=` value, topmost first: split at each `:` that is not escaped, with
/// `\:` and `\\` read back (the inverse of [`escape_lowerdir`] joined by `:`).
pub fn split_lowerdir(s: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some(n) => cur.push(n),
                None => cur.push('\\'),
            },
            ':' => out.push(std::mem::take(&mut cur)),
            c => cur.push(c),
        }
    }
    out.push(cur);
    out.retain(|d| !d.is_empty());
    out
}

/// Xattrs that are host state rather than image content: an SELinux label is assigned by the host's
/// policy (osbuild#598 shows leaked labels breaking hosts), an NFSv4 ACL only means something on NFS.
pub const HOST_ONLY_XATTRS: &[&[u8]] = &[b"security.selinux", b"system.nfs4_acl"];

/// The overlay markers found on one upper node, split from its image xattrs.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Markers {
    /// `<ns>.overlay.opaque` value, if present (`y` = opaque; `x` = may contain xwhiteouts, not opaque).
    pub opaque: Option<Vec<u8>>,
    /// `<ns>.overlay.redirect` value: where a renamed dir's (or metacopy file's) content lives.
    pub redirect: Option<Vec<u8>>,
    /// `<ns>.overlay.metacopy` present: the upper holds metadata only, data is in a lower.
    pub metacopy: bool,
    /// `<ns>.overlay.whiteout` present: a zero-size regular file with it is an xwhiteout.
    pub whiteout: bool,
}

impl Markers {
    /// The dir is opaque: the value is exactly `y` (moby `len==1 && [0]=='y'`; `x` is not opaque).
    pub fn is_opaque(&self) -> bool {
        self.opaque.as_deref() == Some(b"y")
    }
}

/// Split raw xattrs of an upper node into overlay markers and the xattrs the image carries.
///
/// Private names of the active namespace are consumed; an escaped `<ns>.overlay.overlay.X` is the
/// image's own `<ns>.overlay.X` and comes back unescaped; host-only xattrs are dropped. The result is
/// sorted by name so the tar bytes do not depend on the filesystem's listing order.
pub fn split_xattrs(ns: Namespace, raw: Xattrs) -> (Markers, Xattrs) {
    let prefix = ns.prefix();
    let mut m = Markers::default();
    let mut kept = Vec::with_capacity(raw.len());
    for (name, value) in raw {
        if let Some(rest) = name.strip_prefix(prefix) {
            if rest.starts_with(b"overlay.") {
                let mut un = prefix.to_vec();
                un.extend_from_slice(&rest[b"overlay.".len()..]);
                kept.push((un, value));
                continue;
            }
            match rest {
                b"opaque" => m.opaque = Some(value),
                b"redirect" => m.redirect = Some(value),
                b"metacopy" => m.metacopy = true,
                b"whiteout" => m.whiteout = true,
                _ => {} // origin, impure, nlink, upper, uuid, protattr, ...: kernel bookkeeping
            }
            continue;
        }
        if HOST_ONLY_XATTRS.contains(&name.as_slice()) {
            continue;
        }
        kept.push((name, value));
    }
    kept.sort();
    (m, kept)
}

#[cfg(test)]
mod tests {
    #[test]
    fn lowerdir_strings_split_as_the_kernel_reads_them() {
        assert_eq!(split_lowerdir("l/A:l/B"), ["l/A", "l/B"]);
        assert_eq!(split_lowerdir("/a\\:b:/c\\\\d"), ["/a:b", "/c\\d"]);
        let dirs = ["/x:y", "/p\\q", "/plain"];
        let joined: Vec<String> = dirs.iter().map(|d| escape_lowerdir(d)).collect();
        assert_eq!(split_lowerdir(&joined.join(":")), dirs);
        assert_eq!(split_lowerdir("/one"), ["/one"]);
    }

    use super::*;

    fn x(n: &str, v: &str) -> (Vec<u8>, Vec<u8>) {
        (n.as_bytes().to_vec(), v.as_bytes().to_vec())
    }

    #[test]
    fn private_names_are_consumed_and_escaped_ones_unescaped() {
        let raw = vec![
            x("user.b", "1"),
            x("trusted.overlay.opaque", "y"),
            x("trusted.overlay.overlay.opaque", "y"),
            x("trusted.overlay.origin", "..."),
            x("security.selinux", "label"),
            x("user.overlay.opaque", "y"),
            x("security.capability", "cap"),
        ];
        let (m, kept) = split_xattrs(Namespace::Trusted, raw);
        assert!(m.is_opaque());
        assert_eq!(
            kept,
            vec![
                x("security.capability", "cap"),
                x("trusted.overlay.opaque", "y"),
                x("user.b", "1"),
                x("user.overlay.opaque", "y"),
            ]
        );
    }

    #[test]
    fn user_namespace_leaves_trusted_alone() {
        let raw = vec![
            x("trusted.overlay.opaque", "y"),
            x("user.overlay.opaque", "x"),
        ];
        let (m, kept) = split_xattrs(Namespace::User, raw);
        assert!(!m.is_opaque(), "x is not opaque");
        assert_eq!(m.opaque.as_deref(), Some(&b"x"[..]));
        assert_eq!(kept, vec![x("trusted.overlay.opaque", "y")]);
    }
}
