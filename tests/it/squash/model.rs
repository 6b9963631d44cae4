//! The reference model of the OCI layer rules (a flat path map) and the layers it reads and
//! writes: the `tar` crate parser and writer, gen_layers.py spec sections, the standard bases.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Read;

use sha2::{Digest, Sha256};

// ---------------------------------------------------------------------------------------------
// The reference model: OCI layer semantics on a flat path map (semantics.md A2, A3, A4, A9;
// the rules apply_flat.py's docstring lists). Parents are never resolved through symlinks here:
// generated stacks do not write through symlinks, and a model error says so if one ever does.

pub(super) const OPQ: &str = ".wh..wh..opq";

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Kind {
    File(Vec<u8>),
    Dir,
    Symlink(String),
    Char(u32, u32),
    Block(u32, u32),
    Fifo,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Attrs {
    pub(super) mode: u32,
    pub(super) uid: u64,
    pub(super) gid: u64,
    pub(super) mtime_ns: i128,
    pub(super) xattrs: BTreeMap<String, Vec<u8>>,
}

impl Attrs {
    /// A missing parent: 0755 root:root, mtime 0, no xattrs.
    fn implied() -> Attrs {
        Attrs {
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
            xattrs: BTreeMap::new(),
        }
    }
}

#[derive(Clone, Debug)]
struct Inode {
    kind: Kind,
    attrs: Attrs,
}

/// One member of a layer, as the model reads it (paths cleaned, no leading `/` or `./`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Change {
    /// `P/.wh.N`: delete `P/N` as the lower layers made it.
    Whiteout(String),
    /// `D/.wh..wh..opq` (`""` is the root): delete what the lower layers put below `D`.
    Opaque(String),
    /// A file, dir, symlink, device or fifo.
    Node(String, Kind, Attrs),
    /// A hardlink: path, target.
    Link(String, String),
}

impl Change {
    pub(super) fn is_marker(&self) -> bool {
        matches!(self, Change::Whiteout(_) | Change::Opaque(_))
    }
}

pub(super) fn parent_of(p: &str) -> &str {
    p.rsplit_once('/').map_or("", |(d, _)| d)
}

pub(super) fn base_of(p: &str) -> &str {
    p.rsplit_once('/').map_or(p, |(_, b)| b)
}

pub(super) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() {
        name.to_string()
    } else {
        format!("{dir}/{name}")
    }
}

/// The proper ancestors of `p`, shallowest first (the root `""` left out).
pub(super) fn ancestors(p: &str) -> Vec<&str> {
    p.match_indices('/').map(|(i, _)| &p[..i]).collect()
}

/// A tar name as a path: leading `/` and `./` stripped, empty and `.` components dropped.
pub(super) fn clean(name: &str) -> Result<String, String> {
    let parts: Vec<&str> = name
        .split('/')
        .filter(|c| !c.is_empty() && *c != ".")
        .collect();
    if parts.contains(&"..") {
        return Err(format!("`..` in {name:?}"));
    }
    Ok(parts.join("/"))
}

pub(super) fn parse_pax_time(v: &[u8]) -> Result<i128, String> {
    let s = std::str::from_utf8(v).map_err(|e| e.to_string())?;
    let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
    let (sec, frac) = s.split_once('.').unwrap_or((s, ""));
    let frac = format!("{frac:0<9}");
    let ns = sec.parse::<i128>().map_err(|e| format!("mtime {s}: {e}"))? * 1_000_000_000
        + frac[..9]
            .parse::<i128>()
            .map_err(|e| format!("mtime {s}: {e}"))?;
    Ok(if neg { -ns } else { ns })
}

pub(super) fn io_err(what: &str) -> impl Fn(std::io::Error) -> String + '_ {
    move |e| format!("{what}: {e}")
}

