//! `sluice consume STREAM --group G`: receive a stream's messages as a
//! member of a consumer group, print them or hand each to a command, and
//! ack what was handled.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine;
use sluice_transport::client::{ConsumeMode, Consumer, ConsumerOptions, Delivery};
use tokio::io::AsyncWriteExt;

use crate::connect::QuicArgs;
use crate::Res;

mod http;

#[derive(clap::Args)]
pub struct Args {
    #[command(flatten)]
    stream: crate::stream_arg::StreamArg,
    /// Consumer group to join: members of a group share its messages; each
    /// group gets every message.
    #[arg(long, short)]
    group: String,
    #[command(flatten)]
    connect: QuicArgs,
    /// Where the group starts if it is new (an existing group continues
    /// where it is): earliest, latest, offset:N or time:RFC3339.
    #[arg(long, default_value = "earliest", value_parser = parse_start)]
    start: sluice_transport::client::StartAt,
    /// Exit once this many messages are acked (and the acks durable).
    #[arg(long)]
    count: Option<u64>,
    /// Run `sh -c CMD` for each message, with the payload on its stdin and
    /// SLUICE_OFFSET, SLUICE_DELIVERY, SLUICE_PRODUCER and SLUICE_SEQ in its
    /// environment: ack the message if it exits 0, else nack it (delivered
    /// again after --nack-delay). Messages are not printed unless --print
    /// is given.
    #[arg(long, value_name = "CMD")]
    exec: Option<String>,
    /// How long a message nacked after a failed --exec waits before it is
    /// delivered again.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    nack_delay: Duration,
    /// Pull messages (--batch at a time, waiting up to --wait for them)
    /// instead of having the daemon push them within the credit window.
    #[arg(long)]
    pull: bool,
    /// Messages per fetch (with --pull).
    #[arg(long, default_value_t = 100, requires = "pull")]
    batch: u32,
    /// Longest wait of a fetch for messages (with --pull; at most 30s).
    #[arg(long, default_value = "5s", value_parser = humantime::parse_duration, requires = "pull")]
    wait: Duration,
    /// Credit: at most this many messages delivered and not yet acked.
    #[arg(long, default_value_t = 1000)]
    max_messages: u32,
    /// Credit: at most this many payload bytes delivered and not yet acked.
    #[arg(long, default_value_t = 16 << 20)]
    max_bytes: u64,
    /// `payload`: the payload and a newline; `line`: offset, delivery,
    /// producer, seq and payload (escaped), tab-separated; `json`: one
    /// object a line, payload in base64. Default: payload (nothing with
    /// --exec).
    #[arg(long, value_parser = ["payload", "line", "json"])]
    print: Option<String>,
    /// How messages come: `quic` (a QUIC session: push or --pull), `ws`
    /// (the admin port's WebSocket route) or `sse` (its server-sent
    /// events; acks and nacks go over HTTP). ws and sse are push, within
    /// --max-messages and --max-bytes.
    #[arg(long, default_value = "quic", value_parser = ["quic", "ws", "sse"])]
    transport: String,
    /// sluiced's admin (HTTP) address, for --transport ws and sse:
    /// HOST:PORT or a base URL (http://HOST:PORT, https://HOST:PORT for
    /// admin.tls, with sse).
    #[arg(long, default_value = "127.0.0.1:7480", env = "SLUICE_ADMIN")]
    admin: crate::admin::AdminUrl,
    #[command(flatten)]
    admin_cert: crate::admin::AdminCert,
}

fn parse_start(s: &str) -> Result<sluice_transport::client::StartAt, String> {
    sluice_daemon::consume::service::parse_start(s)
}

pub fn run(a: Args) -> Res {
    if a.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    if a.max_messages == 0 || a.max_bytes == 0 {
        return Err("--max-messages and --max-bytes must be at least 1".into());
    }
    if a.transport != "quic" {
        if a.pull {
            return Err("--pull needs --transport quic (ws and sse are push)".into());
        }
        return http::run(&a);
    }
    let (addr, quic) = a.connect.resolve()?;
    let mut options = ConsumerOptions::new(quic, a.group.clone());
    options.start = a.start;
    options.mode = if a.pull {
        ConsumeMode::Pull
    } else {
        ConsumeMode::Push
    };
    // Not more out with us than we mean to handle.
    options.max_messages = match a.count {
        Some(n) => a.max_messages.min(n.clamp(1, u32::MAX as u64) as u32),
        None => a.max_messages,
    };
    options.max_bytes = a.max_bytes;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(async {
        let mut consumer = Consumer::connect(addr, a.stream.name(), options).await?;
        let result = consume(&a, &mut consumer).await;
        // Makes the acks made so far durable, and leaves the group: what
        // was not acked goes to other members.
        consumer.close().await;
        result
    })
}

/// What became of one message.
enum Handled {
    Acked,
    Nacked,
    /// Interrupted: neither acked nor nacked (delivered again).
    Stopped,
}

async fn consume(a: &Args, consumer: &mut Consumer) -> Res {
    let mut stop = Box::pin(stop_signal());
    let mut acked = 0u64;
    let done = |acked: u64| a.count.is_some_and(|n| acked >= n);
    if done(acked) {
        return Ok(());
    }
    loop {
        let batch: Vec<Delivery> = tokio::select! {
            _ = &mut stop => return Ok(()),
            got = next(a, consumer, acked) => match got? {
                Some(b) => b,
                None => return Ok(()),
            },
        };
        for d in batch {
            // What is past --count stays unsettled: delivered again to
            // others once we leave.
            if done(acked) {
                break;
            }
            match handle(a, consumer, acked, &d, &mut stop).await? {
                Handled::Acked => acked += 1,
                Handled::Nacked => {}
                Handled::Stopped => return Ok(()),
            }
        }
        if done(acked) {
            consumer.sync().await?;
            return Ok(());
        }
    }
}

