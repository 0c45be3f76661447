//! The iommufd layer (viommu::iommufd) proven against a real kernel: the
//! checks of viommu/tests/iommufd_mock.rs run inside an L1 whose kernel
//! (resources/l1-kernel.sh) has iommufd and the kernel's own iommufd mock
//! (CONFIG_IOMMUFD_TEST) built in. VMM_REQUIRE_IOMMUFD_MOCK=1 turns a
//! missing mock into a failure there, and every check must report
//! `MOCK-CHECK-OK <name>`, so this test cannot pass by skipping.
//!
//! The viommu test binary is built here with the same cargo, target
//! directory and profile as this test (or taken from
//! VIOMMU_MOCK_TEST_BIN), and runs in L1 from the host's files.

use std::path::PathBuf;
use std::process::Command;

use guest_tests::*;

/// Every check of viommu/tests/iommufd_mock.rs (one per test there).
const CHECKS: &[&str] = &[
    "ioas_alloc_destroy",
    "ioas_map_unmap",
    "ioas_unmap_partial",
    "ioas_unmap_not_mapped",
    "ioas_map_errors",
    "hw_info_selftest",
    "hwpt_alloc_paging",
    "hwpt_alloc_flags",
    "hwpt_alloc_nested",
    "hwpt_alloc_wrong_size",
    "hwpt_invalidate_batch",
    "hwpt_invalidate_partial",
    "hwpt_invalidate_errors",
    "fault_queue_iopf",
    "fault_queue_auto_response",
    "fault_queue_errors",
    "pasid_attach_replace_detach",
    "pasid_iopf",
    "error_paths",
];

/// The `"executable"` of the compiler-artifact line for test target `name`
/// in cargo's JSON messages.
fn test_executable(json: &str, name: &str) -> Option<PathBuf> {
    let target = format!("\"name\":\"{name}\"");
    json.lines()
        .filter(|l| l.contains("\"reason\":\"compiler-artifact\"") && l.contains(&target))
        .find_map(|l| {
            let key = "\"executable\":\"";
            let start = l.find(key)? + key.len();
            let end = start + l[start..].find('"')?;
            Some(PathBuf::from(&l[start..end]))
        })
}

/// Builds viommu's `iommufd_mock` test binary and returns its path.
fn viommu_mock_tests() -> PathBuf {
    if let Some(p) = std::env::var_os("VIOMMU_MOCK_TEST_BIN") {
        return PathBuf::from(p);
    }
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(repo_root()).args([
        "test",
        "-p",
        "viommu",
        "--test",
        "iommufd_mock",
        "--no-run",
        "--message-format=json",
    ]);
    if !cfg!(debug_assertions) {
        cmd.arg("--release");
    }
    let out = cmd.output().expect("run cargo");
    let json = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "building viommu's iommufd_mock tests failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let exe = test_executable(&json, "iommufd_mock")
        .unwrap_or_else(|| panic!("no iommufd_mock executable in cargo's output:\n{json}"));
    assert!(exe.exists(), "{} is missing", exe.display());
    exe
}

#[test]
fn iommufd_layer_against_the_kernel_mock() {
    let exe = viommu_mock_tests();
    let _l1 = serial();
    let dir = scratch("iommufd-mock");
    let opts = L1Options {
        kernel_dir: Some(l1_kernel_dir()),
        ..Default::default()
    };
    let command = [
        "env".to_string(),
        "VMM_REQUIRE_IOMMUFD_MOCK=1".into(),
        "RUST_BACKTRACE=1".into(),
        exe.display().to_string(),
        "--nocapture".into(),
        "--test-threads=1".into(),
    ];
    let run = run_in_l1_opts(&dir, &opts, &command);
    let out = &run.output;
    assert_eq!(run.status, 0, "{out}");
    assert!(!run.has_line("MOCK-SKIP"), "{out}");
    // libtest prints `test <name> ... ` before a test's own output.
    let ok: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split("MOCK-CHECK-OK ").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect();
    let missing: Vec<&str> = CHECKS.iter().copied().filter(|c| !ok.contains(c)).collect();
    assert!(
        missing.is_empty(),
        "checks that did not pass: {missing:?}\n{out}"
    );
    // A check added there but not listed here should be listed.
    let extra: Vec<&str> = ok.iter().copied().filter(|c| !CHECKS.contains(c)).collect();
    assert!(extra.is_empty(), "add these checks to CHECKS: {extra:?}");
    let passed = format!("test result: ok. {} passed", CHECKS.len());
    assert!(run.has_line(&passed), "{out}");
    eprintln!(
        "iommufd mock: {} checks passed in L1 in {:.0?}",
        CHECKS.len(),
        run.elapsed
    );
}

#[test]
fn finds_the_test_executable_in_cargo_json() {
    let json = concat!(
        "{\"reason\":\"compiler-artifact\",\"target\":{\"kind\":[\"lib\"],\"name\":\"viommu\"},",
        "\"executable\":null}\n",
        "{\"reason\":\"compiler-artifact\",\"target\":{\"kind\":[\"test\"],",
        "\"name\":\"iommufd_mock\"},\"executable\":\"/t/release/deps/iommufd_mock-ab12\"}\n",
        "{\"reason\":\"build-finished\",\"success\":true}\n"
    );
    assert_eq!(
        test_executable(json, "iommufd_mock"),
        Some(PathBuf::from("/t/release/deps/iommufd_mock-ab12"))
    );
    assert_eq!(test_executable(json, "other"), None);
}
