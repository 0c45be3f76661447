//! libFuzzer target: one input is one run of `viommu::intel::fuzz_threads`
//! (see there for the input format and the properties checked).
//!
//! Run with `-detect_leaks=0`: LeakSanitizer reports glibc's per-thread
//! destructor list (`__cxa_thread_atexit_impl`) of the driver's threads
//! as leaked when it checks while they exit.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    viommu::intel::fuzz_threads::run(data);
});
