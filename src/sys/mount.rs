//! Mounting: overlay mounts of store layers, their unmounting, and telling a mount point.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use rustix::mount::{MountFlags, UnmountFlags};

/// Mount overlayfs at `target` with the option string `data`, both relative to `dir`: on a thread
/// of its own whose working directory alone is `dir` (`unshare(CLONE_FS)`), so that short relative
/// layer names (`l/SHORT`) keep the option string within the one page mount(2) takes, as Docker's
/// overlay2 does from a forked process, without touching the process's working directory.
#[allow(unsafe_code)] // the one unsafe call of the crate: see SAFETY below
pub fn mount_overlay_in(dir: BorrowedFd<'_>, target: &[u8], data: &[u8]) -> io::Result<()> {
    let dir = dir.try_clone_to_owned()?;
    let target = CString::new(target).map_err(|_| io::ErrorKind::InvalidInput)?;
    let data = CString::new(data).map_err(|_| io::ErrorKind::InvalidInput)?;
    std::thread::scope(|s| {
        s.spawn(move || -> io::Result<()> {
            // SAFETY: CLONE_FS gives this thread its own working directory, root and umask, and
            // nothing else; it runs only the two calls below and ends. No other thread (and no
            // std state) depends on the cwd it changes.
            unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::FS) }?;
            rustix::process::fchdir(dir.as_fd())?;
            rustix::mount::mount(
                c"overlay",
                target.as_c_str(),
                c"overlay",
                MountFlags::empty(),
                Some(data.as_c_str()),
            )?;
            Ok(())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("mount thread panicked")))
    })
}

/// Unmount `path`. `Ok(false)`: it was not a mount point. Never lazily (Docker's overlay2
/// detaches): a detached overlay still in use would keep reading and writing its layers while
/// the next mount, `rm` or `prune` believes them free; a busy mount is an error (EBUSY).
pub fn unmount(path: &Path) -> io::Result<bool> {
    match rustix::mount::unmount(path, UnmountFlags::NOFOLLOW) {
        Ok(()) => Ok(true),
        Err(rustix::io::Errno::INVAL) if !is_mount_point(path)? => Ok(false),
        Err(rustix::io::Errno::BUSY) => Err(io::Error::new(
            io::ErrorKind::ResourceBusy,
            "in use (a process has a file or its working directory there); stop it first",
        )),
        Err(e) => Err(e.into()),
    }
}

/// Whether `path` is the root of a mount (statx's `STATX_ATTR_MOUNT_ROOT`); a missing path is not.
pub fn is_mount_point(path: &Path) -> io::Result<bool> {
    use rustix::fs::{statx, AtFlags, StatxAttributes, StatxFlags, CWD};
    match statx(
        CWD,
        path,
        AtFlags::SYMLINK_NOFOLLOW,
        StatxFlags::BASIC_STATS,
    ) {
        Ok(st) => {
            let (attr, known) = (st.stx_attributes, st.stx_attributes_mask);
            if known.contains(StatxAttributes::MOUNT_ROOT) {
                Ok(attr.contains(StatxAttributes::MOUNT_ROOT))
            } else {
                Err(io::Error::other(
                    "this kernel does not tell mount points (statx)",
                ))
            }
        }
        Err(rustix::io::Errno::NOENT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}
