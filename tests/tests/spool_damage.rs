//! The spool's real files damaged the way failing disks, bad copies and
//! operators damage them, after a clean stop, and what the real binaries
//! do about it: `sluiced` refuses to start (exit status 3) naming stream,
//! file, byte and offsets, and changes nothing; `sluice spool verify` says
//! the same (exit status 1); `sluiced --repair` sets the damage aside and
//! serves what is before it, showing what it gave up, and never reuses an
//! offset; damage in a sealed segment is found by a read and by the
//! background scrub; a consumer group's damaged journal is refused; and a
//! `kill -9` while publishing is recovered without an operator. (The many
//! seeded cases run on the simulated file system, in the daemon's tests.)

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;
use sluice_tests::check::{self, Acked};
use sluice_tests::consume::{self, publish, succeeded};
use sluice_tests::daemon::{Daemon, DaemonSpec, Exited};
use sluice_tests::load::{self, Plan};
use sluice_tests::{sluice_bin, sluiced_bin};

const STREAM: &str = "s";
/// Messages of 128 bytes: four segments of 1 MiB (the last one partly
/// filled), commits of at most ~64 KiB.
const MESSAGES: u64 = 20_000;
const PRODUCER: u64 = 5;
/// sluiced's exit status for a damaged spool.
const DAMAGED: i32 = 3;
const LIMIT: Duration = Duration::from_secs(30);
const STOP: Duration = Duration::from_secs(15);

/// A daemon on `dir` with the smallest segments and commits.
fn spec(dir: &Path) -> DaemonSpec {
    DaemonSpec::new(sluiced_bin!(), dir)
        .arg("--spool-segment-bytes")
        .arg("1048576")
        .arg("--spool-max-batch-bytes")
        .arg("65536")
}

/// MESSAGES messages published to STREAM by PRODUCER (seqs 1..=MESSAGES
/// at offsets 0..MESSAGES) with `sluice publish`, and a clean stop.
fn filled(dir: &Path) -> DaemonSpec {
    let spec = spec(dir);
    let d = spec.start();
    succeeded(&sluice(&[
        "publish",
        "-s",
        STREAM,
        "--transport",
        "quic",
        "--to",
        &spec.quic.to_string(),
        "--server-cert",
        &spec.server_cert().display().to_string(),
        "--producer",
        &PRODUCER.to_string(),
        "--count",
        &MESSAGES.to_string(),
    ]));
    stop(d);
    spec
}

fn stop(d: Daemon) {
    let status = d.terminate(STOP);
    assert!(status.success(), "sluiced stopped with {status}");
}

/// Runs the `sluice` CLI, which must end within LIMIT.
fn sluice(args: &[&str]) -> Output {
    let child = Command::new(sluice_bin!())
        .args(args)
        .env_remove("SLUICE_TOKEN")
        .env_remove("SLUICE_ADDR")
        .env_remove("SLUICE_ADMIN")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start sluice");
    let pid = child.id();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(LIMIT) {
        Ok(out) => out.expect("sluice's output"),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
            panic!("sluice {args:?} did not finish within {LIMIT:?}");
        }
    }
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `sluice spool verify --data-dir DIR`: exit status and stdout.
fn verify_offline(dir: &Path) -> (i32, String) {
    let o = sluice(&["spool", "verify", "--data-dir", &dir.display().to_string()]);
    let out = text(&o.stdout);
    let code = o
        .status
        .code()
        .unwrap_or_else(|| panic!("verify: {}", o.status));
    (code, format!("{out}{}", text(&o.stderr)))
}

fn stream_dir(dir: &Path) -> PathBuf {
    dir.join("streams").join(STREAM)
}

/// The stream's segment files, by first offset.
fn segments(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut v: Vec<(u64, PathBuf)> = fs::read_dir(stream_dir(dir))
        .expect("list the stream's folder")
        .map(|e| e.expect("a folder entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| {
            let base = p.file_stem().unwrap().to_str().unwrap().parse().unwrap();
            (base, p)
        })
        .collect();
    v.sort();
    v
}

fn name(p: &Path) -> &str {
    p.file_name().unwrap().to_str().unwrap()
}

