//! The rate of the guest's TSC.
//!
//! KVM gives every new vCPU the TSC frequency it recorded when it was
//! initialised (`max_tsc_khz`). When the host kernel later refines its own
//! `tsc_khz` (the "Refined TSC clocksource calibration" a second after
//! boot) by more than KVM's tolerance (250 ppm) and the CPU cannot scale
//! the TSC, KVM's vCPU creation fails to set a scaling ratio and leaves it
//! at zero: KVM then believes the guest's TSC stands still while the guest
//! sees it run. A guest using the TSC-deadline timer programs deadlines
//! that KVM computes to lie ages ahead, and its local APIC timer never
//! fires again (every CPU ends with one local timer interrupt, RCU stalls,
//! poweroff hangs). It happens where KVM is built into a kernel whose
//! early calibration is coarse (e.g. under an emulator), one boot in two
//! in the nested test machines.
//!
//! The VMM therefore measures the host TSC rate against
//! CLOCK_MONOTONIC_RAW and, when a vCPU's rate differs from it beyond
//! KVM's tolerance, sets the rate with KVM_SET_TSC_KHZ (which rewrites the
//! ratio); if KVM refuses, the guest is not offered the TSC-deadline timer
//! (its APIC timer then counts bus cycles and does not depend on the TSC).

use std::time::Duration;

/// KVM's default `tsc_tolerance_ppm`: rates closer than this to the host's
/// need no scaling.
const TOLERANCE_PPM: u64 = 250;

/// What to do with one vCPU's TSC rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TscRate {
    /// KVM's rate agrees with the host's.
    Consistent,
    /// KVM's rate is off: set the host's.
    Set { kvm_khz: u32, host_khz: u32 },
}

/// Compares KVM's rate for a vCPU with the measured host rate.
pub fn plan(kvm_khz: u32, host_khz: u32) -> TscRate {
    if host_khz == 0 {
        return TscRate::Consistent;
    }
    let diff = (kvm_khz as u64).abs_diff(host_khz as u64);
    if diff * 1_000_000 > TOLERANCE_PPM * host_khz as u64 {
        TscRate::Set { kvm_khz, host_khz }
    } else {
        TscRate::Consistent
    }
}

fn monotonic_raw_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes a timespec we own.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_RAW, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn rdtsc() -> u64 {
    // SAFETY: RDTSC has no memory effects; every x86_64 CPU KVM runs on
    // has it.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// One (TSC, ns) pair whose TSC reads bracket the clock read most tightly
/// out of a few tries, so a preemption between the reads does not skew it.
fn pair() -> (u64, u64) {
    let mut best = (u64::MAX, 0, 0);
    for _ in 0..16 {
        let t0 = rdtsc();
        let ns = monotonic_raw_ns();
        let t1 = rdtsc();
        let gap = t1.wrapping_sub(t0);
        if gap < best.0 {
            best = (gap, t0 + gap / 2, ns);
        }
    }
    (best.1, best.2)
}

/// The host's TSC rate in kHz, measured over `window` (None if the clock
/// or the TSC did not advance).
pub fn measure_host_khz(window: Duration) -> Option<u32> {
    let (t0, n0) = pair();
    std::thread::sleep(window);
    let (t1, n1) = pair();
    let (dt, dn) = (t1.checked_sub(t0)?, n1.checked_sub(n0)?);
    if dn == 0 || dt == 0 {
        return None;
    }
    u32::try_from(dt as u128 * 1_000_000 / dn as u128).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn within_tolerance_is_left_alone() {
        assert_eq!(plan(2_600_000, 2_600_000), TscRate::Consistent);
        assert_eq!(plan(2_600_500, 2_600_000), TscRate::Consistent);
        assert_eq!(plan(2_599_400, 2_600_000), TscRate::Consistent);
        assert_eq!(plan(1, 0), TscRate::Consistent);
    }

    #[test]
    fn a_stale_rate_is_corrected() {
        // Seen in the nested test machines: KVM kept the early 2596.340 MHz
        // calibration, the host refined it to 2600.000 MHz.
        assert_eq!(
            plan(2_596_340, 2_600_000),
            TscRate::Set {
                kvm_khz: 2_596_340,
                host_khz: 2_600_000
            }
        );
        assert!(matches!(plan(2_601_000, 2_600_000), TscRate::Set { .. }));
    }

    #[test]
    fn measures_a_plausible_rate() {
        let khz = measure_host_khz(Duration::from_millis(20)).expect("TSC advances");
        // Any TSC in use runs between 100 MHz and 10 GHz.
        assert!((100_000..10_000_000).contains(&khz), "{khz} kHz");
    }
}
