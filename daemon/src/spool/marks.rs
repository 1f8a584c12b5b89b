//! Durable marks a stream keeps beside its log: consumer groups' cursors
//! (what retention must keep) and snapshots of the idempotence table
//! (each producer's highest stored seq). Both also say how far the log
//! reached when they were written, so recovery checks the log against
//! them: a log that ends before one of them lost records.
//!
//! ```text
//! cursors/<group>      "SLCU", ack_floor u64, retain_until_acked u8, CRC32C
//! <base>.snap          "SLSK", count u64, (producer u64, seq u64) * count,
//!                      keys u64, (key_len u16, key, first u64, count u32,
//!                      hash [32], at_us u64, producer u64, seq u64) * keys,
//!                      CRC32C: the table as of offset <base> (every record
//!                      below it), the producers' seqs and the request keys
//!                      kept (see `keys.rs`). "SLSN" (written before keys
//!                      existed) is the same without the keys part.
//! ```
//! Both are replaced atomically (a temporary file, fsync, rename).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::error::SpoolError;
use super::fs::{read_all, write_atomic, SpoolFs};
use super::index::{checked_body, u64s};
use super::keys::{KeyEntry, Keys};

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
const SNAP_MAGIC: &[u8; 4] = b"SLSK";
const SNAP_MAGIC_NO_KEYS: &[u8; 4] = b"SLSN";

/// A snapshot's idempotence table: the producers' seqs and the keys.
pub type Table = (HashMap<u64, u64>, Vec<(String, KeyEntry)>);

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
    keys: &Keys,
) -> Result<(), SpoolError> {
    let mut b = SNAP_MAGIC.to_vec();
    b.extend_from_slice(&(table.len() as u64).to_le_bytes());
    for (p, s) in table {
        b.extend_from_slice(&p.to_le_bytes());
        b.extend_from_slice(&s.to_le_bytes());
    }
    b.extend_from_slice(&(keys.len() as u64).to_le_bytes());
    for (k, e) in keys.entries() {
        b.extend_from_slice(&(k.len() as u16).to_le_bytes());
        b.extend_from_slice(k.as_bytes());
        b.extend_from_slice(&e.first.to_le_bytes());
        b.extend_from_slice(&e.count.to_le_bytes());
        b.extend_from_slice(&e.hash);
        for n in [e.at_us, e.producer, e.seq] {
            b.extend_from_slice(&n.to_le_bytes());
        }
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
pub fn read_snapshot(fs: &dyn SpoolFs, dir: &Path, base: u64) -> Result<Table, String> {
    let b = read_all(fs, &snapshot_path(dir, base)).map_err(|e| format!("cannot read it: {e}"))?;
    let (body, with_keys) = match checked_body(&b, SNAP_MAGIC) {
        Some(body) => (body, true),
        None => (
            checked_body(&b, SNAP_MAGIC_NO_KEYS).ok_or("checksum mismatch")?,
            false,
        ),
    };
    let mut v = u64s(body);
    let n = v.next().ok_or("cut short")? as usize;
    let producers_end = n
        .checked_mul(16)
        .and_then(|l| l.checked_add(8))
        .filter(|&l| l <= body.len())
        .ok_or("its length does not match its count")?;
    let mut t = HashMap::with_capacity(n);
    for _ in 0..n {
        t.insert(v.next().ok_or("cut short")?, v.next().ok_or("cut short")?);
    }
    let rest = &body[producers_end..];
    let keys = match with_keys {
        true => read_keys(rest).ok_or("its keys do not parse")?,
        false if rest.is_empty() => Vec::new(),
        false => return Err("its length does not match its count".into()),
    };
    Ok((t, keys))
}

/// The keys part of a snapshot: all of `b`, or `None`.
fn read_keys(b: &[u8]) -> Option<Vec<(String, KeyEntry)>> {
    let u64_at = |at: usize| Some(u64::from_le_bytes(b.get(at..at + 8)?.try_into().ok()?));
    let n = u64_at(0)?;
    let mut at = 8;
    let mut keys = Vec::new();
    for _ in 0..n {
        let len = u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?) as usize;
        let key = std::str::from_utf8(b.get(at + 2..at + 2 + len)?)
            .ok()?
            .to_owned();
        at += 2 + len;
        let first = u64_at(at)?;
        let count = u32::from_le_bytes(b.get(at + 8..at + 12)?.try_into().ok()?);
        let hash = b.get(at + 12..at + 44)?.try_into().ok()?;
        let (at_us, producer, seq) = (u64_at(at + 44)?, u64_at(at + 52)?, u64_at(at + 60)?);
        at += 68;
        keys.push((
            key,
            KeyEntry {
                first,
                count,
                hash,
                at_us,
                producer,
                seq,
            },
        ));
    }
    (at == b.len()).then_some(keys)
}
