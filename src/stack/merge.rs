//! The squash algebra: fold the layers' indexes, bottom first, into one tree of what the range
//! changes relative to any base, then lay that tree out as an output plan.
//!
//! The tree holds, per path, what the stack leaves there *relative to the base*: nothing said
//! (`Pass`: the base's own entry, if any, shows), deleted (`Whiteout`), a directory (with the
//! latest header, and `fresh` when it hides everything the base had below it: the opaque case), or
//! a non-directory (one "inode", shared by hardlinked names). Each layer acts in two steps, as the
//! OCI rules and our applier have it: first its whiteouts and opaque markers on what the layers
//! below made, then its other members in archive order (a non-dir replaces a whole subtree, a dir
//! over a dir keeps the children and takes the new header). Parent paths are resolved through the
//! symlinks the range itself made, with chroot semantics, as a flat extraction would.
//!
//! The plan is a depth-first walk, children in byte order with whiteouts first: every dir before
//! its children, its opaque marker right after it, every hardlink after the name that carries the
//! data. A member that comes out unchanged (same path, same role) is copied as raw bytes.

use std::collections::BTreeMap;

use crate::entry::{Entry, Kind, Meta, MAX_DEPTH};
use crate::error::{Error, Result, Rule};
use crate::path::{show, RelPath};
use crate::resolve::{
    joined as join_rest, resolve, Last, Options as ResolveOptions, Outcome, Seen, Tree,
};
use crate::stack::index::LayerIndex;

/// A member of a layer: (layer, member) indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MRef {
    /// Layer index, bottom first.
    pub layer: usize,
    /// Member index in that layer.
    pub member: usize,
}

/// One step of the output plan (what [`Merger::run`] returns, in output order).
#[derive(Debug, Clone)]
pub enum Step {
    /// Bytes `start..end` of a layer's uncompressed tar, copied as they are.
    Raw {
        /// Layer index.
        layer: usize,
        /// First byte.
        start: u64,
        /// End (exclusive).
        end: u64,
    },
    /// Below here, paths are inside the dir `name` of the current dir (nothing is written).
    /// Dirs are entered and left in the order the walk visits them, so a dir that has no member
    /// of its own needs no path in the plan: a chain of N such dirs costs O(N) memory, not the
    /// O(N^2) of N full paths (a 1 MB, 4,095-level path would take gigabytes).
    Enter(Vec<u8>),
    /// Back to the parent dir.
    Leave,
    /// A dir at the current path with default attributes (0755, root, mtime 0): what an applier
    /// gives a missing parent.
    SynthDir,
    /// An entry encoded anew; a file's data is copied from `(layer, offset)`.
    Entry {
        /// The entry.
        entry: Entry,
        /// For files: layer index and data offset.
        data: Option<(usize, u64)>,
        /// The index keeps no xattr values (they may be megabytes a member): `(layer, start)` of
        /// the member whose headers hold them, read again when the entry is written.
        xattrs: Option<(usize, u64)>,
    },
}

#[derive(Debug, Clone, Copy)]
enum Header {
    /// A layer's dir member: the latest one wins. With the layer since which the path has been
    /// a dir by members of the range (not only by markers).
    Member(MRef, usize),
    /// No member, and the base's entry (if any) is hidden: the output needs a header of its own
    /// (0755, root, mtime 0: what an applier gives a missing parent). Made by that layer.
    Synth(usize),
    /// No member; the base's dir (if any) keeps its attributes, so the output names none.
    /// Made by that layer's opaque marker (or the root).
    Implied(usize),
}

#[derive(Debug, Clone)]
enum State {
    Pass,
    Whiteout,
    Dir {
        header: Header,
        /// Hides everything the base has below the path.
        fresh: bool,
        /// Made where the range had deleted the path or put a non-dir: the base's entry at the
        /// path, whatever it is (a symlink, say), goes entirely. Written as `.wh.NAME` before the
        /// dir, which every applier reads the same way, rather than as an opaque marker, which an
        /// applier that takes markers first would resolve through a base symlink.
        replaced: bool,
    },
    NonDir {
        inode: usize,
        by: MRef,
    },
}

#[derive(Debug, Clone)]
struct Node {
    state: State,
    kids: BTreeMap<Vec<u8>, Node>,
}

impl Node {
    fn new(state: State) -> Node {
        Node {
            state,
            kids: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Clone)]
enum Inode {
    /// Created by this member (a file, symlink, device or fifo).
    Member(MRef),
    /// A hardlink into the base, to this path; valid only if the range leaves the path alone.
    Base { target: Vec<Vec<u8>>, by: MRef },
}

/// What a path is in the tree.
struct Look<'t> {
    node: Option<&'t Node>,
    /// An ancestor is deleted or not a dir: the path cannot exist.
    hidden: bool,
    /// An ancestor is a fresh dir (or the base is empty): the base has nothing at the path.
    fresh_above: bool,
}

/// A path as its components.
type Comps = Vec<Vec<u8>>;

/// The merged tree as the resolver sees it: the nodes down to the current dir (`None` below a
/// name the tree does not have, or under a non-dir or whiteout, where no symlink of the range
/// can be). Every component is a dir to squash, which resolves and checks parents apart.
struct MergeTree<'m, 'a> {
    merger: &'m Merger<'a>,
    stack: Vec<Option<&'m Node>>,
    layer: usize,
    /// The first symlink of `layer` followed.
    own: Option<Vec<u8>>,
}

impl<'m> MergeTree<'m, '_> {
    fn child(&self, name: &[u8]) -> Option<&'m Node> {
        let parent = (*self.stack.last().expect("root"))?;
        match parent.state {
            State::Dir { .. } | State::Pass => parent.kids.get(name),
            State::Whiteout | State::NonDir { .. } => None,
        }
    }
}

impl Tree for MergeTree<'_, '_> {
    type Error = std::convert::Infallible;

    fn look(&mut self, name: &[u8], path: &[u8]) -> std::result::Result<Seen, Self::Error> {
        if let Some(State::NonDir { inode, .. }) = self.child(name).map(|n| &n.state) {
            if let Inode::Member(m) = &self.merger.inodes[*inode] {
                if let Kind::Symlink { target } = &self.merger.member(*m).kind {
                    if m.layer == self.layer && self.own.is_none() {
                        self.own = Some(path.to_vec());
                    }
                    return Ok(Seen::Symlink(target.clone()));
                }
            }
        }
        Ok(Seen::Dir)
    }

    fn down(&mut self, name: &[u8], _path: &[u8]) -> std::result::Result<(), Self::Error> {
        let kid = self.child(name);
        self.stack.push(kid);
        Ok(())
    }

