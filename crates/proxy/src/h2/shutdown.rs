//! Shutdown as every client connection waits for it: a flag and a [`Notify`]. A watch
//! receiver did this before; its `changed()` future is twice a `Notified`, and it sits in
//! every connection's task, resting ones included.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

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

    /// Returns once shutdown has begun. Made before the flag is read, the `Notified` is
    /// woken by a `begin` in between (tokio's `notify_waiters` reaches every `Notified`
    /// already made, polled or not), so it needs no registering first.
    pub async fn begins(&self) {
        let notified = self.notify.notified();
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
}
