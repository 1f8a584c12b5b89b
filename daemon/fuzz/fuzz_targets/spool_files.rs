//! Any bytes in any file of a stream (a segment, the checkpoint, a cursor,
//! a consumer group's journal or snapshot), put in whole or xored over the
//! file: read every way without a panic, see `sluice_daemon::any_bytes`.
//! The proptest daemon/tests/spool_bytes.rs checks the same in CI.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let Some((&at, bytes)) = rest.split_first() else {
        return;
    };
    sluice_daemon::any_bytes::check(sel & 0x7f, sel & 0x80 != 0, at as u16 * 16, bytes);
});
