//! The CI stand-in for fuzzing concurrent queue submission: runs the
//! driver (`viommu::intel::fuzz_threads::run`, also the `vtd_threads`
//! target in /fuzz) on fixed pseudo-random inputs, each with two vCPU
//! threads submitting descriptors and a device thread translating. The
//! interleaving differs from run to run; the property (no panic, no hang,
//! the queue runs to its tail once the threads are done) must hold for
//! every interleaving.

use std::time::Instant;

use viommu::intel::fuzz_threads;

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

#[test]
fn concurrent_submission_survives_random_inputs() {
    let start = Instant::now();
    let mut rng = Rng(0x7412_ead5_c0de);
    let mut buf = vec![0u8; 2048];
    let mut invalidations = 0;
    for i in 0..1500 {
        let len = 8 + (rng.next() % 1500) as usize;
        rng.fill(&mut buf[..len]);
        let data = &buf[..len];
        invalidations += std::panic::catch_unwind(|| fuzz_threads::run_counted(data))
            .unwrap_or_else(|_| {
                let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
                panic!("fuzz_threads::run panicked on random input {i}: input {hex}")
            });
    }
    eprintln!(
        "1500 inputs in {:?}: {invalidations} invalidations",
        start.elapsed()
    );
    assert!(invalidations > 2_000, "{invalidations}");
}
