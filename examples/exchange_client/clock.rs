//! Wall-clock time read from tokio's clock.
//!
//! Binance-style APIs speak in Unix milliseconds (request timestamps, `serverTime`, the
//! minute windows of the used-weight counters). Reading them from `SystemTime` would make
//! every test of a 60-second pause wait 60 real seconds, so both the client and the mock
//! exchange read Unix time as "an anchor plus tokio's elapsed time": on a paused test clock
//! the Unix time moves exactly when tokio's time moves.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::time::Instant;

/// Unix time that advances with tokio's clock.
#[derive(Clone, Copy, Debug)]
pub struct WallClock {
    anchor: Instant,
    anchor_unix: Duration,
}

impl WallClock {
    /// A clock reading the system's Unix time now.
    pub fn system() -> Self {
        let unix = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        WallClock::starting_at(unix)
    }

    /// A clock that reads `unix` now (tests pin it to a fixed time).
    pub fn starting_at(unix: Duration) -> Self {
        WallClock {
            anchor: Instant::now(),
            anchor_unix: unix,
        }
    }

    /// Unix time now, in milliseconds.
    pub fn now_ms(&self) -> i64 {
        let unix = self.anchor_unix + self.anchor.elapsed();
        i64::try_from(unix.as_millis()).unwrap_or(i64::MAX)
    }

    /// The tokio instant at which this clock reads `unix_ms` (now, if that is past).
    pub fn instant_at(&self, unix_ms: i64) -> Instant {
        let ahead = unix_ms.saturating_sub(self.now_ms()).max(0);
        Instant::now() + Duration::from_millis(ahead.unsigned_abs())
    }
}

/// The client's estimate of the exchange's clock: the local clock plus an offset learned
/// from `GET /api/v3/time`. Shared by the signer (request timestamps) and the weight
/// governor (window boundaries).
#[derive(Debug)]
pub struct ServerClock {
    local: WallClock,
    offset_ms: AtomicI64,
}

impl ServerClock {
    /// A server clock with no offset yet.
    pub fn new(local: WallClock) -> Arc<Self> {
        Arc::new(ServerClock {
            local,
            offset_ms: AtomicI64::new(0),
        })
    }

    /// The exchange's time now, as far as we know, in Unix milliseconds.
    pub fn now_ms(&self) -> i64 {
        self.local.now_ms() + self.offset_ms.load(Ordering::Relaxed)
    }

    /// Learns the offset from a `serverTime` read at local time `local_ms` (the middle of the
    /// round trip).
    pub fn sync(&self, server_ms: i64, local_ms: i64) {
        self.offset_ms
            .store(server_ms.saturating_sub(local_ms), Ordering::Relaxed);
    }

    /// The local clock.
    pub fn local(&self) -> &WallClock {
        &self.local
    }

    /// The current offset (server minus local), in milliseconds.
    pub fn offset_ms(&self) -> i64 {
        self.offset_ms.load(Ordering::Relaxed)
    }

    /// The tokio instant at which the exchange's clock reads `server_ms`.
    pub fn instant_at(&self, server_ms: i64) -> Instant {
        self.local
            .instant_at(server_ms.saturating_sub(self.offset_ms()))
    }
}
