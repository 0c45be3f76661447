//! The CI stand-in for fuzzing the devices a guest programs directly: runs
//! the drivers of `devices::fuzz` (also the `pci_config` and `virtio_blk`
//! targets in /fuzz) on fixed pseudo-random inputs. The property is that
//! nothing panics, whatever the guest writes.

use std::time::Instant;

use devices::fuzz::{pci_config, virtio_blk};

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

#[test]
fn pci_config_space_survives_random_inputs() {
    let start = Instant::now();
    let mut rng = Rng(0x0c0f_f1ce_5eed);
    let mut buf = vec![0u8; 2048];
    for i in 0..600 {
        let len = 1 + (rng.next() % 1200) as usize;
        rng.fill(&mut buf[..len]);
        let data = &buf[..len];
        if std::panic::catch_unwind(|| pci_config::run(data)).is_err() {
            panic!(
                "pci_config::run panicked on random input {i}: {}",
                hex(data)
            );
        }
    }
    eprintln!("600 config space inputs in {:?}", start.elapsed());
}

#[test]
fn virtio_blk_chains_survive_random_inputs() {
    let start = Instant::now();
    let mut rng = Rng(0xb10c_c4a1_5eed);
    let mut buf = vec![0u8; 2048];
    let (mut chains, mut ok) = (0, 0);
    for i in 0..2000 {
        let len = 1 + (rng.next() % 1500) as usize;
        rng.fill(&mut buf[..len]);
        // Mostly rings where a driver puts them.
        buf[0] &= !0x20 | (i as u8 & 0x20);
        let data = &buf[..len];
        match std::panic::catch_unwind(|| virtio_blk::run_counted(data)) {
            Ok((c, o)) => {
                chains += c;
                ok += o;
            }
            Err(_) => panic!(
                "virtio_blk::run panicked on random input {i}: {}",
                hex(data)
            ),
        }
    }
    eprintln!(
        "2000 virtio-blk inputs in {:?}: {chains} chains completed, {ok} OK",
        start.elapsed()
    );
    // The inputs get past the parser into the executor.
    assert!(chains > 500, "{chains}");
    assert!(ok > 50, "{ok}");
}
