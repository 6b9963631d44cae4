//! How far a job has read its layers, for a caller that shows progress (the CLI on a terminal,
//! as `skopeo copy` and `podman pull` do). Counting happens in the threads that read blobs, so
//! showing needs no thread of its own: the reader that crosses the next tick calls `show`.

use std::io::{self, Read};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A point in a job's reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Blob bytes read so far (compressed, as stored).
    pub read: u64,
    /// Blob bytes of every layer the job was given whose size is known beforehand.
    pub total: u64,
    /// Layers the job was given (reused ones count, though they are never read).
    pub layers: usize,
    /// Layers read to their end.
    pub done: usize,
}

/// What a [`Meter`] calls to show where the job is.
type Show = Box<dyn FnMut(&Progress) + Send>;

/// Counts what every metered [`Input`](crate::Input) reads; calls `show` at most once per tick.
pub struct Meter {
    read: AtomicU64,
    total: AtomicU64,
    layers: AtomicUsize,
    done: AtomicUsize,
    start: Instant,
    every: Duration,
    /// Milliseconds since `start` of the last `show`.
    last: AtomicU64,
    show: Mutex<Show>,
}

impl std::fmt::Debug for Meter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Meter")
            .field("progress", &self.progress())
            .finish()
    }
}

impl Meter {
    /// A meter that calls `show` at most once per `every` while bytes are read.
    pub fn new(every: Duration, show: impl FnMut(&Progress) + Send + 'static) -> Arc<Meter> {
        Arc::new(Meter {
            read: AtomicU64::new(0),
            total: AtomicU64::new(0),
            layers: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            start: Instant::now(),
            every,
            last: AtomicU64::new(0),
            show: Mutex::new(Box::new(show)),
        })
    }

    /// Where the job is now.
    pub fn progress(&self) -> Progress {
        Progress {
            read: self.read.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            layers: self.layers.load(Ordering::Relaxed),
            done: self.done.load(Ordering::Relaxed),
        }
    }

    /// Call `show` now, whatever the tick (for a final line).
    pub fn show_now(&self) {
        let p = self.progress();
        if let Ok(mut show) = self.show.lock() {
            show(&p);
        }
    }

    pub(crate) fn add_layer(&self, size: Option<u64>) {
        self.layers.fetch_add(1, Ordering::Relaxed);
        self.total.fetch_add(size.unwrap_or(0), Ordering::Relaxed);
    }

    pub(crate) fn whole(&self, n: u64) {
        self.add(n as usize);
        self.done.fetch_add(1, Ordering::Relaxed);
    }

    fn add(&self, n: usize) {
        self.read.fetch_add(n as u64, Ordering::Relaxed);
        let now = self.start.elapsed().as_millis() as u64;
        let last = self.last.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= self.every.as_millis() as u64
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            // Another reader showing right now: skip this tick rather than wait for it.
            if let Ok(mut show) = self.show.try_lock() {
                show(&self.progress());
            }
        }
    }
}

/// A blob reader that counts into a meter, and counts its layer done at its end.
pub(crate) struct Metered<R> {
    pub(crate) inner: R,
    pub(crate) meter: Arc<Meter>,
    pub(crate) ended: bool,
}

impl<R: Read> Read for Metered<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n > 0 {
            self.meter.add(n);
        } else if !buf.is_empty() && !self.ended {
            self.ended = true;
            self.meter.done.fetch_add(1, Ordering::Relaxed);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_and_layers_and_shows_on_ticks() {
        let shown = Arc::new(Mutex::new(Vec::new()));
        let s = shown.clone();
        let m = Meter::new(Duration::ZERO, move |p| s.lock().unwrap().push(*p));
        m.add_layer(Some(10));
        m.add_layer(None);
        let mut r = Metered {
            inner: &b"0123456789"[..],
            meter: m.clone(),
            ended: false,
        };
        io::copy(&mut r, &mut io::sink()).unwrap();
        let _ = r.read(&mut [0u8; 4]).unwrap();
        let p = m.progress();
        assert_eq!(
            p,
            Progress {
                read: 10,
                total: 10,
                layers: 2,
                done: 1
            }
        );
        assert!(!shown.lock().unwrap().is_empty());
    }
}
