//! How every subcommand names its stream: as its first argument
//! (`sluice consume orders`) or with `-s`/`--stream` (`sluice consume -s
//! orders`), whichever habit the user has; one, not both.

/// A subcommand's stream, given either way.
#[derive(clap::Args, Clone, Debug)]
pub struct StreamArg {
    /// The stream (or give it with -s/--stream).
    #[arg(
        value_name = "STREAM",
        required_unless_present = "stream_flag",
        conflicts_with = "stream_flag"
    )]
    stream_pos: Option<String>,
    /// The stream (or give it as the first argument).
    #[arg(
        short = 's',
        long = "stream",
        id = "stream_flag",
        value_name = "STREAM"
    )]
    stream_flag: Option<String>,
}

impl StreamArg {
    pub fn name(&self) -> &str {
        self.stream_pos
            .as_deref()
            .or(self.stream_flag.as_deref())
            .expect("clap requires the stream one way or the other")
    }
}

/// A stream that may be left out (`group list [STREAM]`).
#[derive(clap::Args, Clone, Debug)]
pub struct MaybeStream {
    /// Only this stream (or give it with -s/--stream).
    #[arg(value_name = "STREAM", conflicts_with = "stream_flag")]
    stream_pos: Option<String>,
    /// Only this stream (or give it as the first argument).
    #[arg(
        short = 's',
        long = "stream",
        id = "stream_flag",
        value_name = "STREAM"
    )]
    stream_flag: Option<String>,
}

impl MaybeStream {
    pub fn name(&self) -> Option<&str> {
        self.stream_pos.as_deref().or(self.stream_flag.as_deref())
    }
}