/// Flips one bit of the byte at `at`.
fn flip(path: &Path, at: u64) {
    let mut f = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut b = [0u8];
    f.seek(SeekFrom::Start(at)).unwrap();
    f.read_exact(&mut b).unwrap();
    b[0] ^= 0x10;
    f.seek(SeekFrom::Start(at)).unwrap();
    f.write_all(&b).unwrap();
    f.sync_all().unwrap();
}

/// Every file under `dir` with its bytes (but the lock file, which holds
/// the pid of the last daemon).
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, d: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for e in fs::read_dir(d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(root, &p, out);
            } else if p.file_name().is_some_and(|n| n != "LOCK") {
                out.insert(
                    p.strip_prefix(root).unwrap().to_path_buf(),
                    fs::read(&p).unwrap(),
                );
            }
        }
    }
    let mut m = BTreeMap::new();
    walk(dir, dir, &mut m);
    m
}

/// Panics unless the data folder holds the same files as `before`.
fn unchanged(dir: &Path, before: &BTreeMap<PathBuf, Vec<u8>>, what: &str) {
    let after = files(dir);
    let mut changed: Vec<_> = before
        .keys()
        .chain(after.keys())
        .filter(|p| before.get(*p) != after.get(*p))
        .collect();
    changed.dedup();
    assert!(changed.is_empty(), "{what} changed files: {changed:?}");
}

fn copy_dir(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for e in fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        let dest = to.join(p.file_name().unwrap());
        if p.is_dir() {
            copy_dir(&p, &dest);
        } else {
            fs::copy(&p, &dest).unwrap();
        }
    }
}

/// Starts sluiced expecting it to refuse the damaged spool: exit status 3.
fn refused(spec: &DaemonSpec) -> Exited {
    let before = files(&spec.dir);
    let run = || {
        let e = spec.run_to_exit(LIMIT);
        assert_eq!(
            e.status.code(),
            Some(DAMAGED),
            "sluiced should refuse the damaged spool with exit status {DAMAGED}; it exited \
             with {}, saying:\n{}",
            e.status,
            e.stderr
        );
        e
    };
    let e = run();
    unchanged(&spec.dir, &before, "a refused start");
    // Refusing changed nothing: the next start refuses the same way.
    let said = |e: &Exited| e.stderr.rsplit_once("sluiced: ").map(|(_, m)| m.to_owned());
    let again = run();
    assert_eq!(
        said(&again),
        said(&e),
        "a second start refuses the same way"
    );
    unchanged(&spec.dir, &before, "a second refused start");
    e
}

/// The number right after the first `prefix` that a digit follows.
fn number_after(s: &str, prefix: &str) -> Option<u64> {
    s.match_indices(prefix).find_map(|(i, _)| {
        let digits: String = s[i + prefix.len()..]
            .chars()
            .take_while(char::is_ascii_digit)
            .collect();
        digits.parse().ok()
    })
}

/// The offsets a refusal says are affected: `A..B` of the first
/// "offsets A..B (N records) affected".
fn offsets_affected(s: &str) -> Option<(u64, u64)> {
    s.match_indices("offsets ").find_map(|(i, _)| {
        let rest = &s[i + "offsets ".len()..];
        let (a, rest) = rest.split_once("..")?;
        let b: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let (n, tail) = rest[b.len()..].strip_prefix(" (")?.split_once(' ')?;
        n.parse::<u64>().ok()?;
        tail.starts_with("records) affected")
            .then(|| Some((a.parse().ok()?, b.parse().ok()?)))?
    })
}

/// A commit of a segment file: where it starts, its length with its
/// header, and its first offset (format 2: a 64-byte segment header, then
/// commits of a 48-byte header — "SLCM", body length u32, count u32, crc
/// u32, first offset u64 — and their records).
#[derive(Debug, Clone, Copy)]
struct Commit {
    at: u64,
    len: u64,
    first: u64,
}

