//! Temporary names beside a final one: results are written under `.NAME.layerkit-tmp.PID.N` and
//! renamed onto `NAME` only when complete, so no reader ever sees half a result.
//!
//! Debris is impossible to leave for long:
//! - every temporary name is held by an exclusive `flock` for its owner's lifetime, so the next run
//!   for the same target removes the ones whose lock is free and whose owner pid is gone (kill -9,
//!   power loss);
//! - a process that calls [`remove_on_signals`] (the CLI does) removes its temporary names on
//!   SIGINT, SIGTERM and SIGHUP before it dies of the signal.
//!
//! A rename onto the final name and the signal cleanup exclude each other (one mutex), so a signal
//! never turns a half-removed temporary tree into a final one.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::sys;

const MARK: &[u8] = b".layerkit-tmp.";

/// What the signal handler removes: a name in a directory, by fd, so a `cd` or a renamed parent
/// cannot redirect it.
struct Debris {
    id: u64,
    dir: Arc<OwnedFd>,
    name: Vec<u8>,
}

static REGISTRY: Mutex<Vec<Debris>> = Mutex::new(Vec::new());
static NEXT: AtomicU64 = AtomicU64::new(0);

fn registry() -> MutexGuard<'static, Vec<Debris>> {
    // A panic while holding it leaves a valid list.
    REGISTRY.lock().unwrap_or_else(|p| p.into_inner())
}

/// Run `f` (a rename that publishes a result) so that a signal cleanup never overlaps it: once a
/// cleanup has begun, this blocks until the process dies of the signal.
pub(crate) fn exclusive<T>(f: impl FnOnce() -> T) -> T {
    let _g = registry();
    f()
}

/// A registered temporary name; removed (with everything below it) when dropped, unless it was
/// published.
pub(crate) struct Registered {
    id: u64,
    dir: Arc<OwnedFd>,
    name: Vec<u8>,
    /// Cleared once published: a published name is the result, not debris.
    armed: bool,
}

impl Registered {
    /// Register `name` in `dir` for removal on signals and on drop.
    pub(crate) fn new(dir: Arc<OwnedFd>, name: Vec<u8>) -> Registered {
        let id = NEXT.fetch_add(1, Ordering::Relaxed);
        registry().push(Debris {
            id,
            dir: dir.clone(),
            name: name.clone(),
        });
        Registered {
            id,
            dir,
            name,
            armed: true,
        }
    }

    /// The temporary name.
    pub(crate) fn name(&self) -> &[u8] {
        &self.name
    }

    /// The directory holding it.
    pub(crate) fn dir(&self) -> &OwnedFd {
        &self.dir
    }

    /// Rename the temporary name onto `final_name` in the same directory (replacing a file, or an
    /// empty dir), excluded from signal cleanup.
    pub(crate) fn publish(mut self, final_name: &[u8]) -> io::Result<()> {
        let mut reg = registry();
        sys::renameat(&*self.dir, &self.name, &*self.dir, final_name)?;
        reg.retain(|d| d.id != self.id);
        // Dropped normally (not `mem::forget`), so the directory fd is closed: a long-lived
        // library caller must not run out of descriptors one publish at a time.
        self.armed = false;
        Ok(())
    }
}

impl Drop for Registered {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let mut reg = registry();
        reg.retain(|d| d.id != self.id);
        let _ = remove(self.dir.as_fd(), &self.name);
    }
}

/// Remove a tree that other threads of this process may still be writing into: they can only add
/// names until the directory itself is gone, so a few passes win.
fn remove(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let mut last = Ok(());
    for _ in 0..100 {
        last = sys::remove_all_at(dir, name);
        if last.is_ok() {
            break;
        }
    }
    last
}

