//! A simulated file system with crash semantics, for fault-injection tests.
//!
//! It keeps, per file, what is durable (synced) apart from the operations
//! made since, and per directory which names are durable. A crash then
//! rebuilds each file from its durable state plus a random part of what was
//! not synced: nothing of it, a prefix of the operations, a prefix with the
//! last write torn, or all of it with bits flipped in the unsynced bytes.
//! Names created or removed since the last directory sync may or may not
//! survive. It can also fail every operation after a chosen number of them,
//! which is how a test stops the spool at an arbitrary point.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rand::{Rng, RngCore};

use super::fs::{SpoolFile, SpoolFs};

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, data: Vec<u8> },
    SetLen(u64),
}

#[derive(Debug, Default, Clone)]
struct FileState {
    durable: Vec<u8>,
    current: Vec<u8>,
    /// Operations since the last sync, in order.
    unsynced: Vec<Op>,
}

#[derive(Debug, Default)]
struct State {
    /// Files by path; a removed file's state is kept while its removal is
    /// not durable, since a crash may bring it back.
    files: BTreeMap<PathBuf, Arc<Mutex<FileState>>>,
    /// Names visible now, and names durable in their directory.
    visible: BTreeSet<PathBuf>,
    durable_names: BTreeSet<PathBuf>,
    dirs: BTreeSet<PathBuf>,
    /// Operations left before everything fails (a simulated power cut).
    ops_left: Option<u64>,
    /// Free bytes; writes past it fail with ENOSPC.
    capacity: Option<u64>,
    /// Reads fail (EIO) while set; everything else works.
    reads_fail: bool,
}

/// How a crash treats unsynced data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CrashMode {
    DropUnsynced,
    KeepPrefix,
    TearLastWrite,
    FlipBits,
}

#[derive(Debug, Clone, Default)]
pub struct SimFs {
    state: Arc<Mutex<State>>,
}

fn powered_off() -> io::Error {
    io::Error::other("simulated power cut")
}

impl SimFs {
    pub fn new() -> Self {
        Self::default()
    }

    /// Fails every operation after `n` more (None: never).
    pub fn fail_after(&self, n: Option<u64>) {
        self.state.lock().unwrap().ops_left = n;
    }

    /// Limits the bytes all files may hold together (None: unlimited).
    pub fn set_capacity(&self, bytes: Option<u64>) {
        self.state.lock().unwrap().capacity = bytes;
    }

    /// Bytes all files hold together now (what a capacity counts), without
    /// counting as an operation.
    pub fn used(&self) -> u64 {
        SimFs::used_by(&self.state.lock().unwrap())
    }

    /// Makes every read fail with EIO (true) or work again (false), as a
    /// failing sector or a flaky device does.
    pub fn fail_reads(&self, on: bool) {
        self.state.lock().unwrap().reads_fail = on;
    }

