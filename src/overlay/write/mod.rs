//! Writing a layer: a changeset becomes an overlay-native layer dir (char 0/0 whiteouts,
//! `<ns>.overlay.opaque`), in three phases the types keep in order.
//!
//! ```text
//! Layer<M>  ──put(entry)...──> finish() ──> Unsettled<M> ──settle(lowers) / standalone()──> Settled
//!   stream.rs, parents.rs, markers.rs          settle.rs (what the layer owes its lowers)     seal()
//!   (files finished on pool.rs)
//! ```
//! - **Writing** ([`Layer`], a [`Sink`]): each entry is made inside the layer root
//!   (`stream.rs`), its parents resolved there (`parents.rs`), markers written as the kernel reads
//!   them (`markers.rs`); small files are finished on worker threads (`pool.rs`). What needs the lower
//!   layers is recorded, or refused when there are none.
//! - **Settling** ([`Unsettled`]): a layer of a stack ([`Stacked`]) is settled against its lowers
//!   once they are complete (`settle.rs`: implied dirs' attributes, hardlinks to lower files, an
//!   opaque root, ghosts); a layer without lowers ([`Standalone`]) is declared so.
//! - **Sealing** ([`Settled::seal`]): every dir's time, last, since creating children changes it.
//!
//! The rest are parts: `attrs.rs` sets owner, xattrs, mode and times in that order; `key.rs` and
//! `cursor.rs` keep paths and dir fds linear at any depth.

use std::io::Read;
use std::marker::PhantomData;
use std::os::fd::OwnedFd;
use std::sync::Arc;

use crate::entry::{Entry, Sink};
use crate::error::Result;
use crate::overlay::read::lower::LowerView;
use crate::overlay::Namespace;

pub(crate) mod attrs;
pub(crate) mod cursor;
pub(crate) mod key;
mod markers;
mod parents;
pub(crate) mod pool;
pub(crate) mod settle;
pub(crate) mod stream;

pub(crate) use pool::FilePool;
use stream::LayerWriter;

/// Whether a layer has lowers to settle against later; chosen when the layer is made.
pub(crate) trait Mode {
    /// Defer what needs the lowers (instead of refusing it).
    const DEFERRED: bool;
}

/// A layer with no layers below (`--into`): what would need them gets defaults or is refused.
pub(crate) struct Standalone;

/// A layer of a stack (`--store`): what needs the lowers waits for [`Unsettled::settle`].
pub(crate) struct Stacked;

impl Mode for Standalone {
    const DEFERRED: bool = false;
}

impl Mode for Stacked {
    const DEFERRED: bool = true;
}

/// A layer being written: give it the entries, then [`Layer::finish`].
pub(crate) struct Layer<M: Mode> {
    w: LayerWriter,
    mode: PhantomData<M>,
}

impl<M: Mode> Layer<M> {
    /// A layer written into the empty directory `root`; small files are finished on `files`.
    pub(crate) fn new(root: OwnedFd, ns: Namespace, files: Arc<FilePool>) -> Self {
        Layer {
            w: LayerWriter::new(root, ns, M::DEFERRED, files),
            mode: PhantomData,
        }
    }

    /// The end of the entries: waits for the files still being written.
    pub(crate) fn finish(mut self) -> Result<Unsettled<M>> {
        self.w.drain()?;
        Ok(Unsettled {
            w: self.w,
            mode: PhantomData,
        })
    }
}

impl<M: Mode> Sink for Layer<M> {
    fn put(&mut self, e: &Entry, data: &mut dyn Read) -> Result<()> {
        self.w.put(e, data)
    }
}

/// Every entry written; what the layer owes the layers below is not yet settled.
#[must_use = "a layer must be settled (or declared standalone) and sealed"]
pub(crate) struct Unsettled<M: Mode> {
    w: LayerWriter,
    mode: PhantomData<M>,
}

impl Unsettled<Stacked> {
    /// Settle against the complete lower layers (`view`, topmost first).
    pub(crate) fn settle(mut self, view: &LowerView) -> Result<Settled> {
        self.w.settle(view)?;
        Ok(Settled(self.w))
    }
}

impl Unsettled<Standalone> {
    /// No lowers: nothing to settle.
    pub(crate) fn standalone(self) -> Result<Settled> {
        Ok(Settled(self.w))
    }
}

/// Settled; only the dir times are left.
#[must_use = "a settled layer must be sealed"]
pub(crate) struct Settled(LayerWriter);

impl Settled {
    /// Set every dir's time (and the root's default attributes); returns the warnings the layer
    /// gathered. The layer dir is complete after this.
    pub(crate) fn seal(self) -> Result<Vec<String>> {
        self.0.seal()
    }
}
