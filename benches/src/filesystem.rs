//! Which file system and device a folder is on. A disk figure means
//! nothing without it: fdatasync on tmpfs costs nothing, on a network or
//! overlay file system it measures something else again.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

/// The file system holding a folder.
#[derive(Debug, Clone, Default, Serialize)]
pub struct FileSystem {
    /// The folder asked about, made absolute.
    pub path: PathBuf,
    /// The type's name (`ext4`, `xfs`, `tmpfs`, ...) from statfs's magic
    /// number, or `unknown`.
    pub kind: String,
    /// statfs's f_type, as 0x... .
    pub magic: String,
    /// The mount's source (usually the device, e.g. `/dev/vda1`; `tmpfs`,
    /// `overlay` for such) and where it is mounted, from
    /// /proc/self/mountinfo; empty if not found.
    pub device: String,
    pub mount_point: String,
    /// The type as the mount table names it (`ext4`, `overlay`, ...).
    pub mount_type: String,
}

impl FileSystem {
    /// Looks `dir` up (statfs, then the mount table).
    pub fn of(dir: &Path) -> std::io::Result<FileSystem> {
        let path = std::fs::canonicalize(dir)?;
        let magic = statfs_magic(&path)?;
        let dev = std::fs::metadata(&path)?.dev();
        let mount = std::fs::read_to_string("/proc/self/mountinfo")
            .ok()
            .and_then(|t| find_mount(&t, &path, dev));
        let (device, mount_point, mount_type) = mount
            .map(|m| (m.source, m.mount_point, m.fs_type))
            .unwrap_or_default();
        Ok(FileSystem {
            path,
            kind: kind_name(magic).unwrap_or("unknown").to_owned(),
            magic: format!("{magic:#x}"),
            device,
            mount_point,
            mount_type,
        })
    }

    /// fdatasync returns at once without reaching any device: the disk
    /// figures are the CPU's, not the storage's.
    pub fn sync_is_free(&self) -> bool {
        matches!(self.kind.as_str(), "tmpfs" | "ramfs")
    }

    /// A warning to print with any disk figure measured here, if one is due.
    pub fn warning(&self) -> Option<String> {
        if self.sync_is_free() {
            Some(format!(
                "{} is on {}: fdatasync is free there (nothing reaches a disk), so these disk \
                 figures are memory speed; use --dir on the file system the spool will live on",
                self.path.display(),
                self.kind
            ))
        } else if matches!(self.kind.as_str(), "nfs" | "fuse" | "9p" | "smb" | "cifs") {
            Some(format!(
                "{} is on {} (a network or user-space file system): fdatasync's cost is the \
                 server's",
                self.path.display(),
                self.kind
            ))
        } else {
            None
        }
    }

    /// One line for a report: `ext4 on /dev/vda1 (mounted at /)`.
    pub fn describe(&self) -> String {
        let mut s = self.kind.clone();
        if self.kind == "unknown" {
            s = format!("unknown ({})", self.magic);
        }
        if !self.device.is_empty() {
            s += &format!(" on {} (mounted at {})", self.device, self.mount_point);
        }
        s
    }
}

fn statfs_magic(path: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::other("a path with a NUL byte"))?;
    // SAFETY: an all-zero statfs is a valid value for statfs to fill in.
    let mut buf: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path, `buf` a statfs to write to.
    if unsafe { libc::statfs(c.as_ptr(), &mut buf) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // The magic numbers are 32-bit; f_type's width and sign vary by target.
    #[allow(clippy::unnecessary_cast)]
    Ok(buf.f_type as u64 & 0xFFFF_FFFF)
}

/// The name of a file system type's statfs magic number (linux/magic.h).
pub fn kind_name(magic: u64) -> Option<&'static str> {
    Some(match magic {
        0xEF53 => "ext4", // ext2, ext3 and ext4 share it
        0x5846_5342 => "xfs",
        0x0102_1994 => "tmpfs",
        0x9123_683E => "btrfs",
        0x858_458F6 => "ramfs",
        0x794C_7630 => "overlay",
        0x2FC1_2FC1 => "zfs",
        0xF2F5_2010 => "f2fs",
        0x6969 => "nfs",
        0x6573_5546 => "fuse",
        0x0102_1997 => "9p",
        0x5346_544E => "ntfs",
        0x4d44 => "vfat",
        0x2011_BAB0 => "exfat",
        0xFF53_4D42 => "cifs",
        0x517B => "smb",
        0xCA45_1A4E => "bcachefs",
        _ => return None,
    })
}

/// One line of /proc/self/mountinfo, the fields we use.
#[derive(Debug, Clone, PartialEq)]
struct Mount {
    dev: (u64, u64),
    mount_point: String,
    fs_type: String,
    source: String,
}

fn parse_mountinfo_line(line: &str) -> Option<Mount> {
    // id parent major:minor root mount-point options [optional...] - type source super-options
    let (left, right) = line.split_once(" - ")?;
    let l: Vec<&str> = left.split(' ').collect();
    let r: Vec<&str> = right.split(' ').collect();
    let (major, minor) = l.get(2)?.split_once(':')?;
    Some(Mount {
        dev: (major.parse().ok()?, minor.parse().ok()?),
        mount_point: unescape(l.get(4)?),
        fs_type: (*r.first()?).to_owned(),
        source: unescape(r.get(1)?),
    })
}

