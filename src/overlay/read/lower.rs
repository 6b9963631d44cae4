//! Read-only lookups in the merged view of a stack of overlay-native layer dirs, as the kernel
//! would show it (overlayfs.rst "Directories", "whiteouts and opaque directories"): a dir merges
//! with the same dir below unless it is opaque; a non-dir or a char 0/0 whiteout hides everything
//! below it at that path. Used by the store to settle what a layer's native form depends on.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Mutex;

use crate::entry::MAX_DEPTH;
use crate::error::{Error, Result, Rule};
use crate::overlay::Namespace;
use crate::path::is_within;
use crate::path::show;
use crate::resolve::{joined, resolve, Last, Options as ResolveOptions, Outcome, Seen, Tree};
use crate::sys::{self, FileType, Stat};

/// The merged view as the resolver sees it: lookups by path (the memo makes each one step).
struct MergedTree<'v>(&'v LowerView);

impl Tree for MergedTree<'_> {
    type Error = Error;

    fn look(&mut self, _name: &[u8], path: &[u8]) -> Result<Seen> {
        Ok(
            match self.0.lookup(path).map_err(|e| Error::io(show(path), e))? {
                Found::Dir { .. } => Seen::Dir,
                Found::Other { layer, st } if sys::file_type(&st) == FileType::Symlink => {
                    Seen::Symlink(
                        self.0
                            .read_link(layer, path)
                            .map_err(|e| Error::io(show(path), e))?,
                    )
                }
                Found::Other { .. } => Seen::Other,
                Found::Absent => Seen::Missing,
            },
        )
    }

    fn down(&mut self, _name: &[u8], _path: &[u8]) -> Result<()> {
        Ok(())
    }

    fn up(&mut self, _path: &[u8]) -> Result<()> {
        Ok(())
    }

    fn root(&mut self) {}
}

/// A merged dir: the layers (index, open dir) that have it, topmost first, down to an opaque one.
type Merged = Vec<(usize, OwnedFd)>;

/// A stack of finished layer dirs.
pub struct LowerView {
    /// Diff dirs, topmost first.
    layers: Vec<OwnedFd>,
    ns: Namespace,
    /// The last dir found and its merged layers (open): a lookup below it starts there, so the
    /// parents-first walks of a deep chain cost O(layers) per dir, not O(depth * layers).
    memo: Mutex<Option<(Vec<u8>, Merged)>>,
}

/// What the merged view has at a path (symlinks not followed).
pub enum Found {
    /// A directory; `layer` is the topmost layer that has it (its attributes are the merged ones).
    Dir {
        /// Index into the stack, topmost first.
        layer: usize,
        /// Its stat.
        st: Stat,
    },
    /// A non-directory from `layer`.
    Other {
        /// Index into the stack.
        layer: usize,
        /// Its stat.
        st: Stat,
    },
    /// Nothing (never there, or whited out).
    Absent,
}

fn is_whiteout(st: &Stat) -> bool {
    sys::file_type(st) == FileType::CharacterDevice && sys::rdev(st) == (0, 0)
}

impl LowerView {
    /// A view of `layers` (diff dir fds, topmost first) whose markers live in `ns`.
    pub fn new(layers: Vec<OwnedFd>, ns: Namespace) -> Self {
        LowerView {
            layers,
            ns,
            memo: Mutex::new(None),
        }
    }

    /// The marker namespace the layers are read in.
    pub fn ns(&self) -> Namespace {
        self.ns
    }

    /// Nothing below.
    pub fn is_empty(&self) -> bool {
        self.layers.is_empty()
    }

    /// A whiteout: a char 0/0 device, or (in a mount's own layers, written by the kernel with
    /// `userxattr` or by other tools) an empty file with the `<ns>.overlay.whiteout` xattr.
    fn whiteout_at(&self, dir: &OwnedFd, name: &[u8], st: &Stat) -> io::Result<bool> {
        if is_whiteout(st) {
            return Ok(true);
        }
        if sys::file_type(st) == FileType::RegularFile && st.st_size == 0 {
            let raw = sys::lget_all_xattrs_at(dir.as_fd(), name)?;
            return Ok(crate::overlay::split_xattrs(self.ns, raw).0.whiteout);
        }
        Ok(false)
    }

