//! The command-line contract: the summary line, exit codes, and how failures are reported.

use std::process::Command;

fn sim(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_chorus-sim"))
        .args(args)
        .output()
        .expect("run chorus-sim");
    let code = out.status.code().expect("exit code");
    (
        code,
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn a_clean_run_ends_with_the_summary_line_and_exits_zero() {
    // Goal: the last line of stdout is exactly `seeds=N violations=V`. Method: run two seeds.
    let (code, stdout, _) = sim(&["--seeds", "2", "--seed-start", "5"]);
    assert_eq!(code, 0, "{stdout}");
    assert_eq!(stdout.lines().last(), Some("seeds=2 violations=0"));
}

#[test]
fn usage_errors_exit_two() {
    // Goal: bad options are errors, not runs. Method: an unknown bug, an out-of-range size and an
    // unknown storage mode.
    let (code, _, stderr) = sim(&["--seeds", "1", "--inject-bug", "no-such-bug"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("known bugs are"), "{stderr}");
    let (code, _, stderr) = sim(&["--seeds", "1", "--nodes", "9"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("between 3 and 7"), "{stderr}");
    let (code, _, stderr) = sim(&["--seeds", "1", "--storage", "tape"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("expected mem or wal"), "{stderr}");
}

#[cfg(feature = "inject-bugs")]
#[test]
fn an_injected_bug_is_reported_with_its_seed_and_replay_command() {
    // Goal: a caught bug prints the seed, its parameters, a replay command, and exits non-zero.
    // Method: the commit rule breaks in the first seeds that elect a second leader.
    let (code, stdout, _) = sim(&["--seeds", "50", "--inject-bug", "commit-old-term"]);
    assert_eq!(code, 1, "{stdout}");
    assert!(stdout.contains("FAIL seed="), "{stdout}");
    assert!(stdout.contains("  params: nodes="), "{stdout}");
    assert!(
        stdout.contains("--inject-bug commit-old-term --seed-start"),
        "{stdout}"
    );
    assert!(stdout.contains("caught by seed"), "{stdout}");
    // The storage mode is a parameter of the seed and part of the replay command.
    assert!(stdout.contains(" storage="), "{stdout}");
    assert!(stdout.contains("--verbose --storage "), "{stdout}");
    assert!(
        stdout
            .lines()
            .last()
            .is_some_and(|l| l.ends_with("violations=1")),
        "{stdout}"
    );
}

#[cfg(not(feature = "inject-bugs"))]
#[test]
fn injecting_a_bug_needs_the_feature() {
    // Goal: without the feature, --inject-bug explains how to build with it.
    let (code, _, stderr) = sim(&["--seeds", "1", "--inject-bug", "double-vote"]);
    assert_eq!(code, 2);
    assert!(stderr.contains("--features inject-bugs"), "{stderr}");
}
