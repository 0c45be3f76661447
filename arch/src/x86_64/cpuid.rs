//! CPUID as the guest sees it: KVM's supported set, with the topology and
//! APIC ID of each vCPU and the hypervisor bit.

use kvm_bindings::CpuId;

/// Adjusts KVM_GET_SUPPORTED_CPUID for vCPU `cpu_id` of `num_cpus`.
pub fn filter_cpuid(cpuid: &mut CpuId, cpu_id: u8, num_cpus: u8) {
    // Threads-per-core = 1: every vCPU is a core of one socket.
    let cores_bits = (num_cpus as u32).next_power_of_two().trailing_zeros();
    for e in cpuid.as_mut_slice().iter_mut() {
        match e.function {
            0x1 => {
                // EBX: initial APIC ID [31:24], logical processor count [23:16], CLFLUSH 8.
                e.ebx = ((cpu_id as u32) << 24) | ((num_cpus as u32) << 16) | (8 << 8);
                // ECX bit 31: running on a hypervisor.
                e.ecx |= 1 << 31;
                // EDX bit 28 HTT: the logical processor count field is valid.
                if num_cpus > 1 {
                    e.edx |= 1 << 28;
                } else {
                    e.edx &= !(1 << 28);
                }
            }
            0x4 => {
                // Cores per package - 1 in EAX[31:26].
                e.eax =
                    (e.eax & 0x03ff_ffff) | (((num_cpus as u32).saturating_sub(1) & 0x3f) << 26);
            }
            0xb | 0x1f => {
                // Extended topology: level 0 = SMT (1 thread), level 1 = core.
                e.edx = cpu_id as u32;
                match e.index {
                    0 => {
                        e.eax = 0;
                        e.ebx = 1;
                        e.ecx = 1 << 8;
                    }
                    1 => {
                        e.eax = cores_bits;
                        e.ebx = num_cpus as u32;
                        e.ecx = (2 << 8) | 1;
                    }
                    _ => {
                        e.eax = 0;
                        e.ebx = 0;
                        e.ecx = e.index;
                    }
                }
            }
            0x8000_0008 => {
                // AMD: number of cores - 1 in ECX[7:0], APIC ID size [15:12].
                e.ecx =
                    (e.ecx & !0xf0ff) | (num_cpus as u32).saturating_sub(1) | (cores_bits << 12);
            }
            _ => {}
        }
    }
}

/// CPUID.01H:ECX[24]: the local APIC's TSC-deadline timer mode.
const TSC_DEADLINE_TIMER: u32 = 1 << 24;

/// Withdraws the TSC-deadline timer from the guest (its APIC timer then
/// counts bus cycles), for a vCPU whose TSC rate KVM cannot get right.
pub fn hide_tsc_deadline(cpuid: &mut CpuId) {
    for e in cpuid.as_mut_slice().iter_mut() {
        if e.function == 0x1 {
            e.ecx &= !TSC_DEADLINE_TIMER;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    #[test]
    fn apic_id_and_topology() {
        let mut c = CpuId::from_entries(&[
            kvm_cpuid_entry2 {
                function: 1,
                ..Default::default()
            },
            kvm_cpuid_entry2 {
                function: 0xb,
                index: 1,
                ..Default::default()
            },
        ])
        .unwrap();
        filter_cpuid(&mut c, 3, 4);
        let s = c.as_slice();
        assert_eq!(s[0].ebx >> 24, 3);
        assert_eq!((s[0].ebx >> 16) & 0xff, 4);
        assert_ne!(s[0].ecx & (1 << 31), 0);
        assert_eq!(s[1].ebx, 4);
        assert_eq!(s[1].edx, 3);
    }

    #[test]
    fn tsc_deadline_can_be_withdrawn() {
        let mut c = CpuId::from_entries(&[kvm_cpuid_entry2 {
            function: 1,
            ecx: TSC_DEADLINE_TIMER | 1,
            ..Default::default()
        }])
        .unwrap();
        hide_tsc_deadline(&mut c);
        assert_eq!(c.as_slice()[0].ecx, 1);
    }
}
