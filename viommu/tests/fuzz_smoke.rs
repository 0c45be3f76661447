//! The CI stand-in for fuzzing the VT-d model: runs the fuzz driver
//! (`viommu::intel::fuzz::run`, also the `cargo fuzz` target in /fuzz) on
//! a fixed set of pseudo-random inputs and on structured seeds (a working
//! configuration followed by garbage). The property is that the model
//! never panics, whatever the guest writes and whatever its devices ask.
//!
//! Panics of bugs already reported are listed in [`KNOWN_BUGS`]: they are
//! counted and printed but do not fail these tests, so the rest keeps
//! guarding; `cargo test -p viommu --test fuzz_smoke -- --ignored` runs the
//! same inputs with no allowance. Remove an entry once its bug is fixed.

use std::cell::RefCell;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Once;
use std::time::Instant;

use viommu::intel::fuzz;

/// (source file, panic message part) of reported, still open bugs.
const KNOWN_BUGS: &[(&str, &str)] = &[];

/// Inputs that crashed `cargo fuzz` once (hex).
const REGRESSIONS: &[&str] = &[
    // IOTLB register invalidation with IVA.AM = 63 (iotlb.rs shift overflow).
    "a32c9898989898ed1a9d05ff989898ffffffff9f06fdff2bffffff010400a8a8a8",
];

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

thread_local! {
    /// Where and why the last panic on this thread happened.
    static LAST_PANIC: RefCell<(String, String)> = const { RefCell::new((String::new(), String::new())) };
}

fn install_hook() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let file = info
                .location()
                .map(|l| l.file().to_owned())
                .unwrap_or_default();
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| info.payload().downcast_ref::<String>().cloned())
                .unwrap_or_default();
            let known = KNOWN_BUGS
                .iter()
                .any(|(f, m)| file.ends_with(f) && msg.contains(m));
            LAST_PANIC.with(|p| *p.borrow_mut() = (file, msg));
            if !known {
                default(info);
            }
        }));
    });
}

/// Runs every input; fails on a panic unless it is a known bug and
/// `allow_known`. Returns how many inputs hit known bugs.
struct Runner {
    allow_known: bool,
    known_hits: usize,
}

impl Runner {
    fn new(allow_known: bool) -> Self {
        install_hook();
        Runner {
            allow_known,
            known_hits: 0,
        }
    }

    fn run(&mut self, what: &str, data: &[u8]) -> Option<Box<viommu::intel::Counters>> {
        match std::panic::catch_unwind(|| fuzz::run_counted(data)) {
            Ok(c) => c,
            Err(_) => {
                let (file, msg) = LAST_PANIC.with(|p| p.borrow().clone());
                let known = KNOWN_BUGS
                    .iter()
                    .any(|(f, m)| file.ends_with(f) && msg.contains(m));
                let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
                if known && self.allow_known {
                    if self.known_hits == 0 {
                        eprintln!("known bug ({file}: {msg}) on {what}: input {hex}");
                    }
                    self.known_hits += 1;
                    None
                } else {
                    panic!("fuzz::run panicked on {what} ({file}: {msg}): input {hex}");
                }
            }
        }
    }
}

fn random_inputs(allow_known: bool) {
    let start = Instant::now();
    let mut runner = Runner::new(allow_known);
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut buf = vec![0u8; 1024];
    for i in 0..3000 {
        let len = 16 + (rng.next() % 600) as usize;
        rng.fill(&mut buf[..len]);
        runner.run(&format!("random input {i}"), &buf[..len]);
    }
    eprintln!(
        "3000 random inputs in {:?} ({} on known bugs)",
        start.elapsed(),
        runner.known_hits
    );
}

fn structured_seeds(allow_known: bool) {
    let start = Instant::now();
    let mut runner = Runner::new(allow_known);
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut buf = vec![0u8; 1024];
    let (mut translations, mut faults, mut invalidations, mut remapped) = (0, 0, 0, 0);
    // Every configuration, prebuilt (flag 0x80), then garbage operations.
    for flags in 0..=255u8 {
        for round in 0..4 {
            let len = 64 + (rng.next() % 700) as usize;
            rng.fill(&mut buf[..len]);
            buf[0] = flags | 0x80;
            let Some(c) = runner.run(&format!("seed {flags:#x}/{round}"), &buf[..len]) else {
                continue;
            };
            translations += c.translations.load(Relaxed);
            faults += c.faults.load(Relaxed);
            invalidations += c.invalidations.iter().map(|n| n.load(Relaxed)).sum::<u64>();
            remapped += c.interrupts_remapped.load(Relaxed);
        }
    }
    eprintln!(
        "1024 seeds in {:?} ({} on known bugs): {translations} translations, {faults} faults, \
         {invalidations} invalidations, {remapped} interrupts remapped",
        start.elapsed(),
        runner.known_hits,
    );
    // The seeds get past the tables, not only into faults.
    assert!(translations > 1000, "{translations}");
    assert!(faults > 1000, "{faults}");
    assert!(invalidations > 100, "{invalidations}");
    assert!(remapped > 10, "{remapped}");
}

fn edge_inputs(allow_known: bool) {
    let mut runner = Runner::new(allow_known);
    runner.run("empty", &[]);
    let mut buf = [0u8; 301];
    for flags in 0..=255u8 {
        runner.run("flags only", &[flags]);
        for fill in [0x00, 0xff, 0x80, 0x01] {
            buf.fill(fill);
            buf[0] = flags;
            runner.run(&format!("{flags:#x} then {fill:#x}s"), &buf);
        }
    }
}

fn regressions(allow_known: bool) {
    let mut runner = Runner::new(allow_known);
    for (i, hex) in REGRESSIONS.iter().enumerate() {
        let bytes: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|k| u8::from_str_radix(&hex[k..k + 2], 16).unwrap())
            .collect();
        runner.run(&format!("regression {i}"), &bytes);
    }
}

#[test]
fn regression_inputs() {
    regressions(true);
}

#[test]
fn random() {
    random_inputs(true);
}

#[test]
fn seeds() {
    structured_seeds(true);
}

#[test]
fn edges() {
    edge_inputs(true);
}

#[test]
fn strict_no_known_bugs() {
    regressions(false);
    random_inputs(false);
    structured_seeds(false);
    edge_inputs(false);
}
