//! How the VM ends, and the process exit status for each way.

use std::sync::atomic::{AtomicU8, Ordering};

use vmm_sys_util::eventfd::EventFd;

/// Process exit statuses. Documented in the README.
pub const EXIT_POWEROFF: i32 = 0;
pub const EXIT_ERROR: i32 = 1;
pub const EXIT_RESET: i32 = 3;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitReason {
    Poweroff = 1,
    Reset = 2,
    Error = 3,
}

impl ExitReason {
    pub fn status(self) -> i32 {
        match self {
            ExitReason::Poweroff => EXIT_POWEROFF,
            ExitReason::Reset => EXIT_RESET,
            ExitReason::Error => EXIT_ERROR,
        }
    }
}

/// The first reason recorded wins; the main thread waits on the eventfd.
pub struct ExitHandle {
    reason: AtomicU8,
    pub event: EventFd,
}

impl ExitHandle {
    pub fn new() -> std::io::Result<Self> {
        Ok(ExitHandle {
            reason: AtomicU8::new(0),
            event: EventFd::new(0)?,
        })
    }

    pub fn request(&self, reason: ExitReason) {
        let _ = self
            .reason
            .compare_exchange(0, reason as u8, Ordering::SeqCst, Ordering::SeqCst);
        let _ = self.event.write(1);
    }

    /// Blocks until an exit is requested.
    pub fn wait(&self) -> ExitReason {
        loop {
            let _ = self.event.read();
            match self.reason.load(Ordering::SeqCst) {
                1 => return ExitReason::Poweroff,
                2 => return ExitReason::Reset,
                3 => return ExitReason::Error,
                _ => continue,
            }
        }
    }
}
