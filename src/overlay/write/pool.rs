//! Finishing small regular files off the extraction thread.
//!
//! The extraction thread keeps every namespace operation (create, unlink, link, rename) in tar
//! order, so existence checks, replacements and hardlinks see exactly the state a sequential
//! extraction would. What it hands over is an already created, open file plus its bytes: the data
//! write, owner, xattrs, mode and times touch only that inode, so their order relative to later
//! entries does not matter (a file replaced meanwhile is an unlinked inode being filled, harmless).
//! The writer drains the pool before anything reads what workers write: fixups and dir times.

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Sender};

use crate::entry::Meta;
use crate::error::{Error, Result};
use crate::overlay::write::attrs;
use crate::path::show;

/// Files at most this large are finished by the pool; larger ones are streamed by the caller.
pub(crate) const SMALL: u64 = 256 * 1024;

/// One file to finish.
pub(crate) struct PendingFile {
    pub file: File,
    pub data: Vec<u8>,
    /// Attributes, xattr names already as they go to disk.
    pub meta: Meta,
    pub path: Vec<u8>,
}

#[derive(Default)]
struct Shared {
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
    warnings: Mutex<Vec<String>>,
}

/// A few worker threads; started on first use, joined by [`FilePool::drain`].
pub(crate) struct FilePool {
    threads: usize,
    tx: Option<Sender<PendingFile>>,
    workers: Vec<JoinHandle<()>>,
    shared: Arc<Shared>,
}

fn finish(job: PendingFile, warnings: &mut Vec<String>) -> Result<()> {
    let mut f = job.file;
    f.write_all(&job.data)
        .map_err(|e| Error::io(show(&job.path), e))?;
    attrs::set(
        attrs::Node::Open(f.as_fd()),
        &job.path,
        &attrs::Attrs::of(&job.meta, true),
        warnings,
    )
}

impl FilePool {
    /// A pool of `threads` workers (0: every file is finished inline by the caller).
    pub fn new(threads: usize) -> Self {
        FilePool {
            threads,
            tx: None,
            workers: Vec::new(),
            shared: Arc::default(),
        }
    }

    /// Whether jobs can be handed over at all.
    pub fn enabled(&self) -> bool {
        self.threads > 0
    }

    /// Hand over a file. Fails early with a worker's error, if one failed.
    pub fn submit(&mut self, job: PendingFile) -> Result<()> {
        if self.shared.failed.load(Ordering::Relaxed) {
            return self.drain().map(drop);
        }
        if self.tx.is_none() {
            let (tx, rx) = bounded::<PendingFile>(64);
            for _ in 0..self.threads {
                let (rx, shared) = (rx.clone(), self.shared.clone());
                self.workers.push(std::thread::spawn(move || {
                    let mut warnings = Vec::new();
                    for job in rx {
                        if shared.failed.load(Ordering::Relaxed) {
                            continue;
                        }
                        if let Err(e) = finish(job, &mut warnings) {
                            shared.failed.store(true, Ordering::Relaxed);
                            shared.error.lock().expect("poisoned").get_or_insert(e);
                        }
                    }
                    shared.warnings.lock().expect("poisoned").extend(warnings);
                }));
            }
            self.tx = Some(tx);
        }
        self.tx
            .as_ref()
            .expect("started")
            .send(job)
            .map_err(|_| Error::Stopped)
    }

    /// Wait for every handed-over file; the first error, or the warnings.
    pub fn drain(&mut self) -> Result<Vec<String>> {
        self.tx = None;
        for w in self.workers.drain(..) {
            w.join().expect("file worker panicked");
        }
        if let Some(e) = self.shared.error.lock().expect("poisoned").take() {
            return Err(e);
        }
        Ok(std::mem::take(
            &mut *self.shared.warnings.lock().expect("poisoned"),
        ))
    }
}

impl Drop for FilePool {
    fn drop(&mut self) {
        let _ = self.drain();
    }
}
