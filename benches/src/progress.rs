//! A progress line on stderr for runs that take a while, so that a user
//! sees what is being measured and that it is moving:
//!
//! ```text
//! ⠙ ingest: run 2 of 3  [#########>---------]  2.6/5.0 s  acked 1,204,224  463,100 msgs/s
//! ```
//!
//! It is drawn only when stderr is a terminal (never in CI logs, pipes or
//! tests) and not when the user asked for quiet, and it is cleared before
//! the results are printed. Every method is a no-op when hidden, so a
//! scenario calls them unconditionally.
//!
//! ```no_run
//! use sluice_bench::progress::{Goal, Progress};
//! let p = Progress::new("ingest", false);
//! p.phase("baseline", Goal::Seconds(4.0));
//! p.set(1.5, "disk");
//! p.phase("run 1 of 3", Goal::Count(80_000));
//! p.set(20_000.0, "acked 20,000");
//! p.finish();
//! ```
//!
//! `Progress` is cheap to clone and can be updated from any thread.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What a phase counts towards.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Goal {
    /// Planned seconds.
    Seconds(f64),
    /// Planned items (messages, records).
    Count(u64),
    /// Unknown: a spinner and the note only.
    Open,
}

/// Steps of the bar: fine enough to move every 100 ms of a 5 s phase.
const STEPS: u64 = 1000;

#[derive(Clone)]
pub struct Progress {
    inner: Option<Arc<Inner>>,
}

struct Inner {
    bar: ProgressBar,
    label: String,
    goal: Mutex<Goal>,
}

impl Progress {
    /// A progress line labelled `label` (the scenario), shown only when
    /// stderr is a terminal and `quiet` is false.
    pub fn new(label: &str, quiet: bool) -> Progress {
        if quiet || !std::io::stderr().is_terminal() {
            return Progress::hidden();
        }
        let bar = ProgressBar::with_draw_target(Some(STEPS), ProgressDrawTarget::stderr());
        let style = ProgressStyle::with_template("{spinner} {prefix:.bold}  [{bar:24}]  {msg}")
            .expect("a valid template")
            .progress_chars("#>-");
        bar.set_style(style);
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress {
            inner: Some(Arc::new(Inner {
                bar,
                label: label.to_owned(),
                goal: Mutex::new(Goal::Open),
            })),
        }
    }

    /// Draws nothing.
    pub fn hidden() -> Progress {
        Progress { inner: None }
    }

    pub fn is_hidden(&self) -> bool {
        self.inner.is_none()
    }

    /// Starts a phase (`baseline`, `warm-up 1 of 3`, ...) counting towards
    /// `goal` from zero.
    pub fn phase(&self, name: &str, goal: Goal) {
        let Some(i) = &self.inner else { return };
        *i.goal.lock().unwrap() = goal;
        // The note and position first: the old phase's would show with the
        // new name if the line were drawn in between.
        i.bar.set_message(String::new());
        i.bar.set_position(0);
        i.bar.set_prefix(format!("{}: {name}", i.label));
    }

    /// `done` of the phase's goal so far (seconds or items), and a note
    /// (what has been counted, the current rate).
    pub fn set(&self, done: f64, note: &str) {
        let Some(i) = &self.inner else { return };
        let goal = *i.goal.lock().unwrap();
        let (fraction, of) = match goal {
            Goal::Seconds(s) => (done / s, format!("{done:.1}/{s:.1} s")),
            Goal::Count(n) => (
                done / n as f64,
                format!("{}/{}", thousands(done as u64), thousands(n)),
            ),
            Goal::Open => (0.0, String::new()),
        };
        let fraction = if fraction.is_finite() {
            fraction.clamp(0.0, 1.0)
        } else {
            0.0
        };
        i.bar.set_position((fraction * STEPS as f64) as u64);
        i.bar.set_message(if of.is_empty() {
            note.to_owned()
        } else {
            format!("{of}  {note}")
        });
    }

    /// Runs `f` (which takes about `seconds`) as a phase named `name`,
    /// moving the bar with the clock meanwhile: the measurement loops stay
    /// free of progress calls.
    pub fn timed<T>(&self, name: &str, seconds: f64, f: impl FnOnce() -> T) -> T {
        if self.is_hidden() {
            return f();
        }
        self.phase(name, Goal::Seconds(seconds));
        let done = std::sync::atomic::AtomicBool::new(false);
        std::thread::scope(|s| {
            s.spawn(|| {
                let start = std::time::Instant::now();
                while !done.load(std::sync::atomic::Ordering::Relaxed) {
                    self.set(start.elapsed().as_secs_f64(), "");
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
            let out = f();
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            out
        })
    }

    /// Clears the line (call before printing results).
    pub fn finish(&self) {
        if let Some(i) = &self.inner {
            i.bar.finish_and_clear();
        }
    }
}

/// 1234567 → "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (k, c) in digits.chars().enumerate() {
        if k > 0 && (digits.len() - k).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thousands_are_grouped() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1_234_567), "1,234,567");
    }

    #[test]
    fn quiet_is_hidden_and_calls_are_harmless() {
        let p = Progress::new("t", true);
        assert!(p.is_hidden());
        p.phase("x", Goal::Seconds(0.0));
        p.set(1.0, "n");
        p.finish();
    }
}
