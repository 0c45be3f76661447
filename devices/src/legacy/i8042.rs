//! The part of the i8042 keyboard controller Linux uses to reset the
//! machine: command 0xfe (pulse the reset line) on port 0x64.

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::DevicePio;

use super::{PowerEvent, PowerHandler};

const CMD_RESET_CPU: u8 = 0xfe;
/// Offset of the command/status port from the data port (0x60 → 0x64).
const COMMAND_OFFSET: u16 = 4;

pub struct I8042 {
    handler: PowerHandler,
}

impl I8042 {
    pub fn new(handler: PowerHandler) -> Self {
        I8042 { handler }
    }
}

impl DevicePio for I8042 {
    fn pio_read(&self, _base: PioAddress, _offset: PioAddressOffset, data: &mut [u8]) {
        // No data pending, input buffer empty.
        data.fill(0);
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        log::debug!("i8042 port offset {offset} <- {data:x?}");
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            (self.handler)(PowerEvent::Reset);
        }
    }
}