    fn up(&mut self, _path: &[u8]) -> std::result::Result<(), Self::Error> {
        self.stack.pop();
        Ok(())
    }

    fn root(&mut self) {
        self.stack.truncate(1);
    }
}

/// The fold.
pub struct Merger<'a> {
    layers: &'a [LayerIndex],
    root: Node,
    inodes: Vec<Inode>,
    flatten: bool,
}

fn comps(path: &[u8]) -> Vec<Vec<u8>> {
    if path.is_empty() {
        return Vec::new();
    }
    path.split(|&b| b == b'/').map(<[u8]>::to_vec).collect()
}

fn joined(c: &[Vec<u8>]) -> Vec<u8> {
    c.join(&b'/')
}

impl<'a> Merger<'a> {
    /// A fold over `layers` (bottom first). `flatten`: the base is empty.
    pub fn new(layers: &'a [LayerIndex], flatten: bool) -> Self {
        Merger {
            layers,
            root: Node::new(State::Dir {
                header: Header::Implied(0),
                fresh: flatten,
                replaced: false,
            }),
            inodes: Vec::new(),
            flatten,
        }
    }

    fn member(&self, m: MRef) -> &'a Entry {
        &self.layers[m.layer].members[m.member].entry
    }

    fn reject(&self, m: MRef, rule: Rule, detail: impl Into<String>) -> Error {
        Error::rejected(show(&self.member(m).path), rule, detail)
            .in_layer(&self.layers[m.layer].label)
    }

    /// Fold every layer.
    pub fn run(mut self) -> Result<Vec<Step>> {
        for layer in 0..self.layers.len() {
            self.layer(layer)?;
        }
        self.check_base_links()?;
        Ok(self.plan())
    }

    fn layer(&mut self, layer: usize) -> Result<()> {
        let members = &self.layers[layer].members;
        // Step 1: deletions act on the layers below only, wherever they stand in the tar. A dir
        // that an opaque marker makes where there is none is the layer's own, which its
        // whiteouts leave alone: made again after them (shallow first, so that a dir's marker
        // does not clear what another marker makes below it).
        let mut opaque = Vec::new();
        for (i, m) in members.iter().enumerate() {
            let r = MRef { layer, member: i };
            match m.entry.kind {
                Kind::Whiteout => {
                    let c = self.resolve(&m.entry.path, r)?;
                    self.whiteout(&c);
                }
                Kind::Opaque => {
                    let c = self.resolve(&m.entry.path, r)?;
                    self.clear(&c, layer);
                    opaque.push(c);
                }
                _ => {}
            }
        }
        opaque.sort_by_key(Vec::len);
        for c in opaque {
            let look = self.look(&c);
            if !matches!(
                look.node.map(|n| &n.state),
                Some(State::Dir { .. } | State::Pass)
            ) {
                self.clear(&c, layer);
            }
        }
        // Step 2: the layer's own members, in order; the last of duplicates wins.
        for (i, m) in members.iter().enumerate() {
            let r = MRef { layer, member: i };
            match &m.entry.kind {
                // Markers act in step 1 only: a marker whose dir is not there (a file of this
                // layer, say) changes nothing, as in a flat extraction. Here they are only
                // checked against the symlinks the layer made before them.
                Kind::Whiteout | Kind::Opaque => self.check_marker(r)?,
                Kind::Dir => {
                    let c = self.resolve(&m.entry.path, r)?;
                    self.check_parents(&c, r)?;
                    let node = self.make_node(&c, layer);
                    node.state = match node.state {
                        State::Dir {
                            header,
                            fresh,
                            replaced,
                        } => State::Dir {
                            header: Header::Member(
                                r,
                                match header {
                                    Header::Member(_, since) | Header::Synth(since) => since,
                                    Header::Implied(_) => layer,
                                },
                            ),
                            fresh,
                            replaced,
                        },
                        State::Pass => State::Dir {
                            header: Header::Member(r, layer),
                            fresh: false,
                            replaced: false,
                        },
                        State::Whiteout | State::NonDir { .. } => {
                            node.kids.clear();
                            State::Dir {
                                header: Header::Member(r, layer),
                                fresh: true,
                                replaced: true,
                            }
                        }
                    };
                }
                Kind::Hardlink { target } => {
                    let c = self.resolve(&m.entry.path, r)?;
                    if c.is_empty() {
                        return Err(self.reject(r, Rule::RootType, "the root must be a directory"));
                    }
                    let t = self.resolve(target, r)?;
                    if t == c {
                        return Err(self.reject(r, Rule::Hardlink, "links to itself"));
                    }
                    let look = self.look(&t);
                    let inode = match look.node.map(|n| &n.state) {
                        Some(State::NonDir { inode, .. }) if !look.hidden => *inode,
                        Some(State::Dir { .. }) if !look.hidden => {
                            return Err(self.reject(
                                r,
                                Rule::Hardlink,
                                format!("target {} is a directory", show(target)),
                            ))
                        }
                        None | Some(State::Pass) if !look.hidden && !look.fresh_above => {
                            self.inodes.push(Inode::Base {
                                target: t.clone(),
                                by: r,
                            });
                            self.inodes.len() - 1
                        }
                        _ => {
                            return Err(self.reject(
                                r,
                                Rule::Hardlink,
                                format!(
                                    "target {} does not exist at this point of the stack{}",
                                    show(target),
                                    if self.flatten {
                                        " (--flatten: the base is empty)"
                                    } else {
                                        ""
                                    }
                                ),
                            ))
                        }
                    };
                    self.check_parents(&c, r)?;
                    let node = self.make_node(&c, layer);
                    node.kids.clear();
                    node.state = State::NonDir { inode, by: r };
                }
                _ => {
                    let c = self.resolve(&m.entry.path, r)?;
                    if c.is_empty() {
                        return Err(self.reject(r, Rule::RootType, "the root must be a directory"));
                    }
                    self.check_parents(&c, r)?;
                    self.inodes.push(Inode::Member(r));
                    let inode = self.inodes.len() - 1;
                    let node = self.make_node(&c, layer);
                    node.kids.clear();
                    node.state = State::NonDir { inode, by: r };
                }
            }
        }
        Ok(())
    }

    /// `path` with its parents resolved through the range's symlinks (chroot semantics: an
    /// absolute target starts at the root, `..` stops there); the last component is not followed.
    fn resolve(&self, path: &[u8], by: MRef) -> Result<Vec<Vec<u8>>> {
        Ok(self.resolve_traced(path, by)?.0)
    }

    /// `resolve`, and the first symlink on the way that `by`'s own layer made, if any.
    fn resolve_traced(&self, path: &[u8], by: MRef) -> Result<(Comps, Option<Vec<u8>>)> {
        let mut tree = MergeTree {
            merger: self,
            stack: vec![Some(&self.root)],
            layer: by.layer,
            own: None,
        };
        let opts = ResolveOptions {
            last: Last::Keep,
            stop_at_missing: false,
            max_depth: MAX_DEPTH,
        };
        let Ok(outcome) = resolve(&mut tree, path, &opts);
        match outcome {
            Outcome::Found { path, rest } => Ok((comps(&join_rest(&path, &rest)), tree.own)),
            Outcome::Loop { path } => Err(self.reject(by, Rule::SymlinkLoop, show(&path))),
            Outcome::TooDeep => Err(self.reject(
                by,
                Rule::PathTooDeep,
                format!("its parent resolves through symlinks to more than {MAX_DEPTH} components"),
            )),
            Outcome::Missing | Outcome::NotDir { .. } => unreachable!("squash's tree has neither"),
        }
    }

    /// A marker may not reach its path through a symlink its own layer made before it (as
    /// `overlay::write` refuses it): an opaque marker's dir is followed too, being a parent of
    /// the marker entry.
    fn check_marker(&self, m: MRef) -> Result<()> {
        let e = self.member(m);
        let mut path = e.path.to_vec();
        if e.kind == Kind::Opaque {
            path.extend_from_slice(b"/.wh..wh..opq");
        }
        if let (_, Some(link)) = self.resolve_traced(&path, m)? {
            // Named as the tar names it, as layerapply does.
            let name = match e.kind {
                Kind::Opaque => path,
                _ => {
                    let (dir, base) = match e.path.iter().rposition(|&b| b == b'/') {
                        Some(i) => (&e.path[..=i], &e.path[i + 1..]),
                        None => (&e.path[..0], &e.path[..]),
                    };
                    [dir, b".wh.", base].concat()
                }
            };
            return Err(Error::rejected(
                show(&name),
                Rule::MarkerThroughSymlink,
                format!("{} is a symlink in this layer", show(&link)),
            )
            .in_layer(&self.layers[m.layer].label));
        }
        Ok(())
    }

    fn look(&self, path: &[Vec<u8>]) -> Look<'_> {
        let mut node = &self.root;
        let mut fresh_above = self.flatten;
        for c in path {
            match node.state {
                State::Dir { fresh, .. } => fresh_above |= fresh,
                State::Pass => {}
                State::Whiteout | State::NonDir { .. } => {
                    return Look {
                        node: None,
                        hidden: true,
                        fresh_above,
                    }
                }
            }
            match node.kids.get(c) {
                Some(n) => node = n,
                None => {
                    return Look {
                        node: None,
                        hidden: false,
                        fresh_above,
                    }
                }
            }
        }
        Look {
            node: Some(node),
            hidden: false,
            fresh_above,
        }
    }

    /// A whiteout from a layer: the path goes, with everything the layers below put under it.
    fn whiteout(&mut self, path: &[Vec<u8>]) {
        let look = self.look(path);
        let (hidden, fresh_above) = (look.hidden, look.fresh_above);
        if hidden || path.is_empty() {
            return;
        }
        let (name, dir) = path.split_last().expect("non-empty");
        let mut node = &mut self.root;
        if fresh_above {
            // The base has nothing here: deleting the range's entry is all there is to do (and
            // a path the range never made needs no dirs made for it).
            for c in dir {
                match node.kids.get_mut(c) {
                    Some(n) => node = n,
                    None => return,
                }
            }
            node.kids.remove(name);
            return;
        }
        for c in dir {
            node = node
                .kids
                .entry(c.clone())
                .or_insert_with(|| Node::new(State::Pass));
        }
        node.kids.insert(name.clone(), Node::new(State::Whiteout));
    }

    /// An opaque marker: everything the layers below put under the dir goes, and the dir hides
    /// whatever the base has there. A marker whose dir is missing (never made, or deleted by
    /// this layer or one below) makes it, as a flat extraction makes a member's parents; one in
    /// a non-dir changes nothing, as there no extraction can make a dir.
    fn clear(&mut self, path: &[Vec<u8>], layer: usize) {
        let mut node = &self.root;
        for c in path {
            match node.state {
                State::NonDir { .. } => return,
                State::Whiteout => break,
                _ => {}
            }
            match node.kids.get(c) {
                Some(n) => node = n,
                None => break,
            }
        }
        if matches!(node.state, State::NonDir { .. }) {
            return;
        }
        // Dirs the marker makes exist only where a marker can make them (not below a base
        // file): implied, each written as a marker of its own.
        let made = || State::Dir {
            header: Header::Implied(layer),
            fresh: true,
            replaced: false,
        };
        let mut node = &mut self.root;
        let mut fresh_above = self.flatten;
        for c in path {
            if let State::Dir { fresh, .. } = node.state {
                fresh_above |= fresh;
            }
            node = node
                .kids
                .entry(c.clone())
                .or_insert_with(|| Node::new(if fresh_above { made() } else { State::Pass }));
            if matches!(node.state, State::Whiteout) {
                node.kids.clear();
                node.state = State::Dir {
                    header: Header::Implied(layer),
                    fresh: true,
                    replaced: true,
                };
            }
        }
        node.kids.clear();
        node.state = match node.state {
            State::Dir {
                header, replaced, ..
            } => State::Dir {
                header,
                fresh: true,
                replaced,
            },
            // (A whiteout on the way, this one included, became a dir above.)
            _ => made(),
        };
    }

    /// A member below a non-dir its own layer made (`a`, then `a/x`) is refused, as the layer
    /// writer and GNU tar refuse it: one rule for squash and apply. (Below a non-dir of an
    /// earlier layer, the layer replaces it with a dir.)
    fn check_parents(&self, path: &[Vec<u8>], by: MRef) -> Result<()> {
        let Some((_, dir)) = path.split_last() else {
            return Ok(());
        };
        let mut node = &self.root;
        for (i, c) in dir.iter().enumerate() {
            match node.kids.get(c) {
                Some(n) => node = n,
                None => return Ok(()),
            }
            if let State::NonDir { by: b, .. } = node.state {
                if b.layer == by.layer {
                    return Err(self.reject(
                        by,
                        Rule::NotDir,
                        format!("{} is not a directory", show(&joined(&dir[..=i]))),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The parent dirs of `path`, made dirs where the range had deleted them or put a non-dir
    /// there (such a dir starts empty: fresh).
    fn make_parents(&mut self, path: &[Vec<u8>], layer: usize) -> &mut Node {
        let mut node = &mut self.root;
        let Some((_, dir)) = path.split_last() else {
            return node;
        };
        for c in dir {
            node = node
                .kids
                .entry(c.clone())
                .or_insert_with(|| Node::new(State::Pass));
            if matches!(node.state, State::Whiteout | State::NonDir { .. }) {
                node.kids.clear();
                node.state = State::Dir {
                    header: Header::Synth(layer),
                    fresh: true,
                    replaced: true,
                };
            }
        }
        node
    }

    fn make_node(&mut self, path: &[Vec<u8>], layer: usize) -> &mut Node {
        if path.is_empty() {
            return &mut self.root;
        }
        let name = path.last().expect("non-empty").clone();
        self.make_parents(path, layer)
            .kids
            .entry(name)
            .or_insert_with(|| Node::new(State::Pass))
    }

    /// A link into the base is only right if the range leaves its target alone: after the squash
    /// the link is made before or after the range's change, never where the stack made it.
    fn check_base_links(&self) -> Result<()> {
        let mut used = vec![false; self.inodes.len()];
        mark_used(&self.root, &mut used);
        for (i, inode) in self.inodes.iter().enumerate() {
            if let (true, Inode::Base { target, by }) = (used[i], inode) {
                let look = self.look(target);
                let untouched = !look.hidden
                    && !look.fresh_above
                    && matches!(look.node.map(|n| &n.state), None | Some(State::Pass));
                if !untouched {
                    return Err(self.reject(
                        *by,
                        Rule::Hardlink,
                        format!(
                            "links to {} below the squashed layers, which a later layer changes; \
                             the squash cannot hold that file's content",
                            show(&joined(target))
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    fn plan(&self) -> Vec<Step> {
        let mut slots = Vec::new();
        if let State::Dir { header, fresh, .. } = self.root.state {
            if let Header::Member(m, _) = header {
                slots.push(Slot::Step(self.dir_step(m, &[])));
            }
            if fresh && !self.flatten {
                slots.push(Slot::Step(marker(Vec::new(), Kind::Opaque)));
            }
            let fresh_above = fresh || self.flatten;
            self.walk(
                &self.root,
                &mut Vec::new(),
                fresh_above,
                Some(0),
                &mut slots,
            );
        }
        self.place_names(slots)
    }

    fn dir_step(&self, m: MRef, path: &[Vec<u8>]) -> Step {
        let mem = &self.layers[m.layer].members[m.member];
        let p = joined(path);
        if mem.copyable && mem.entry.path == p {
            Step::Raw {
                layer: m.layer,
                start: mem.start,
                end: mem.end,
            }
        } else {
            Step::Entry {
                entry: Entry {
                    path: RelPath::from_clean(p),
                    kind: Kind::Dir,
                    meta: mem.entry.meta.clone(),
                },
                data: None,
                xattrs: mem.has_xattrs.then_some((m.layer, mem.start)),
            }
        }
    }

    /// Children of `node` at `path`: whiteouts first, then the rest, each in byte order.
    /// `sure_from`: the output makes `node` a dir over every base (not just by a marker), and
    /// markers of this layer and later ones find it there (its header came from a layer below).
    fn walk(
        &self,
        node: &Node,
        path: &mut Vec<Vec<u8>>,
        fresh_above: bool,
        sure_from: Option<usize>,
        out: &mut Vec<Slot>,
    ) {
        for (name, kid) in &node.kids {
            let gone = match kid.state {
                State::Whiteout => true,
                State::Dir {
                    fresh, replaced, ..
                } => fresh && replaced,
                _ => false,
            };
            if gone && !fresh_above {
                path.push(name.clone());
                out.push(Slot::Step(marker(joined(path), Kind::Whiteout)));
                path.pop();
            }
        }
        for (name, kid) in &node.kids {
            path.push(name.clone());
            if matches!(kid.state, State::Pass | State::Dir { .. }) {
                out.push(Slot::Step(Step::Enter(name.clone())));
            }
            match kid.state {
                State::Whiteout => {}
                State::Pass => {
                    // Under a fresh dir the stack made this dir (as a parent), and it stays even
                    // when what it held is gone; elsewhere it is the base's, if anything.
                    if fresh_above {
                        out.push(Slot::Step(Step::SynthDir));
                    }
                    self.walk(kid, path, fresh_above, sure_from, out);
                }
                State::Dir {
                    header,
                    fresh,
                    replaced,
                } => {
                    // A dir that only markers made exists only where a marker can make it (not
                    // below a base file), so it is written as its marker, unless its parent
                    // surely exists and is fresh when the marker acts: then nothing can stop it.
                    let written = match header {
                        Header::Member(m, since) => {
                            out.push(Slot::Step(self.dir_step(m, path)));
                            Some(since + 1)
                        }
                        Header::Synth(l) => {
                            out.push(Slot::Step(Step::SynthDir));
                            Some(l + 1)
                        }
                        Header::Implied(l)
                            if self.flatten || fresh_above && sure_from.is_some_and(|f| l >= f) =>
                        {
                            out.push(Slot::Step(Step::SynthDir));
                            sure_from
                        }
                        Header::Implied(_) => None,
                    };
                    // A replaced dir with a header hides the base's entry by its whiteout.
                    if fresh && !self.flatten && (written.is_none() || !replaced && !fresh_above) {
                        out.push(Slot::Step(marker(joined(path), Kind::Opaque)));
                    }
                    self.walk(kid, path, fresh_above || fresh, written, out);
                }
                State::NonDir { inode, by } => out.push(Slot::Name {
                    inode,
                    by,
                    path: joined(path),
                }),
            }
            if matches!(kid.state, State::Pass | State::Dir { .. }) {
                out.push(Slot::Step(Step::Leave));
            }
            path.pop();
        }
    }

    /// Turn names into steps: each inode's data goes with one name (the member's own path if it
    /// survives, else the first), every other name becomes a hardlink placed after it.
    fn place_names(&self, slots: Vec<Slot>) -> Vec<Step> {
        let mut carrier: Vec<Option<Vec<u8>>> = vec![None; self.inodes.len()];
        for s in &slots {
            if let Slot::Name { inode, by, path } = s {
                let own = matches!(self.inodes[*inode], Inode::Member(m) if m == *by);
                if carrier[*inode].is_none() || own {
                    carrier[*inode] = Some(path.clone());
                }
            }
        }
        let mut emitted = vec![false; self.inodes.len()];
        let mut waiting: Vec<Vec<(MRef, Vec<u8>)>> = vec![Vec::new(); self.inodes.len()];
        let mut out = Vec::with_capacity(slots.len());
        for s in slots {
            let (inode, by, path) = match s {
                Slot::Step(step) => {
                    out.push(step);
                    continue;
                }
                Slot::Name { inode, by, path } => (inode, by, path),
            };
            match &self.inodes[inode] {
                Inode::Base { target, .. } => out.push(self.link_step(by, path, joined(target))),
                Inode::Member(m) => {
                    let c = carrier[inode].as_ref().expect("a name was seen");
                    if *c == path {
                        out.push(self.full_step(*m, path.clone()));
                        emitted[inode] = true;
                        for (b, p) in std::mem::take(&mut waiting[inode]) {
                            out.push(self.link_step(b, p, path.clone()));
                        }
                    } else if emitted[inode] {
                        out.push(self.link_step(by, path, c.clone()));
                    } else {
                        waiting[inode].push((by, path));
                    }
                }
            }
        }
        out
    }

    fn full_step(&self, m: MRef, path: Vec<u8>) -> Step {
        let mem = &self.layers[m.layer].members[m.member];
        if mem.copyable && mem.entry.path == path {
            return Step::Raw {
                layer: m.layer,
                start: mem.start,
                end: mem.end,
            };
        }
        let data = match mem.entry.kind {
            Kind::File { .. } => Some((m.layer, mem.data)),
            _ => None,
        };
        Step::Entry {
            entry: Entry {
                path: RelPath::from_clean(path),
                kind: mem.entry.kind.clone(),
                meta: mem.entry.meta.clone(),
            },
            data,
            xattrs: mem.has_xattrs.then_some((m.layer, mem.start)),
        }
    }

    fn link_step(&self, by: MRef, path: Vec<u8>, target: Vec<u8>) -> Step {
        let mem = &self.layers[by.layer].members[by.member];
        let same = matches!(&mem.entry.kind, Kind::Hardlink { target: t } if *t == target);
        if mem.copyable && same && mem.entry.path == path {
            return Step::Raw {
                layer: by.layer,
                start: mem.start,
                end: mem.end,
            };
        }
        Step::Entry {
            entry: Entry {
                path: RelPath::from_clean(path),
                kind: Kind::Hardlink { target },
                meta: mem.entry.meta.clone(),
            },
            data: None,
            xattrs: mem.has_xattrs.then_some((by.layer, mem.start)),
        }
    }
}

enum Slot {
    Step(Step),
    Name {
        inode: usize,
        by: MRef,
        path: Vec<u8>,
    },
}

fn mark_used(node: &Node, used: &mut [bool]) {
    if let State::NonDir { inode, .. } = node.state {
        used[inode] = true;
    }
    for k in node.kids.values() {
        mark_used(k, used);
    }
}

fn marker(path: Vec<u8>, kind: Kind) -> Step {
    Step::Entry {
        entry: Entry {
            path: RelPath::from_clean(path),
            kind,
            meta: Meta::default(),
        },
        data: None,
        xattrs: None,
    }
}

#[cfg(test)]
mod tests {
    //! The fold on layers built in memory. Each expected plan is what the OCI rules ask of the
    //! squash: for every base, `base + squash(L0..Ln)` is `base + L0 + ... + Ln`, and with
    //! `flatten` the base is empty and the plan holds no marker at all.

    use super::*;
    use crate::stack::index::Member;
    use crate::tar::BLOCK;

    // --- Layers in memory ------------------------------------------------------------------------

    fn entry(path: &str, kind: Kind) -> Entry {
        Entry {
            path: RelPath::new(path.as_bytes().to_vec()).expect("clean"),
            kind,
            meta: Meta {
                mode: 0o644,
                ..Meta::default()
            },
        }
    }

    fn file(path: &str) -> Entry {
        entry(path, Kind::File { size: 3 })
    }

    fn dir(path: &str) -> Entry {
        entry(path, Kind::Dir)
    }

    fn symlink(path: &str, target: &str) -> Entry {
        entry(
            path,
            Kind::Symlink {
                target: target.as_bytes().to_vec(),
            },
        )
    }

    fn link(path: &str, target: &str) -> Entry {
        entry(
            path,
            Kind::Hardlink {
                target: target.as_bytes().to_vec(),
            },
        )
    }

    /// The member `.wh.NAME` that deletes `path`.
    fn wh(path: &str) -> Entry {
        entry(path, Kind::Whiteout)
    }

    /// The member `PATH/.wh..wh..opq` that makes the dir `path` opaque.
    fn opq(path: &str) -> Entry {
        entry(path, Kind::Opaque)
    }

    /// Layers (bottom first) as the indexer gives them: members one after the other in a tar (a
    /// header block, then the data in whole blocks), every one copyable, and each stamped with its
    /// layer in `mtime`, so that an entry the plan encodes anew still shows where it comes from.
    fn stack(layers: &[&[Entry]]) -> Vec<LayerIndex> {
        layers
            .iter()
            .enumerate()
            .map(|(l, entries)| {
                let mut off = 0;
                let members = entries
                    .iter()
                    .map(|e| {
                        let mut entry = e.clone();
                        entry.meta.mtime = l as i64;
                        let size = match entry.kind {
                            Kind::File { size } => size,
                            _ => 0,
                        };
                        let data = off + BLOCK as u64;
                        let end = data + size.div_ceil(BLOCK as u64) * BLOCK as u64;
                        let m = Member {
                            entry,
                            start: off,
                            end,
                            data,
                            copyable: true,
                            has_xattrs: false,
                        };
                        off = end;
                        m
                    })
                    .collect();
                LayerIndex {
                    label: format!("L{l}"),
                    members,
                }
            })
            .collect()
    }

    // --- Plans as lines --------------------------------------------------------------------------

    fn text(b: &[u8]) -> String {
        String::from_utf8(b.to_vec()).expect("test paths are UTF-8")
    }

    /// `dir/` for a path in `dir`, nothing at the root.
    fn prefix(path: &str) -> String {
        match path {
            "" => String::new(),
            p => format!("{p}/"),
        }
    }

    fn parent(path: &str) -> &str {
        path.rfind('/').map_or("", |i| &path[..i])
    }

    /// One output member as a line: `PATH WHAT` and the layer the member comes from (`L1`); a
    /// whiteout or opaque marker as its tar name; ` new` when encoded anew rather than copied.
    /// `here` is the dir the plan's `Enter`s lead to: a dir or an opaque marker is there, any other
    /// member in it.
    fn line(here: &str, e: &Entry, new: bool) -> String {
        let path = text(&e.path);
        let place = match e.kind {
            Kind::Dir | Kind::Opaque => path.as_str(),
            _ => parent(&path),
        };
        assert_eq!(place, here, "{path} written in {here:?}");
        let l = e.meta.mtime;
        let what = match &e.kind {
            Kind::Whiteout => {
                let name = &path[path.rfind('/').map_or(0, |i| i + 1)..];
                return format!("{}.wh.{name}", prefix(parent(&path)));
            }
            Kind::Opaque => return format!("{}.wh..wh..opq", prefix(&path)),
            Kind::Dir => format!("dir L{l}"),
            Kind::File { .. } => format!("file L{l}"),
            Kind::Symlink { target } => format!("symlink>{} L{l}", text(target)),
            Kind::Hardlink { target } => format!("link>{} L{l}", text(target)),
            k => format!("{k:?} L{l}"),
        };
        let shown = if path.is_empty() { "." } else { &path };
        format!("{shown} {what}{}", if new { " new" } else { "" })
    }

    /// The plan as lines, checking on the way that `Enter` and `Leave` pair up, that every member
    /// is written in the dir it belongs to and that raw bytes and data are a member's own.
    fn lines(layers: &[LayerIndex], plan: &[Step]) -> Vec<String> {
        let mut here: Vec<String> = Vec::new();
        let mut out = Vec::new();
        for step in plan {
            let cur = here.join("/");
            match step {
                Step::Enter(name) => here.push(text(name)),
                Step::Leave => {
                    here.pop().expect("Leave without Enter");
                }
                Step::SynthDir => {
                    let shown = if cur.is_empty() { "." } else { &cur };
                    out.push(format!("{shown} dir synth"));
                }
                Step::Raw { layer, start, end } => {
                    let m = layers[*layer]
                        .members
                        .iter()
                        .find(|m| m.start == *start && m.end == *end)
                        .expect("raw bytes are one member's");
                    out.push(line(&cur, &m.entry, false));
                }
                Step::Entry {
                    entry,
                    data,
                    xattrs,
                } => {
                    assert_eq!(*xattrs, None, "no member has xattrs");
                    if let Some((l, off)) = data {
                        let m = layers[*l]
                            .members
                            .iter()
                            .find(|m| m.data == *off)
                            .expect("data is one member's");
                        assert_eq!(m.entry.kind, entry.kind, "data of the same size");
                        assert_eq!(*l as i64, entry.meta.mtime, "data from the header's layer");
                    }
                    let marker = matches!(entry.kind, Kind::Whiteout | Kind::Opaque);
                    out.push(line(&cur, entry, !marker));
                }
            }
        }
        assert!(here.is_empty(), "Enter without Leave: {here:?}");
        out
    }

    fn path_of(line: &str) -> &str {
        line.split(' ').next().expect("a line")
    }

    /// What every plan obeys: no line twice, a hardlink after the name it links to (if that is in
    /// the plan at all), and flattened, no marker and every dir named before what it holds.
    fn check(out: &[String], flatten: bool) {
        for (i, l) in out.iter().enumerate() {
            assert!(!out[..i].contains(l), "{l} twice in {out:#?}");
            if let Some(t) = l.split_once(" link>").map(|(_, t)| path_of(t)) {
                let at = out.iter().position(|o| path_of(o) == t);
                assert!(
                    at.is_some_and(|at| at < i) || at.is_none() && !flatten,
                    "{l}: target not before it in {out:#?}"
                );
            }
            if flatten {
                assert!(
                    !l.contains(".wh."),
                    "flattened plan with a marker: {out:#?}"
                );
                let p = parent(path_of(l));
                assert!(
                    p.is_empty() || out[..i].iter().any(|o| o.starts_with(&format!("{p} dir "))),
                    "{l} before its dir in {out:#?}"
                );
            }
        }
    }

    /// The plan of `layers` (bottom first) as lines.
    fn squash(layers: &[&[Entry]], flatten: bool) -> Vec<String> {
        let idx = stack(layers);
        let plan = Merger::new(&idx, flatten).run().expect("merge");
        let out = lines(&idx, &plan);
        check(&out, flatten);
        out
    }

    /// `squash` without and with `flatten`.
    fn both(layers: &[&[Entry]]) -> (Vec<String>, Vec<String>) {
        (squash(layers, false), squash(layers, true))
    }

    /// The merge's refusal.
    fn refused(layers: &[&[Entry]], flatten: bool) -> Error {
        let idx = stack(layers);
        match Merger::new(&idx, flatten).run() {
            Ok(plan) => panic!("merged: {:#?}", lines(&idx, &plan)),
            Err(e) => e,
        }
    }

    // --- Deletions ---------------------------------------------------------------------------------

    #[test]
    fn later_whiteout_deletes_an_earlier_file() {
        // The base may have a/f too (L0 replaced it): the whiteout stays for it. Flattened there
        // is no base, and deleting what L0 made is leaving it out.
        let (keep, flat) = both(&[&[dir("a"), file("a/f"), file("a/g")], &[wh("a/f")]]);
        assert_eq!(keep, ["a dir L0", "a/.wh.f", "a/g file L0"]);
        assert_eq!(flat, ["a dir L0", "a/g file L0"]);
        // Only the base has the path: the whiteout is all the squash says of it.
        let (keep, flat) = both(&[&[dir("a")], &[wh("a/base")]]);
        assert_eq!(keep, ["a dir L0", "a/.wh.base"]);
        assert_eq!(flat, ["a dir L0"]);
        // A whiteout acts on the layers below only: the layer's own file of that name stays, and
        // replaces whatever the base has there without a marker.
        let (keep, flat) = both(&[&[file("f")], &[file("f"), wh("f")]]);
        assert_eq!(keep, ["f file L1"]);
        assert_eq!(flat, ["f file L1"]);
    }

    #[test]
    fn whiteout_of_a_dir_takes_its_subtree() {
        let (keep, flat) = both(&[
            &[dir("d"), dir("d/s"), file("d/s/f"), file("x")],
            &[wh("d")],
        ]);
        assert_eq!(keep, [".wh.d", "x file L0"]);
        assert_eq!(flat, ["x file L0"]);
    }

    // --- Deleted, then made again: the dir hides the base's ---------------------------------------

    #[test]
    fn dir_deleted_then_made_again_replaces_the_base_dir() {
        // `.wh.d` then `d/` in one layer: the whiteout acts on the layers below (wherever it
        // stands in the tar), the dir is new and empty. Over a base with d/z the stack leaves
        // d = {y}: the output must hide the base's d, by a whiteout before the dir.
        let want = [".wh.d", "d dir L1", "d/y file L1"];
        let want_flat = ["d dir L1", "d/y file L1"];
        for l1 in [
            &[wh("d"), dir("d"), file("d/y")][..],
            &[dir("d"), file("d/y"), wh("d")][..],
        ] {
            let (keep, flat) = both(&[&[dir("d"), file("d/x")], l1]);
            assert_eq!(keep, want);
            assert_eq!(flat, want_flat);
        }
        // The same across layers.
        let (keep, flat) = both(&[
            &[dir("d"), file("d/x")],
            &[wh("d")],
            &[dir("d"), file("d/y")],
        ]);
        assert_eq!(keep, [".wh.d", "d dir L2", "d/y file L2"]);
        assert_eq!(flat, ["d dir L2", "d/y file L2"]);
        // d replaced by a file, then by a dir: the same dir that hides everything below.
        let (keep, flat) = both(&[
            &[dir("d"), file("d/x")],
            &[file("d")],
            &[dir("d"), file("d/y")],
        ]);
        assert_eq!(keep, [".wh.d", "d dir L2", "d/y file L2"]);
        assert_eq!(flat, ["d dir L2", "d/y file L2"]);
    }

    #[test]
    fn dir_deleted_then_made_again_as_a_parent_gets_default_attributes() {
        // No `d/` member after the whiteout: the applier makes d as the parent of d/y (0755,
        // root, mtime 0), so the squash names such a dir, after the whiteout of the base's.
        let want = [".wh.d", "d dir synth", "d/y file L2"];
        let want_flat = ["d dir synth", "d/y file L2"];
        let (keep, flat) = both(&[&[dir("d"), file("d/x")], &[wh("d")], &[file("d/y")]]);
        assert_eq!(keep, want);
        assert_eq!(flat, want_flat);
        let (keep, flat) = both(&[&[dir("d"), file("d/x")], &[], &[wh("d"), file("d/y")]]);
        assert_eq!(keep, want);
        assert_eq!(flat, want_flat);
    }

    #[test]
    fn dir_deleted_then_made_again_by_an_opaque_marker() {
        // L2's marker finds no d and makes it, as an applier makes a member's parent: an empty
        // dir with default attributes. Over a base the squash says the same in the same words
        // (the base's d goes first); flattened it is a default dir.
        let (keep, flat) = both(&[&[dir("d"), file("d/x")], &[wh("d")], &[opq("d")]]);
        assert_eq!(keep, [".wh.d", "d/.wh..wh..opq"]);
        assert_eq!(flat, ["d dir synth"]);
    }

    #[test]
    fn dir_made_opaque_in_its_own_layer_keeps_the_marker() {
        // `d/` with its opaque marker: the base's d stays a dir (attributes from L1), its
        // children and L0's go. No whiteout: the dir was never deleted.
        let (keep, flat) = both(&[&[dir("d"), file("d/x")], &[dir("d"), opq("d"), file("d/y")]]);
        assert_eq!(keep, ["d dir L1", "d/.wh..wh..opq", "d/y file L1"]);
        assert_eq!(flat, ["d dir L1", "d/y file L1"]);
    }

    // --- Opaque markers ----------------------------------------------------------------------------

    #[test]
    fn opaque_marker_in_a_middle_layer_hides_what_is_below() {
        // L1 makes d opaque: L0's a and s/b go, and so do the base's children; L1's and L2's
        // files stay. d keeps L0's header, the last one any layer gave it.
        let (keep, flat) = both(&[
            &[
                dir("d"),
                file("d/a"),
                dir("d/s"),
                file("d/s/b"),
                file("top"),
            ],
            &[opq("d"), file("d/c")],
            &[file("d/e")],
        ]);
        assert_eq!(
            keep,
            [
                "d dir L0",
                "d/.wh..wh..opq",
                "d/c file L1",
                "d/e file L2",
                "top file L0"
            ]
        );
        assert_eq!(
            flat,
            ["d dir L0", "d/c file L1", "d/e file L2", "top file L0"]
        );
    }

    #[test]
    fn opaque_marker_at_the_root() {
        // Everything below goes, the base's included: the marker first, then what L1 adds.
        let (keep, flat) = both(&[&[file("a"), dir("d")], &[opq(""), file("b")]]);
        assert_eq!(keep, [".wh..wh..opq", "b file L1"]);
        assert_eq!(flat, ["b file L1"]);
    }

    #[test]
    fn opaque_marker_on_a_dir_the_range_never_named() {
        // Over a base, d is the base's dir (its attributes unchanged, so no header) emptied by the
        // marker. Flattened, the stack makes d as the parent of d/c: a default dir.
        let (keep, flat) = both(&[&[file("x")], &[opq("d"), file("d/c")]]);
        assert_eq!(keep, ["d/.wh..wh..opq", "d/c file L1", "x file L0"]);
        assert_eq!(flat, ["d dir synth", "d/c file L1", "x file L0"]);
    }

    // --- Markers an upper layer makes redundant ------------------------------------------------------

    #[test]
    fn markers_made_redundant_by_a_later_layer() {
        // A non-dir member replaces whatever the base has at its path, subtree and all: the
        // whiteout or opaque marker below it says nothing more.
        assert_eq!(both(&[&[wh("x")], &[file("x")]]).0, ["x file L1"]);
        assert_eq!(
            both(&[&[opq("d"), file("d/a")], &[file("d")]]).0,
            ["d file L1"]
        );
        // A later whiteout of the dir takes the opaque marker and everything under it.
        let (keep, flat) = both(&[&[dir("d"), opq("d"), file("d/a")], &[wh("d")]]);
        assert_eq!(keep, [".wh.d"]);
        assert_eq!(flat, Vec::<String>::new());
        // The same whiteout twice is one.
        assert_eq!(both(&[&[wh("x")], &[wh("x")]]).0, [".wh.x"]);
        // A whiteout in a dir a later layer makes opaque is said by the opaque marker.
        assert_eq!(
            both(&[&[dir("d"), wh("d/x")], &[opq("d")]]).0,
            ["d dir L0", "d/.wh..wh..opq"]
        );
        // A whiteout in a dir an earlier layer made opaque: the base's d/x is hidden already.
        assert_eq!(
            both(&[&[dir("d"), opq("d"), file("d/x")], &[wh("d/x")]]).0,
            ["d dir L0", "d/.wh..wh..opq"]
        );
    }

    #[test]
    fn opaque_marker_stays_under_a_later_dir_header() {
        // L1's `d/` takes the header but hides nothing: L0's marker still must.
        let (keep, flat) = both(&[&[opq("d")], &[dir("d")]]);
        assert_eq!(keep, ["d dir L1", "d/.wh..wh..opq"]);
        assert_eq!(flat, ["d dir L1"]);
    }

    // --- Dir headers -------------------------------------------------------------------------------

    #[test]
    fn latest_dir_header_wins_and_children_stay() {
        // A dir over a dir takes the new attributes and keeps what is inside; the root too.
        let (keep, flat) = both(&[
            &[dir(""), dir("d"), file("d/a")],
            &[dir(""), dir("d")],
            &[file("d/b")],
        ]);
        let want = [". dir L1", "d dir L1", "d/a file L0", "d/b file L2"];
        assert_eq!(keep, want);
        assert_eq!(flat, want);
    }

    #[test]
    fn flatten_names_every_parent() {
        // Over a base the parents are the base's (or made by the applier as they would be by the
        // stack): not named. Flattened every dir is named, with an applier's defaults.
        let (keep, flat) = both(&[&[file("a/b/f")]]);
        assert_eq!(keep, ["a/b/f file L0"]);
        assert_eq!(flat, ["a dir synth", "a/b dir synth", "a/b/f file L0"]);
    }

    // --- Hardlinks ---------------------------------------------------------------------------------

    #[test]
    fn hardlink_keeps_the_old_data_when_a_later_layer_overwrites_its_target() {
        // L1's f is a new file at that name (an applier unlinks the old one): h still holds L0's
        // data, so h carries that data itself now, and h2 links to h.
        let layers: &[&[Entry]] = &[&[file("f"), link("h", "f"), link("h2", "f")], &[file("f")]];
        let (keep, flat) = both(layers);
        let want = ["f file L1", "h file L0 new", "h2 link>h L0 new"];
        assert_eq!(keep, want);
        assert_eq!(flat, want);
        // The data of h is L0's f.
        let idx = stack(layers);
        let plan = Merger::new(&idx, false).run().unwrap();
        let h = plan.iter().find_map(|s| match s {
            Step::Entry { entry, data, .. } if entry.path == b"h" => Some(*data),
            _ => None,
        });
        assert_eq!(h, Some(Some((0, idx[0].members[0].data))));
    }

    #[test]
    fn hardlink_survives_a_whiteout_of_its_target() {
        let (keep, flat) = both(&[&[file("f"), link("h", "f")], &[wh("f")]]);
        assert_eq!(keep, [".wh.f", "h file L0 new"]);
        assert_eq!(flat, ["h file L0 new"]);
    }

    #[test]
    fn hardlink_to_a_file_replaced_by_another_hardlink() {
        // L1 makes f a name of g; h keeps L0's f.
        let (keep, flat) = both(&[&[file("f"), file("g"), link("h", "f")], &[link("f", "g")]]);
        let want = ["g file L0", "f link>g L1", "h file L0 new"];
        assert_eq!(keep, want);
        assert_eq!(flat, want);
    }

    #[test]
    fn hardlink_comes_after_the_name_with_the_data() {
        // a sorts before b, but a is the link.
        let (keep, flat) = both(&[&[file("b")], &[link("a", "b")]]);
        assert_eq!(keep, ["b file L0", "a link>b L1"]);
        assert_eq!(flat, ["b file L0", "a link>b L1"]);
    }

    #[test]
    fn hardlink_into_the_base() {
        // Over a base the link is kept for the base's t; flattened there is no t.
        assert_eq!(squash(&[&[link("h", "t")]], false), ["h link>t L0"]);
        assert_eq!(
            refused(&[&[link("h", "t")]], true).rule(),
            Some(Rule::Hardlink)
        );
        // A later layer changes t: the squash cannot hold the base's data h links to.
        let e = refused(&[&[link("h", "t")], &[file("t")]], false);
        assert_eq!(e.rule(), Some(Rule::Hardlink));
        assert!(e.to_string().contains("a later layer changes"), "{e}");
        let e = refused(&[&[link("h", "t")], &[wh("t")]], false);
        assert_eq!(e.rule(), Some(Rule::Hardlink));
        // Unless h goes too.
        assert_eq!(
            squash(&[&[link("h", "t")], &[file("t"), wh("h")]], false),
            [".wh.h", "t file L1"]
        );
    }

    #[test]
    fn member_below_a_non_dir() {
        // Below its own layer's file a member is refused (as the layer writer and GNU tar refuse
        // it); below an earlier layer's file, the layer makes a dir there (layerkit's rule, which
        // its applier follows): the base's a goes, a default dir takes its place.
        let e = refused(&[&[file("a"), file("a/x")]], false);
        assert_eq!(e.rule(), Some(Rule::NotDir));
        let (keep, flat) = both(&[&[file("a")], &[file("a/x")]]);
        assert_eq!(keep, [".wh.a", "a dir synth", "a/x file L1"]);
        assert_eq!(flat, ["a dir synth", "a/x file L1"]);
    }

    // --- Paths and order ---------------------------------------------------------------------------

    #[test]
    fn parents_resolve_through_the_ranges_symlinks() {
        // `l/x` over L0's l -> d (or -> /d: chroot semantics) is d/x, written under its own path.
        for target in ["d", "/d"] {
            let (keep, flat) = both(&[&[dir("d"), symlink("l", target)], &[file("l/x")]]);
            let want = [
                "d dir L0".to_string(),
                "d/x file L1 new".to_string(),
                format!("l symlink>{target} L0"),
            ];
            assert_eq!(keep, want);
            assert_eq!(flat, want);
        }
    }

    #[test]
    fn order_parents_first_then_marker_then_whiteouts() {
        // L0 lists children before their dirs; the plan puts every dir before what is in it, an
        // opaque marker right after its dir, and a dir's whiteouts before its other children
        // (`.wh.z` before `b`).
        let (keep, flat) = both(&[
            &[file("a/z"), file("a/b/y"), dir("a"), dir("a/b")],
            &[wh("a/z"), file("a/c"), file("a/b/f"), opq("a/b")],
        ]);
        assert_eq!(
            keep,
            [
                "a dir L0",
                "a/.wh.z",
                "a/b dir L0",
                "a/b/.wh..wh..opq",
                "a/b/f file L1",
                "a/c file L1"
            ]
        );
        assert_eq!(
            flat,
            ["a dir L0", "a/b dir L0", "a/b/f file L1", "a/c file L1"]
        );
    }
}
