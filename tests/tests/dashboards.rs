//! The operators' files in daemon/dist/ (issue 22, points 3 and 6): a
//! busy daemon's /metrics passes `promtool check metrics`, the
//! Prometheus alert rules pass `promtool check rules`, the Grafana
//! dashboard is a dashboard, and every metric either of them names is one
//! a running sluiced exports (a rename in the daemon that forgets them
//! fails here). `promtool` comes from Debian's `prometheus` package
//! (scripts/setup.sh installs it); without it the promtool test says why
//! it skips, and with `CI=true` a skip fails.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use sluice_testkit::testnet::require;
use sluice_tests::daemon::Daemon;
use sluice_tests::sluiced_bin;

fn dist(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../daemon/dist")
        .join(file)
}

const RULES: &str = "prometheus/sluice-alerts.yml";
const DASHBOARD: &str = "grafana/sluiced-dashboard.json";

fn has_promtool() -> bool {
    Command::new("promtool")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn the_alert_rules_pass_promtool() {
    if !require(
        "the_alert_rules_pass_promtool",
        "promtool",
        has_promtool(),
        "not installed (Debian's prometheus package has it; scripts/setup.sh installs it as root)",
    ) {
        return;
    }
    let out = Command::new("promtool")
        .args(["check", "rules"])
        .arg(dist(RULES))
        .output()
        .expect("promtool runs");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool check rules: {said}");
    assert!(said.contains("SUCCESS"), "{said}");
}

#[test]
fn the_metrics_of_a_busy_daemon_pass_promtool() {
    if !require(
        "the_metrics_of_a_busy_daemon_pass_promtool",
        "promtool",
        has_promtool(),
        "not installed (Debian's prometheus package has it; scripts/setup.sh installs it as root)",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = busy_daemon(dir.path());
    let text = d.get("/metrics");
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool runs");
    use std::io::Write as _;
    child
        .stdin
        .take()
        .expect("its stdin")
        .write_all(text.as_bytes())
        .expect("the metrics written to promtool");
    let out = child.wait_with_output().expect("promtool ends");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool check metrics on {} lines: {said}",
        text.lines().count()
    );
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success());
}

/// The `sluice_*` names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find("sluice_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_owned());
        rest = &tail[end..];
    }
    names
}

/// Every expression of the rules file (`expr:` lines) and the dashboard
/// (each panel's targets), with where it is.
fn expressions() -> Vec<(String, String)> {
    let rules = std::fs::read_to_string(dist(RULES)).expect("the rules file");
    let mut all: Vec<(String, String)> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("expr:"))
        .map(|e| (RULES.to_owned(), e.trim().to_owned()))
        .collect();
    let text = std::fs::read_to_string(dist(DASHBOARD)).expect("the dashboard");
    let dash: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    assert_eq!(dash["uid"], "sluiced-overview");
    let panels = dash["panels"].as_array().expect("panels");
    assert!(panels.len() >= 10, "{} panels", panels.len());
    for p in panels {
        let title = p["title"].as_str().expect("a panel title");
        let targets = p["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "panel {title:?} shows nothing");
        for t in targets {
            let expr = t["expr"].as_str().expect("a target's expr");
            all.push((format!("{DASHBOARD} {title:?}"), expr.to_owned()));
        }
    }
    all
}

/// A sluiced that has done a bit of everything the files watch: a stream
/// with traffic, a configured consumer group, a forward (to a NATS server
/// that is not there: its families are exported all the same).
fn busy_daemon(dir: &Path) -> Daemon {
    let config = dir.join("sluiced.toml");
    std::fs::write(
        &config,
        "[streams]\nnames = [\"orders\"]\n\n\
         [[consumers.groups]]\nstream = \"orders\"\ngroup = \"billing\"\n\n\
         [[forward]]\nname = \"js\"\nstreams = [\"orders\"]\n\
         servers = [\"nats://127.0.0.1:1\"]\ntarget_stream = \"SLUICE\"\n",
    )
    .unwrap();
    let spec = sluice_tests::forward::spec(sluiced_bin!(), dir, &config.display().to_string());
    let d = spec.start();
    let url = format!("{}/streams/orders/messages", spec.admin_url());
    let body: String = (1..=20)
        .map(|i| format!("{{\"data\": \"m{i}\"}}\n"))
        .collect();
    ureq::post(&url)
        .timeout(Duration::from_secs(10))
        .set("content-type", "application/x-ndjson")
        .set("sluice-producer-id", "1")
        .set("sluice-seq", "1")
        .send_string(&body)
        .expect("a publish");
    d
}

#[test]
fn every_metric_the_rules_and_the_dashboard_name_is_exported() {
    let dir = tempfile::tempdir().unwrap();
    let d = busy_daemon(dir.path());
    let exprs = expressions();
    let wanted: BTreeSet<String> = exprs.iter().flat_map(|(_, e)| metric_names(e)).collect();
    assert!(wanted.len() >= 20, "{wanted:?}");
    // The forward's families come once its first connect was tried.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let exported: BTreeSet<String> = d.metrics().samples.into_iter().map(|s| s.name).collect();
        let unknown: BTreeSet<String> = exprs
            .iter()
            .flat_map(|(at, e)| {
                metric_names(e)
                    .into_iter()
                    .filter(|n| !exported.contains(n))
                    .map(move |n| format!("{n} ({at})"))
            })
            .collect();
        if unknown.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "named in daemon/dist but not exported by sluiced: {unknown:#?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let status = d.terminate(Duration::from_secs(10));
    assert!(status.success());
}