/// Read a plain layer tar with the `tar` crate.
pub(super) fn parse_layer(data: &[u8]) -> Result<Vec<Change>, String> {
    let mut out = Vec::new();
    let mut ar = tar::Archive::new(data);
    for e in ar.entries().map_err(io_err("tar"))? {
        let mut e = e.map_err(io_err("tar entry"))?;
        let typ = e.header().entry_type();
        if typ.is_pax_global_extensions() {
            continue;
        }
        let path = clean(&String::from_utf8_lossy(&e.path_bytes()))?;
        let link = e
            .link_name_bytes()
            .map(|l| String::from_utf8_lossy(&l).into_owned());
        let mut pax: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        if let Some(exts) = e.pax_extensions().map_err(io_err(&path))? {
            for r in exts {
                let r = r.map_err(io_err(&path))?;
                let k = r.key().map_err(|e| format!("{path}: {e}"))?.to_string();
                pax.insert(k, r.value_bytes().to_vec());
            }
        }
        let base = base_of(&path);
        if let Some(rest) = base.strip_prefix(".wh.") {
            let dir = parent_of(&path).to_string();
            if base == OPQ {
                out.push(Change::Opaque(dir));
            } else if rest.is_empty() || rest == "." || rest == ".." || rest.starts_with(".wh.") {
                return Err(format!("{path}: invalid whiteout"));
            } else {
                out.push(Change::Whiteout(join(&dir, rest)));
            }
            continue;
        }
        if path.is_empty() {
            continue; // the root itself
        }
        let h = e.header();
        let secs = h.mtime().map_err(io_err(&path))?;
        let mtime_ns = match pax.get("mtime") {
            Some(v) => parse_pax_time(v)?,
            None => secs as i128 * 1_000_000_000,
        };
        let xattrs = pax
            .iter()
            .filter_map(|(k, v)| {
                let n = k.strip_prefix("SCHILY.xattr.")?;
                (n != "security.selinux").then(|| (n.to_string(), v.clone()))
            })
            .collect();
        let mut attrs = Attrs {
            mode: h.mode().map_err(io_err(&path))? & 0o7777,
            uid: h.uid().map_err(io_err(&path))?,
            gid: h.gid().map_err(io_err(&path))?,
            mtime_ns,
            xattrs,
        };
        let dev = || -> Result<(u32, u32), String> {
            Ok((
                h.device_major().map_err(io_err(&path))?.unwrap_or(0),
                h.device_minor().map_err(io_err(&path))?.unwrap_or(0),
            ))
        };
        let kind = match typ {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Symlink => {
                attrs.mode = 0o777;
                Kind::Symlink(link.ok_or(format!("{path}: symlink without target"))?)
            }
            tar::EntryType::Link => {
                let t = clean(&link.ok_or(format!("{path}: hardlink without target"))?)?;
                out.push(Change::Link(path, t));
                continue;
            }
            tar::EntryType::Char => {
                let (a, b) = dev()?;
                Kind::Char(a, b)
            }
            tar::EntryType::Block => {
                let (a, b) = dev()?;
                Kind::Block(a, b)
            }
            tar::EntryType::Fifo => Kind::Fifo,
            t if t.is_file() => {
                let mut d = Vec::new();
                e.read_to_end(&mut d).map_err(io_err(&path))?;
                Kind::File(d)
            }
            t => return Err(format!("{path}: unexpected member type {t:?}")),
        };
        out.push(Change::Node(path, kind, attrs));
    }
    Ok(out)
}

/// The state of `p`'s parent chain.
#[derive(PartialEq, Eq)]
enum Parent {
    Dir,
    Missing,
    NotDir,
}

/// A flat filesystem: path -> inode (hardlinked names share one).
#[derive(Clone, Debug, Default)]
pub(super) struct Fs {
    paths: BTreeMap<String, usize>,
    inodes: Vec<Inode>,
}

impl Fs {
    /// Apply layers, bottom first, to the empty root.
    pub(super) fn of(layers: &[&[Change]]) -> Result<Fs, String> {
        let mut fs = Fs::default();
        for (i, l) in layers.iter().enumerate() {
            fs.apply_layer(l).map_err(|e| format!("layer {i}: {e}"))?;
        }
        Ok(fs)
    }

    pub(super) fn kind(&self, p: &str) -> Option<&Kind> {
        self.paths.get(p).map(|&i| &self.inodes[i].kind)
    }

