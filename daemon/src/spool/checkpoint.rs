//! A stream's checkpoint: where its log is known to end, kept outside the
//! log, so that a log cut short is told from a log torn by a crash.
//!
//! The file `checkpoint` in the stream's folder holds two slots, at bytes
//! 0 and 4096 (different pages: writing one never touches the other). Each
//! write goes to the slot the previous one did not use and is fdatasynced;
//! a torn write therefore leaves the previous checkpoint readable in the
//! other slot. The slot with the highest generation that checks out wins.
//!
//! ```text
//! 0   magic       "SLCP"
//! 4   version     u16   1
//! 6   flags       u16   bit 0: written by a clean stop (nothing follows);
//!                       bit 1: acks go out before fdatasync (fsync = interval
//!                       or never): marks may be past what a power cut left
//! 8   generation  u64   one more than the previous write
//! 16  stream_id   u64   the stream's, as in its segment headers
//! 24  start       u64   first offset the log keeps (retention moves it)
//! 32  end         u64   durable end: every offset below it is on disk
//! 40  segment     u64   base of the segment holding the last commit
//! 48  pos         u64   byte position after that commit in it
//! 56  last_commit u32   head_crc of that commit (0: no commit yet)
//! 60  reserved    u32   0
//! 64  written_us  u64
//! 72  crc         u32   CRC32C of bytes 0..72
//! ```
//!
//! It is written when the stream is opened, after fdatasyncs at most every
//! [`CHECKPOINT_EVERY`](super::writer) (so it lags the log by at most that
//! much after a crash), before retention deletes segments, and at a clean
//! stop (with the clean flag: the log must then end exactly there).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::error::SpoolError;
use super::fs::{SpoolFile, SpoolFs};

pub const FILE: &str = "checkpoint";
const MAGIC: &[u8; 4] = b"SLCP";
const VERSION: u16 = 1;
const SLOT_LEN: usize = 76;
/// Slot positions: one page apart.
const SLOTS: [u64; 2] = [0, 4096];
const CLEAN: u16 = 1;
const NEVER_WRITTEN: &str = "never written";
const EARLY_ACKS: u16 = 2;

/// What a checkpoint says.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Checkpoint {
    pub generation: u64,
    pub stream_id: u64,
    pub start: u64,
    pub end: u64,
    pub segment: u64,
    pub pos: u64,
    pub last_commit: u32,
    pub clean: bool,
    pub early_acks: bool,
    pub written_us: u64,
}

impl Checkpoint {
    fn encode(&self) -> [u8; SLOT_LEN] {
        let mut b = [0u8; SLOT_LEN];
        b[..4].copy_from_slice(MAGIC);
        b[4..6].copy_from_slice(&VERSION.to_le_bytes());
        let flags =
            if self.clean { CLEAN } else { 0 } | if self.early_acks { EARLY_ACKS } else { 0 };
        b[6..8].copy_from_slice(&flags.to_le_bytes());
        for (at, v) in [
            (8, self.generation),
            (16, self.stream_id),
            (24, self.start),
            (32, self.end),
            (40, self.segment),
            (48, self.pos),
            (64, self.written_us),
        ] {
            b[at..at + 8].copy_from_slice(&v.to_le_bytes());
        }
        b[56..60].copy_from_slice(&self.last_commit.to_le_bytes());
        let crc = crc32c::crc32c(&b[..72]);
        b[72..76].copy_from_slice(&crc.to_le_bytes());
        b
    }

    fn decode(b: &[u8]) -> Result<Checkpoint, &'static str> {
        if b.len() < SLOT_LEN {
            return Err("cut short");
        }
        if &b[..4] != MAGIC {
            return Err("bad magic");
        }
        if crc32c::crc32c(&b[..72]) != u32::from_le_bytes(b[72..76].try_into().expect("4")) {
            return Err("checksum mismatch");
        }
        if u16::from_le_bytes([b[4], b[5]]) != VERSION {
            return Err("unknown version");
        }
        let u64_at = |at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8"));
        let cp = Checkpoint {
            generation: u64_at(8),
            stream_id: u64_at(16),
            start: u64_at(24),
            end: u64_at(32),
            segment: u64_at(40),
            pos: u64_at(48),
            last_commit: u32::from_le_bytes(b[56..60].try_into().expect("4")),
            clean: u16::from_le_bytes([b[6], b[7]]) & CLEAN != 0,
            early_acks: u16::from_le_bytes([b[6], b[7]]) & EARLY_ACKS != 0,
            written_us: u64_at(64),
        };
        if cp.start > cp.end {
            return Err("start past end");
        }
        Ok(cp)
    }
}

