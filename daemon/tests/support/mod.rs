//! What the seeded simulation tests share: running many seeds, or
//! replaying one, with the command that replays a failure.

use std::fmt::Debug;

/// Runs `run` for seeds `0..N` (N from `{var}S`, else `default`), or only
/// for the seed in `{var}` when it is set (then returns None: a replay
/// checks no totals). Every seed's result is handed to `add`; failures are
/// collected and reported together, each with its replay command.
pub fn run_seeds<T: Debug>(
    var: &str,
    default: u64,
    test: &str,
    run: impl Fn(u64) -> Result<T, String>,
    mut add: impl FnMut(&T),
) -> Option<u64> {
    if let Ok(s) = std::env::var(var) {
        let seed: u64 = s.parse().unwrap_or_else(|_| panic!("{var} is a number"));
        let t = run(seed).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        eprintln!("{t:?}");
        return None;
    }
    let seeds: u64 = std::env::var(format!("{var}S"))
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default);
    let mut failures = Vec::new();
    for seed in 0..seeds {
        match run(seed) {
            Ok(t) => add(&t),
            Err(e) => failures.push(format!(
                "seed {seed}: {e} (replay: {var}={seed} cargo test -p sluice-daemon --test {test})"
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds failed:\n{}",
        failures.len(),
        failures
            .iter()
            .take(20)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    );
    Some(seeds)
}
