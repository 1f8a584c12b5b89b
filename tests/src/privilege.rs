//! Tests that need root (network namespaces, veth, nftables, AF_XDP) run in
//! CI, which runs as root. Elsewhere they skip and say why; with `CI=true`
//! a skip is a failure, so CI cannot pass by skipping them.

/// Whether this process runs as root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Whether this run is CI (`CI=true`), where nothing may be skipped.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// `true` when `test` may run; otherwise prints why it is skipped and
/// returns `false`, or panics under CI.
pub fn require(test: &str, what: &str, available: bool, why_not: &str) -> bool {
    if available {
        return true;
    }
    let msg = format!("{test}: needs {what}, skipped: {why_not}");
    assert!(!in_ci(), "{msg} (CI=true: a skip is a failure)");
    eprintln!("{msg}");
    false
}

/// `true` when root; see [`require`].
pub fn require_root(test: &str) -> bool {
    require(test, "root", is_root(), "not running as root")
}

/// Whether `tool` is on the PATH.
pub fn has_tool(tool: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}
