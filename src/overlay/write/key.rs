//! Path keys that share their bytes: the dirs one walk makes are all prefixes of one path, so
//! they point into one buffer. A chain of N implied dirs costs O(N + path length) memory instead of
//! O(N * path length) (a 10 KB tar naming a 4,000-level path would otherwise take gigabytes).

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::sync::Arc;

/// A layer path (components joined by `/`, "" = the root), possibly a prefix of a shared buffer.
#[derive(Clone)]
pub(crate) struct Key {
    buf: Arc<[u8]>,
    len: usize,
}

impl Key {
    /// The first `len` bytes of `buf`.
    pub(crate) fn prefix(buf: &Arc<[u8]>, len: usize) -> Key {
        debug_assert!(len <= buf.len());
        Key {
            buf: buf.clone(),
            len,
        }
    }

    pub(crate) fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl From<&[u8]> for Key {
    fn from(p: &[u8]) -> Key {
        Key {
            len: p.len(),
            buf: p.into(),
        }
    }
}

impl From<Vec<u8>> for Key {
    fn from(p: Vec<u8>) -> Key {
        Key {
            len: p.len(),
            buf: p.into(),
        }
    }
}

impl std::ops::Deref for Key {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        self.as_slice()
    }
}

impl Borrow<[u8]> for Key {
    fn borrow(&self) -> &[u8] {
        self.as_slice()
    }
}

impl PartialEq for Key {
    fn eq(&self, o: &Key) -> bool {
        self.as_slice() == o.as_slice()
    }
}

impl Eq for Key {}

impl PartialOrd for Key {
    fn partial_cmp(&self, o: &Key) -> Option<Ordering> {
        Some(self.cmp(o))
    }
}

impl Ord for Key {
    fn cmp(&self, o: &Key) -> Ordering {
        self.as_slice().cmp(o.as_slice())
    }
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(self.as_slice()))
    }
}

/// The keys of `map` at `path` or below it: a range scan, so forgetting a subtree costs its
/// size, not the size of the whole map.
pub(crate) fn within<K, V>(map: &std::collections::BTreeMap<K, V>, path: &[u8]) -> Vec<K>
where
    K: Borrow<[u8]> + Ord + Clone,
{
    use std::ops::Bound;
    map.range::<[u8], _>((Bound::Included(path), Bound::Unbounded))
        .map(|(k, _)| k)
        .take_while(|k| <K as Borrow<[u8]>>::borrow(k).starts_with(path))
        .filter(|k| crate::path::is_within(<K as Borrow<[u8]>>::borrow(k), path))
        .cloned()
        .collect()
}

/// The same for a set.
pub(crate) fn within_set<K>(set: &std::collections::BTreeSet<K>, path: &[u8]) -> Vec<K>
where
    K: Borrow<[u8]> + Ord + Clone,
{
    use std::ops::Bound;
    set.range::<[u8], _>((Bound::Included(path), Bound::Unbounded))
        .take_while(|k| <K as Borrow<[u8]>>::borrow(k).starts_with(path))
        .filter(|k| crate::path::is_within(<K as Borrow<[u8]>>::borrow(k), path))
        .cloned()
        .collect()
}

/// Hardlinks whose target is not in this layer, waiting for the lowers: by link path, with their
/// stream position (they are settled in stream order).
#[derive(Default)]
pub(crate) struct Waiting {
    by_link: std::collections::BTreeMap<Vec<u8>, (u64, Vec<u8>)>,
    next: u64,
}

impl Waiting {
    pub(crate) fn push(&mut self, link: Vec<u8>, target: Vec<u8>) {
        self.by_link.insert(link, (self.next, target));
        self.next += 1;
    }

    /// The target a waiting link at `link` stands for.
    pub(crate) fn target_of(&self, link: &[u8]) -> Option<&[u8]> {
        self.by_link.get(link).map(|(_, t)| t.as_slice())
    }

