//! Tar members -> changeset entries: name cleaning, whiteout names, type checks. Pure; every refusal
//! names the member and the rule (image-spec layer.md; semantics.md A2, A3, D).

use crate::entry::{dev_fits, Entry, Kind, Meta};
use crate::error::{Error, Result, Rule};
use crate::path::{check_depth, join, show, RelPath};
use crate::tar::read::TarEntry;
use crate::tar::{OPAQUE_MARKER, WHITEOUT_PREFIX};

/// The layer path of a tar name (the one place a [`RelPath`] is made from untrusted bytes): leading
/// `/`, `./`, empty and `.` components dropped.
/// `..` anywhere is refused rather than resolved, since no layer writer emits it and a lexical `..`
/// after a symlink means something else on disk. The root is the empty path.
pub(crate) fn clean_path(raw: &[u8]) -> std::result::Result<RelPath, &'static str> {
    if raw.contains(&0) {
        return Err("NUL byte in name");
    }
    let mut out = Vec::with_capacity(raw.len());
    for comp in raw.split(|&b| b == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => return Err("'..' component"),
            c => {
                if !out.is_empty() {
                    out.push(b'/');
                }
                out.extend_from_slice(c);
            }
        }
    }
    Ok(RelPath::from_clean(out))
}

/// Whether Linux can hold this xattr (xattr(7): a namespace prefix, a name of at most 255 bytes
/// without NUL, a value of at most 64 KiB). A layer with one that no kernel accepts means nothing
/// on any host; refused here, it names the rule instead of the kernel's `ERANGE` or `EOPNOTSUPP`.
fn xattr_ok(name: &[u8], value: &[u8]) -> std::result::Result<(), String> {
    const NAMESPACES: [&[u8]; 4] = [b"user.", b"trusted.", b"security.", b"system."];
    let shown = String::from_utf8_lossy(name);
    if name.is_empty() {
        return Err("empty xattr name".into());
    }
    if name.contains(&0) {
        return Err(format!("NUL byte in xattr name {shown:?}"));
    }
    // Linux takes them, but a newline in a name reads as a second record to anything that
    // splits PAX headers or `getfattr`/`tar -tvv --xattrs` output by lines (`17 path=evil`).
    if name.iter().any(|&b| b < 0x20 || b == 0x7f) {
        return Err(format!("control character in xattr name {shown:?}"));
    }
    if !NAMESPACES
        .iter()
        .any(|ns| name.len() > ns.len() && name.starts_with(ns))
    {
        return Err(format!(
            "xattr {shown:?} is in no namespace Linux has (user., trusted., security., system.)"
        ));
    }
    if name.len() > 255 {
        return Err(format!("xattr name {shown:?} is longer than 255 bytes"));
    }
    if value.len() > 65536 {
        return Err(format!("xattr {shown:?} has a value longer than 64 KiB"));
    }
    Ok(())
}

