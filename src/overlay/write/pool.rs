//! Finishing small regular files off the extraction thread.
//!
//! The extraction thread keeps every namespace operation (create, unlink, link, rename) in tar
//! order, so existence checks, replacements and hardlinks see exactly the state a sequential
//! extraction would. What it hands over is an already created, open file plus its bytes: the data
//! write, owner, xattrs, mode and times touch only that inode, so their order relative to later
//! entries does not matter (a file replaced meanwhile is an unlinked inode being filled, harmless).
//! The writer drains its files before anything reads what workers write: settling and dir times.
//!
//! One pool serves every layer of a run (`-j N` workers in all, not per layer); each layer keeps
//! its own tally of files in flight, its first error and its warnings, so draining one layer waits
//! for its own files only (which may be queued behind other layers').

use std::fs::File;
use std::io::Write;
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use crossbeam_channel::{bounded, Receiver, Sender};

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

/// One layer's files in the pool.
#[derive(Default)]
struct Tally {
    /// Files handed over and not yet finished.
    pending: Mutex<usize>,
    done: Condvar,
    failed: AtomicBool,
    error: Mutex<Option<Error>>,
    warnings: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
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

/// A file counted in its layer's tally until dropped, however it goes: finished, skipped, left
/// in the channel when the workers are gone, or dropped by a worker's panic (then the layer fails
/// instead of waiting forever).
struct Counted(Arc<Tally>);

impl Drop for Counted {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.failed.store(true, Ordering::Relaxed);
            lock(&self.0.error).get_or_insert(Error::Resource {
                what: "file worker",
                source: std::io::Error::other("it panicked"),
            });
        }
        let mut n = lock(&self.0.pending);
        *n -= 1;
        if *n == 0 {
            self.0.done.notify_all();
        }
    }
}

fn work(rx: Receiver<Handed>) {
    for (job, counted) in rx {
        let tally = &counted.0;
        if !tally.failed.load(Ordering::Relaxed) {
            let mut warnings = Vec::new();
            match finish(job, &mut warnings) {
                Ok(()) => lock(&tally.warnings).extend(warnings),
                Err(e) => {
                    tally.failed.store(true, Ordering::Relaxed);
                    lock(&tally.error).get_or_insert(e);
                }
            }
        }
    }
}

/// A file and the tally of the layer it belongs to.
type Handed = (PendingFile, Counted);

/// The file workers of a run; started on first use, joined when the last handle goes.
pub(crate) struct FilePool {
    threads: usize,
    started: Mutex<Option<Started>>,
}

/// The workers, once started, and the sender that feeds them.
struct Started {
    tx: Sender<Handed>,
    workers: Vec<JoinHandle<()>>,
}

impl FilePool {
    /// A pool of `threads` workers (0: every file is finished inline by its writer).
    pub(crate) fn new(threads: usize) -> Arc<Self> {
        Arc::new(FilePool {
            threads,
            started: Mutex::new(None),
        })
    }

    fn sender(&self) -> Sender<Handed> {
        let mut started = lock(&self.started);
        let started = started.get_or_insert_with(|| {
            let (tx, rx) = bounded(64);
            let workers = (0..self.threads)
                .map(|_| {
                    let rx = rx.clone();
                    std::thread::spawn(move || work(rx))
                })
                .collect();
            Started { tx, workers }
        });
        started.tx.clone()
    }
}

impl Drop for FilePool {
    fn drop(&mut self) {
        if let Some(Started { tx, workers }) = lock(&self.started).take() {
            drop(tx);
            for w in workers {
                let _ = w.join();
            }
        }
    }
}

/// One layer's use of the pool.
pub(crate) struct LayerFiles {
    // Before `pool`: fields drop in order, and the pool's last owner joins workers that stop only
    // once every sender is gone.
    tx: Option<Sender<Handed>>,
    tally: Arc<Tally>,
    pool: Arc<FilePool>,
}

impl LayerFiles {
    pub(crate) fn new(pool: Arc<FilePool>) -> Self {
        LayerFiles {
            tx: None,
            tally: Arc::default(),
            pool,
        }
    }

    /// Whether files can be handed over at all.
    pub(crate) fn enabled(&self) -> bool {
        self.pool.threads > 0
    }

    /// Hand over a file. Fails early with a worker's error, if one failed.
    pub(crate) fn submit(&mut self, job: PendingFile) -> Result<()> {
        if self.tally.failed.load(Ordering::Relaxed) {
            return self.drain().map(drop);
        }
        let tx = match &self.tx {
            Some(tx) => tx,
            None => self.tx.insert(self.pool.sender()),
        };
        *lock(&self.tally.pending) += 1;
        // A failed send drops the file and its count with it.
        tx.send((job, Counted(self.tally.clone())))
            .map_err(|_| Error::Stopped)
    }

    /// Wait for every file this layer handed over; the first error, or the warnings.
    pub(crate) fn drain(&mut self) -> Result<Vec<String>> {
        let mut n = lock(&self.tally.pending);
        while *n > 0 {
            n = self.tally.done.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        drop(n);
        if let Some(e) = lock(&self.tally.error).take() {
            return Err(e);
        }
        Ok(std::mem::take(&mut *lock(&self.tally.warnings)))
    }
}

impl Drop for LayerFiles {
    fn drop(&mut self) {
        let _ = self.drain();
    }
}