    pub(super) fn is_dir(&self, p: &str) -> bool {
        p.is_empty() || self.kind(p) == Some(&Kind::Dir)
    }

    fn parent_state(&self, p: &str) -> Result<Parent, String> {
        for a in ancestors(p) {
            match self.kind(a) {
                None => return Ok(Parent::Missing),
                Some(Kind::Dir) => {}
                Some(Kind::Symlink(_)) => {
                    return Err(format!(
                        "{p}: parent {a} is a symlink (the model does not follow)"
                    ))
                }
                Some(_) => return Ok(Parent::NotDir),
            }
        }
        Ok(Parent::Dir)
    }

    fn below(&self, p: &str) -> Vec<String> {
        let prefix = if p.is_empty() {
            String::new()
        } else {
            format!("{p}/")
        };
        self.paths
            .range(prefix.clone()..)
            .take_while(|(k, _)| k.starts_with(&prefix))
            .map(|(k, _)| k.clone())
            .collect()
    }

    /// Remove `p` and everything below it.
    fn remove(&mut self, p: &str) {
        self.paths.remove(p);
        for k in self.below(p) {
            self.paths.remove(&k);
        }
    }

    fn insert(&mut self, p: &str, kind: Kind, attrs: Attrs) {
        self.inodes.push(Inode { kind, attrs });
        self.paths.insert(p.to_string(), self.inodes.len() - 1);
    }

    /// A whiteout or opaque marker, against the tree as the lower layers left it.
    pub(super) fn apply_marker(&mut self, c: &Change) -> Result<(), String> {
        match c {
            Change::Whiteout(p) => {
                if self.parent_state(p)? == Parent::Dir {
                    self.remove(p);
                }
            }
            Change::Opaque(d) if d.is_empty() => self.paths.clear(),
            Change::Opaque(d) => match self.parent_state(d)? {
                Parent::Dir => match self.kind(d) {
                    Some(Kind::Dir) => {
                        for k in self.below(d) {
                            self.paths.remove(&k);
                        }
                    }
                    Some(Kind::Symlink(_)) => {
                        // apply_flat resolves the marker's dir like a parent: through the link.
                        if let Some(t) = self.resolve_dir(d)? {
                            for k in self.below(&t) {
                                self.paths.remove(&k);
                            }
                        }
                    }
                    _ => {}
                },
                Parent::Missing | Parent::NotDir => {}
            },
            _ => unreachable!(),
        }
        Ok(())
    }

    /// After a layer's deletions: an opaque marker's dir that is missing now is made (with its
    /// missing parents; 0755 root, mtime 0). It belongs to this layer, so this layer's whiteouts
    /// leave it alone.
    pub(super) fn make_marker_dirs(&mut self, layer: &[Change]) {
        for c in layer {
            let Change::Opaque(d) = c else { continue };
            if d.is_empty() || self.kind(d).is_some() {
                continue;
            }
            let mut path_ok = true;
            for a in ancestors(d) {
                match self.kind(a) {
                    None => self.insert(a, Kind::Dir, Attrs::implied()),
                    Some(Kind::Dir) => {}
                    Some(_) => {
                        path_ok = false;
                        break;
                    }
                }
            }
            if path_ok {
                self.insert(d, Kind::Dir, Attrs::implied());
            }
        }
    }

    /// Where dir `d` resolves with chroot semantics (symlinks followed, `..` stops at the root,
    /// at most 40 links); None if it is missing or not a dir.
    fn resolve_dir(&self, d: &str) -> Result<Option<String>, String> {
        let mut cur: Vec<String> = Vec::new();
        let mut queue: std::collections::VecDeque<String> =
            d.split('/').map(String::from).collect();
        let mut hops = 0;
        while let Some(c) = queue.pop_front() {
            match c.as_str() {
                "" | "." => continue,
                ".." => {
                    cur.pop();
                    continue;
                }
                _ => {}
            }
            let p = join(&cur.join("/"), &c);
            match self.kind(&p) {
                Some(Kind::Symlink(t)) => {
                    hops += 1;
                    if hops > 40 {
                        return Err(format!("{d}: too many symlinks"));
                    }
                    if t.starts_with('/') {
                        cur.clear();
                    }
                    for (i, part) in t.split('/').enumerate() {
                        queue.insert(i, part.to_string());
                    }
                }
                Some(Kind::Dir) => cur.push(c),
                _ => return Ok(None),
            }
        }
        Ok(Some(cur.join("/")))
    }