fn commits(seg: &[u8]) -> Vec<Commit> {
    let mut v = Vec::new();
    let mut at = 64;
    while at + 48 <= seg.len() && &seg[at..at + 4] == b"SLCM" {
        let body = u32::from_le_bytes(seg[at + 4..at + 8].try_into().unwrap()) as usize;
        let first = u64::from_le_bytes(seg[at + 16..at + 24].try_into().unwrap());
        v.push(Commit {
            at: at as u64,
            len: (48 + body) as u64,
            first,
        });
        at += 48 + body;
    }
    v
}

/// Which record of `commit` holds byte `at` of the segment: its index in
/// the commit and where it starts (the commit's start, index 0, for a
/// byte of the commit's own header: then nothing of it checks out).
fn record_hit(seg: &[u8], commit: Commit, at: u64) -> (u64, u64) {
    let mut pos = commit.at + 48;
    if at < pos {
        return (0, commit.at);
    }
    let mut i = 0;
    loop {
        let p = pos as usize;
        let len = 40 + u32::from_le_bytes(seg[p..p + 4].try_into().unwrap()) as u64;
        if at < pos + len {
            return (i, pos);
        }
        pos += len;
        i += 1;
    }
}

/// (offset, producer, seq) of every record from `from` on (at most
/// `limit`), read through the daemon with `sluice read`.
fn read_through(d: &Daemon, from: u64, limit: Option<u64>) -> Vec<(u64, u64, u64)> {
    let (admin, from) = (d.admin.to_string(), from.to_string());
    let mut args = vec!["read", "-s", STREAM, "--admin", &admin, "--from", &from];
    args.extend(["--format", "json"]);
    let limit = limit.map(|n| n.to_string());
    if let Some(n) = &limit {
        args.extend(["--limit", n]);
    }
    let out = succeeded(&sluice(&args));
    out.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {l}"));
            (n("offset"), n("producer"), n("seq"))
        })
        .collect()
}

/// Panics unless `records` are exactly the published messages at offsets
/// 0..n (seq = offset + 1).
fn published_prefix(records: &[(u64, u64, u64)], n: u64) {
    assert_eq!(
        records.len() as u64,
        n,
        "records read back (the first: {:?}, the last: {:?})",
        records.first(),
        records.last()
    );
    for (i, &r) in records.iter().enumerate() {
        let i = i as u64;
        assert_eq!(r, (i, PRODUCER, i + 1), "record {i} read back");
    }
}

fn admin(d: &Daemon, path: &str) -> Value {
    let a = consume::get(d.admin, path, None);
    assert!(a.body.is_object(), "GET {path}: {} {}", a.status, a.body);
    a.body
}

/// STREAM's entry of GET /streams.
fn stream_info(d: &Daemon) -> Value {
    let all = admin(d, "/streams");
    all["streams"]
        .as_array()
        .and_then(|v| v.iter().find(|s| s["name"] == STREAM))
        .unwrap_or_else(|| panic!("no stream {STREAM} in /streams: {all}"))
        .clone()
}

fn aside_folders(dir: &Path) -> Vec<PathBuf> {
    let aside = stream_dir(dir).join("aside");
    let mut v: Vec<PathBuf> = match fs::read_dir(&aside) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    v.sort();
    v
}