    /// Drop the links at `path` or below; whether any was there.
    pub(crate) fn remove_within(&mut self, path: &[u8]) -> bool {
        let gone = within(&self.by_link, path);
        for k in &gone {
            self.by_link.remove(k);
        }
        !gone.is_empty()
    }

    /// Drop the link at exactly `path`; whether it was there.
    pub(crate) fn remove(&mut self, path: &[u8]) -> bool {
        self.by_link.remove(path).is_some()
    }

    /// All of them, in stream order, leaving none.
    pub(crate) fn take(&mut self) -> Vec<(Vec<u8>, Vec<u8>)> {
        let mut v: Vec<(u64, Vec<u8>, Vec<u8>)> = std::mem::take(&mut self.by_link)
            .into_iter()
            .map(|(l, (n, t))| (n, l, t))
            .collect();
        v.sort_by_key(|(n, _, _)| *n);
        v.into_iter().map(|(_, l, t)| (l, t)).collect()
    }

    /// The first in stream order.
    pub(crate) fn first(&self) -> Option<(&[u8], &[u8])> {
        self.by_link
            .iter()
            .min_by_key(|(_, (n, _))| *n)
            .map(|(l, (_, t))| (l.as_slice(), t.as_slice()))
    }

    /// Links under `from` now live under `to` (`re` maps a path).
    pub(crate) fn rekey(&mut self, re: impl Fn(&[u8]) -> Vec<u8>) {
        self.by_link = std::mem::take(&mut self.by_link)
            .into_iter()
            .map(|(l, v)| (re(&l), v))
            .collect();
    }
}

/// `path` or one of its ancestors is in `set`. Not one lookup per ancestor (O(depth * path)):
/// the greatest member <= `path` is either an ancestor, or shares a prefix with `path` above
/// which no ancestor can be a member, so each probe skips at least one level, usually all.
pub(crate) fn ancestor_in(set: &std::collections::BTreeSet<Vec<u8>>, path: &[u8]) -> bool {
    use std::ops::Bound;
    let mut p: &[u8] = path;
    loop {
        let Some(o) = set
            .range::<[u8], _>((Bound::Unbounded, Bound::Included(p)))
            .next_back()
        else {
            return false;
        };
        if crate::path::is_within(p, o) {
            return true;
        }
        // A member ancestor `a` of `p` sorts at or before `o`, so it is a prefix of `p[..lcp]`
        // (`lcp < p.len()`: `o` is neither `p` nor longer with `p` as its prefix).
        let lcp = o.iter().zip(p).take_while(|(a, b)| a == b).count();
        if p[lcp] == b'/' {
            p = &p[..lcp];
            continue;
        }
        match p[..lcp].iter().rposition(|&b| b == b'/') {
            Some(i) => p = &p[..i],
            None => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    fn naive(set: &BTreeSet<Vec<u8>>, path: &[u8]) -> bool {
        set.iter().any(|o| crate::path::is_within(path, o))
    }

    /// Against the obvious definition, over every path and set drawn from a small alphabet
    /// whose bytes sort on both sides of `/` (`-` and `0` around it).
    #[test]
    fn ancestor_in_matches_the_definition() {
        let comps: [&[u8]; 5] = [b"a", b"a-", b"a0", b"b", b"a-b"];
        let mut paths: Vec<Vec<u8>> = Vec::new();
        for x in comps {
            paths.push(x.to_vec());
            for y in comps {
                paths.push([x, b"/", y].concat());
                for z in comps {
                    paths.push([x, b"/", y, b"/", z].concat());
                }
            }
        }
        let mut seed = 1u64;
        for _ in 0..3000 {
            let mut set = BTreeSet::new();
            for p in &paths {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                if seed >> 60 == 0 {
                    set.insert(p.clone());
                }
            }
            for p in &paths {
                assert_eq!(ancestor_in(&set, p), naive(&set, p), "{set:?} {p:?}");
            }
        }
    }
}
