//! Write-side `*at` syscalls: everything that creates or changes a node does it relative to an open
//! directory and never follows a symlink in the final component, so untrusted names cannot steer a
//! write outside the directory the caller resolved.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU8, Ordering};

use rustix::fs::{
    self as rfs, AtFlags, FileType, FlockOperation, Gid, Mode, OFlags, RenameFlags, ResolveFlags,
    Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use crate::entry::{dev_fits, Xattrs};

fn cstr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))
}

/// 0 = not probed, 1 = openat2 works, 2 = unavailable (ENOSYS, or EPERM from a seccomp filter).
static OPENAT2: AtomicU8 = AtomicU8::new(0);

/// `openat2(dir, path, O_DIRECTORY, RESOLVE_BENEATH|RESOLVE_NO_SYMLINKS|RESOLVE_NO_MAGICLINKS)`: open a
/// directory below `dir` in one syscall when no component is a symlink. `Ok(None)` when the kernel
/// lacks openat2 (probed once, remembered): the caller's component-by-component walk, which
/// handles symlinks and missing components itself, does the work. Errors such
/// as `ENOENT`, `ENOTDIR` or `ELOOP` (a symlink on the way) tell the caller to take that walk.
pub fn openat2_dir_beneath(dir: impl AsFd, path: &[u8]) -> io::Result<Option<OwnedFd>> {
    if OPENAT2.load(Ordering::Relaxed) == 2 {
        return Ok(None);
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let resolve = ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS;
    match rfs::openat2(dir, cstr(path)?.as_c_str(), flags, Mode::empty(), resolve) {
        Ok(fd) => {
            OPENAT2.store(1, Ordering::Relaxed);
            Ok(Some(fd))
        }
        Err(Errno::NOSYS) | Err(Errno::PERM) if OPENAT2.load(Ordering::Relaxed) == 0 => {
            OPENAT2.store(2, Ordering::Relaxed);
            Ok(None)
        }
        // EAGAIN: a concurrent rename raced the lookup; the walk will do.
        Err(Errno::AGAIN) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdirat(dir: impl AsFd, name: &[u8], mode: u32) -> io::Result<()> {
    Ok(rfs::mkdirat(
        dir,
        cstr(name)?.as_c_str(),
        Mode::from_raw_mode(mode),
    )?)
}

/// `openat(dir, name, O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW, 0600)`: a new regular file, never an
/// existing one and never through a symlink. Mode and owner are set afterwards, so the file is never
/// more open than 0600 while it is written.
pub fn create_excl(dir: impl AsFd, name: &[u8]) -> io::Result<File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rfs::openat(
        dir,
        cstr(name)?.as_c_str(),
        flags,
        Mode::from_raw_mode(0o600),
    )?;
    Ok(File::from(fd))
}

/// `openat(dir, name, O_RDWR|O_CREAT|O_CLOEXEC|O_NOFOLLOW, 0600)`: a lock file, created if missing.
pub fn open_lock_file(dir: impl AsFd, name: &[u8]) -> io::Result<OwnedFd> {
    let flags = OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    Ok(rfs::openat(
        dir,
        cstr(name)?.as_c_str(),
        flags,
        Mode::from_raw_mode(0o600),
    )?)
}

/// `flock(fd, LOCK_EX|[LOCK_NB])` or `LOCK_SH`; with `nonblocking`, `Ok(false)` when someone else
/// holds it.
pub fn flock(fd: impl AsFd, exclusive: bool, nonblocking: bool) -> io::Result<bool> {
    let op = match (exclusive, nonblocking) {
        (true, false) => FlockOperation::LockExclusive,
        (true, true) => FlockOperation::NonBlockingLockExclusive,
        (false, false) => FlockOperation::LockShared,
        (false, true) => FlockOperation::NonBlockingLockShared,
    };
    match rfs::flock(fd, op) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) if nonblocking => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// What `mknodat` creates.
#[derive(Debug, Clone, Copy)]
pub enum Node {
    /// Character device.
    Char(u32, u32),
    /// Block device.
    Block(u32, u32),
    /// Named pipe.
    Fifo,
}

/// `mknodat(dir, name, type|0600, dev)`.
pub fn mknodat(dir: impl AsFd, name: &[u8], node: Node) -> io::Result<()> {
    let (ft, dev) = match node {
        Node::Char(a, b) => (FileType::CharacterDevice, rfs::makedev(a, b)),
        Node::Block(a, b) => (FileType::BlockDevice, rfs::makedev(a, b)),
        Node::Fifo => (FileType::Fifo, 0),
    };
    if let Node::Char(a, b) | Node::Block(a, b) = node {
        if !dev_fits(a, b) {
            return Err(io::Error::from(io::ErrorKind::InvalidInput));
        }
    }
    Ok(rfs::mknodat(
        dir,
        cstr(name)?.as_c_str(),
        ft,
        Mode::from_raw_mode(0o600),
        dev,
    )?)
}

/// `symlinkat(target, dir, name)`.
pub fn symlinkat(target: &[u8], dir: impl AsFd, name: &[u8]) -> io::Result<()> {
    Ok(rfs::symlinkat(
        cstr(target)?.as_c_str(),
        dir,
        cstr(name)?.as_c_str(),
    )?)
}

/// `linkat(olddir, oldname, newdir, newname, 0)`: a symlink target is linked itself, not followed.
pub fn linkat(olddir: impl AsFd, old: &[u8], newdir: impl AsFd, new: &[u8]) -> io::Result<()> {
    Ok(rfs::linkat(
        olddir,
        cstr(old)?.as_c_str(),
        newdir,
        cstr(new)?.as_c_str(),
        AtFlags::empty(),
    )?)
}

/// `unlinkat(dir, name, 0 | AT_REMOVEDIR)`.
pub fn unlinkat(dir: impl AsFd, name: &[u8], is_dir: bool) -> io::Result<()> {
    let flags = if is_dir {
        AtFlags::REMOVEDIR
    } else {
        AtFlags::empty()
    };
    Ok(rfs::unlinkat(dir, cstr(name)?.as_c_str(), flags)?)
}

/// Remove `name` in `dir` and, if it is a directory, everything below it; descends with
/// `O_NOFOLLOW`, so a symlink inside is removed, never followed. Iterative, with one directory fd
/// open at a time (it climbs back through `..`, which in a tree we made is the dir we came from):
/// neither the stack nor the fd table limits the depth it can remove (a hostile tar's 30,000
/// levels included).
pub fn remove_all_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let st = match super::lstatat(dir, name) {
        Ok(st) => st,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
        return unlinkat(dir, name, false);
    }
    let mut cur = super::openat_dir(dir, name)?;
    // Per level below `name`: the name we descended into, and the subdirs still to remove there.
    let mut levels: Vec<(Vec<u8>, Vec<Vec<u8>>)> = Vec::new();
    let mut todo = subdirs_after_unlinking_the_rest(&cur)?;
    loop {
        if let Some(sub) = todo.pop() {
            let next = match super::openat_dir(&cur, &sub) {
                Ok(fd) => fd,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            cur = next;
            levels.push((sub, std::mem::take(&mut todo)));
            todo = subdirs_after_unlinking_the_rest(&cur)?;
            continue;
        }
        // `cur` is empty now.
        match levels.pop() {
            Some((sub, rest)) => {
                cur = super::openat_dir(&cur, b"..")?;
                unlinkat(&cur, &sub, true)?;
                todo = rest;
            }
            None => {
                drop(cur);
                return unlinkat(dir, name, true);
            }
        }
    }
}

/// Unlink every non-directory in `dir`; the names of its subdirectories.
fn subdirs_after_unlinking_the_rest(dir: &OwnedFd) -> io::Result<Vec<Vec<u8>>> {
    let mut subdirs = Vec::new();
    for child in super::read_dir_names(dir)? {
        match super::lstatat(dir, &child) {
            Ok(st) if FileType::from_raw_mode(st.st_mode) == FileType::Directory => {
                subdirs.push(child)
            }
            Ok(_) => match unlinkat(dir, &child, false) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            },
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
    }
    Ok(subdirs)
}

/// `renameat2(olddir, old, newdir, new, RENAME_NOREPLACE)`: never clobbers an existing `new`.
pub fn rename_noreplace(
    olddir: impl AsFd,
    old: &[u8],
    newdir: impl AsFd,
    new: &[u8],
) -> io::Result<()> {
    Ok(rfs::renameat_with(
        olddir,
        cstr(old)?.as_c_str(),
        newdir,
        cstr(new)?.as_c_str(),
        RenameFlags::NOREPLACE,
    )?)
}

/// `renameat(olddir, old, newdir, new)`: replaces `new` (an empty dir, when `old` is a dir).
pub fn renameat(olddir: impl AsFd, old: &[u8], newdir: impl AsFd, new: &[u8]) -> io::Result<()> {
    Ok(rfs::renameat(
        olddir,
        cstr(old)?.as_c_str(),
        newdir,
        cstr(new)?.as_c_str(),
    )?)
}

fn ids(uid: u64, gid: u64) -> io::Result<(Uid, Gid)> {
    let u = u32::try_from(uid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    let g = u32::try_from(gid).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok((Uid::from_raw(u), Gid::from_raw(g)))
}

/// `fchown(fd, uid, gid)`.
pub fn fchown(fd: impl AsFd, uid: u64, gid: u64) -> io::Result<()> {
    let (u, g) = ids(uid, gid)?;
    Ok(rfs::fchown(fd, Some(u), Some(g))?)
}

/// `fchownat(dir, name, uid, gid, AT_SYMLINK_NOFOLLOW)`: for symlinks and nodes we cannot open.
pub fn chownat_nofollow(dir: impl AsFd, name: &[u8], uid: u64, gid: u64) -> io::Result<()> {
    let (u, g) = ids(uid, gid)?;
    Ok(rfs::chownat(
        dir,
        cstr(name)?.as_c_str(),
        Some(u),
        Some(g),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// `fchmod(fd, mode)`: mode bits including setuid, setgid and sticky; umask does not apply.
pub fn fchmod(fd: impl AsFd, mode: u32) -> io::Result<()> {
    Ok(rfs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777))?)
}

/// `fchmodat(dir, name, mode)`: for device nodes and fifos, which we must not open. The name was
/// just created by `mknodat` in a directory only this process writes, so it is not a symlink.
pub fn chmodat(dir: impl AsFd, name: &[u8], mode: u32) -> io::Result<()> {
    Ok(rfs::chmodat(
        dir,
        cstr(name)?.as_c_str(),
        Mode::from_raw_mode(mode & 0o7777),
        AtFlags::empty(),
    )?)
}

fn stamps(sec: i64, nsec: u32) -> Timestamps {
    let t = Timespec {
        tv_sec: sec,
        tv_nsec: i64::from(nsec.min(999_999_999)) as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// `futimens(fd, {mtime, mtime})`: atime is set to mtime, so the result does not depend on when it
/// was unpacked.
pub fn futimens(fd: impl AsFd, sec: i64, nsec: u32) -> io::Result<()> {
    Ok(rfs::futimens(fd, &stamps(sec, nsec))?)
}

/// `utimensat(dir, name, {mtime, mtime}, AT_SYMLINK_NOFOLLOW)`.
pub fn utimensat_nofollow(dir: impl AsFd, name: &[u8], sec: i64, nsec: u32) -> io::Result<()> {
    Ok(rfs::utimensat(
        dir,
        cstr(name)?.as_c_str(),
        &stamps(sec, nsec),
        AtFlags::SYMLINK_NOFOLLOW,
    )?)
}

/// `fsetxattr(fd, name, value, 0)`.
pub fn fsetxattr(fd: impl AsFd, name: &[u8], value: &[u8]) -> io::Result<()> {
    Ok(rfs::fsetxattr(
        fd,
        cstr(name)?.as_c_str(),
        value,
        XattrFlags::empty(),
    )?)
}

/// `fremovexattr(fd, name)`.
pub fn fremovexattr(fd: impl AsFd, name: &[u8]) -> io::Result<()> {
    Ok(rfs::fremovexattr(fd, cstr(name)?.as_c_str())?)
}

/// `/proc/self/fd/<dir>/<name>`: the path form of (dir, name) for the xattr calls that have no
/// `*at` variant. The kernel resolves the fd link itself, so the name is still relative to `dir`,
/// and the `l*` calls do not follow a final symlink.
fn proc_path(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<CString> {
    let mut p = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    p.extend_from_slice(name);
    cstr(&p)
}

/// `lsetxattr("/proc/self/fd/<dir>/<name>", xname, value)`: xattrs on symlinks, devices and fifos,
/// which cannot be opened for `fsetxattr`.
pub fn lsetxattr_at(
    dir: BorrowedFd<'_>,
    name: &[u8],
    xname: &[u8],
    value: &[u8],
) -> io::Result<()> {
    Ok(rfs::lsetxattr(
        proc_path(dir, name)?.as_c_str(),
        cstr(xname)?.as_c_str(),
        value,
        XattrFlags::empty(),
    )?)
}

/// All xattrs of an open file or directory, in the kernel's order.
pub fn fget_all_xattrs(fd: BorrowedFd<'_>) -> io::Result<Xattrs> {
    let mut list = vec![0u8; 1024];
    let n = loop {
        match rfs::flistxattr(fd, &mut list[..]) {
            Ok(n) => break n,
            Err(Errno::RANGE) => {
                let need = rfs::flistxattr_query(fd)?;
                list.resize(need.max(list.len() * 2), 0);
            }
            Err(Errno::NOTSUP) => return Ok(Vec::new()),
            Err(e) => return Err(e.into()),
        }
    };
    let mut out = Vec::new();
    for name in list[..n].split(|&b| b == 0).filter(|s| !s.is_empty()) {
        let cname = cstr(name)?;
        let mut val = vec![0u8; 256];
        let len = loop {
            match rfs::fgetxattr(fd, cname.as_c_str(), &mut val[..]) {
                Ok(len) => break Some(len),
                Err(Errno::RANGE) => {
                    let need = rfs::fgetxattr_query(fd, cname.as_c_str())?;
                    val.resize(need.max(val.len() * 2), 0);
                }
                Err(Errno::NODATA) => break None,
                Err(e) => return Err(e.into()),
            }
        };
        if let Some(len) = len {
            val.truncate(len);
            out.push((name.to_vec(), val));
        }
    }
    Ok(out)
}

/// All xattrs of `name` in `dir` without following a final symlink (via `/proc/self/fd`).
pub fn lget_all_xattrs_at(dir: BorrowedFd<'_>, name: &[u8]) -> io::Result<Xattrs> {
    let p = proc_path(dir, name)?;
    use std::os::unix::ffi::OsStrExt;
    super::lget_all_xattrs(std::path::Path::new(std::ffi::OsStr::from_bytes(
        p.as_bytes(),
    )))
}

/// `fgetxattr(fd, name)`, `None` when absent.
pub fn fgetxattr(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut val = vec![0u8; 64];
    let cname = cstr(name)?;
    loop {
        match rfs::fgetxattr(fd, cname.as_c_str(), &mut val[..]) {
            Ok(len) => {
                val.truncate(len);
                return Ok(Some(val));
            }
            Err(Errno::RANGE) => {
                let need = rfs::fgetxattr_query(fd, cname.as_c_str())?;
                val.resize(need.max(val.len() * 2), 0);
            }
            Err(Errno::NODATA) | Err(Errno::NOTSUP) => return Ok(None),
            Err(e) => return Err(e.into()),
        }
    }
}

/// `fstat(fd)`.
pub fn fstat(fd: impl AsFd) -> io::Result<rfs::Stat> {
    Ok(rfs::fstat(fd)?)
}

/// `openat(dir, name, O_RDONLY|O_NOFOLLOW)` for a name given as bytes.
pub fn open_file_at(dir: impl AsFd, name: &[u8]) -> io::Result<File> {
    super::openat_file(dir, cstr(name)?.as_c_str())
}

/// Write `data` to `name` in `dir` atomically: a temporary name, then `rename`. Small metadata files
/// (`link`, `lower`) are never seen half-written.
pub fn write_file_atomic(
    dir: BorrowedFd<'_>,
    name: &[u8],
    data: &[u8],
    mode: u32,
) -> io::Result<()> {
    use std::io::Write;
    let mut tmp = b".tmp-".to_vec();
    tmp.extend_from_slice(name);
    let _ = unlinkat(dir, &tmp, false);
    let mut f = create_excl(dir, &tmp)?;
    f.write_all(data)?;
    fchmod(&f, mode)?;
    drop(f);
    renameat(dir, &tmp, dir, name)
}

/// Read a small file `name` in `dir`.
pub fn read_file_at(dir: impl AsFd, name: &[u8]) -> io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = open_file_at(dir, name)?;
    let mut v = Vec::new();
    f.read_to_end(&mut v)?;
    Ok(v)
}

/// 17 bytes from `getrandom(2)`: enough for a 26-char base32 short name.
pub fn random17() -> io::Result<[u8; 17]> {
    let mut b = [0u8; 17];
    let mut got = 0;
    while got < b.len() {
        got += rustix::rand::getrandom(&mut b[got..], rustix::rand::GetRandomFlags::empty())?;
    }
    Ok(b)
}

/// `mkdir -p path` (mode for the dirs it creates; existing ones are left alone).
pub fn mkdir_p(path: &std::path::Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(mode)
        .create(path)
}

/// `mkdirat`, where an existing directory is fine.
pub fn mkdirat_exist_ok(dir: impl AsFd, name: &[u8], mode: u32) -> io::Result<()> {
    match mkdirat(dir, name, mode) {
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        r => r,
    }
}

/// `openat(dir, name, O_WRONLY|O_CREAT|O_EXCL|O_NOFOLLOW, mode)`: a new file with `mode` less the
/// umask, as `creat(2)` would make an output file.
pub fn create_excl_mode(dir: impl AsFd, name: &[u8], mode: u32) -> io::Result<File> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rfs::openat(
        dir,
        cstr(name)?.as_c_str(),
        flags,
        Mode::from_raw_mode(mode),
    )?;
    Ok(File::from(fd))
}

/// `openat(dir, name, O_RDONLY|O_NOFOLLOW|O_NONBLOCK)`: a file or directory, only to lock it.
pub fn open_any_at(dir: impl AsFd, name: &[u8]) -> io::Result<OwnedFd> {
    let flags =
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::NOCTTY | OFlags::CLOEXEC;
    Ok(rfs::openat(
        dir,
        cstr(name)?.as_c_str(),
        flags,
        Mode::empty(),
    )?)
}

/// `kill(pid, 0)`: whether a process of that pid exists (EPERM means it does, not ours).
pub fn process_alive(pid: i32) -> bool {
    let Some(p) = rustix::process::Pid::from_raw(pid) else {
        return false;
    };
    !matches!(rustix::process::test_kill_process(p), Err(Errno::SRCH))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remove_all_at_any_depth_with_one_fd() {
        // 30,000 levels (the N): a recursive removal with an fd per level ran out of
        // fds, and the cleanup of such a tar failed the same way.
        let top = tempfile::tempdir().unwrap();
        let root = crate::sys::open_dir(top.path()).unwrap();
        mkdirat(&root, b"deep", 0o755).unwrap();
        let mut cur = crate::sys::openat_dir(&root, b"deep").unwrap();
        for i in 0..30_000 {
            if i % 1000 == 0 {
                let f = create_excl(&cur, b"file").unwrap();
                drop(f);
                symlinkat(b"/", &cur, b"link").unwrap();
            }
            mkdirat(&cur, b"d", 0o755).unwrap();
            cur = crate::sys::openat_dir(&cur, b"d").unwrap();
        }
        drop(cur);
        remove_all_at(root.as_fd(), b"deep").unwrap();
        assert!(crate::sys::read_dir_names(&root).unwrap().is_empty());
    }
}