/// The temporary name for `final_name`: `.NAME.layerkit-tmp.PID.N`.
fn temp_name(final_name: &[u8]) -> Vec<u8> {
    let mut n = b".".to_vec();
    n.extend_from_slice(final_name);
    n.extend_from_slice(MARK);
    n.extend_from_slice(
        format!(
            "{}.{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        )
        .as_bytes(),
    );
    n
}

/// Remove the temporary names for `final_name` in `dir` that no live run owns: their lock is free
/// and the pid in their name is gone (a pid still alive may be an owner between creating its name
/// and locking it). Returns how many were removed.
pub(crate) fn reap(dir: &OwnedFd, final_name: &[u8]) -> usize {
    let mut prefix = b".".to_vec();
    prefix.extend_from_slice(final_name);
    prefix.extend_from_slice(MARK);
    let mut removed = 0;
    for name in sys::read_dir_names(dir).unwrap_or_default() {
        let Some(rest) = name.strip_prefix(prefix.as_slice()) else {
            continue;
        };
        let pid = std::str::from_utf8(rest)
            .ok()
            .and_then(|r| r.split('.').next())
            .and_then(|p| p.parse::<i32>().ok());
        let owner_alive = match pid {
            Some(p) if p as u32 == std::process::id() => false,
            Some(p) => sys::process_alive(p),
            None => continue,
        };
        if owner_alive {
            continue;
        }
        let free = match sys::open_any_at(dir, &name) {
            Ok(fd) => sys::flock(&fd, true, true).unwrap_or(false),
            Err(e) => e.kind() != io::ErrorKind::NotFound && sys::lstatat(dir, &name).is_ok(),
        };
        if free && remove(dir.as_fd(), &name).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// A temporary file beside `final_name` in `dir`, created exclusively, locked and registered.
pub(crate) fn file(dir: Arc<OwnedFd>, final_name: &[u8]) -> io::Result<(Registered, File)> {
    reap(&dir, final_name);
    let name = temp_name(final_name);
    let f = sys::create_excl_mode(&*dir, &name, 0o666)?;
    let reg = Registered::new(dir, name);
    sys::flock(&f, true, false)?;
    Ok((reg, f))
}

/// A temporary directory beside `final_name` in `dir`, created, locked and registered; returns
/// it open.
pub(crate) fn directory(
    dir: Arc<OwnedFd>,
    final_name: &[u8],
    mode: u32,
) -> io::Result<(Registered, OwnedFd)> {
    reap(&dir, final_name);
    let name = temp_name(final_name);
    sys::mkdirat(&*dir, &name, mode)?;
    let reg = Registered::new(dir, name);
    let fd = sys::openat_dir(reg.dir(), reg.name())?;
    sys::flock(&fd, true, false)?;
    Ok((reg, fd))
}

/// From now on, SIGINT, SIGTERM and SIGHUP remove every registered temporary name of this process,
/// then end it as the signal would have (exit status 128 + signal in a shell). For programs (the
/// CLI) that own their process; a library caller with its own handling can leave it out.
pub fn remove_on_signals() -> io::Result<()> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    std::thread::Builder::new()
        .name("layerkit-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                // Held until the process dies: no rename publishes a result after this point.
                let mut reg = registry();
                for d in reg.drain(..) {
                    let _ = remove(d.dir.as_fd(), &d.name);
                }
                let _ = signal_hook::low_level::emulate_default_handler(sig);
                std::process::exit(128 + sig);
            }
        })?;
    Ok(())
}

/// A new tree to be published as `dir`, which must be missing or an empty directory on the same
/// filesystem as its parent (`flag` names the option in messages). Returns the temporary dir (its
/// registration; dropped, it takes the tree with it), an fd of it, and `dir`'s name to publish as.
pub(crate) fn empty_dir(
    dir: &std::path::Path,
    flag: &str,
) -> crate::error::Result<(Registered, OwnedFd, Vec<u8>)> {
    use crate::error::Error;
    use std::path::PathBuf;
    let name = dir
        .file_name()
        .ok_or_else(|| Error::Usage(format!("{}: not a directory name", dir.display())))?
        .as_encoded_bytes()
        .to_vec();
    let parent_path = match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let parent = sys::open_dir(&parent_path).map_err(|e| Error::io(&parent_path, e))?;
    match sys::lstatat(&parent, &name) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(dir, e)),
        Ok(st) => {
            if sys::file_type(&st) != sys::FileType::Directory {
                return Err(Error::io(dir, io::Error::other("not a directory")));
            }
            let d = sys::openat_dir(&parent, &name).map_err(|e| Error::io(dir, e))?;
            if !sys::read_dir_names(&d)
                .map_err(|e| Error::io(dir, e))?
                .is_empty()
            {
                return Err(Error::io(
                    dir,
                    io::Error::other(format!(
                        "not empty ({flag} needs an empty or missing directory)"
                    )),
                ));
            }
            if sys::fstat(&parent)
                .map_err(|e| Error::io(&parent_path, e))?
                .st_dev
                != st.st_dev
            {
                return Err(Error::io(
                    dir,
                    io::Error::other("a mount point; unpack into a directory inside it"),
                ));
            }
        }
    }
    let parent = Arc::new(parent);
    // Dropped on any error: the temporary tree goes with it.
    let (tmp, root) = directory(parent, &name, 0o700).map_err(|e| Error::io(dir, e))?;
    Ok((tmp, root, name))
}
