//! How `sluiced` says it cannot go on: as text (`sluiced: MESSAGE`), or,
//! with `log.format = "json"`, as one JSON line shaped like the rest of
//! its log (tracing-subscriber's: timestamp, level, fields, target), so
//! that a log pipeline that reads JSON does not drop the one line that
//! matters most. The exit status is in the line too (`exit_code`).
//!
//! A configuration that fails its checks still says which format it
//! asked for when its flag, its variable or its file could be read; an
//! error before that (bad usage, a file that is not TOML and no flag)
//! stays text.

use std::fmt::Display;
use std::process::ExitCode;

use crate::config::{Args, Config, LogFormat};

/// The log format `args` ask for, as far as it can be known without a
/// valid configuration: the flag (or its variable) first, then the file's
/// `log.format` if the file can be read; text otherwise.
pub fn asked_json(args: &Args) -> bool {
    let format = args.log.format.or_else(|| {
        let path = args.config.as_ref()?;
        Config::from_file(path).ok().map(|c| c.log.format)
    });
    format == Some(LogFormat::Json)
}

/// Says `error` on stderr, as JSON if `json`, and returns exit status
/// `code`.
pub fn report(json: bool, error: &dyn Display, code: u8) -> ExitCode {
    if json {
        eprintln!("{}", json_line(&error.to_string(), code));
    } else {
        eprintln!("sluiced: {error}");
    }
    ExitCode::from(code)
}

/// One line as tracing-subscriber's JSON formatter writes an event.
fn json_line(message: &str, code: u8) -> String {
    serde_json::json!({
        "timestamp": humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
        "level": "ERROR",
        "fields": { "message": message, "exit_code": code },
        "target": "sluiced",
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_json_line_is_one_line_with_the_message_and_the_code() {
        let line = json_line("bad \"value\"\non two lines", 2);
        assert!(!line.contains('\n'), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["level"], "ERROR");
        assert_eq!(v["fields"]["message"], "bad \"value\"\non two lines");
        assert_eq!(v["fields"]["exit_code"], 2);
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'), "{v}");
    }
}
