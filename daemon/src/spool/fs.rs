//! The spool's file I/O, behind a small trait so that a simulated file
//! system (see [`super::simfs`]) can crash it at any point in tests.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One open file: positioned reads and writes, no shared cursor.
pub trait SpoolFile: Send + Sync {
    fn size(&self) -> io::Result<u64>;
    /// Reads exactly `buf.len()` bytes at `offset` (an error if the file is shorter).
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()>;
    /// fdatasync: data (and the size needed to read it) on stable storage.
    fn sync_data(&self) -> io::Result<()>;
    fn set_len(&self, len: u64) -> io::Result<()>;
    /// Reserves blocks up to `len` without changing the file's size, so that
    /// appends do not fragment and the size still marks where data ends.
    fn preallocate(&self, len: u64) -> io::Result<()>;
}

/// The directory operations the spool needs.
pub trait SpoolFs: Send + Sync {
    fn create_dir_all(&self, path: &Path) -> io::Result<()>;
    /// Opens for reading and writing, creating the file if `create`.
    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn SpoolFile>>;
    fn remove_file(&self, path: &Path) -> io::Result<()>;
    /// Removes an empty directory.
    fn remove_dir(&self, path: &Path) -> io::Result<()>;
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;
    /// File names (not paths) in `dir`.
    fn list(&self, dir: &Path) -> io::Result<Vec<String>>;
    /// Makes creations, renames and removals in `dir` durable.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;
    /// Bytes free for an unprivileged writer on the file system of `dir`.
    fn available_space(&self, dir: &Path) -> io::Result<u64>;
    fn exists(&self, path: &Path) -> bool;
    /// The file system of `dir`: its size and what is free (for metrics).
    /// Its size is unknown unless the file system says.
    fn space(&self, dir: &Path) -> io::Result<Space> {
        Ok(Space {
            free: self.available_space(dir)?,
            size: None,
        })
    }
    /// Bytes the files under `dir` take on disk (allocated blocks:
    /// preallocated segments count whole), for metrics; `None` where the
    /// file system cannot say.
    fn disk_usage(&self, _dir: &Path) -> io::Result<Option<u64>> {
        Ok(None)
    }
}

/// A file system's size and free bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    /// Free for an unprivileged writer (what appends can use).
    pub free: u64,
    pub size: Option<u64>,
}

/// How deep [`SpoolFs::disk_usage`] looks below a stream's folder (its
/// groups' folders are one level down): a bound, not a limit met.
const USAGE_DEPTH: usize = 4;

/// The real file system.
#[derive(Debug, Default, Clone, Copy)]
pub struct RealFs;

struct RealFile(File);

impl SpoolFile for RealFile {
    fn size(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(&self.0, buf, offset)
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        FileExt::write_all_at(&self.0, buf, offset)
    }

    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }

    fn preallocate(&self, len: u64) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: a valid fd we own; FALLOC_FL_KEEP_SIZE leaves the size alone.
        let r = unsafe {
            libc::fallocate(
                self.0.as_raw_fd(),
                libc::FALLOC_FL_KEEP_SIZE,
                0,
                len as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        // Some file systems (tmpfs before 5.x, overlay) cannot: not fatal.
        match e.raw_os_error() {
            Some(libc::EOPNOTSUPP) | Some(libc::ENOSYS) => Ok(()),
            _ => Err(e),
        }
    }
}

impl SpoolFs for RealFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        std::fs::create_dir_all(path)
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn SpoolFile>> {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(create)
            .truncate(false)
            .open(path)?;
        Ok(Arc::new(RealFile(f)))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_file(path)
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        std::fs::remove_dir(path)
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        std::fs::rename(from, to)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        let mut names = Vec::new();
        for e in std::fs::read_dir(dir)? {
            if let Some(n) = e?.file_name().to_str() {
                names.push(n.to_owned());
            }
        }
        names.sort();
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn available_space(&self, dir: &Path) -> io::Result<u64> {
        Ok(self.space(dir)?.free)
    }

    fn exists(&self, path: &Path) -> bool {
        path.exists()
    }

    fn space(&self, dir: &Path) -> io::Result<Space> {
        use std::ffi::CString;
        use std::os::unix::ffi::OsStrExt;
        let c = CString::new(dir.as_os_str().as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "NUL in path"))?;
        // SAFETY: statvfs is plain old data; the path is a valid C string.
        let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
        if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
            return Err(io::Error::last_os_error());
        }
        let frsize = st.f_frsize as u64;
        Ok(Space {
            free: st.f_bavail as u64 * frsize,
            size: Some(st.f_blocks as u64 * frsize),
        })
    }

    fn disk_usage(&self, dir: &Path) -> io::Result<Option<u64>> {
        usage(dir, USAGE_DEPTH).map(Some)
    }
}

/// Allocated bytes of `path` and, for a folder, of what it holds, `depth`
/// levels down. Symbolic links are not followed. A file removed while
/// this looks (retention, a group's state replaced) counts nothing.
fn usage(path: &Path, depth: usize) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    // st_blocks counts 512-byte units whatever the block size.
    let mut total = meta.blocks() * 512;
    if meta.is_dir() && depth > 0 {
        for e in std::fs::read_dir(path)? {
            total += usage(&e?.path(), depth - 1)?;
        }
    }
    Ok(total)
}

/// Writes `data` to `path` atomically and durably: a temporary file, fsync,
/// rename over the old one, fsync of the directory.
pub fn write_atomic(fs: &dyn SpoolFs, path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp: PathBuf = path.with_extension("tmp");
    let f = fs.open(&tmp, true)?;
    f.set_len(0)?;
    f.write_all_at(data, 0)?;
    f.sync_data()?;
    drop(f);
    fs.rename(&tmp, path)?;
    fs.sync_dir(path.parent().unwrap_or(Path::new(".")))
}

/// Reads a whole (small) file.
pub fn read_all(fs: &dyn SpoolFs, path: &Path) -> io::Result<Vec<u8>> {
    let f = fs.open(path, false)?;
    let mut buf = vec![0; f.size()? as usize];
    f.read_exact_at(&mut buf, 0)?;
    Ok(buf)
}

#[cfg(test)]
mod usage_tests {
    use super::*;

    #[test]
    fn usage_counts_allocated_bytes_below_a_folder_and_space_is_the_file_systems() {
        let dir = tempfile::tempdir().unwrap();
        let fs = RealFs;
        let empty = fs.disk_usage(dir.path()).unwrap().unwrap();
        std::fs::create_dir(dir.path().join("groups")).unwrap();
        std::fs::write(dir.path().join("groups/g"), vec![7u8; 64 * 1024]).unwrap();
        let f = fs.open(&dir.path().join("seg"), true).unwrap();
        f.preallocate(1 << 20).unwrap();
        let used = fs.disk_usage(dir.path()).unwrap().unwrap();
        // 64 KiB written and 1 MiB reserved (file systems that cannot
        // reserve still hold the written bytes).
        assert!(used >= empty + 64 * 1024, "{used}");
        assert_eq!(fs.disk_usage(&dir.path().join("gone")).unwrap(), Some(0));
        let space = fs.space(dir.path()).unwrap();
        assert!(
            space.free > 0 && space.size.unwrap() >= space.free,
            "{space:?}"
        );
    }
}
