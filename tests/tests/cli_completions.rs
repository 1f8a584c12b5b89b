//! `sluice completions SHELL` and `sluice man [sluice|sluiced]`: what a
//! packager installs. The bash script must parse and complete subcommands
//! and flags; the manual pages must be roff with every option in them.

use std::path::Path;
use std::process::{Command, Output};

use sluice_tests::sluice_bin;

fn sluice(args: &[&str]) -> Output {
    Command::new(sluice_bin!())
        .args(args)
        .env_remove("SLUICE_ADMIN")
        .output()
        .expect("run sluice")
}

fn stdout_of(args: &[&str]) -> String {
    let out = sluice(args);
    assert!(
        out.status.success(),
        "sluice {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("UTF-8")
}

/// Runs `script` in a bash that has sourced the completion script at
/// `path`; its stdout.
fn in_bash(path: &Path, script: &str) -> String {
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!("source {}\n{script}", path.display()))
        .output()
        .expect("run bash");
    assert!(
        out.status.success(),
        "bash: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn bash_completion_parses_and_completes_subcommands_and_flags() {
    let script = stdout_of(&["completions", "bash"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sluice.bash");
    std::fs::write(&path, &script).unwrap();
    let check = Command::new("bash").arg("-n").arg(&path).output().unwrap();
    assert!(
        check.status.success(),
        "bash -n: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    for sub in [
        "publish",
        "read",
        "stat",
        "token",
        "nic",
        "consume",
        "dlq",
        "group",
        "spool",
        "completions",
        "man",
    ] {
        assert!(script.contains(sub), "no {sub} in the bash completions");
    }
    assert!(script.contains("complete -F _sluice"), "registers nothing");
    // What a user gets at TAB: `sluice pu` → publish, `sluice publish
    // --st` → --stream, `sluice completions z` → zsh.
    let got = in_bash(
        &path,
        "COMP_WORDS=(sluice pu); COMP_CWORD=1; _sluice sluice pu sluice\n\
         echo \"${COMPREPLY[@]}\"\n\
         COMP_WORDS=(sluice publish --st); COMP_CWORD=2; _sluice sluice --st publish\n\
         echo \"${COMPREPLY[@]}\"\n\
         COMP_WORDS=(sluice completions z); COMP_CWORD=2; _sluice sluice z completions\n\
         echo \"${COMPREPLY[@]}\"",
    );
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(lines, ["publish", "--stream", "zsh"], "{got}");
}

#[test]
fn every_shell_has_a_script_and_an_unknown_one_is_a_usage_error() {
    for (shell, marker) in [
        ("zsh", "#compdef sluice"),
        ("fish", "complete -c sluice"),
        ("elvish", "edit:completion:arg-completer[sluice]"),
        ("powershell", "Register-ArgumentCompleter"),
    ] {
        let script = stdout_of(&["completions", shell]);
        assert!(script.contains(marker), "{shell}: no {marker}");
        assert!(script.contains("publish"), "{shell}: no publish");
    }
    let out = sluice(&["completions", "tcsh"]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("possible values"), "{err}");
}

#[test]
fn man_pages_of_both_programs_are_roff_with_their_options() {
    let cli = stdout_of(&["man"]);
    assert!(cli.contains(".TH sluice 1"), "{cli}");
    assert_eq!(cli, stdout_of(&["man", "sluice"]), "sluice is the default");
    for needle in [".SH NAME", ".SH SUBCOMMANDS", "publish", "consume", "man"] {
        assert!(cli.contains(needle), "sluice(1) lacks {needle}");
    }

    // The daemon's page: every option under its section, with the key of
    // the file and the variable it stands for.
    let daemon = stdout_of(&["man", "sluiced"]);
    assert!(daemon.contains(".TH sluiced 1"), "{daemon}");
    for needle in [
        ".SH OPTIONS",
        r"\fB\-\-config\fR",
        r"\fB\-\-spool\-fsync\fR",
        "[spool.fsync]",
        "SLUICED_SPOOL_FSYNC",
        r"\fB\-\-spool\-dir\fR",
        r"\fB\-\-log\-format\fR",
        r"\fB\-\-repair\fR",
        "Exit status",
    ] {
        assert!(daemon.contains(needle), "sluiced(1) lacks {needle}");
    }

    let out = sluice(&["man", "sluicy"]);
    assert_eq!(out.status.code(), Some(2), "an unknown program");
}

#[test]
fn man_dir_writes_a_page_for_each_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let pages = dir.path().join("man1");
    stdout_of(&["man", "--dir", pages.to_str().unwrap()]);
    stdout_of(&["man", "sluiced", "--dir", pages.to_str().unwrap()]);
    for page in [
        "sluice.1",
        "sluice-publish.1",
        "sluice-consume.1",
        "sluice-group-reset.1",
        "sluiced.1",
    ] {
        let text =
            std::fs::read_to_string(pages.join(page)).unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH "), "{page}: {text}");
    }
    let publish = std::fs::read_to_string(pages.join("sluice-publish.1")).unwrap();
    assert!(publish.contains(r"\fB\-\-stream\fR"), "{publish}");
    assert!(publish.contains("SLUICE_ADMIN"), "{publish}");
}