    /// Any other member, in order.
    pub(super) fn apply_entry(&mut self, c: &Change) -> Result<(), String> {
        let p = match c {
            Change::Node(p, ..) | Change::Link(p, _) => p,
            _ => unreachable!(),
        };
        for a in ancestors(p) {
            match self.kind(a) {
                None => self.insert(a, Kind::Dir, Attrs::implied()),
                Some(Kind::Dir) => {}
                Some(Kind::Symlink(_)) => {
                    return Err(format!(
                        "{p}: parent {a} is a symlink (the model does not follow)"
                    ))
                }
                Some(_) => return Err(format!("{p}: parent {a} is not a directory")),
            }
        }
        match c {
            Change::Node(p, Kind::Dir, attrs) => {
                if self.kind(p) == Some(&Kind::Dir) {
                    let i = self.paths[p];
                    self.inodes[i].attrs = attrs.clone();
                } else {
                    self.remove(p);
                    self.insert(p, Kind::Dir, attrs.clone());
                }
            }
            Change::Node(p, kind, attrs) => {
                self.remove(p);
                self.insert(p, kind.clone(), attrs.clone());
            }
            Change::Link(p, t) => {
                self.remove(p);
                let i = match (self.parent_state(t)?, self.paths.get(t)) {
                    (Parent::Dir, Some(&i)) if self.inodes[i].kind != Kind::Dir => i,
                    _ => return Err(format!("hardlink {p} -> {t}: no such non-directory")),
                };
                self.paths.insert(p.clone(), i);
            }
            _ => unreachable!(),
        }
        Ok(())
    }

    /// One layer: its whiteouts and opaque markers first (they only touch what lower layers
    /// made), then its other members in order. An opaque marker for a missing dir creates it
    /// (0755 root, mtime 0) as semantics.md A2.2, the kernel and moby do; apply_flat.py does not,
    /// which only a `--flatten` output can tell apart (see `Case::law_flatten`).
    fn apply_layer(&mut self, layer: &[Change]) -> Result<(), String> {
        for c in layer.iter().filter(|c| c.is_marker()) {
            self.apply_marker(c)?;
        }
        self.make_marker_dirs(layer);
        for c in layer.iter().filter(|c| !c.is_marker()) {
            self.apply_entry(c)?;
        }
        Ok(())
    }

    /// The one thing a single layer cannot say for every base: "make dir D if it is missing,
    /// else leave it as it is". A stack says it when D appears only as an implied parent and
    /// everything below it is deleted later. Over the empty base D must exist (0755 root,
    /// mtime 0), over a base with D it keeps the base's attributes; a squash output can only pick
    /// one (a header for D, or none). Over a base without D, drop such dirs from the stack's
    /// tree when the squash's tree lacks them (the bases that have D are checked in full), if D
    /// really keeps a base's attributes: `probe` is the stack over the dirs base, where D has
    /// the base's (the range did not delete D first; if it did, a header is exact everywhere).
    pub(super) fn drop_inexpressible(&mut self, got: &Fs, base: &Fs, probe: &Fs) {
        let dirs: Vec<String> = self.paths.keys().rev().cloned().collect();
        for d in dirs {
            let i = self.paths[&d];
            let n = &self.inodes[i];
            if n.kind == Kind::Dir
                && n.attrs == Attrs::implied()
                && self.below(&d).is_empty()
                && !got.paths.contains_key(&d)
                && !base.paths.contains_key(&d)
                && probe
                    .paths
                    .get(&d)
                    .is_some_and(|&j| probe.inodes[j].attrs != Attrs::implied())
            {
                self.paths.remove(&d);
            }
        }
    }

