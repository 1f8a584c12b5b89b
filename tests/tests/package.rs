//! The Debian package (`scripts/package.sh`, `[package.metadata.deb]` in
//! daemon/Cargo.toml), made from the binaries this test build made (no
//! second, release build): what it holds, its control fields and conffiles,
//! its unit checked by systemd; then, as root, installed, its daemon
//! started as the unit would run it and asked, stopped, and purged, leaving
//! the machine as it was.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sluice_testkit::ports::{free_tcp, free_udp};
use sluice_testkit::testnet::{has_tool, require, require_root};
use sluice_tests::{sluice_bin, sluiced_bin};

const TEST: &str = "the_package_holds_everything_installs_starts_and_purges";
/// The Debian name of the package (daemon/Cargo.toml).
const PACKAGE: &str = "sluice";
const UNIT: &str = "lib/systemd/system/sluiced.service";
const CONFIG: &str = "etc/sluice/sluiced.toml";
const STATE: &str = "/var/lib/sluice";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Runs `cmd` to its end; its stdout, or a panic with its stderr.
fn output(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8 output")
}

fn cmd(program: &str, args: &[&str]) -> Command {
    let mut c = Command::new(program);
    c.args(args);
    c
}

/// Builds the package in `dir` with scripts/package.sh; its path.
fn build_deb(dir: &Path) -> PathBuf {
    // A target folder of the test's own whose `dist` folder holds this
    // build's sluiced and sluice under their real names: package.sh
    // --no-build packages them as they are (with man pages and completions
    // made by that sluice), and cargo-deb's `cargo metadata` runs apart
    // from the target folder of the cargo running this test.
    let target = dir.join("target");
    let dist = target.join("dist");
    std::fs::create_dir_all(&dist).unwrap();
    std::os::unix::fs::symlink(sluiced_bin!(), dist.join("sluiced")).unwrap();
    std::os::unix::fs::symlink(sluice_bin!(), dist.join("sluice")).unwrap();
    let out = dir.join("deb");
    output(
        Command::new(repo().join("scripts/package.sh"))
            .args(["--profile", "dist", "--no-build", "--fast", "--output"])
            .arg(&out)
            .env("CARGO_TARGET_DIR", &target)
            .current_dir(repo()),
    );
    let debs: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "one .deb in {}: {debs:?}", out.display());
    debs.into_iter().next().unwrap()
}

/// Every manual page `sluice man --dir` writes for both programs (one per
/// subcommand): the package must hold each, gzipped.
fn man_pages(dir: &Path) -> Vec<String> {
    let pages = dir.join("man1");
    let d = pages.to_str().unwrap();
    output(Command::new(sluice_bin!()).args(["man", "--dir", d]));
    output(Command::new(sluice_bin!()).args(["man", "sluiced", "--dir", d]));
    let mut names: Vec<String> = std::fs::read_dir(&pages)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert!(names.len() > 10, "a page per subcommand: {names:?}");
    names
}

/// What `dpkg-deb -c` lists, path (without the leading `.`) to
/// (permissions, owner/group).
fn contents(deb: &Path) -> Vec<(String, String, String)> {
    output(Command::new("dpkg-deb").arg("-c").arg(deb))
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert!(f.len() >= 6, "dpkg-deb -c line {l:?}");
            let path = f[5].trim_start_matches('.').trim_end_matches('/');
            (path.to_owned(), f[0].to_owned(), f[1].to_owned())
        })
        .collect()
}

