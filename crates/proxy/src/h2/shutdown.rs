//! Shutdown as every client connection waits for it: a flag and a [`Notify`]. A watch
//! receiver did this before; its `changed()` future is twice a `Notified`, and it sits in
//! every connection's task, resting ones included.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;
use tokio::sync::futures::Notified;

#[derive(Default)]
pub struct Shutdown {
    begun: AtomicBool,
    notify: Notify,
}

impl Shutdown {
    /// Begins shutdown: every connection waiting is woken, and later waits end at once.
    pub fn begin(&self) {
        self.begun.store(true, Ordering::Release);
        self.notify.notify_waiters();
    }

    pub fn begun(&self) -> bool {
        self.begun.load(Ordering::Acquire)
    }

    /// Completes when shutdown begins after it was made, polled or not (read
    /// [`Shutdown::begun`] after making it): a wait of 64 bytes where [`Shutdown::begins`]
    /// takes 96.
    pub fn notified(&self) -> Notified<'_> {
        self.notify.notified()
    }

    /// Returns once shutdown has begun.
    pub async fn begins(&self) {
        let notified = std::pin::pin!(self.notify.notified());
        let mut notified = notified;
        // Registered before the flag is read: a `begin` between the two still wakes it.
        notified.as_mut().enable();
        if self.begun() {
            return;
        }
        notified.await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn waits_end_when_shutdown_begins_and_at_once_after() {
        let shutdown = Arc::new(Shutdown::default());
        let waiting = tokio::spawn({
            let shutdown = shutdown.clone();
            async move { shutdown.begins().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        shutdown.begin();
        waiting.await.unwrap();
        // Begun before the wait: it ends at once.
        shutdown.begins().await;
    }

    #[tokio::test]
    async fn a_notified_made_before_shutdown_begins_ends_when_it_does() {
        let shutdown = Shutdown::default();
        let notified = shutdown.notified();
        shutdown.begin();
        notified.await;
    }
}