/// Convert one tar member into a changeset entry.
pub fn to_entry(te: &TarEntry) -> Result<Entry> {
    let raw_show = show(&te.path);
    let path = clean_path(&te.path).map_err(|d| Error::rejected(&raw_show, Rule::BadPath, d))?;
    let shown = show(&path);
    let reject = |rule: Rule, detail: &str| Error::rejected(&shown, rule, detail);
    check_depth(&path).map_err(|d| reject(Rule::PathTooDeep, &d))?;
    let (dir, base) = match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&path[..0], &path[..]),
    };
    if dir
        .split(|&b| b == b'/')
        .any(|c| c.starts_with(WHITEOUT_PREFIX))
    {
        return Err(reject(
            Rule::WhiteoutName,
            ".wh. prefix on a directory component",
        ));
    }
    for (name, value) in &te.xattrs {
        xattr_ok(name, value).map_err(|d| reject(Rule::XattrName, &d))?;
    }
    // Linux ids are 32 bits and chown(2) reads 4294967295 as "leave as is": GNU tar clamps
    // larger ids (and fails), Go and Python keep them, an extraction would leave the file root's.
    for (what, id) in [("uid", te.uid), ("gid", te.gid)] {
        if id >= u64::from(u32::MAX) {
            return Err(reject(
                Rule::IdRange,
                &format!("{what} {id}, Linux ids are at most 4294967294"),
            ));
        }
    }
    let meta = Meta {
        mode: te.mode & 0o7777,
        uid: te.uid,
        gid: te.gid,
        mtime: te.mtime,
        mtime_nsec: te.mtime_nsec,
        xattrs: te.xattrs.clone(),
    };
    // Whiteouts: only the name matters, whatever type and size the member claims (umoci does the
    // same); their data, if any, is skipped by the reader.
    if base == OPAQUE_MARKER {
        return Ok(Entry {
            path: RelPath::from_clean(dir.to_vec()),
            kind: Kind::Opaque,
            meta,
        });
    }
    if let Some(name) = base.strip_prefix(WHITEOUT_PREFIX) {
        if name.starts_with(WHITEOUT_PREFIX) {
            return Err(reject(
                Rule::WhiteoutName,
                "AUFS metadata names (.wh..wh.*) other than .wh..wh..opq",
            ));
        }
        if matches!(name, b"" | b"." | b"..") {
            return Err(reject(Rule::WhiteoutName, "nothing to delete"));
        }
        return Ok(Entry {
            path: RelPath::from_clean(join(dir, name)),
            kind: Kind::Whiteout,
            meta,
        });
    }
    let kind = match te.typeflag {
        b'0' => Kind::File { size: te.size },
        b'5' => Kind::Dir,
        b'2' => {
            if te.linkname.contains(&0) {
                return Err(reject(Rule::BadPath, "NUL byte in symlink target"));
            }
            // symlink(2) takes at most PATH_MAX - 1 bytes: apply could not make it, and squash
            // must not pass on what apply refuses.
            if te.linkname.len() >= 4096 {
                return Err(reject(
                    Rule::BadPath,
                    &format!(
                        "symlink target of {} bytes (Linux holds at most 4095)",
                        te.linkname.len()
                    ),
                ));
            }
            if te.linkname.is_empty() {
                return Err(reject(Rule::BadPath, "empty symlink target"));
            }
            Kind::Symlink {
                target: te.linkname.clone(),
            }
        }
        b'1' => {
            let target = clean_path(&te.linkname)
                .map_err(|d| {
                    reject(
                        Rule::Hardlink,
                        &format!("target {:?}: {d}", show(&te.linkname)),
                    )
                })?
                .into_bytes();
            if target.is_empty() {
                return Err(reject(Rule::Hardlink, "target is the layer root"));
            }
            check_depth(&target)
                .map_err(|d| reject(Rule::PathTooDeep, &format!("hardlink target: {d}")))?;
            Kind::Hardlink { target }
        }
        b'3' | b'4' => {
            let (major, minor) = (te.devmajor, te.devminor);
            if !dev_fits(major, minor) {
                return Err(reject(
                    Rule::DeviceRange,
                    &format!(
                        "{major}:{minor} does not fit the kernel's 12-bit major / 20-bit minor"
                    ),
                ));
            }
            if te.typeflag == b'3' {
                if major == 0 && minor == 0 {
                    return Err(reject(Rule::DeviceIsWhiteout, ""));
                }
                Kind::Char { major, minor }
            } else {
                Kind::Block { major, minor }
            }
        }
        b'6' => Kind::Fifo,
        t => {
            return Err(reject(
                Rule::UnsupportedType,
                &format!("typeflag {:?}", t as char),
            ))
        }
    };
    if path.is_empty() && kind != Kind::Dir {
        return Err(reject(Rule::RootType, ""));
    }
    Ok(Entry { path, kind, meta })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn te(path: &str, t: u8) -> TarEntry {
        TarEntry {
            path: path.as_bytes().to_vec(),
            typeflag: t,
            ..Default::default()
        }
    }

    #[test]
    fn cleaning() {
        assert_eq!(clean_path(b"/a//b/./c/").unwrap(), b"a/b/c");
        assert_eq!(clean_path(b"./").unwrap(), b"");
        assert!(clean_path(b"a/../b").is_err());
        assert!(clean_path(b"a\0b").is_err());
    }

    #[test]
    fn whiteouts() {
        assert_eq!(to_entry(&te("a/.wh.b", b'0')).unwrap().kind, Kind::Whiteout);
        assert_eq!(to_entry(&te("a/.wh.b", b'0')).unwrap().path, b"a/b");
        let o = to_entry(&te("./a/.wh..wh..opq", b'0')).unwrap();
        assert_eq!((o.kind, o.path.to_vec()), (Kind::Opaque, b"a".to_vec()));
        let r = to_entry(&te(".wh..wh..opq", b'0')).unwrap();
        assert_eq!(r.path, b"");
        for bad in [".wh.", "a/.wh..", "a/.wh...", ".wh..wh.plnk", ".wh.x/y"] {
            assert_eq!(
                to_entry(&te(bad, b'0')).unwrap_err().rule(),
                Some(Rule::WhiteoutName),
                "{bad}"
            );
        }
    }

    #[test]
    fn devices_and_root() {
        let mut d = te("dev/x", b'3');
        assert_eq!(
            to_entry(&d).unwrap_err().rule(),
            Some(Rule::DeviceIsWhiteout)
        );
        d.devmajor = 4096;
        assert_eq!(to_entry(&d).unwrap_err().rule(), Some(Rule::DeviceRange));
        assert_eq!(
            to_entry(&te("./", b'2')).unwrap_err().rule(),
            Some(Rule::BadPath)
        );
        let mut s = te("/", b'2');
        s.linkname = b"x".to_vec();
        assert_eq!(to_entry(&s).unwrap_err().rule(), Some(Rule::RootType));
        assert_eq!(
            to_entry(&te("x", b'S')).unwrap_err().rule(),
            Some(Rule::UnsupportedType)
        );
    }
}
