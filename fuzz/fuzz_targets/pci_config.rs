//! libFuzzer target: one input is one run of `devices::fuzz::pci_config`
//! (see there for the input format and the properties checked).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    devices::fuzz::pci_config::run(data);
});
