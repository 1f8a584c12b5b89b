//! Creating a segment file, for the log as it rolls and for a repair that
//! starts the log again past what it gave up.

use std::path::Path;
use std::sync::Arc;

use super::error::SpoolError;
use super::fs::{SpoolFile, SpoolFs};
use super::segment::SegmentHeader;

/// Creates a segment file: its header written and synced, space reserved,
/// its name durable in the folder.
pub fn create_segment(
    fs: &dyn SpoolFs,
    dir: &Path,
    path: &Path,
    header: &SegmentHeader,
    size: u64,
) -> Result<Arc<dyn SpoolFile>, SpoolError> {
    let f = fs
        .open(path, true)
        .map_err(SpoolError::io("create", path))?;
    f.set_len(0).map_err(SpoolError::io("truncate", path))?;
    f.write_all_at(&header.encode(), 0)
        .map_err(SpoolError::io("write", path))?;
    f.preallocate(size)
        .map_err(SpoolError::io("preallocate", path))?;
    f.sync_data().map_err(SpoolError::io("fdatasync", path))?;
    fs.sync_dir(dir)
        .map_err(SpoolError::io("fsync directory", dir))?;
    Ok(f)
}
