//! `vmm`: boots a Linux guest on KVM.

mod boot;
mod builder;
mod config;
mod exit;
mod interrupts;
mod logger;
mod memory_slots;
mod page_requests;
mod passthrough;
mod tsc;
mod vcpu;

use std::sync::atomic::Ordering;

use clap::Parser;

use crate::exit::EXIT_ERROR;

/// Why the VMM could not run the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmmError {
    /// The user asked for something impossible (missing file, bad size...).
    #[error("{0}")]
    Input(String),
    #[error("KVM: {0}")]
    Kvm(String),
    #[error("vCPU setup: {0}")]
    Vcpu(kvm_ioctls::Error),
    #[error("{0}")]
    Setup(String),
}

/// Exit status for a command line clap rejects.
const EXIT_USAGE: i32 = 2;

fn main() {
    logger::init();
    block_sigusr1();
    let cli = match config::Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) {
                let _ = e.print();
                std::process::exit(0);
            }
            // One line: clap's message up to its usage block, joined.
            let msg = e.to_string();
            let text: Vec<&str> = msg
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let line = text.join(" ");
            eprintln!("vmm: {}", line.trim_start_matches("error: "));
            std::process::exit(EXIT_USAGE);
        }
    };
    let vm = match builder::build(&cli) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("vmm: error: {e}");
            std::process::exit(EXIT_ERROR);
        }
    };
    if cli.counters {
        spawn_counter_dumper(&vm);
    }
    let reason = vm.exit.wait();
    if cli.counters {
        print_counters(&vm.counter_view());
    }
    // Leave the devices quiet for the next user.
    for d in &vm.vfio_devices {
        d.device.reset();
    }
    std::process::exit(reason.status());
}

/// One `vmm: counters: ...` line per device and one for the vIOMMU.
fn print_counters(vm: &builder::CounterView) {
    for (i, c) in vm.block_counters.iter().enumerate() {
        eprintln!(
            "vmm: counters: virtio-blk{i} requests={} errors={}",
            c.requests.load(Ordering::Relaxed),
            c.errors.load(Ordering::Relaxed)
        );
    }
    if let Some(unit) = &vm.iommu {
        eprintln!("vmm: counters: viommu intel {}", unit.counters.summary());
    }
    let modes = vm
        .iommu
        .as_ref()
        .map(|u| u.passthrough_modes())
        .unwrap_or_default();
    for (i, d) in vm.vfio_devices.iter().enumerate() {
        let (mode, entered) = modes
            .iter()
            .find(|(rid, _, _)| *rid == d.requester_id)
            .map(|(_, m, e)| (*m, *e))
            .unwrap_or((None, [0; viommu::intel::PassthroughMode::COUNT]));
        let mode = mode
            .map(|m| format!("{m:?}").to_lowercase())
            .unwrap_or_else(|| "bypass".into());
        let host = d.counters.as_ref().map(|c| c.summary()).unwrap_or_default();
        eprintln!(
            "vmm: counters: vfio{i} mode={mode} entered_bypass={} entered_shadow={} \
             entered_blocked={} entered_nested={} {host}",
            entered[0], entered[1], entered[2], entered[3]
        );
    }
}

/// SIGUSR1 is taken by a thread of its own (see `spawn_counter_dumper`):
/// blocked here, before any thread exists, so every thread inherits it.
fn block_sigusr1() {
    // SAFETY: plain signal-mask manipulation of the calling thread on a
    // zero-initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// `kill -USR1 <vmm>` prints the counters while the guest runs, so a
/// benchmark can take them around one phase of the guest's work.
fn spawn_counter_dumper(vm: &builder::Vm) {
    let view = vm.counter_view();
    let _ = std::thread::Builder::new()
        .name("counters".into())
        .spawn(move || loop {
            // SAFETY: sigwait on a set holding only SIGUSR1, which every
            // thread blocks.
            let got = unsafe {
                let mut set: libc::sigset_t = std::mem::zeroed();
                libc::sigemptyset(&mut set);
                libc::sigaddset(&mut set, libc::SIGUSR1);
                let mut sig = 0;
                libc::sigwait(&set, &mut sig) == 0
            };
            if got {
                eprintln!("vmm: counters-snapshot");
                print_counters(&view);
            }
        });
}