/// What reading a stream's checkpoint found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// No checkpoint file.
    Missing,
    /// The newest valid slot; `other_damaged` when the other slot does not
    /// check out (a torn write of it, which a crash explains, or damage).
    Found {
        checkpoint: Checkpoint,
        other_damaged: Option<&'static str>,
    },
    /// The file is there but neither slot checks out: damage (a crash
    /// tears at most the slot being written).
    Damaged(String),
}

pub fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Reads the checkpoint of the stream in `dir` (nothing is changed).
pub fn load(fs: &dyn SpoolFs, dir: &Path) -> Result<Loaded, SpoolError> {
    let p = path(dir);
    if !fs.exists(&p) {
        return Ok(Loaded::Missing);
    }
    let f = fs.open(&p, false).map_err(SpoolError::io("open", &p))?;
    let size = f.size().map_err(SpoolError::io("stat", &p))?;
    let mut slots = Vec::new();
    for at in SLOTS {
        let mut b = [0u8; SLOT_LEN];
        let r = if at + SLOT_LEN as u64 <= size {
            f.read_exact_at(&mut b, at)
                .map_err(SpoolError::io("read", &p))?;
            if b.iter().all(|&x| x == 0) {
                Err(NEVER_WRITTEN)
            } else {
                Checkpoint::decode(&b)
            }
        } else {
            Err(NEVER_WRITTEN)
        };
        slots.push(r);
    }
    let best = slots
        .iter()
        .enumerate()
        .filter_map(|(i, s)| s.as_ref().ok().map(|c| (i, *c)))
        .max_by_key(|(_, c)| c.generation);
    Ok(match best {
        Some((i, checkpoint)) => Loaded::Found {
            checkpoint,
            // A slot never written yet (the file's first write) is no damage.
            other_damaged: slots[1 - i].err().filter(|&e| e != NEVER_WRITTEN),
        },
        None => Loaded::Damaged(format!(
            "neither checkpoint slot checks out (slot 0: {}, slot 1: {})",
            slots[0].err().unwrap_or("ok"),
            slots[1].err().unwrap_or("ok")
        )),
    })
}

/// The open checkpoint file of a stream, written in turns.
pub struct CheckpointFile {
    file: Arc<dyn SpoolFile>,
    path: PathBuf,
    last: Checkpoint,
}

impl CheckpointFile {
    /// Opens (creating if needed) the checkpoint file; the next write
    /// follows `last` (the checkpoint loaded, or a default one).
    pub fn open(fs: &dyn SpoolFs, dir: &Path, last: Checkpoint) -> Result<Self, SpoolError> {
        let p = path(dir);
        let created = !fs.exists(&p);
        let file = fs.open(&p, true).map_err(SpoolError::io("create", &p))?;
        if created {
            fs.sync_dir(dir)
                .map_err(SpoolError::io("fsync directory", dir))?;
        }
        Ok(CheckpointFile {
            file,
            path: p,
            last,
        })
    }

    /// The last checkpoint written (or loaded).
    pub fn last(&self) -> &Checkpoint {
        &self.last
    }

    /// Writes `cp` (its generation set here) durably, into the slot the
    /// last write did not use.
    pub fn write(&mut self, mut cp: Checkpoint) -> Result<(), SpoolError> {
        cp.generation = self.last.generation + 1;
        let slot = SLOTS[(cp.generation % 2) as usize];
        self.file
            .write_all_at(&cp.encode(), slot)
            .map_err(SpoolError::io("write", &self.path))?;
        self.file
            .sync_data()
            .map_err(SpoolError::io("fdatasync", &self.path))?;
        self.last = cp;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spool::simfs::SimFs;

    fn cp(end: u64) -> Checkpoint {
        Checkpoint {
            stream_id: 5,
            end,
            ..Checkpoint::default()
        }
    }

    #[test]
    fn the_newest_valid_slot_wins_and_a_torn_one_leaves_the_other() {
        let fs = SimFs::new();
        let dir = Path::new("/s");
        assert_eq!(load(&fs, dir).unwrap(), Loaded::Missing);
        let mut f = CheckpointFile::open(&fs, dir, Checkpoint::default()).unwrap();
        f.write(cp(10)).unwrap();
        match load(&fs, dir).unwrap() {
            Loaded::Found {
                checkpoint,
                other_damaged: None,
            } => assert_eq!((checkpoint.end, checkpoint.generation), (10, 1)),
            other => panic!("{other:?}"),
        }
        f.write(cp(20)).unwrap();
        // Damage the newer slot (generation 2 went to slot 0): the older one is read.
        fs.corrupt(&path(dir), 33, 0x01);
        match load(&fs, dir).unwrap() {
            Loaded::Found {
                checkpoint,
                other_damaged: Some(_),
            } => assert_eq!(checkpoint.end, 10),
            other => panic!("{other:?}"),
        }
        fs.corrupt(&path(dir), 4096 + 33, 0x01);
        assert!(matches!(load(&fs, dir).unwrap(), Loaded::Damaged(_)));
    }
}