    /// The names the merged dir at `path` shows, sorted (none if it is not a dir).
    pub fn merged_names(&self, path: &[u8]) -> io::Result<Vec<Vec<u8>>> {
        let dirs: Merged = if path.is_empty() {
            let mut all = Vec::with_capacity(self.layers.len());
            for (i, l) in self.layers.iter().enumerate() {
                all.push((i, l.try_clone()?));
            }
            all
        } else {
            if !matches!(self.lookup(path)?, Found::Dir { .. }) {
                return Ok(Vec::new());
            }
            let memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
            let (_, act) = memo.as_ref().expect("a found dir is memoized");
            act.iter()
                .map(|(i, fd)| Ok((*i, fd.try_clone()?)))
                .collect::<io::Result<_>>()?
        };
        let mut seen = std::collections::BTreeMap::new();
        for (_, fd) in &dirs {
            for n in sys::read_dir_names(fd)? {
                if seen.contains_key(&n) {
                    continue;
                }
                // Gone since the listing: not there.
                let st = match sys::lstatat(fd, &n) {
                    Ok(st) => st,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                let visible = !self.whiteout_at(fd, &n, &st)?;
                seen.insert(n, visible);
            }
        }
        Ok(seen
            .into_iter()
            .filter(|(_, v)| *v)
            .map(|(n, _)| n)
            .collect())
    }

    fn opaque(&self, fd: &OwnedFd) -> io::Result<bool> {
        Ok(sys::fgetxattr(fd.as_fd(), &self.ns.name("opaque"))?.as_deref() == Some(b"y"))
    }

    /// What is at `path` (no symlink followed, not even in parents: a lower symlink parent means the
    /// merged view has no dir there).
    pub fn lookup(&self, path: &[u8]) -> io::Result<Found> {
        self.lookup_from(path, 0)
    }

    /// [`LowerView::lookup`] in the layers `from..` only (where a metacopy file's data is: below
    /// the layer that holds the metacopy).
    pub fn lookup_from(&self, path: &[u8], from: usize) -> io::Result<Found> {
        if self.layers.len() <= from {
            return Ok(Found::Absent);
        }
        if path.is_empty() {
            let st = sys::fstat(&self.layers[from])?;
            return Ok(Found::Dir { layer: from, st });
        }
        let mut memo = self.memo.lock().unwrap_or_else(|p| p.into_inner());
        // Start at the memo when it is an ancestor of `path`, else at the layer roots.
        let (mut active, rest) = match memo.take() {
            Some((m, act)) if from == 0 && is_within(path, &m) && path.len() > m.len() => {
                let rest = &path[m.len() + usize::from(!m.is_empty())..];
                (act, rest)
            }
            _ => {
                let mut act = Vec::with_capacity(self.layers.len());
                for (i, l) in self.layers.iter().enumerate().skip(from) {
                    act.push((i, l.try_clone()?));
                }
                (act, path)
            }
        };
        let comps: Vec<&[u8]> = rest.split(|&b| b == b'/').collect();
        for (k, comp) in comps.iter().enumerate() {
            let last = k + 1 == comps.len();
            let mut next: Vec<(usize, OwnedFd)> = Vec::new();
            let mut top_dir: Option<(usize, Stat)> = None;
            for (i, fd) in &active {
                let st = match sys::lstatat(fd, comp) {
                    Ok(st) => st,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                };
                if self.whiteout_at(fd, comp, &st)? {
                    break;
                }
                if sys::file_type(&st) != FileType::Directory {
                    if next.is_empty() {
                        return Ok(if last {
                            Found::Other { layer: *i, st }
                        } else {
                            Found::Absent
                        });
                    }
                    break;
                }
                let sub = sys::openat_dir(fd, comp)?;
                let opaque = self.opaque(&sub)?;
                top_dir.get_or_insert((*i, st));
                next.push((*i, sub));
                if opaque {
                    break;
                }
            }
            match top_dir {
                None => return Ok(Found::Absent),
                Some((layer, st)) if last => {
                    if from == 0 {
                        *memo = Some((path.to_vec(), next));
                    }
                    return Ok(Found::Dir { layer, st });
                }
                Some(_) => active = next,
            }
        }
        unreachable!("the last component returns")
    }

    /// `path` with every symlink on the way resolved inside the root (the final one too when
    /// `follow_last`), as a flat extraction of the stack would resolve it; components missing below
    /// are kept (they are to be created). `None` when a parent is a non-directory.
    pub fn resolve(&self, path: &[u8], follow_last: bool) -> Result<Option<Vec<u8>>> {
        let opts = ResolveOptions {
            last: if follow_last {
                Last::Follow
            } else {
                Last::Keep
            },
            stop_at_missing: false,
            max_depth: MAX_DEPTH,
        };
        match resolve(&mut MergedTree(self), path, &opts)? {
            Outcome::Found { path, rest } => Ok(Some(joined(&path, &rest))),
            Outcome::NotDir { .. } | Outcome::Missing => Ok(None),
            Outcome::Loop { path: here } => {
                Err(Error::rejected(show(path), Rule::SymlinkLoop, show(&here)))
            }
            Outcome::TooDeep => Err(crate::resolve::too_deep(path)),
        }
    }

    /// The parent dir of `path` inside layer `layer` (the path has no symlinks there).
    pub fn open_parent(&self, layer: usize, path: &[u8]) -> io::Result<OwnedFd> {
        let dir = match path.iter().rposition(|&b| b == b'/') {
            Some(i) => &path[..i],
            None => &path[..0],
        };
        if !dir.is_empty() {
            if let Some((m, act)) = &*self.memo.lock().unwrap_or_else(|p| p.into_inner()) {
                if m.as_slice() == dir {
                    if let Some((_, fd)) = act.iter().find(|(i, _)| *i == layer) {
                        return fd.try_clone();
                    }
                }
            }
        }
        let mut fd = self.layers[layer].try_clone()?;
        let comps: Vec<&[u8]> = path.split(|&b| b == b'/').collect();
        for c in &comps[..comps.len().saturating_sub(1)] {
            fd = sys::openat_dir(&fd, c)?;
        }
        Ok(fd)
    }

    /// The dir `path` itself inside layer `layer`.
    pub fn open_dir(&self, layer: usize, path: &[u8]) -> io::Result<OwnedFd> {
        if path.is_empty() {
            return self.layers[layer].try_clone();
        }
        // Usually the dir the last lookup found.
        if let Some((m, act)) = &*self.memo.lock().unwrap_or_else(|p| p.into_inner()) {
            if m.as_slice() == path {
                if let Some((_, fd)) = act.iter().find(|(i, _)| *i == layer) {
                    return fd.try_clone();
                }
            }
        }
        let parent = self.open_parent(layer, path)?;
        sys::openat_dir(&parent, last(path))
    }

    fn read_link(&self, layer: usize, path: &[u8]) -> io::Result<Vec<u8>> {
        let parent = self.open_parent(layer, path)?;
        sys::readlinkat(&parent, last(path))
    }
}

/// Last component of a path.
pub fn last(path: &[u8]) -> &[u8] {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => &path[i + 1..],
        None => path,
    }
}
