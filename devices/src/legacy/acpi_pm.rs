//! ACPI hardware-reduced sleep control/status and reset registers (ACPI 6.5
//! §4.8.3.7, §4.8.4.6): a write of SLP_EN with SLP_TYP = S5 powers off, the
//! reset value in the reset register resets.

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::DevicePio;

use super::{PowerEvent, PowerHandler};

const SLP_EN: u8 = 1 << 5;

/// Ports: +0 sleep control, +1 sleep status, +2 reset.
pub struct AcpiPm {
    s5_type: u8,
    reset_value: u8,
    handler: PowerHandler,
}

impl AcpiPm {
    pub fn new(s5_type: u8, reset_value: u8, handler: PowerHandler) -> Self {
        AcpiPm {
            s5_type,
            reset_value,
            handler,
        }
    }
}

impl DevicePio for AcpiPm {
    fn pio_read(&self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        data.fill(0);
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        log::debug!("ACPI PM register {offset} <- {v:#x}");
        match offset {
            0 if v & SLP_EN != 0 && (v >> 2) & 7 == self.s5_type => {
                (self.handler)(PowerEvent::Poweroff)
            }
            2 if v == self.reset_value => (self.handler)(PowerEvent::Reset),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn s5_and_reset() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let s = seen.clone();
        let pm = AcpiPm::new(5, 1, Arc::new(move |e| s.lock().unwrap().push(e)));
        pm.pio_write(PioAddress(0x600), 0, &[5 << 2]);
        pm.pio_write(PioAddress(0x600), 0, &[(3 << 2) | SLP_EN]);
        pm.pio_write(PioAddress(0x600), 0, &[(5 << 2) | SLP_EN]);
        pm.pio_write(PioAddress(0x600), 2, &[2]);
        pm.pio_write(PioAddress(0x600), 2, &[1]);
        pm.pio_write(PioAddress(0x600), 2, &[]);
        assert_eq!(
            *seen.lock().unwrap(),
            vec![PowerEvent::Poweroff, PowerEvent::Reset]
        );
    }
}
