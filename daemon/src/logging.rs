//! The daemon's log (to stderr, as text or JSON, filtered by `log.level`),
//! set up so that a reload (SIGHUP) can change the level and the format of
//! the running process: both are layers behind reload handles.

use tracing_subscriber::layer::{Layered, SubscriberExt};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{fmt, reload, EnvFilter, Layer, Registry};

use crate::config::Logging;

type FilterLayer = reload::Layer<EnvFilter, Registry>;
type Filtered = Layered<FilterLayer, Registry>;
type Format = Box<dyn Layer<Filtered> + Send + Sync>;

/// Changes the running log's filter and format.
pub struct LogHandle {
    filter: reload::Handle<EnvFilter, Registry>,
    format: reload::Handle<Format, Filtered>,
}

impl LogHandle {
    /// Lines from now on pass `logging.filter` and are written as
    /// `logging.json` says.
    pub fn apply(&self, logging: Logging) -> Result<(), String> {
        self.filter
            .reload(logging.filter)
            .map_err(|e| format!("log.level: {e}"))?;
        self.format
            .reload(format_layer(logging.json))
            .map_err(|e| format!("log.format: {e}"))
    }
}

/// Sets the process's log up; None (and nothing changed) if a host
/// program set one up already (the test and load harnesses may), whose
/// level and format then cannot be reloaded.
pub fn init(logging: Logging) -> Option<LogHandle> {
    let (filter_layer, filter) = reload::Layer::new(logging.filter);
    let (format_layer, format) = reload::Layer::new(format_layer(logging.json));
    Registry::default()
        .with(filter_layer)
        .with(format_layer)
        .try_init()
        .ok()?;
    Some(LogHandle { filter, format })
}

fn format_layer(json: bool) -> Format {
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let text = fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    if json {
        Box::new(text.json())
    } else {
        Box::new(text)
    }
}