    fn tick(&self) -> io::Result<()> {
        let mut s = self.state.lock().unwrap();
        match s.ops_left {
            Some(0) => Err(powered_off()),
            Some(n) => {
                s.ops_left = Some(n - 1);
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn used_by(s: &State) -> u64 {
        s.visible
            .iter()
            .filter_map(|p| s.files.get(p))
            .map(|f| f.lock().unwrap().current.len() as u64)
            .sum()
    }

    /// Simulates a power cut and reboot: every file falls back to its durable
    /// state plus some of what was not synced, chosen by `rng` and `mode`.
    /// Open handles from before the crash must not be used afterwards.
    pub fn crash(&self, mode: CrashMode, rng: &mut dyn RngCore) {
        let mut s = self.state.lock().unwrap();
        s.ops_left = None;
        // Names: durable ones survive; undurable creations and removals each
        // survive or not.
        let visible = std::mem::take(&mut s.visible);
        let durable = s.durable_names.clone();
        let mut after: BTreeSet<PathBuf> = durable.clone();
        for p in visible.symmetric_difference(&durable) {
            let created = visible.contains(p);
            if rng.random_bool(0.5) {
                if created {
                    after.insert(p.clone());
                } else {
                    after.remove(p);
                }
            }
        }
        s.visible = after.clone();
        s.durable_names = after;
        let files: Vec<_> = s.files.values().cloned().collect();
        for f in files {
            let mut f = f.lock().unwrap();
            let ops = std::mem::take(&mut f.unsynced);
            let mut data = f.durable.clone();
            let keep = match mode {
                CrashMode::DropUnsynced => 0,
                CrashMode::KeepPrefix | CrashMode::TearLastWrite => rng.random_range(0..=ops.len()),
                CrashMode::FlipBits => ops.len(),
            };
            let mut touched: Vec<(u64, usize)> = Vec::new();
            for (i, op) in ops.iter().take(keep).enumerate() {
                match op {
                    Op::SetLen(n) => data.resize(*n as usize, 0),
                    Op::Write { offset, data: d } => {
                        let mut d = d.as_slice();
                        if mode == CrashMode::TearLastWrite && i + 1 == keep && !d.is_empty() {
                            d = &d[..rng.random_range(0..d.len())];
                        }
                        let end = *offset as usize + d.len();
                        if data.len() < end {
                            data.resize(end, 0);
                        }
                        data[*offset as usize..end].copy_from_slice(d);
                        touched.push((*offset, d.len()));
                    }
                }
            }
            if mode == CrashMode::FlipBits {
                for _ in 0..rng.random_range(1..4) {
                    if touched.is_empty() {
                        break;
                    }
                    let (off, len) = touched[rng.random_range(0..touched.len())];
                    if len == 0 {
                        continue;
                    }
                    let at = off as usize + rng.random_range(0..len);
                    if at < data.len() {
                        data[at] ^= 1 << rng.random_range(0..8);
                    }
                }
            }
            f.durable = data.clone();
            f.current = data;
        }
    }

    /// The durable and current size of a file (for tests).
    pub fn file_len(&self, path: &Path) -> Option<u64> {
        let s = self.state.lock().unwrap();
        if !s.visible.contains(path) {
            return None;
        }
        s.files
            .get(path)
            .map(|f| f.lock().unwrap().current.len() as u64)
    }

    /// Overwrites bytes of a file as if the disk rotted them (for tests).
    pub fn corrupt(&self, path: &Path, offset: u64, xor: u8) {
        let s = self.state.lock().unwrap();
        if let Some(f) = s.files.get(path) {
            let mut f = f.lock().unwrap();
            let i = offset as usize;
            if i < f.current.len() {
                f.current[i] ^= xor;
                f.durable = f.current.clone();
            }
        }
    }
}

struct SimFile {
    fs: SimFs,
    state: Arc<Mutex<FileState>>,
}

impl SpoolFile for SimFile {
    fn size(&self) -> io::Result<u64> {
        self.fs.tick()?;
        Ok(self.state.lock().unwrap().current.len() as u64)
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.fs.tick()?;
        if self.fs.state.lock().unwrap().reads_fail {
            return Err(io::Error::other("simulated read error (EIO)"));
        }
        let f = self.state.lock().unwrap();
        let start = offset as usize;
        let end = start + buf.len();
        if end > f.current.len() {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
        }
        buf.copy_from_slice(&f.current[start..end]);
        Ok(())
    }

    fn write_all_at(&self, buf: &[u8], offset: u64) -> io::Result<()> {
        self.fs.tick()?;
        {
            let s = self.fs.state.lock().unwrap();
            if let Some(cap) = s.capacity {
                let len = self.state.lock().unwrap().current.len() as u64;
                let grow = (offset + buf.len() as u64).saturating_sub(len);
                if SimFs::used_by(&s) + grow > cap {
                    return Err(io::Error::from_raw_os_error(libc::ENOSPC));
                }
            }
        }
        let mut f = self.state.lock().unwrap();
        let end = offset as usize + buf.len();
        if f.current.len() < end {
            f.current.resize(end, 0);
        }
        f.current[offset as usize..end].copy_from_slice(buf);
        f.unsynced.push(Op::Write {
            offset,
            data: buf.to_vec(),
        });
        Ok(())
    }

    fn sync_data(&self) -> io::Result<()> {
        self.fs.tick()?;
        let mut f = self.state.lock().unwrap();
        f.durable = f.current.clone();
        f.unsynced.clear();
        Ok(())
    }

    fn set_len(&self, len: u64) -> io::Result<()> {
        self.fs.tick()?;
        let mut f = self.state.lock().unwrap();
        f.current.resize(len as usize, 0);
        f.unsynced.push(Op::SetLen(len));
        Ok(())
    }

    fn preallocate(&self, _len: u64) -> io::Result<()> {
        self.fs.tick()
    }
}

impl SpoolFs for SimFs {
    fn create_dir_all(&self, path: &Path) -> io::Result<()> {
        self.tick()?;
        let mut s = self.state.lock().unwrap();
        for a in path.ancestors() {
            s.dirs.insert(a.to_path_buf());
        }
        Ok(())
    }

    fn open(&self, path: &Path, create: bool) -> io::Result<Arc<dyn SpoolFile>> {
        self.tick()?;
        let mut s = self.state.lock().unwrap();
        if !s.visible.contains(path) {
            if !create {
                return Err(io::Error::from(io::ErrorKind::NotFound));
            }
            s.files.insert(path.to_path_buf(), Arc::default());
            s.visible.insert(path.to_path_buf());
        }
        let state = s.files[path].clone();
        Ok(Arc::new(SimFile {
            fs: self.clone(),
            state,
        }))
    }

    fn remove_file(&self, path: &Path) -> io::Result<()> {
        self.tick()?;
        let mut s = self.state.lock().unwrap();
        if !s.visible.remove(path) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(())
    }

    fn remove_dir(&self, path: &Path) -> io::Result<()> {
        self.tick()?;
        let mut s = self.state.lock().unwrap();
        if s.visible
            .iter()
            .chain(&s.dirs)
            .any(|p| p.parent() == Some(path))
        {
            return Err(io::Error::from(io::ErrorKind::DirectoryNotEmpty));
        }
        if !s.dirs.remove(path) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        Ok(())
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.tick()?;
        let mut s = self.state.lock().unwrap();
        if !s.visible.remove(from) {
            return Err(io::Error::from(io::ErrorKind::NotFound));
        }
        // Renaming moves the file's state; the old name's durable entry is
        // left for a crash to resurrect until the directory is synced.
        let state = s.files[from].clone();
        let copy = Arc::new(Mutex::new(state.lock().unwrap().clone()));
        s.files.insert(to.to_path_buf(), copy);
        s.visible.insert(to.to_path_buf());
        Ok(())
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<String>> {
        self.tick()?;
        let s = self.state.lock().unwrap();
        // Files and folders, as a real listing has them.
        let mut names: Vec<String> = s
            .visible
            .iter()
            .chain(&s.dirs)
            .filter(|p| p.parent() == Some(dir))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_owned))
            .collect();
        names.sort_unstable();
        names.dedup();
        Ok(names)
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.tick()?;
        let mut s = self.state.lock().unwrap();
        let in_dir = |p: &PathBuf| p.parent() == Some(dir);
        let now: Vec<PathBuf> = s.visible.iter().filter(|p| in_dir(p)).cloned().collect();
        s.durable_names.retain(|p| !in_dir(p));
        s.durable_names.extend(now);
        Ok(())
    }

    fn available_space(&self, _dir: &Path) -> io::Result<u64> {
        self.tick()?;
        let s = self.state.lock().unwrap();
        Ok(s.capacity
            .map_or(u64::MAX / 2, |c| c.saturating_sub(SimFs::used_by(&s))))
    }

    fn exists(&self, path: &Path) -> bool {
        self.state.lock().unwrap().visible.contains(path)
    }
}