fn check_contents(deb: &Path, scratch: &Path) {
    let listed = contents(deb);
    let find = |path: &str| listed.iter().find(|(p, _, _)| p == path);
    let mut want: Vec<(String, &str)> = vec![
        ("/usr/bin/sluiced".into(), "-rwxr-xr-x"),
        ("/usr/bin/sluice".into(), "-rwxr-xr-x"),
        (format!("/{UNIT}"), "-rw-r--r--"),
        (format!("/{CONFIG}"), "-rw-r--r--"),
        (
            "/usr/share/bash-completion/completions/sluice".into(),
            "-rw-r--r--",
        ),
        (
            "/usr/share/zsh/vendor-completions/_sluice".into(),
            "-rw-r--r--",
        ),
        (
            "/usr/share/fish/vendor_completions.d/sluice.fish".into(),
            "-rw-r--r--",
        ),
        (
            "/usr/share/sluice/grafana/sluiced-dashboard.json".into(),
            "-rw-r--r--",
        ),
        (
            "/usr/share/sluice/prometheus/sluice-alerts.yml".into(),
            "-rw-r--r--",
        ),
        ("/usr/share/doc/sluice/copyright".into(), "-rw-r--r--"),
    ];
    for page in man_pages(scratch) {
        want.push((format!("/usr/share/man/man1/{page}.gz"), "-rw-r--r--"));
    }
    for (path, mode) in &want {
        let (_, m, owner) = find(path).unwrap_or_else(|| panic!("the package lacks {path}"));
        assert_eq!(m, mode, "{path}");
        // By number (cargo-deb) or by name.
        assert!(owner == "0/0" || owner == "root/root", "{path}: {owner}");
    }
}

/// `dpkg-deb -f`: one control field.
fn field(deb: &Path, name: &str) -> String {
    output(Command::new("dpkg-deb").arg("-f").arg(deb).arg(name))
        .trim()
        .to_owned()
}

fn check_control(deb: &Path, scratch: &Path) {
    assert_eq!(field(deb, "Package"), PACKAGE);
    let arch = output(&mut cmd("dpkg", &["--print-architecture"]));
    assert_eq!(field(deb, "Architecture"), arch.trim());
    let depends = field(deb, "Depends");
    // libc6 from dpkg-shlibdeps ($auto), passwd for postinst's useradd.
    assert!(
        depends.contains("libc6") && depends.contains("passwd"),
        "{depends}"
    );
    assert!(!field(deb, "Maintainer").is_empty());
    let conffiles = output(Command::new("dpkg-deb").arg("-I").arg(deb).arg("conffiles"));
    assert_eq!(conffiles.trim(), format!("/{CONFIG}"), "conffiles");

    // The maintainer scripts: there, executable, valid sh.
    let control = scratch.join("control");
    output(Command::new("dpkg-deb").arg("-e").arg(deb).arg(&control));
    for script in ["postinst", "prerm", "postrm"] {
        let path = control.join(script);
        let mode = std::fs::metadata(&path)
            .unwrap_or_else(|e| panic!("no {script}: {e}"))
            .permissions()
            .mode();
        assert_eq!(mode & 0o111, 0o111, "{script} is not executable");
        output(Command::new("sh").arg("-n").arg(&path));
    }
    let postinst = std::fs::read_to_string(control.join("postinst")).unwrap();
    assert!(postinst.contains("useradd --system"), "{postinst}");
    // Enables and starts nothing (the sample's token is no one's): no
    // command of it says enable or start (try-restart, on an upgrade, only
    // restarts a daemon already running).
    for line in postinst.lines().map(str::trim) {
        if line.starts_with('#') {
            continue;
        }
        assert!(
            !line.contains("enable") && !line.contains(" start") && !line.contains("--now"),
            "postinst enables or starts the service: {line}"
        );
    }
}

/// The unit's paths are what the package installs and makes.
fn check_unit(root: &Path) {
    let unit = std::fs::read_to_string(root.join(UNIT)).unwrap();
    let lines: Vec<&str> = unit.lines().map(str::trim).collect();
    let exec = lines
        .iter()
        .find_map(|l| l.strip_prefix("ExecStart="))
        .expect("ExecStart");
    let words: Vec<&str> = exec.split_whitespace().collect();
    assert_eq!(
        words,
        ["/usr/bin/sluiced", "--config", "/etc/sluice/sluiced.toml"]
    );
    for installed in [words[0], words[2]] {
        assert!(
            root.join(installed.trim_start_matches('/')).is_file(),
            "the unit runs {installed}, which the package lacks"
        );
    }
    for want in ["User=sluice", "Group=sluice", "StateDirectory=sluice"] {
        assert!(lines.contains(&want), "the unit lacks {want}");
    }
    // The spool of the sample configuration is the unit's state folder.
    let config = std::fs::read_to_string(root.join(CONFIG)).unwrap();
    assert!(
        config.contains(&format!("dir = \"{STATE}\"")),
        "the sample's spool.dir is not {STATE}"
    );
}

