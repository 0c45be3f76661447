//! Shared virtual addressing on the emulated dma-test device behind the
//! emulated VT-d (pasid-bits=20): a guest process's address space is bound
//! to a PASID; the device DMAs, PASID-tagged, into a page the process never
//! touched; the ATS translation fails, the device sends a page request
//! through the unit's page request queue, the guest's IOPF handler faults
//! the page in and answers with a page group response, the device retries
//! and the data lands.
//!
//! Debian's 6.12 kernel disables the generic SVA bind on x86 (the upstream
//! "iommu: disable SVA when CONFIG_X86 is set" backport), so the guest
//! module binds the process through the intel-iommu driver's SVA domain
//! itself when `iommu_sva_bind_device()` refuses (tests/guest/sva/).

use guest_tests::*;

fn number(run: &L1Run, key: &str) -> u64 {
    run.value(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {key}:\n{}", run.output))
}

#[test]
fn guest_sva_page_request_and_response() {
    let _l1 = serial();
    let dir = scratch("viommu-sva");
    let ko = guest_module(&dir, "sva");
    let user = guest_program(&dir, "sva/sva_user.c");
    let mut args = VmmArgs::new(initramfs_with(
        &dir,
        "sva.sh",
        &[],
        &[(ko, "/lib/dmatest_sva.ko"), (user, "/bin/sva_user")],
    ));
    args.cpus = 2;
    args.cmdline = "console=ttyS0 quiet panic=-1 intel_iommu=on".into();
    args.extra = vec![
        "--device".into(),
        "dma-test,iommu=on".into(),
        "--viommu".into(),
        "intel,pasid-bits=20".into(),
        "--counters".into(),
    ];
    let run = run_in_l1(&dir, &args.command());
    let out = &run.output;
    assert!(run.has_line("GUEST-CHECKS-DONE"), "{out}");
    assert_eq!(run.status, 0, "{out}");
    assert_eq!(run.value("INSMOD-STATUS").as_deref(), Some("0"), "{out}");
    assert!(number(&run, "SVA-PASID") > 0, "{out}");
    // The untouched page was written by the device after the page request.
    assert_eq!(run.value("SVA-DATA-OK").as_deref(), Some("1"), "{out}");
    assert_eq!(run.value("SVA-STATUS").as_deref(), Some("1"), "{out}");
    assert_eq!(run.value("SVA-READ-OK").as_deref(), Some("1"), "{out}");
    // Both sides count the page request and its response.
    let device_requests = number(&run, "SVA-PAGE-REQUESTS");
    assert!(device_requests >= 1, "{out}");
    assert_eq!(number(&run, "SVA-PAGE-RESPONSES"), device_requests, "{out}");
    assert_eq!(run.counter("page_requests"), device_requests);
    assert_eq!(run.counter("page_responses"), device_requests);
    // The guest saw the page request interrupt and handled the fault.
    assert!(run.has_line("dmar0-prq"), "{out}");
    assert!(out.contains("dmatest_sva: iopf pasid"), "{out}");
    assert_eq!(
        run.counter("faults_recorded"),
        0,
        "PRI faults are not recorded"
    );
}
