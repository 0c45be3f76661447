//! `vmm`: boots a Linux guest on KVM.

mod boot;
mod builder;
mod config;
mod exit;
mod interrupts;
mod logger;
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
    let reason = vm.exit.wait();
    if cli.counters {
        for (i, c) in vm.block_counters.iter().enumerate() {
            eprintln!(
                "vmm: counters: virtio-blk{i} requests={} errors={}",
                c.requests.load(Ordering::Relaxed),
                c.errors.load(Ordering::Relaxed)
            );
        }
    }
    if cli.counters {
        if let Some(unit) = &vm.iommu {
            eprintln!("vmm: counters: viommu intel {}", unit.counters.summary());
        }
    }
    std::process::exit(reason.status());
}
