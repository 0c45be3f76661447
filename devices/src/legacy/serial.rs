//! 16550A UART on COM1, from vm-superio, wired to an I/O APIC pin.

use std::io::Write;
use std::sync::{Arc, Mutex};

use vm_device::bus::{PioAddress, PioAddressOffset};
use vm_device::DevicePio;
use vm_superio::{Serial, Trigger};

use crate::ioapic::Ioapic;

/// Raises an edge on an I/O APIC input.
pub struct IoapicPin {
    pub ioapic: Arc<Ioapic>,
    pub pin: usize,
}

impl Trigger for IoapicPin {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.ioapic.pulse(self.pin);
        Ok(())
    }
}

type Uart = Serial<IoapicPin, vm_superio::serial::NoEvents, Box<dyn Write + Send>>;

pub struct SerialPort {
    uart: Mutex<Uart>,
}

impl SerialPort {
    pub fn new(irq: IoapicPin, out: Box<dyn Write + Send>) -> Self {
        SerialPort {
            uart: Mutex::new(Serial::new(irq, out)),
        }
    }

    /// Queues input bytes for the guest (from the terminal).
    pub fn enqueue_input(&self, bytes: &[u8]) {
        if let Ok(mut u) = self.uart.lock() {
            let _ = u.enqueue_raw_bytes(bytes);
        }
    }
}

impl DevicePio for SerialPort {
    fn pio_read(&self, _base: PioAddress, offset: PioAddressOffset, data: &mut [u8]) {
        let Ok(mut u) = self.uart.lock() else { return };
        if let (Some(b), Ok(off)) = (data.first_mut(), u8::try_from(offset)) {
            *b = u.read(off);
        }
    }

    fn pio_write(&self, _base: PioAddress, offset: PioAddressOffset, data: &[u8]) {
        let Ok(mut u) = self.uart.lock() else { return };
        if let (Some(&b), Ok(off)) = (data.first(), u8::try_from(offset)) {
            let _ = u.write(off, b);
        }
    }
}
