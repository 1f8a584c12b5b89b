//! Any bytes where a spool record should be parse to a record or a typed
//! error, never a panic or a read past the end; a record that checks
//! encodes back to one that decodes the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_daemon::spool::record::{check, decode, parse_header};

fuzz_target!(|data: &[u8]| {
    let _ = parse_header(data);
    match (check(data), decode(data)) {
        (Ok((_, n)), Ok((record, m))) => {
            assert_eq!(n, m);
            assert!(n <= data.len());
            let mut again = Vec::new();
            record.encode(&mut again);
            let (back, len) = decode(&again).expect("what we encode decodes");
            assert_eq!(len, again.len());
            assert_eq!(back, record);
        }
        (Err(_), Err(_)) => {}
        (a, b) => panic!("check and decode disagree: {a:?} {b:?}"),
    }
});