/// `systemd-analyze verify` on `unit`; no complaint about it.
fn verify(unit: &Path) {
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(unit)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && !said.contains("sluiced.service:"),
        "systemd-analyze verify {}: {said}",
        unit.display()
    );
}

#[test]
fn the_package_holds_everything_installs_starts_and_purges() {
    let cargo_deb = Command::new("cargo")
        .args(["deb", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !require(
        TEST,
        "cargo-deb",
        cargo_deb,
        "not installed (cargo install cargo-deb --locked; scripts/setup.sh installs it)",
    ) || !require(
        TEST,
        "dpkg-deb and gzip",
        has_tool("dpkg-deb") && has_tool("gzip"),
        "not a Debian system",
    ) {
        return;
    }
    let scratch = tempfile::tempdir().unwrap();
    let started = Instant::now();
    let deb = build_deb(scratch.path());
    eprintln!("{TEST}: packaged in {:?}", started.elapsed());
    check_contents(&deb, scratch.path());
    check_control(&deb, scratch.path());

    let root = scratch.path().join("root");
    output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root));
    check_unit(&root);
    let analyze = has_tool("systemd-analyze");
    if require(
        TEST,
        "systemd-analyze",
        analyze,
        "not installed (Debian's systemd package; scripts/setup.sh installs it as root)",
    ) {
        // Before installing, verify wants ExecStart executable: pointed at
        // the extracted sluiced.
        let unit = std::fs::read_to_string(root.join(UNIT)).unwrap();
        let copy = scratch.path().join("sluiced.service");
        let extracted = root.join("usr/bin/sluiced");
        std::fs::write(
            &copy,
            unit.replace("/usr/bin/sluiced", extracted.to_str().unwrap()),
        )
        .unwrap();
        verify(&copy);
    }

    if !require_root(TEST) {
        return;
    }
    install_start_and_purge(&deb, scratch.path(), analyze);
}

/// What installing leaves behind, removed whatever happens (a failed check
/// included): the daemon, the package, and the user and state folder it
/// made (the test runs only where neither was there before).
struct Installed {
    daemon: Option<Child>,
    systemd: bool,
    dropin: PathBuf,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if let Some(mut child) = self.daemon.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if self.systemd {
            let _ = cmd("systemctl", &["stop", "sluiced.service"]).status();
            let _ = std::fs::remove_dir_all(&self.dropin);
            let _ = cmd("systemctl", &["daemon-reload"]).status();
        }
        // Quiet: after a passing run it is already purged.
        let _ = cmd("dpkg", &["--purge", PACKAGE])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        // postrm removes both on purge; this in case dpkg could not.
        let _ = cmd("userdel", &["sluice"]).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(STATE);
    }
}

fn user_exists(name: &str) -> bool {
    cmd("getent", &["passwd", name])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn package_installed() -> bool {
    cmd("dpkg-query", &["-W", "-f", "${Status}", PACKAGE])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("installed"))
}