    /// Non-dirs that hardlinks could name.
    pub(super) fn non_dirs(&self) -> Vec<String> {
        self.paths
            .iter()
            .filter(|(_, &i)| self.inodes[i].kind != Kind::Dir)
            .map(|(p, _)| p.clone())
            .collect()
    }

    /// The tree as text. `Dump`: exactly `dump.py`'s format (whole-second mtimes, none for
    /// symlinks). `Exact`: the same with every mtime in ns. `Times`: the `MTIMES_NS` listing.
    pub(super) fn render(&self, how: Render) -> String {
        let mut groups: HashMap<usize, &str> = HashMap::new();
        let mut count: HashMap<usize, usize> = HashMap::new();
        for (p, &i) in &self.paths {
            if self.inodes[i].kind != Kind::Dir {
                groups.entry(i).or_insert(p); // paths are sorted: the first is the smallest
                *count.entry(i).or_default() += 1;
            }
        }
        let mut rows: Vec<String> = Vec::new();
        for (p, &i) in &self.paths {
            let n = &self.inodes[i];
            let a = &n.attrs;
            if how == Render::Times {
                rows.push(format!("{p} {}", a.mtime_ns));
                continue;
            }
            let (t, mode) = match &n.kind {
                Kind::File(_) => ("f", a.mode),
                Kind::Dir => ("d", a.mode),
                Kind::Symlink(_) => ("l", 0o777),
                Kind::Char(..) => ("c", a.mode),
                Kind::Block(..) => ("b", a.mode),
                Kind::Fifo => ("p", a.mode),
            };
            let mut f = vec![
                esc(p.as_bytes()),
                t.to_string(),
                format!("{mode:04o}"),
                a.uid.to_string(),
                a.gid.to_string(),
            ];
            match &n.kind {
                Kind::File(d) => {
                    f.push(d.len().to_string());
                    f.push(hex::encode(Sha256::digest(d)));
                }
                Kind::Symlink(t) => {
                    f.push("->".into());
                    f.push(esc(t.as_bytes()));
                }
                Kind::Char(x, y) | Kind::Block(x, y) => f.push(format!("{x}:{y}")),
                _ => {}
            }
            match (&n.kind, how) {
                (_, Render::Exact) => f.push(format!("mtime={}", a.mtime_ns)),
                (Kind::Symlink(_), _) => {}
                _ => f.push(format!("mtime={}", a.mtime_ns.div_euclid(1_000_000_000))),
            }
            for (k, v) in &a.xattrs {
                f.push(format!("{}={}", esc(k.as_bytes()), hex::encode(v)));
            }
            if count.get(&i).copied().unwrap_or(0) > 1 {
                f.push(format!("link={}", esc(groups[&i].as_bytes())));
            }
            rows.push(f.join(" "));
        }
        if how == Render::Times {
            rows.sort();
        }
        let mut s = rows.join("\n");
        s.push('\n');
        if rows.is_empty() {
            s.clear();
            if how == Render::Times {
                s.push('\n');
            }
        }
        s
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Render {
    Dump,
    Exact,
    Times,
}

/// dump.py's escaping: bytes outside 0x21..0x7e and the backslash as `\xNN`.
fn esc(b: &[u8]) -> String {
    b.iter()
        .map(|&c| {
            if (0x21..=0x7e).contains(&c) && c != b'\\' {
                (c as char).to_string()
            } else {
                format!("\\x{c:02x}")
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Writing layers: the `tar` crate (GNU headers, PAX `x` records for xattrs and fractional mtimes)
// or gen_layers.py specs (Python tarfile, PAX).

fn pax_record(k: &str, v: &[u8]) -> Vec<u8> {
    let body = 1 + k.len() + 1 + v.len() + 1;
    let mut n = body + 1;
    while body + n.to_string().len() != n {
        n = body + n.to_string().len();
    }
    let mut r = format!("{n} {k}=").into_bytes();
    r.extend_from_slice(v);
    r.push(b'\n');
    r
}

fn pax_records(a: &Attrs) -> Vec<u8> {
    let mut data = Vec::new();
    if a.mtime_ns.rem_euclid(1_000_000_000) != 0 {
        let t = format!(
            "{}.{:09}",
            a.mtime_ns.div_euclid(1_000_000_000),
            a.mtime_ns.rem_euclid(1_000_000_000)
        );
        data.extend(pax_record("mtime", t.as_bytes()));
    }
    for (k, v) in &a.xattrs {
        data.extend(pax_record(&format!("SCHILY.xattr.{k}"), v));
    }
    data
}

/// A layer tar, written by the `tar` crate.
pub(super) fn write_tar(layer: &[Change]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let plain = |typ: tar::EntryType, a: &Attrs| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(typ);
        h.set_mode(a.mode);
        h.set_uid(a.uid);
        h.set_gid(a.gid);
        h.set_mtime(a.mtime_ns.div_euclid(1_000_000_000) as u64);
        h.set_size(0);
        h
    };
    let marker = Attrs {
        mode: 0,
        ..Attrs::implied()
    };
    for c in layer {
        match c {
            Change::Whiteout(p) => {
                let name = join(parent_of(p), &format!(".wh.{}", base_of(p)));
                let mut h = plain(tar::EntryType::Regular, &marker);
                b.append_data(&mut h, name, std::io::empty()).unwrap();
            }
            Change::Opaque(d) => {
                let mut h = plain(tar::EntryType::Regular, &marker);
                b.append_data(&mut h, join(d, OPQ), std::io::empty())
                    .unwrap();
            }
            Change::Node(p, kind, a) => {
                let pax = pax_records(a);
                if !pax.is_empty() {
                    let mut x = tar::Header::new_ustar();
                    x.set_path("PaxHeader").unwrap();
                    x.set_entry_type(tar::EntryType::XHeader);
                    x.set_mode(0o644);
                    x.set_size(pax.len() as u64);
                    x.set_cksum();
                    b.append(&x, &pax[..]).unwrap();
                }
                match kind {
                    Kind::File(d) => {
                        let mut h = plain(tar::EntryType::Regular, a);
                        h.set_size(d.len() as u64);
                        b.append_data(&mut h, p, &d[..]).unwrap();
                    }
                    Kind::Dir => {
                        let mut h = plain(tar::EntryType::Directory, a);
                        b.append_data(&mut h, format!("{p}/"), std::io::empty())
                            .unwrap();
                    }
                    Kind::Symlink(t) => {
                        let mut h = plain(tar::EntryType::Symlink, a);
                        b.append_link(&mut h, p, t).unwrap();
                    }
                    Kind::Char(x, y) | Kind::Block(x, y) => {
                        let typ = if matches!(kind, Kind::Char(..)) {
                            tar::EntryType::Char
                        } else {
                            tar::EntryType::Block
                        };
                        let mut h = plain(typ, a);
                        h.set_device_major(*x).unwrap();
                        h.set_device_minor(*y).unwrap();
                        b.append_data(&mut h, p, std::io::empty()).unwrap();
                    }
                    Kind::Fifo => {
                        let mut h = plain(tar::EntryType::Fifo, a);
                        b.append_data(&mut h, p, std::io::empty()).unwrap();
                    }
                }
            }
            Change::Link(p, t) => {
                let mut h = plain(tar::EntryType::Link, &Attrs::implied());
                b.append_link(&mut h, p, t).unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// The same layer as a `gen_layers.py` spec section (for Python tarfile). Names with spaces are
/// escaped; contents are written as `size=`-free text, so only the bases use this.
pub(super) fn spec_section(name: &str, layer: &[Change]) -> String {
    let sp = |s: &str| s.replace(' ', "\\s");
    let mut out = format!("=== {name}\n");
    for c in layer {
        let line = match c {
            Change::Whiteout(p) => format!(
                "w {}",
                sp(&join(parent_of(p), &format!(".wh.{}", base_of(p))))
            ),
            Change::Opaque(d) => format!("w {}", sp(&join(d, OPQ))),
            Change::Link(p, t) => format!("h {} link={}", sp(p), sp(t)),
            Change::Node(p, kind, a) => {
                let (t, extra) = match kind {
                    Kind::File(d) => ("f", format!(" data={}", sp(&String::from_utf8_lossy(d)))),
                    Kind::Dir => ("d", String::new()),
                    Kind::Symlink(t) => ("l", format!(" link={}", sp(t))),
                    _ => panic!("spec_section: only files, dirs and symlinks"),
                };
                let mut l = format!(
                    "{t} {}{extra} mode={:o} uid={} gid={} mtime={}",
                    sp(p),
                    a.mode,
                    a.uid,
                    a.gid,
                    a.mtime_ns / 1_000_000_000
                );
                for (k, v) in &a.xattrs {
                    l.push_str(&format!(" xh.{k}={}", hex::encode(v)));
                }
                l
            }
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Bases

/// Every path a stack names (entries, hardlink targets, whiteout targets, opaque dirs), with
/// their ancestors.
fn mentioned(layers: &[&[Change]]) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for c in layers.iter().flat_map(|l| l.iter()) {
        let ps: Vec<&str> = match c {
            Change::Whiteout(p) | Change::Opaque(p) | Change::Node(p, ..) => vec![p],
            Change::Link(p, t) => vec![p, t],
        };
        for p in ps.into_iter().filter(|p| !p.is_empty()) {
            out.insert(p.to_string());
            out.extend(ancestors(p).into_iter().map(String::from));
        }
    }
    out
}

fn base_attrs(mode: u32, id: u64, secs: i128, tag: &str) -> Attrs {
    Attrs {
        mode,
        uid: id,
        gid: id + 1,
        mtime_ns: secs * 1_000_000_000,
        xattrs: [("user.base".to_string(), tag.as_bytes().to_vec())].into(),
    }
}

/// A base layer: the paths in `kinds` (true = regular file, false = dir with a child file), in
/// path order, plus a top-level file nothing in the stack names.
fn base_layer(kinds: &BTreeMap<String, bool>) -> Vec<Change> {
    let mut out = vec![Change::Node(
        "base-only".into(),
        Kind::File(b"base only".to_vec()),
        base_attrs(0o644, 21, 1_000_000_000, "only"),
    )];
    for (p, &file) in kinds {
        if file {
            out.push(Change::Node(
                p.clone(),
                Kind::File(format!("base file {p}").into_bytes()),
                base_attrs(0o604, 15, 1_222_222_222, "file"),
            ));
        } else {
            out.push(Change::Node(
                p.clone(),
                Kind::Dir,
                base_attrs(0o750, 11, 1_111_111_111, "dir"),
            ));
            out.push(Change::Node(
                join(p, "base-child"),
                Kind::File(format!("base child of {p}").into_bytes()),
                base_attrs(0o640, 13, 1_111_111_112, "child"),
            ));
        }
    }
    out
}

/// The base where every mentioned path is a dir with children.
pub(super) fn dirs_base(layers: &[&[Change]]) -> Vec<Change> {
    base_layer(&mentioned(layers).into_iter().map(|p| (p, false)).collect())
}

/// The base where every mentioned path is a regular file, as far as the stack stays valid:
/// shallowest first, a path becomes a file (its mentioned descendants go) unless the stack then
/// no longer applies.
pub(super) fn files_base(layers: &[&[Change]]) -> Vec<Change> {
    let m = mentioned(layers);
    let mut kinds: BTreeMap<String, bool> = m.iter().map(|p| (p.clone(), false)).collect();
    let mut order: Vec<&String> = m.iter().collect();
    order.sort_by_key(|p| (p.matches('/').count(), p.as_str()));
    for p in order {
        if !kinds.contains_key(p) {
            continue;
        }
        let mut trial = kinds.clone();
        let prefix = format!("{p}/");
        trial.retain(|q, _| !q.starts_with(&prefix));
        trial.insert(p.clone(), true);
        let base = base_layer(&trial);
        let mut all: Vec<&[Change]> = vec![&base];
        all.extend_from_slice(layers);
        if Fs::of(&all).is_ok() {
            kinds = trial;
        }
    }
    base_layer(&kinds)
}