#[test]
fn a_bit_flipped_in_the_last_segment_is_refused_then_repaired_without_reusing_offsets() {
    let dir = tempfile::tempdir().unwrap();
    let spec = filled(dir.path());
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "premise: several segments: {segs:?}");
    let last = segs.last().unwrap().1.clone();
    let before_flip = fs::read(&last).unwrap();
    let at = before_flip.len() as u64 / 2;
    let cs = commits(&before_flip);
    let hit = cs
        .iter()
        .position(|c| c.at <= at && at < c.at + c.len)
        .unwrap_or_else(|| panic!("byte {at} of {} is in no commit: {cs:?}", last.display()));
    assert!(
        hit > 0,
        "premise: commits before the damaged one in the last segment: {cs:?}"
    );
    let commit = cs[hit];
    flip(&last, at);
    let damaged = fs::read(&last).unwrap();
    let before = files(dir.path());

    // Refused (twice, nothing changed), naming stream, file, byte and offsets.
    let e = refused(&spec);
    let why = &e.stderr;
    assert!(why.contains(&format!("stream {STREAM}")), "{why}");
    assert!(why.contains(name(&last)), "{why}");
    let byte = number_after(why, "byte ").unwrap_or_else(|| panic!("no byte named: {why}"));
    // The damage is named at the record the flip hit (the records of its
    // commit before it check out and are kept).
    let (index, record_at) = record_hit(&before_flip, commit, at);
    assert_eq!(
        byte, record_at,
        "the damage (byte {at}, in the record at byte {record_at}) named at byte {byte}: {why}"
    );
    let (from, to) = offsets_affected(why).unwrap_or_else(|| panic!("no offsets named: {why}"));
    assert_eq!(
        (from, to),
        (commit.first + index, MESSAGES),
        "offsets affected: the damaged record's and all after it: {why}"
    );

    let (code, report) = verify_offline(dir.path());
    assert_eq!(code, 1, "verify of a damaged spool: {report}");
    assert!(
        report.contains(name(&last)) && report.contains(&format!("byte {byte}")),
        "{report}"
    );
    unchanged(dir.path(), &before, "sluice spool verify --data-dir");

    // --repair: the valid prefix served, the rest set aside and shown.
    let d = spec.clone().arg("--repair").start();
    let health = admin(&d, "/health");
    let lost = health["lost"]
        .as_array()
        .and_then(|v| v.iter().find(|l| l["stream"] == STREAM))
        .unwrap_or_else(|| panic!("no loss of {STREAM} in /health: {health}"));
    assert_eq!(
        (lost["from"].as_u64(), lost["to"].as_u64()),
        (Some(from), Some(to)),
        "{health}"
    );
    let detail = health["detail"].as_str().unwrap_or_default();
    assert!(
        detail.contains("given up") && detail.contains(&(to - from).to_string()),
        "/health detail: {health}"
    );
    let s = stream_info(&d);
    assert_eq!(s["lost_offsets"].as_u64(), Some(to - from), "{s}");
    let repairs: Vec<&Value> = s["recoveries"]
        .as_array()
        .map(|v| v.iter().filter(|r| r["kind"] == "repair").collect())
        .unwrap_or_default();
    assert_eq!(repairs.len(), 1, "one repair in /streams: {s}");
    let r = repairs[0];
    // Set aside from the damaged commit on (its original header and the
    // records kept in front of the damage included).
    let cut = damaged.len() as u64 - commit.at;
    assert_eq!(
        (
            r["from"].as_u64(),
            r["to"].as_u64(),
            r["bytes_aside"].as_u64()
        ),
        (Some(from), Some(to), Some(cut)),
        "{s}"
    );
    let m = d.metrics();
    let l = [("stream", STREAM)];
    assert_eq!(
        m.value("sluice_spool_lost_offsets", &l),
        (to - from) as f64,
        "sluice_spool_lost_offsets"
    );
    assert_eq!(
        m.value(
            "sluice_spool_recoveries_total",
            &[("stream", STREAM), ("kind", "repair")]
        ),
        1.0,
        "sluice_spool_recoveries_total{{kind=repair}}"
    );

    // The bytes cut are aside, as they were (nothing deleted).
    let folders = aside_folders(dir.path());
    assert_eq!(folders.len(), 1, "one aside folder: {folders:?}");
    let aside = &folders[0];
    assert!(
        r["aside"]
            .as_str()
            .is_some_and(|a| Path::new(a).ends_with(aside.file_name().unwrap())),
        "/streams names {aside:?}: {r}"
    );
    assert!(aside.join("MANIFEST").is_file(), "{aside:?} has a MANIFEST");
    let kept: Vec<PathBuf> = fs::read_dir(aside)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| fs::metadata(p).unwrap().len() == cut)
        .collect();
    assert_eq!(
        kept.len(),
        1,
        "a file of the {cut} bytes cut in {aside:?}: {:?}",
        fs::read_dir(aside).unwrap().collect::<Vec<_>>()
    );
    assert!(
        fs::read(&kept[0]).unwrap() == damaged[commit.at as usize..],
        "{:?} holds the segment's bytes from byte {} on",
        kept[0],
        commit.at
    );

    // Every message before the damage is served, once.
    published_prefix(&read_through(&d, 0, None), from);

    // A message published now continues after the offsets given up.
    publish(sluice_bin!(), &spec, STREAM, 9, &["after the repair"], None);
    let all = read_through(&d, 0, None);
    published_prefix(&all[..all.len() - 1], from);
    let newest = *all.last().unwrap();
    assert_eq!(newest.1, 9, "the newest record is the new message: {all:?}");
    assert!(
        newest.0 >= to,
        "the new message got offset {}, among the offsets given up ({from}..{to})",
        newest.0
    );
    stop(d);

    // The repair is done: the next start needs no --repair, and still says
    // what was given up.
    let d = spec.start();
    assert_eq!(stream_info(&d)["lost_offsets"].as_u64(), Some(to - from));
    assert_eq!(read_through(&d, 0, None).len() as u64, from + 1);
    stop(d);
    let (code, report) = verify_offline(dir.path());
    assert_eq!(code, 0, "verify after the repair: {report}");
}