fn install_start_and_purge(deb: &Path, scratch: &Path, analyze: bool) {
    // Purging removes the `sluice` user and /var/lib/sluice: where either
    // (or the package) is there already, they are someone's, not the
    // test's.
    let clean = !user_exists("sluice") && !Path::new(STATE).exists() && !package_installed();
    if !require(
        TEST,
        "a machine without the sluice package, user or /var/lib/sluice",
        clean,
        "installing and purging the package would remove them",
    ) {
        return;
    }
    let systemd = Path::new("/run/systemd/system").is_dir();
    let mut installed = Installed {
        daemon: None,
        systemd,
        dropin: PathBuf::from("/run/systemd/system/sluiced.service.d"),
    };
    output(Command::new("dpkg").arg("-i").arg(deb));
    assert!(package_installed());

    // The system user of the unit's User=, and its state folder.
    let passwd = output(&mut cmd("getent", &["passwd", "sluice"]));
    let f: Vec<&str> = passwd.trim().split(':').collect();
    let uid: u32 = f[2].parse().unwrap();
    let gid: u32 = f[3].parse().unwrap();
    assert!(uid < 1000, "not a system user: {passwd}");
    assert_eq!(&f[5..], [STATE, "/usr/sbin/nologin"], "{passwd}");
    let state = std::fs::metadata(STATE).expect("postinst makes /var/lib/sluice");
    assert_eq!((state.uid(), state.gid()), (uid, gid));
    assert_eq!(state.mode() & 0o777, 0o750);
    let conffiles = output(&mut cmd(
        "dpkg-query",
        &["-W", "-f", "${Conffiles}", PACKAGE],
    ));
    assert!(conffiles.contains(&format!("/{CONFIG}")), "{conffiles}");
    if analyze {
        // The installed unit as it is: its ExecStart exists now.
        verify(&Path::new("/").join(UNIT));
    }

    // On loopback ports of the test's own, whoever starts it.
    let data = free_udp().to_string();
    let quic = free_udp().to_string();
    let admin = free_tcp().to_string();
    let grpc = free_tcp().to_string();
    let listen = [
        ("SLUICED_DATA_LISTEN", &data),
        ("SLUICED_QUIC_LISTEN", &quic),
        ("SLUICED_ADMIN_LISTEN", &admin),
        ("SLUICED_GRPC_LISTEN", &grpc),
    ];
    let log = scratch.join("sluiced.log");
    if systemd {
        std::fs::create_dir_all(&installed.dropin).unwrap();
        let env: String = listen
            .iter()
            .map(|(k, v)| format!("Environment={k}={v}\n"))
            .collect();
        std::fs::write(
            installed.dropin.join("50-package-test.conf"),
            format!("[Service]\n{env}"),
        )
        .unwrap();
        output(&mut cmd("systemctl", &["daemon-reload"]));
        // Type=notify: returns once sluiced said READY=1.
        output(&mut cmd(
            "timeout",
            &["120", "systemctl", "start", "sluiced.service"],
        ));
    } else {
        // No systemd to run the unit: the installed sluiced as the unit
        // runs it (its user, its config, a clean environment).
        let child = Command::new("/usr/bin/sluiced")
            .args(["--config", "/etc/sluice/sluiced.toml"])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .envs(listen.iter().map(|(k, v)| (k, v.as_str())))
            .uid(uid)
            .gid(gid)
            .current_dir(STATE)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start /usr/bin/sluiced");
        installed.daemon = Some(child);
    }
    let log_text = || std::fs::read_to_string(&log).unwrap_or_default();

    // Ready: /health answers 200 (bounded: a minute).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let health = ureq::get(&format!("http://{admin}/health"))
            .timeout(Duration::from_secs(2))
            .call();
        if health.is_ok() {
            break;
        }
        if let Some(child) = installed.daemon.as_mut() {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("sluiced exited {status}: {}", log_text());
            }
        }
        assert!(
            Instant::now() < deadline,
            "no /health from sluiced: {health:?} {}",
            log_text()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The installed CLI asks it.
    let stat = output(
        Command::new("/usr/bin/sluice").args(["stat", "--admin", &admin, "--count", "1", "--json"]),
    );
    let line: serde_json::Value =
        serde_json::from_str(stat.lines().next().unwrap_or_default()).expect("stat --json");
    assert!(line.get("streams").is_some(), "{stat}");
    // It made its certificate in the state folder, as the sample says.
    assert!(Path::new(STATE).join("tls/server.crt").is_file());

    // Stopped: a drain, exit code 0.
    if systemd {
        output(&mut cmd("systemctl", &["stop", "sluiced.service"]));
        let active = cmd("systemctl", &["is-active", "--quiet", "sluiced.service"])
            .status()
            .unwrap();
        assert!(!active.success(), "sluiced still active");
    } else {
        let mut child = installed.daemon.take().unwrap();
        // SIGTERM, as systemctl stop sends (KillSignal=); Child::kill is
        // SIGKILL, which would test no drain. Our own child, not reaped yet.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("sluiced did not stop on SIGTERM: {}", log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        assert_eq!(status.code(), Some(0), "{}", log_text());
    }

    // Purged: nothing of it left.
    output(&mut cmd("dpkg", &["--purge", PACKAGE]));
    assert!(!package_installed());
    for gone in ["/usr/bin/sluiced", "/usr/bin/sluice", "/etc/sluice", STATE] {
        assert!(!Path::new(gone).exists(), "{gone} left after purge");
    }
    assert!(!Path::new("/").join(UNIT).exists());
    assert!(!user_exists("sluice"), "the sluice user left after purge");
    drop(installed);
}
