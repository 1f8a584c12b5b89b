//! One process at a time per data folder. Two writers on one spool would
//! each take the other's unsynced tail for a torn one and cut it off, and a
//! reader that recovers a log while `sluiced` writes it would do the same:
//! so the spool holds an exclusive lock on `<dir>/LOCK` for as long as it is
//! open, and so does any tool that opens the files directly.
//!
//! flock(2) locks go away with the process, so a `kill -9` leaves no stale
//! lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use super::error::SpoolError;

/// Held for as long as it lives.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Takes the lock of `dir` (creating the folder), or says who holds it.
    pub fn acquire(dir: &Path) -> Result<DirLock, SpoolError> {
        std::fs::create_dir_all(dir).map_err(SpoolError::io("create directory", dir))?;
        let path = dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(SpoolError::io("open", &path))?;
        // SAFETY: flock on a descriptor we own.
        let r = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if r != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
                let mut holder = String::new();
                let _ = file.read_to_string(&mut holder);
                return Err(SpoolError::Locked {
                    dir: dir.to_path_buf(),
                    holder: holder.trim().to_owned(),
                });
            }
            return Err(SpoolError::io("lock", &path)(err));
        }
        // Who holds it, for the error another process will print.
        let _ = file.set_len(0);
        let _ = file.rewind();
        let _ = write!(file, "pid {}", std::process::id());
        Ok(DirLock { _file: file, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_until_the_first_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let first = DirLock::acquire(dir.path()).unwrap();
        let e = DirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            e.contains("in use") && e.contains(&format!("pid {}", std::process::id())),
            "{e}"
        );
        drop(first);
        DirLock::acquire(dir.path()).unwrap();
    }
}
