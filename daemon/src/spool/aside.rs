//! Setting bytes aside: recovery and repair never delete what the spool
//! wrote. Before a torn tail is cut its bytes are copied here; a repair
//! moves damaged files here whole.
//!
//! Each occasion gets its own folder, `<stream>/aside/<UTC time>-<what>/`,
//! holding the files moved or copied and a `MANIFEST` (plain text) that
//! says what each one is, where it came from and why. Nothing reads these
//! folders again: they are for the operator (and for a later tool that
//! would put records back); delete them by hand once looked at.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use super::error::SpoolError;
use super::fs::{write_atomic, SpoolFs};

pub const FOLDER: &str = "aside";
const MANIFEST: &str = "MANIFEST";

/// One folder of things set aside, being filled.
pub struct Aside {
    fs: Arc<dyn SpoolFs>,
    dir: PathBuf,
    manifest: String,
}

impl Aside {
    /// Makes a new folder for `what` (e.g. `torn-tail`, `repair`) under
    /// `stream_dir/aside/`, durably.
    pub fn new(fs: Arc<dyn SpoolFs>, stream_dir: &Path, what: &str) -> Result<Aside, SpoolError> {
        let root = stream_dir.join(FOLDER);
        let stamp = humantime::format_rfc3339_seconds(SystemTime::now())
            .to_string()
            .replace([':', '-'], "");
        // Two occasions in one second get their own folders.
        let taken = fs.list(&root).unwrap_or_default();
        let mut name = format!("{stamp}-{what}");
        let mut n = 1;
        while taken.contains(&name) {
            n += 1;
            name = format!("{stamp}-{what}.{n}");
        }
        let dir = root.join(name);
        fs.create_dir_all(&dir)
            .map_err(SpoolError::io("create directory", &dir))?;
        for d in [stream_dir, &root] {
            fs.sync_dir(d)
                .map_err(SpoolError::io("fsync directory", d))?;
        }
        Ok(Aside {
            fs,
            dir,
            manifest: format!("set aside by sluice at {stamp}: {what}\n"),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Adds a line to the manifest.
    pub fn note(&mut self, line: &str) {
        self.manifest.push_str(line);
        self.manifest.push('\n');
    }

    /// Moves `path` into the folder (same name), durably in both folders.
    pub fn move_file(&mut self, path: &Path, why: &str) -> Result<PathBuf, SpoolError> {
        let name = path.file_name().unwrap_or_default();
        let to = self.dir.join(name);
        self.fs
            .rename(path, &to)
            .map_err(SpoolError::io("set aside", path))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(SpoolError::io("fsync directory", &self.dir))?;
        if let Some(from) = path.parent() {
            self.fs
                .sync_dir(from)
                .map_err(SpoolError::io("fsync directory", from))?;
        }
        self.note(&format!(
            "{}: moved here from {}: {why}",
            name.to_string_lossy(),
            path.display()
        ));
        Ok(to)
    }

    /// Writes a copy of `bytes` (taken from `from` at byte `at`) into the
    /// folder as `name`, durably.
    pub fn copy_bytes(
        &mut self,
        name: &str,
        bytes: &[u8],
        from: &Path,
        at: u64,
        why: &str,
    ) -> Result<PathBuf, SpoolError> {
        let to = self.dir.join(name);
        let f = self
            .fs
            .open(&to, true)
            .map_err(SpoolError::io("create", &to))?;
        f.write_all_at(bytes, 0)
            .map_err(SpoolError::io("write", &to))?;
        f.sync_data().map_err(SpoolError::io("fdatasync", &to))?;
        self.fs
            .sync_dir(&self.dir)
            .map_err(SpoolError::io("fsync directory", &self.dir))?;
        self.note(&format!(
            "{name}: a copy of {} bytes of {} from byte {at}: {why}",
            bytes.len(),
            from.display()
        ));
        Ok(to)
    }

    /// Writes the manifest; returns the folder.
    pub fn finish(self) -> Result<PathBuf, SpoolError> {
        let path = self.dir.join(MANIFEST);
        write_atomic(&*self.fs, &path, self.manifest.as_bytes())
            .map_err(SpoolError::io("write", &path))?;
        Ok(self.dir)
    }
}
