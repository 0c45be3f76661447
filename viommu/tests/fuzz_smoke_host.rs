//! The CI stand-in for fuzzing the unit with passthrough endpoints and ATS
//! devices behind it: runs the driver (`viommu::intel::fuzz_host::run`,
//! also the `vtd_host` target in /fuzz) on fixed pseudo-random inputs.
//! The property is that nothing panics: neither the unit nor the fakes,
//! which check the host IOMMU contract on every call.

use std::time::Instant;

use viommu::intel::fuzz_host;

/// xorshift64*: deterministic, no dependencies.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

fn run(what: &str, data: &[u8]) -> fuzz_host::Reach {
    std::panic::catch_unwind(|| fuzz_host::run_reach(data))
        .unwrap_or_else(|_| panic!("fuzz_host::run panicked on {what}: input {}", hex(data)))
}

#[test]
fn random_inputs_reach_the_host_and_the_devices() {
    let start = Instant::now();
    let mut rng = Rng(0x5eed_0fa7_5eed);
    let mut buf = vec![0u8; 1024];
    let mut total = fuzz_host::Reach::default();
    for i in 0..2000 {
        let len = 8 + (rng.next() % 500) as usize;
        rng.fill(&mut buf[..len]);
        let r = run(&format!("random input {i}"), &buf[..len]);
        total.shadow += r.shadow;
        total.bypass += r.bypass;
        total.blocked += r.blocked;
        total.host_mapped_bytes += r.host_mapped_bytes;
        total.atc_invalidations += r.atc_invalidations;
        total.page_responses += r.page_responses;
    }
    eprintln!("2000 inputs in {:?}: {total:?}", start.elapsed());
    // The inputs get past the setup into every path.
    assert!(total.shadow > 100, "{total:?}");
    assert!(total.bypass > 100, "{total:?}");
    assert!(total.blocked > 10, "{total:?}");
    assert!(total.host_mapped_bytes > 0, "{total:?}");
    assert!(total.atc_invalidations > 10, "{total:?}");
    assert!(total.page_responses > 3, "{total:?}");
}

#[test]
fn edge_inputs() {
    run("empty", &[]);
    for flags in 0..=255u8 {
        for setup in [0x00, 0x1f, 0x80, 0xff] {
            run("config only", &[flags, setup]);
            let mut buf = [0xa5u8; 200];
            buf[0] = flags;
            buf[1] = setup;
            run("config then a5s", &buf);
        }
    }
}