#[test]
fn the_last_segment_cut_to_half_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let spec = filled(dir.path());
    let last = segments(dir.path()).last().unwrap().1.clone();
    let len = fs::metadata(&last).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(&last)
        .unwrap()
        .set_len(len / 2)
        .unwrap();
    let e = refused(&spec);
    let why = &e.stderr;
    assert!(why.contains(name(&last)) && why.contains("byte "), "{why}");
    let (_, to) = offsets_affected(why).unwrap_or_else(|| panic!("no offsets named: {why}"));
    assert_eq!(
        to, MESSAGES,
        "offsets affected up to the durable end: {why}"
    );
    let (code, report) = verify_offline(dir.path());
    assert_eq!(code, 1, "{report}");
    assert!(report.contains(name(&last)), "{report}");
}

#[test]
fn a_deleted_middle_segment_is_refused_naming_the_offsets_missing() {
    let dir = tempfile::tempdir().unwrap();
    let spec = filled(dir.path());
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "premise: several segments: {segs:?}");
    fs::remove_file(&segs[1].1).unwrap();
    let missing = format!("offsets {}..{}", segs[1].0, segs[2].0);
    let e = refused(&spec);
    assert!(
        e.stderr.contains(&missing) && e.stderr.contains(&format!("stream {STREAM}")),
        "sluiced should name {missing}: {}",
        e.stderr
    );
    assert_eq!(
        offsets_affected(&e.stderr),
        Some((segs[1].0, segs[2].0)),
        "{}",
        e.stderr
    );
    let (code, report) = verify_offline(dir.path());
    assert_eq!(code, 1, "{report}");
    assert!(report.contains(&missing), "{report}");
}

