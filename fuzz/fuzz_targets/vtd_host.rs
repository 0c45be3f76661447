//! libFuzzer target: one input is one run of `viommu::intel::fuzz_host`
//! (see there for the input format and the properties checked).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    viommu::intel::fuzz_host::run(data);
});
