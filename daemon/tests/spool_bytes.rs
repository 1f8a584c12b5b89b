//! Any bytes in any file of a stream are read without a panic; a repair
//! then opens clean (see `sluice_daemon::any_bytes`). The fuzz target
//! `spool_files` (daemon/fuzz) runs the same property under libFuzzer.

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(300))]
    #[test]
    fn any_bytes_in_any_file_are_read_without_a_panic(
        which in 0u8..5,
        xor in any::<bool>(),
        at in any::<u16>(),
        bytes in proptest::collection::vec(any::<u8>(), 0..400),
    ) {
        sluice_daemon::any_bytes::check(which, xor, at, &bytes);
    }
}
