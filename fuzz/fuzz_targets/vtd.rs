//! libFuzzer target: one input is one run of the VT-d fuzz driver
//! (configuration byte, then register, memory, DMA, interrupt and page
//! request operations). See `viommu::intel::fuzz`.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    viommu::intel::fuzz::run(data);
});