#[test]
fn a_bit_flipped_in_a_sealed_segment_stops_a_read_and_the_scrub_finds_it() {
    let dir = tempfile::tempdir().unwrap();
    let spec = filled(dir.path());
    let segs = segments(dir.path());
    assert!(segs.len() >= 3, "premise: several segments: {segs:?}");
    let (base, sealed) = segs[1].clone();
    let len = fs::metadata(&sealed).unwrap().len();
    flip(&sealed, len / 2);

    // Startup does not read sealed segments through: it starts.
    let d = spec.clone().arg("--spool-scrub-interval").arg("1s").start();
    // What is before the damaged segment is served.
    published_prefix(&read_through(&d, 0, Some(base)), base);
    // A read across the damage stops there, naming segment and byte.
    let o = sluice(&[
        "read",
        "-s",
        STREAM,
        "--admin",
        &d.admin.to_string(),
        "--from",
        &base.to_string(),
    ]);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "a read across damage: {err}");
    assert!(
        err.contains(name(&sealed)) && number_after(&err, "byte ").is_some(),
        "the read's error names segment and byte: {err}"
    );

    // The background scrub finds it.
    let deadline = Instant::now() + LIMIT;
    let health = loop {
        let h = admin(&d, "/health");
        if h["status"] == "degraded" {
            break h;
        }
        assert!(
            Instant::now() < deadline,
            "the scrub did not find the damage within {LIMIT:?}: {h}"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    let found = health["damage"]
        .as_array()
        .and_then(|v| v.iter().find(|f| f["stream"] == STREAM))
        .unwrap_or_else(|| panic!("no damage of {STREAM} in /health: {health}"));
    assert!(
        found["file"]
            .as_str()
            .is_some_and(|f| f.ends_with(name(&sealed)))
            && found["byte"].is_u64(),
        "{health}"
    );
    let m = d.metrics();
    assert_eq!(
        m.value("sluice_spool_damage", &[("stream", STREAM)]),
        1.0,
        "sluice_spool_damage"
    );
    assert!(m.value("sluice_spool_scrub_bytes_total", &[("stream", STREAM)]) > 0.0);
    // The pass goes on past the damage to the end of the sealed segments.
    let deadline = Instant::now() + LIMIT;
    let s = loop {
        let s = stream_info(&d);
        if s["scrub"]["passes"].as_u64() >= Some(1) || Instant::now() > deadline {
            break s;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        s["damage"].as_array().is_some_and(|v| !v.is_empty())
            && s["scrub"]["passes"].as_u64() >= Some(1),
        "/streams shows the damage and the scrub: {s}"
    );

    // Verify through the daemon says so too.
    let o = sluice(&["spool", "verify", "--admin", &d.admin.to_string()]);
    let report = format!("{}{}", text(&o.stdout), text(&o.stderr));
    assert_eq!(
        o.status.code(),
        Some(1),
        "verify through the daemon: {report}"
    );
    assert!(report.contains(name(&sealed)), "{report}");
    stop(d);
}

#[test]
fn a_checkpoint_with_both_slots_damaged_is_refused_and_with_one_it_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let filled_dir = dir.path().join("filled");
    filled(&filled_dir);
    // One slot damaged: the other one is read (the log may go past it).
    for slot in [0u64, 4096] {
        let d_dir = dir.path().join(format!("slot-{slot}"));
        copy_dir(&filled_dir, &d_dir);
        flip(&stream_dir(&d_dir).join("checkpoint"), slot + 32);
        let spec = spec(&d_dir);
        let d = spec.start();
        published_prefix(&read_through(&d, 0, None), MESSAGES);
        stop(d);
    }
    // Both: refused.
    let d_dir = dir.path().join("both");
    copy_dir(&filled_dir, &d_dir);
    let checkpoint = stream_dir(&d_dir).join("checkpoint");
    flip(&checkpoint, 32);
    flip(&checkpoint, 4096 + 32);
    let before = files(&d_dir);
    let e = refused(&spec(&d_dir));
    assert!(
        e.stderr.contains("checkpoint") && e.stderr.contains(&format!("stream {STREAM}")),
        "{}",
        e.stderr
    );
    unchanged(&d_dir, &before, "a refused start");
    let (code, report) = verify_offline(&d_dir);
    assert_eq!(code, 1, "{report}");
    assert!(report.contains("checkpoint"), "{report}");
}

#[test]
fn a_damaged_consumer_group_journal_is_refused_and_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let spec = filled(dir.path());
    let d = spec.start();
    // Three runs, three batches of acks: a journal of several entries.
    for _ in 0..3 {
        let out = succeeded(&sluice(&[
            "consume",
            STREAM,
            "--group",
            "g",
            "--count",
            "100",
            "--to",
            &spec.quic.to_string(),
            "--server-cert",
            &spec.server_cert().display().to_string(),
        ]));
        assert_eq!(out.lines().count(), 100, "consumed");
    }
    stop(d);
    let journal = stream_dir(dir.path()).join("groups/g/journal");
    let bytes = fs::read(&journal).unwrap();
    // Entries: a 16-byte header (body length u32, crc, seq), then the body.
    let mut entries = 0;
    let mut at = 0;
    while at + 16 <= bytes.len() {
        at += 16 + u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        entries += 1;
    }
    assert!(
        entries >= 2 && at == bytes.len(),
        "premise: a journal of several entries ({entries}, {} bytes)",
        bytes.len()
    );
    // The first entry's body: good entries follow it, so not a torn write.
    flip(&journal, 16);
    let damaged = fs::read(&journal).unwrap();
    let e = refused(&spec);
    assert!(
        e.stderr.contains("consumer group g") && e.stderr.contains("journal"),
        "sluiced should name the group and its journal: {}",
        e.stderr
    );
    let (code, report) = verify_offline(dir.path());
    assert_eq!(code, 1, "{report}");
    assert!(
        report.contains("group g") && report.contains("journal"),
        "{report}"
    );

    // --repair: the journal goes aside, the group is served again, from no
    // later than it had acked (what it acked after the damage comes again:
    // nothing is skipped).
    let d = spec.clone().arg("--repair").start();
    let out = succeeded(&sluice(&[
        "consume",
        STREAM,
        "--group",
        "g",
        "--count",
        "1",
        "--print",
        "line",
        "--to",
        &spec.quic.to_string(),
        "--server-cert",
        &spec.server_cert().display().to_string(),
    ]));
    let offset: u64 = out
        .split('\t')
        .next()
        .and_then(|o| o.parse().ok())
        .unwrap_or_else(|| panic!("an offset in {out:?}"));
    // Its journal was cut before its first entry; its cursor (a durable
    // mirror of its floor) says 0..300 were acked: it goes on from there.
    assert_eq!(
        offset, 300,
        "after the repair the group goes on from its cursor (it had acked 0..300)"
    );
    let s = stream_info(&d);
    assert!(
        s["recoveries"]
            .as_array()
            .is_some_and(|v| v.iter().any(|r| r["kind"] == "group-repair")),
        "/streams shows the group's repair: {s}"
    );
    stop(d);
    let kept = aside_folders(dir.path())
        .iter()
        .map(|f| f.join("journal"))
        .find(|j| j.is_file())
        .unwrap_or_else(|| panic!("no journal set aside: {:?}", aside_folders(dir.path())));
    assert!(
        fs::read(&kept).unwrap() == damaged,
        "{kept:?} holds the damaged journal"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_while_publishing_is_recovered_without_an_operator() {
    let dir = tempfile::tempdir().unwrap();
    let spec = spec(dir.path());
    let mut daemon = Some(spec.start());
    let target = spec.quic_path();
    let acked: Arc<Mutex<Acked>> = Arc::default();
    let stop_flag = Arc::new(AtomicBool::new(false));
    let total = |a: &Mutex<Acked>| a.lock().unwrap().values().map(|s| s.len()).sum::<usize>();
    let tasks: Vec<_> = (1..=2u64)
        .map(|p| {
            let plan = Plan {
                addr: target.addr,
                stream: STREAM.into(),
                producer: p,
                count: u64::MAX,
                batch: 50,
                options: load::patient(target.transport.clone()),
            };
            tokio::spawn(load::run(plan, acked.clone(), stop_flag.clone()))
        })
        .collect();
    let wait_for = |want: usize| {
        let acked = acked.clone();
        async move {
            let deadline = Instant::now() + LIMIT;
            while total(&acked) < want {
                assert!(
                    Instant::now() < deadline,
                    "publishing stalled at {} acked (want {want})",
                    total(&acked)
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    };
    for round in 0..2 {
        wait_for(total(&acked) + 3000).await;
        daemon.take().expect("running").kill9();
        eprintln!("round {round}: killed with {} acked", total(&acked));
        // Starts by itself (spec.start panics if it exits, e.g. with 3),
        // having given up nothing.
        let d = spec.start();
        let s = stream_info(&d);
        assert_eq!(s["lost_offsets"].as_u64(), Some(0), "after kill -9: {s}");
        daemon = Some(d);
    }
    wait_for(total(&acked) + 1000).await;
    stop_flag.store(true, Ordering::Relaxed);
    for t in tasks {
        tokio::time::timeout(LIMIT, t)
            .await
            .expect("producers stop in time")
            .expect("producer task")
            .expect("producer kept going through the kills");
    }
    stop(daemon.take().expect("running"));
    let acked = acked.lock().unwrap().clone();
    check::exactly_once(&check::stored(dir.path(), STREAM), &acked);
    let (code, report) = verify_offline(dir.path());
    assert_eq!(code, 0, "verify after kill -9 and a clean stop: {report}");
}
