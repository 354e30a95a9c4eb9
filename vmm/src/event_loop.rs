//! The main thread's event loop (event-manager): guest serial input from
//! stdin, the exit signal that ends the VM, and whatever other subscribers
//! the VM adds (vhost-user backend watches).

use std::io::Read;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex};

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use vmm_sys_util::epoll::EventSet;

use crate::devices::bus::lock;
use crate::exit::{ExitReason, ExitSignal};

/// Something that accepts guest console input.
pub trait ConsoleInput: Send {
    /// Queues bytes for the guest.
    fn input(&mut self, bytes: &[u8]);
}

impl<W: std::io::Write + Send> ConsoleInput for crate::devices::serial::SerialDevice<W> {
    fn input(&mut self, bytes: &[u8]) {
        self.enqueue_input(bytes);
    }
}

/// Feeds stdin to the serial port.
struct StdinInput {
    console: Arc<Mutex<dyn ConsoleInput>>,
}

impl MutEventSubscriber for StdinInput {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let mut buf = [0u8; 64];
        let n = if events.event_set().contains(EventSet::IN) {
            std::io::stdin().lock().read(&mut buf).unwrap_or(0)
        } else {
            0
        };
        if n == 0 {
            // EOF or hangup: stop watching stdin, the guest keeps running.
            if let Err(e) = ops.remove(events) {
                log::warn!("cannot stop watching stdin: {e}");
            }
            return;
        }
        lock(&self.console).input(&buf[..n]);
    }

    fn init(&mut self, ops: &mut EventOps) {
        let stdin = std::io::stdin();
        if let Err(e) = ops.add(Events::new(&stdin.as_raw_fd(), EventSet::IN)) {
            log::info!("guest console input disabled (stdin not pollable: {e})");
        }
    }
}

/// Watches the exit signal (the loop then finds the recorded reason).
struct ExitWatch {
    signal: Arc<ExitSignal>,
}

impl MutEventSubscriber for ExitWatch {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Draining the counter is best effort: the recorded reason is what matters.
        let _ = self.signal.eventfd().read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(self.signal.eventfd(), EventSet::IN)) {
            log::error!("cannot watch the exit signal: {e}");
        }
    }
}

/// Event loop failures.
#[derive(Debug, thiserror::Error)]
#[error("event loop")]
pub struct Error(#[source] event_manager::Error);

/// An event-loop subscriber.
pub type Subscriber = Box<dyn MutEventSubscriber + Send>;

/// Runs until the exit signal fires; returns its reason.
pub fn run(
    signal: Arc<ExitSignal>,
    console: Option<Arc<Mutex<dyn ConsoleInput>>>,
    others: Vec<Subscriber>,
) -> Result<ExitReason, Error> {
    let mut em: EventManager<Subscriber> = EventManager::new().map_err(Error)?;
    em.add_subscriber(Box::new(ExitWatch {
        signal: signal.clone(),
    }));
    if let Some(console) = console {
        em.add_subscriber(Box::new(StdinInput { console }));
    }
    for s in others {
        em.add_subscriber(s);
    }
    loop {
        if let Some(r) = signal.reason() {
            return Ok(r);
        }
        em.run().map_err(Error)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_the_reason_once_signalled() {
        let s = Arc::new(ExitSignal::new().unwrap());
        let s2 = s.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(20));
            s2.request(ExitReason::PowerOff);
        });
        assert_eq!(run(s, None, Vec::new()).unwrap(), ExitReason::PowerOff);
        t.join().unwrap();
    }
}
