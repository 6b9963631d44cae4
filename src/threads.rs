//! The run's threads: one budget (`-j N`) and the one worker pool the jobs share out.
//!
//! `-j N` means the same in every job: at most N workers of each kind of parallel work, for the
//! whole run, never per layer. The kinds are layers unpacked or indexed at once, small files
//! finished beside the writers (one pool for all layers: `overlay::write::FilePool`), and
//! compressor workers. Each pipeline adds its fixed stages, threads that hand bytes along bounded
//! channels (a reader per layer in flight; an upper walker, a tar producer and a blob writer), so
//! with the calling thread a run has at most: diff N+4, apply `--into` N+2, `--store` 3N+1,
//! squash N+3 threads (the CLI adds its signal handler; `tests/it/threads.rs` samples them).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::Scope;

/// Default worker count: the cores this process may use.
pub fn default_jobs() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `-j N` as the jobs read it (0: [`default_jobs`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget(usize);

impl Budget {
    pub(crate) fn new(jobs: usize) -> Budget {
        Budget(if jobs == 0 { default_jobs() } else { jobs }.max(1))
    }

    /// Workers of one kind.
    pub(crate) fn workers(self) -> usize {
        self.0
    }
}

/// Start `workers` threads in `s` that run `work(i)` for every `i` in `0..n`, each taking the
/// next index, so items start in order whatever their cost. Returns at once; leaving the scope
/// joins them.
pub(crate) fn spawn_workers<'scope, F>(
    s: &'scope Scope<'scope, '_>,
    workers: usize,
    n: usize,
    work: F,
) where
    F: Fn(usize) + Send + Sync + 'scope,
{
    let next = Arc::new(AtomicUsize::new(0));
    let work = Arc::new(work);
    for _ in 0..workers.clamp(1, n.max(1)) {
        let (next, work) = (next.clone(), work.clone());
        s.spawn(move || loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= n {
                break;
            }
            work(i);
        });
    }
}

/// `work(i)` for every `i` in `0..n` on `workers` threads; the results in index order.
pub(crate) fn map_in_order<R: Send>(
    workers: usize,
    n: usize,
    work: impl Fn(usize) -> R + Send + Sync,
) -> Vec<R> {
    let slots: Vec<Mutex<Option<R>>> = (0..n).map(|_| Mutex::new(None)).collect();
    std::thread::scope(|s| {
        spawn_workers(s, workers, n, |i| {
            let r = work(i);
            *slots[i].lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        })
    });
    slots
        .into_iter()
        .map(|m| {
            m.into_inner()
                .unwrap_or_else(|p| p.into_inner())
                .expect("every item ran")
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_runs_once_and_results_keep_their_order() {
        for workers in [1, 2, 7] {
            for n in [0, 1, 5, 100] {
                let ran = AtomicUsize::new(0);
                let out = map_in_order(workers, n, |i| {
                    ran.fetch_add(1, Ordering::Relaxed);
                    i * 2
                });
                assert_eq!(out, (0..n).map(|i| i * 2).collect::<Vec<_>>());
                assert_eq!(ran.load(Ordering::Relaxed), n);
            }
        }
    }
}