/// mountinfo writes space, tab, newline and backslash as \ooo (octal).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let code = b
            .get(i + 1..i + 4)
            .filter(|_| b[i] == b'\\')
            .and_then(|o| std::str::from_utf8(o).ok())
            .and_then(|o| u8::from_str_radix(o, 8).ok());
        match code {
            Some(c) => {
                out.push(c);
                i += 4;
            }
            None => {
                out.push(b[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Linux's dev_t encoding (glibc's gnu_dev_major / gnu_dev_minor).
fn split_dev(dev: u64) -> (u64, u64) {
    let major = ((dev >> 8) & 0xFFF) | ((dev >> 32) & 0xFFFF_F000);
    let minor = (dev & 0xFF) | ((dev >> 12) & 0xFFFF_FF00);
    (major, minor)
}

/// The mount `path` is on: the last mount (later ones hide earlier ones)
/// with the file's device number whose mount point holds `path`; failing
/// that (btrfs subvolumes report their own device numbers), the last one
/// with the longest mount point holding `path`.
fn find_mount(mountinfo: &str, path: &Path, dev: u64) -> Option<Mount> {
    let dev = split_dev(dev);
    let mounts: Vec<Mount> = mountinfo.lines().filter_map(parse_mountinfo_line).collect();
    let holds = |m: &Mount| path.starts_with(&m.mount_point);
    let longest = |pick: &dyn Fn(&Mount) -> bool| {
        mounts
            .iter()
            .filter(|m| holds(m) && pick(m))
            .fold(None::<&Mount>, |best, m| match best {
                Some(b) if b.mount_point.len() > m.mount_point.len() => Some(b),
                _ => Some(m),
            })
            .cloned()
    };
    longest(&|m| m.dev == dev).or_else(|| longest(&|_| true))
}

/// Where a disk scenario works: `dir`'s file system (its warning printed,
/// as `scenario`) and a temporary folder in it, removed when dropped.
pub fn workplace(dir: &Path, scenario: &str) -> Result<(FileSystem, tempfile::TempDir), String> {
    let file_system = FileSystem::of(dir).map_err(|e| format!("--dir {}: {e}", dir.display()))?;
    if let Some(w) = file_system.warning() {
        eprintln!("sluice-bench {scenario}: WARNING: {w}");
    }
    let work = tempfile::Builder::new()
        .prefix(&format!("sluice-bench-{scenario}-"))
        .tempdir_in(dir)
        .map_err(|e| format!("a folder in {}: {e}", dir.display()))?;
    Ok((file_system, work))
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "\
22 1 252:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw
25 22 0:23 / /dev/shm rw,nosuid shared:2 - tmpfs tmpfs rw
26 22 0:24 / /my\\040data rw - xfs /dev/sdb1 rw
27 22 0:25 / /tmp rw master:3 - tmpfs tmpfs rw
28 27 0:26 / /tmp rw - xfs /dev/sdc1 rw
";

    #[test]
    fn parses_mountinfo_lines() {
        let m = parse_mountinfo_line(INFO.lines().next().unwrap()).unwrap();
        assert_eq!(m.dev, (252, 1));
        assert_eq!(m.mount_point, "/");
        assert_eq!(m.fs_type, "ext4");
        assert_eq!(m.source, "/dev/vda1");
        let m = parse_mountinfo_line(INFO.lines().nth(2).unwrap()).unwrap();
        assert_eq!(m.mount_point, "/my data");
        assert!(parse_mountinfo_line("garbage").is_none());
    }

    #[test]
    fn finds_the_mount_by_device_then_by_longest_prefix() {
        let vda1 = (252u64 << 8) | 1;
        let m = find_mount(INFO, Path::new("/home/x"), vda1).unwrap();
        assert_eq!(m.source, "/dev/vda1");
        // A device number no line has: the longest mount point wins, the
        // later of two equal ones (it hides the earlier).
        let m = find_mount(INFO, Path::new("/tmp/work"), 0xdead_0000).unwrap();
        assert_eq!(m.source, "/dev/sdc1");
        let m = find_mount(INFO, Path::new("/my data/x"), 0xdead_0000).unwrap();
        assert_eq!(m.fs_type, "xfs");
    }

    #[test]
    fn splits_device_numbers_as_linux_encodes_them() {
        // glibc's makedev, written out.
        let make = |ma: u64, mi: u64| {
            (mi & 0xFF) | ((ma & 0xFFF) << 8) | ((mi & !0xFF) << 12) | ((ma & !0xFFF) << 32)
        };
        assert_eq!(split_dev(make(8, 17)), (8, 17));
        assert_eq!(split_dev(make(0x1234, 0x5_6789)), (0x1234, 0x5_6789));
    }

    #[test]
    fn names_common_file_systems() {
        assert_eq!(kind_name(0xEF53), Some("ext4"));
        assert_eq!(kind_name(0x0102_1994), Some("tmpfs"));
        assert_eq!(kind_name(0x1234), None);
    }

    #[test]
    fn looks_up_a_real_folder() {
        let d = tempfile::tempdir().unwrap();
        let fs = FileSystem::of(d.path()).unwrap();
        assert!(fs.magic.starts_with("0x"), "{fs:?}");
        assert!(!fs.mount_point.is_empty(), "{fs:?}");
        assert!(fs.path.is_absolute());
        assert!(FileSystem::of(Path::new("/no/such/folder/here")).is_err());
    }
}