/// The next deliveries: one pushed, or a fetch's worth (no more than
/// --count leaves to do).
async fn next(
    a: &Args,
    consumer: &mut Consumer,
    acked: u64,
) -> Result<Option<Vec<Delivery>>, Box<dyn std::error::Error>> {
    if a.pull {
        let left = a.count.map_or(u64::MAX, |n| n.saturating_sub(acked));
        let max = (a.batch as u64).min(left).max(1) as u32;
        loop {
            let got = consumer.fetch(max, a.wait).await?;
            if !got.is_empty() {
                return Ok(Some(got));
            }
        }
    }
    Ok(consumer.next().await?.map(|d| vec![d]))
}

/// Before the ack that makes `acked + 1`: with --count, a credit window
/// no larger than what is left to do, so that the daemon does not hand
/// out messages we would only give back (each such delivery counts
/// towards the message's max_deliveries).
fn shrink_credit(a: &Args, consumer: &Consumer, acked: u64) {
    let Some(count) = a.count else { return };
    if a.pull {
        return;
    }
    let left = count.saturating_sub(acked + 1);
    if left < a.max_messages as u64 && left < count {
        consumer.set_credit(left as u32, a.max_bytes);
    }
}

/// Prints or runs one message, then acks or nacks it.
async fn handle(
    a: &Args,
    consumer: &Consumer,
    acked: u64,
    d: &Delivery,
    stop: &mut std::pin::Pin<Box<impl std::future::Future<Output = ()>>>,
) -> Result<Handled, Box<dyn std::error::Error>> {
    let print = match (&a.print, &a.exec) {
        (Some(p), _) => Some(p.as_str()),
        (None, None) => Some("payload"),
        (None, Some(_)) => None,
    };
    if let Some(how) = print {
        let mut out = std::io::stdout().lock();
        out.write_all(&render(how, d))?;
        out.flush()?;
    }
    let Some(cmd) = &a.exec else {
        shrink_credit(a, consumer, acked);
        d.ack();
        return Ok(Handled::Acked);
    };
    let status = match exec(cmd, &fields(d), stop).await? {
        Some(status) => status,
        None => {
            eprintln!("sluice: stopped while running the command on offset {}; it will be delivered again", d.offset);
            return Ok(Handled::Stopped);
        }
    };
    if status.success() {
        shrink_credit(a, consumer, acked);
        d.ack();
        return Ok(Handled::Acked);
    }
    d.nack(a.nack_delay);
    eprintln!(
        "sluice: offset {} (delivery {}): the command failed ({status}); nacked, delivered again in {}",
        d.offset,
        d.delivery,
        humantime::format_duration(a.nack_delay)
    );
    Ok(Handled::Nacked)
}

/// One message as `--print` asks.
fn render(how: &str, d: &Delivery) -> Vec<u8> {
    render_fields(how, &fields(d))
}

/// What `--print` and `--exec` use of a QUIC delivery.
fn fields(d: &Delivery) -> Fields<'_> {
    Fields {
        offset: d.offset,
        delivery: d.delivery,
        timestamp_us: d.timestamp_us,
        producer: d.producer,
        seq: d.seq,
        payload: &d.payload,
    }
}

/// Runs `sh -c cmd` on one message, whichever transport brought it (its
/// payload on stdin, its offset, delivery, producer and seq in the
/// environment): its exit status, or `None` if we were stopped meanwhile
/// (the command is killed).
async fn exec(
    cmd: &str,
    f: &Fields<'_>,
    stop: &mut std::pin::Pin<Box<impl std::future::Future<Output = ()>>>,
) -> Result<Option<std::process::ExitStatus>, Box<dyn std::error::Error>> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("SLUICE_OFFSET", f.offset.to_string())
        .env("SLUICE_DELIVERY", f.delivery.to_string())
        .env("SLUICE_PRODUCER", f.producer.to_string())
        .env("SLUICE_SEQ", f.seq.to_string())
        .stdin(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot run sh -c {cmd:?}: {e}"))?;
    let mut stdin = child.stdin.take().ok_or("no stdin for the command")?;
    let payload = f.payload.to_vec();
    // The command need not read its input: a closed pipe is no failure.
    let feed = tokio::spawn(async move {
        let _ = stdin.write_all(&payload).await;
    });
    let status = tokio::select! {
        s = child.wait() => s?,
        _ = &mut *stop => {
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Ok(None);
        }
    };
    feed.abort();
    Ok(Some(status))
}

/// What is printed of a message, whichever transport brought it.
struct Fields<'a> {
    offset: u64,
    delivery: u32,
    timestamp_us: u64,
    producer: u64,
    seq: u64,
    payload: &'a [u8],
}

fn render_fields(how: &str, d: &Fields<'_>) -> Vec<u8> {
    match how {
        "line" => format!(
            "{}\t{}\t{}\t{}\t{}\n",
            d.offset,
            d.delivery,
            d.producer,
            d.seq,
            String::from_utf8_lossy(d.payload).escape_debug()
        )
        .into_bytes(),
        "json" => {
            let mut v = serde_json::to_vec(&serde_json::json!({
                "offset": d.offset,
                "delivery": d.delivery,
                "timestamp_us": d.timestamp_us,
                "producer": d.producer,
                "seq": d.seq,
                "payload": base64::engine::general_purpose::STANDARD.encode(d.payload),
            }))
            .expect("JSON of plain values");
            v.push(b'\n');
            v
        }
        _ => {
            let mut v = d.payload.to_vec();
            v.push(b'\n');
            v
        }
    }
}

/// Resolves on Ctrl-C or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = match signal(SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
