//! The only module that makes syscalls. Everything is fd-relative where the kernel allows it;
//! each wrapper is named after its syscall and returns owned values.
#![allow(clippy::disallowed_methods, clippy::disallowed_types)]

use crate::entry::Xattrs;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{self as rfs, AtFlags, Mode, OFlags};

mod at;
mod mount;
pub use at::*;
pub use mount::*;

pub use rustix::fs::{FileType, Stat};

fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// `open(path, O_DIRECTORY)`: the root of a tree the user named.
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    Ok(rfs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?)
}

/// `openat(dirfd, name, O_DIRECTORY|O_NOFOLLOW)`: descend one level without following a symlink.
pub fn openat_dir(dir: impl AsFd, name: &[u8]) -> io::Result<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rfs::openat(
        dir,
        cstr(name)?.as_c_str(),
        flags,
        Mode::empty(),
    )?)
}

/// `openat(dirfd, name, O_RDONLY|O_NOFOLLOW)`: open a regular file's data for reading.
pub fn openat_file(dir: impl AsFd, name: &CStr) -> io::Result<File> {
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NOCTTY;
    Ok(File::from(rfs::openat(dir, name, flags, Mode::empty())?))
}

/// `fstatat(dirfd, name, AT_SYMLINK_NOFOLLOW)`.
pub fn lstatat(dir: impl AsFd, name: &[u8]) -> io::Result<Stat> {
    Ok(rfs::statat(
        dir,
        cstr(name)?.as_c_str(),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// `readlinkat(dirfd, name)`.
pub fn readlinkat(dir: impl AsFd, name: &[u8]) -> io::Result<Vec<u8>> {
    Ok(rfs::readlinkat(dir, cstr(name)?.as_c_str(), Vec::new())?.into_bytes())
}

/// `getdents64` over a directory fd: the names in it, without `.` and `..`, in kernel order.
pub fn read_dir_names(dir: impl AsFd) -> io::Result<Vec<Vec<u8>>> {
    let mut d = rfs::Dir::read_from(dir)?;
    let mut names = Vec::new();
    while let Some(ent) = d.read() {
        let ent = ent?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    Ok(names)
}

/// File type bits of a `Stat`.
pub fn file_type(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// `major`/`minor` of `st_rdev`.
pub fn rdev(st: &Stat) -> (u32, u32) {
    (rfs::major(st.st_rdev), rfs::minor(st.st_rdev))
}

/// `llistxattr(path)` then `lgetxattr(path, name)` for each: all xattrs of a node without following a
/// final symlink, in the kernel's order. Path-based because symlinks and whiteout devices cannot be
/// opened; used only on trees we read (the upper and lowers), never on trees we write into.
pub fn lget_all_xattrs(path: &Path) -> io::Result<Xattrs> {
    let mut list = vec![0u8; 4096];
    let n = loop {
        match rfs::llistxattr(path, &mut list[..]) {
            Ok(n) => break n,
            Err(rustix::io::Errno::RANGE) => {
                let need = rfs::llistxattr(path, &mut [0u8; 0][..])?;
                list.resize(need.max(list.len() * 2), 0);
            }
            Err(rustix::io::Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    let mut val = vec![0u8; 256];
    for name in list[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let cname = cstr(name)?;
        let len = loop {
            match rfs::lgetxattr(path, cname.as_c_str(), &mut val[..]) {
                Ok(len) => break Some(len),
                Err(rustix::io::Errno::RANGE) => {
                    let need = rfs::lgetxattr(path, cname.as_c_str(), &mut [0u8; 0][..])?;
                    val.resize(need.max(val.len() * 2), 0);
                }
                // Removed between list and get: it is simply not there any more.
                Err(rustix::io::Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(len) = len {
            out.push((name.to_vec(), val[..len].to_vec()));
        }
    }
    Ok(out)
}

/// Path of `name` below the directory path `dir`, as an OS path.
pub fn os_path(dir: &[u8], name: &[u8]) -> std::path::PathBuf {
    let mut v = Vec::with_capacity(dir.len() + 1 + name.len());
    v.extend_from_slice(dir);
    if !dir.is_empty() && !dir.ends_with(b"/") {
        v.push(b'/');
    }
    v.extend_from_slice(name);
    Path::new(OsStr::from_bytes(&v)).to_path_buf()
}

/// Raise `RLIMIT_NOFILE` to its hard limit: pipelines keep a directory fd per queued entry.
pub fn raise_nofile_limit() {
    use rustix::process::{getrlimit, setrlimit, Resource};
    let mut lim = getrlimit(Resource::Nofile);
    if lim.current < lim.maximum {
        lim.current = lim.maximum;
        let _ = setrlimit(Resource::Nofile, lim);
    }
}

/// `stat(path)` (following symlinks) or `lstat(path)`.
pub fn stat_path(path: &Path, follow: bool) -> io::Result<Stat> {
    let flags = if follow {
        AtFlags::empty()
    } else {
        AtFlags::SYMLINK_NOFOLLOW
    };
    Ok(rfs::statat(rfs::CWD, path, flags)?)
}

/// `open(path, O_WRONLY)`, following symlinks: an existing device or FIFO written through, as
/// `tar -f` does.
pub fn open_write_through(path: &Path) -> io::Result<File> {
    let flags = OFlags::WRONLY | OFlags::CLOEXEC | OFlags::NOCTTY;
    Ok(File::from(rfs::open(path, flags, Mode::empty())?))
}

/// An anonymous file in `dir` (`O_TMPFILE`, mode 0600): it has no name, so a crash leaves nothing
/// behind. Falls back to create-then-unlink where the filesystem lacks `O_TMPFILE`.
pub fn tmpfile_in(dir: &Path) -> io::Result<File> {
    let d = cstr(dir.as_os_str().as_bytes())?;
    match rfs::open(
        d.as_c_str(),
        OFlags::TMPFILE | OFlags::RDWR | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    ) {
        Ok(fd) => Ok(File::from(fd)),
        Err(e) if e == rustix::io::Errno::OPNOTSUPP || e == rustix::io::Errno::ISDIR => {
            let r = random17()?;
            let name = dir.join(format!(".layerkit-spool-{}", hex::encode(&r[..8])));
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&name)?;
            std::fs::remove_file(&name)?;
            Ok(f)
        }
        Err(e) => Err(e.into()),
    }
}

/// `pread(f, buf, off)`.
pub fn read_at(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    std::os::unix::fs::FileExt::read_at(f, buf, off)
}

/// The file is a regular file (so it can be read at any offset).
pub fn is_regular(f: &File) -> bool {
    fstat(f).is_ok_and(|st| file_type(&st) == FileType::RegularFile)
}

/// `rmdir(path)`.
pub fn rmdir(path: &Path) -> io::Result<()> {
    Ok(rfs::unlinkat(rfs::CWD, path, AtFlags::REMOVEDIR)?)
}

/// Whether `trusted.*` xattrs are visible to this process: the kernel shows them only to holders of
/// CAP_SYS_ADMIN in the initial user namespace, and to anyone else answers `ENODATA`, as if absent.
pub fn can_read_trusted_xattrs() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let cap_eff = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok());
    let Some(cap_eff) = cap_eff else {
        // No procfs: root is the best guess.
        return rustix::process::geteuid().is_root();
    };
    // The initial user namespace maps every id to itself: "0 0 4294967295".
    let initial_ns = std::fs::read_to_string("/proc/self/uid_map")
        .map(|m| m.split_whitespace().collect::<Vec<_>>() == ["0", "0", "4294967295"])
        .unwrap_or(true);
    initial_ns && cap_eff & (1 << CAP_SYS_ADMIN) != 0
}

/// A lookup that never follows a link found nothing usable: ENOENT, ENOTDIR (a non-dir on the
/// way) or ELOOP (a symlink where `O_NOFOLLOW | O_DIRECTORY` wanted a dir).
pub fn is_absent(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::NotFound
        || matches!(
            rustix::io::Errno::from_io_error(e),
            Some(rustix::io::Errno::NOTDIR | rustix::io::Errno::LOOP)
        )
}

/// What a filesystem or node type answers to an xattr it does not take: EPERM (`user.*` on
/// symlinks and devices) or EOPNOTSUPP.
pub fn xattr_refused(e: &io::Error) -> bool {
    matches!(
        rustix::io::Errno::from_io_error(e),
        Some(rustix::io::Errno::PERM | rustix::io::Errno::OPNOTSUPP)
    )
}
