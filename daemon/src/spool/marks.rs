//! Durable marks a stream keeps beside its log: consumer groups' cursors
//! (what retention must keep) and snapshots of the idempotence table
//! (each producer's highest stored seq). Both also say how far the log
//! reached when they were written, so recovery checks the log against
//! them: a log that ends before one of them lost records.
//!
//! ```text
//! cursors/<group>      "SLCU", ack_floor u64, retain_until_acked u8, CRC32C
//! <base>.snap          "SLSN", count u64, (producer u64, seq u64) * count, CRC32C
//!                      the table as of offset <base> (every record below it)
//! ```
//! Both are replaced atomically (a temporary file, fsync, rename).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::error::SpoolError;
use super::fs::{read_all, write_atomic, SpoolFs};
use super::index::{checked_body, u64s};

/// A durable consumer-group position (used by retention and consumers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    /// Every record below this offset is acked by the group.
    pub ack_floor: u64,
    /// Retention may not delete records at or above `ack_floor`.
    pub retain_until_acked: bool,
}

pub const CURSORS: &str = "cursors";
const CURSOR_MAGIC: &[u8; 4] = b"SLCU";
const SNAP_MAGIC: &[u8; 4] = b"SLSN";

pub fn cursor_path(dir: &Path, group: &str) -> PathBuf {
    dir.join(CURSORS).join(group)
}

pub fn encode_cursor(c: Cursor) -> Vec<u8> {
    let mut b = CURSOR_MAGIC.to_vec();
    b.extend_from_slice(&c.ack_floor.to_le_bytes());
    b.push(c.retain_until_acked as u8);
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    b
}

pub fn decode_cursor(b: &[u8]) -> Option<Cursor> {
    let body = checked_body(b, CURSOR_MAGIC)?;
    if body.len() != 9 || body[8] > 1 {
        return None;
    }
    Some(Cursor {
        ack_floor: u64::from_le_bytes(body[..8].try_into().ok()?),
        retain_until_acked: body[8] != 0,
    })
}

/// Every cursor file of the stream in `dir`: the group's name and its
/// cursor, or why the file does not check out.
pub fn read_cursors(fs: &dyn SpoolFs, dir: &Path) -> Vec<(String, Result<Cursor, String>)> {
    let cdir = dir.join(CURSORS);
    let names = fs.list(&cdir).unwrap_or_default();
    names
        .into_iter()
        .filter(|n| !n.ends_with(".tmp"))
        .map(|n| {
            let r = match read_all(fs, &cdir.join(&n)) {
                Ok(b) => decode_cursor(&b)
                    .ok_or_else(|| format!("cursor file of {} bytes does not check out", b.len())),
                Err(e) => Err(format!("cannot read it: {e}")),
            };
            (n, r)
        })
        .collect()
}

pub fn write_cursor(
    fs: &dyn SpoolFs,
    dir: &Path,
    group: &str,
    c: Cursor,
) -> Result<(), SpoolError> {
    let cdir = dir.join(CURSORS);
    fs.create_dir_all(&cdir)
        .map_err(SpoolError::io("create directory", &cdir))?;
    let path = cdir.join(group);
    write_atomic(fs, &path, &encode_cursor(c)).map_err(SpoolError::io("write cursor", &path))
}

pub fn snapshot_path(dir: &Path, base: u64) -> PathBuf {
    dir.join(format!("{base:020}.snap"))
}

/// The bases of the idempotence snapshots in `dir`, in order.
pub fn snapshot_bases(fs: &dyn SpoolFs, dir: &Path) -> Vec<u64> {
    let mut bases: Vec<u64> = fs
        .list(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|n| n.strip_suffix(".snap")?.parse().ok())
        .collect();
    bases.sort_unstable();
    bases
}

/// Writes the idempotence table as of offset `base`, then removes the
/// snapshots it supersedes.
pub fn write_snapshot(
    fs: &dyn SpoolFs,
    dir: &Path,
    base: u64,
    table: &HashMap<u64, u64>,
) -> Result<(), SpoolError> {
    let mut b = SNAP_MAGIC.to_vec();
    b.extend_from_slice(&(table.len() as u64).to_le_bytes());
    for (p, s) in table {
        b.extend_from_slice(&p.to_le_bytes());
        b.extend_from_slice(&s.to_le_bytes());
    }
    let crc = crc32c::crc32c(&b);
    b.extend_from_slice(&crc.to_le_bytes());
    let path = snapshot_path(dir, base);
    write_atomic(fs, &path, &b).map_err(SpoolError::io("write snapshot", &path))?;
    for old in snapshot_bases(fs, dir) {
        if old < base {
            let _ = fs.remove_file(&snapshot_path(dir, old));
        }
    }
    Ok(())
}

/// Reads the snapshot at `base`: its table, or why it does not check out.
pub fn read_snapshot(fs: &dyn SpoolFs, dir: &Path, base: u64) -> Result<HashMap<u64, u64>, String> {
    let b = read_all(fs, &snapshot_path(dir, base)).map_err(|e| format!("cannot read it: {e}"))?;
    let body = checked_body(&b, SNAP_MAGIC).ok_or("checksum mismatch")?;
    let mut v = u64s(body);
    let n = v.next().ok_or("cut short")? as usize;
    if body.len() != 8 + 16 * n {
        return Err("its length does not match its count".into());
    }
    let mut t = HashMap::with_capacity(n);
    for _ in 0..n {
        t.insert(v.next().ok_or("cut short")?, v.next().ok_or("cut short")?);
    }
    Ok(t)
}
