//! Bad user input: one line on stderr, a non-zero exit, never a panic.

use std::process::Command;

fn vmm(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_vmm"))
        .args(args)
        .output()
        .expect("run vmm");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn assert_one_line_error(args: &[&str], needle: &str) {
    let (code, err) = vmm(args);
    assert_ne!(code, 0, "{args:?} succeeded");
    assert_eq!(err.lines().count(), 1, "{args:?} printed:\n{err}");
    assert!(err.contains(needle), "{args:?}: '{err}' lacks '{needle}'");
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn missing_kernel() {
    assert_one_line_error(&["--kernel", "/nonexistent/bzImage"], "cannot open kernel");
}

#[test]
fn unreadable_kernel_directory() {
    assert_one_line_error(&["--kernel", "/"], "");
}

#[test]
fn bad_memory_sizes() {
    assert_one_line_error(&["--kernel", "/dev/null", "--memory", "lots"], "not a size");
    assert_one_line_error(
        &["--kernel", "/dev/null", "--memory", "12Q"],
        "unknown suffix",
    );
    assert_one_line_error(&["--kernel", "/dev/null", "--memory", "1K"], "between");
}

#[test]
fn impossible_cpu_counts() {
    assert_one_line_error(&["--kernel", "/dev/null", "--cpus", "0"], "CPU count");
    assert_one_line_error(&["--kernel", "/dev/null", "--cpus", "1000"], "CPU count");
}

#[test]
fn disk_that_cannot_be_opened() {
    assert_one_line_error(
        &[
            "--kernel",
            "/dev/null",
            "--disk",
            "path=/nonexistent/disk.img",
        ],
        "cannot open disk",
    );
    assert_one_line_error(
        &["--kernel", "/dev/null", "--disk", "file=x"],
        "disk option",
    );
}

#[test]
fn missing_required_kernel() {
    assert_one_line_error(&["--memory", "1G"], "--kernel");
}

#[test]
fn kernel_that_is_not_a_bzimage() {
    // /dev/null opens, so the failure comes later: either KVM is unusable on
    // this machine or the image is rejected. Both are one-line errors.
    let (code, err) = vmm(&["--kernel", "/dev/null"]);
    assert_ne!(code, 0);
    assert_eq!(err.lines().count(), 1, "{err}");
}
