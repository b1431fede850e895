//! Clients turned away at the connection limit, remembered for a while by address.
//!
//! The connection count reported to OAP drives the autoscaler. Counting only the
//! connections a replica holds would hide the demand above `--max-connections`: a pool
//! whose limit equals its autoscaling target would read exactly the target and never scale
//! out while clients are being refused. So the reported count adds the clients refused
//! recently, each client address once however often it retried.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The shortest memory of a refused client: gRPC clients back off between reconnects up to
/// 120 s, so a client that keeps retrying at that pace keeps counting between attempts.
pub(crate) const MIN_MEMORY: Duration = Duration::from_secs(120);

pub struct TurnedAway {
    memory: Duration,
    last_refused: Mutex<HashMap<IpAddr, Instant>>,
}

impl TurnedAway {
    /// Remembers refused clients for `memory`, at least [`MIN_MEMORY`].
    pub fn new(memory: Duration) -> Self {
        TurnedAway {
            memory: memory.max(MIN_MEMORY),
            last_refused: Mutex::default(),
        }
    }

    /// A connection from `client` was refused at `now`.
    pub fn record(&self, client: IpAddr, now: Instant) {
        self.last_refused
            .lock()
            .expect("never poisoned")
            .insert(client, now);
    }

    /// Client addresses refused within the memory before `now`; older ones are forgotten.
    pub fn count(&self, now: Instant) -> usize {
        let memory = self.memory;
        let mut last_refused = self.last_refused.lock().expect("never poisoned");
        last_refused.retain(|_, at| now.saturating_duration_since(*at) <= memory);
        last_refused.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_client_counts_once_while_it_is_remembered() {
        let turned_away = TurnedAway::new(Duration::from_secs(1));
        let start = Instant::now();
        let (a, b) = (IpAddr::from([10, 0, 0, 1]), IpAddr::from([10, 0, 0, 2]));
        let at = |seconds: u64| start + Duration::from_secs(seconds);
        for retry in 0..5 {
            turned_away.record(a, at(retry * 10));
        }
        turned_away.record(b, start);
        assert_eq!(turned_away.count(at(50)), 2);
        // b was last refused 121 s ago, a 81 s ago.
        assert_eq!(turned_away.count(at(121)), 1);
        assert_eq!(turned_away.count(at(161)), 0);
    }
}
