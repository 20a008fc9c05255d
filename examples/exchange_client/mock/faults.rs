//! What the mock injects, and when: faults by arrival number, drawn from a seed.

use std::collections::BTreeMap;
use std::time::Duration;

/// One injected fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 429 with `Retry-After` and a `-1003` body; requests before the wait ends get a 418.
    RateLimit {
        /// The advertised wait.
        retry_after: Duration,
    },
    /// 418 (IP banned) with `Retry-After` and a `-1003` body.
    Ban {
        /// The advertised wait.
        retry_after: Duration,
    },
    /// A 5xx: 500 (`-1001`), 503 (`-1008`) or any other status with an HTML body.
    ServerError {
        /// The status.
        status: u16,
    },
    /// The request is processed, and the answer sent only after `delay`.
    Slow {
        /// How late.
        delay: Duration,
    },
    /// `-1021` (timestamp outside recvWindow). Signed requests only: scheduled on an
    /// unsigned one, it waits for the next signed request.
    Timestamp,
    /// A rejection with this exchange code. Signed requests only, like `Timestamp`.
    Reject {
        /// `-2010`, `-2011`, ...
        code: i64,
    },
}

impl Fault {
    /// Whether the client is expected to retry after this fault.
    pub fn is_transient(&self) -> bool {
        match self {
            Fault::RateLimit { .. } | Fault::Ban { .. } | Fault::Slow { .. } | Fault::Timestamp => {
                true
            }
            Fault::ServerError { status } => !matches!(status, 501 | 505),
            Fault::Reject { .. } => false,
        }
    }

    /// A short name for the report.
    pub fn name(&self) -> String {
        match self {
            Fault::RateLimit { .. } => "429".into(),
            Fault::Ban { .. } => "418".into(),
            Fault::ServerError { status } => status.to_string(),
            Fault::Slow { .. } => "slow".into(),
            Fault::Timestamp => "-1021".into(),
            Fault::Reject { code } => code.to_string(),
        }
    }
}

/// Faults by arrival number (the first request to reach the mock is number 1).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct FaultPlan {
    faults: BTreeMap<u64, Fault>,
}

impl FaultPlan {
    /// No faults.
    pub fn new() -> Self {
        FaultPlan::default()
    }

    /// Adds a fault for the `arrival`-th request.
    #[must_use]
    pub fn at(mut self, arrival: u64, fault: Fault) -> Self {
        self.faults.insert(arrival, fault);
        self
    }

    /// A reproducible schedule over the first `arrivals` requests: about one in eight gets a
    /// fault, never two in a row, none in the first three (the session's start-up calls). The
    /// slow answers last `slow`; at most one ban.
    pub fn seeded(seed: u64, arrivals: u64, slow: Duration) -> Self {
        let mut rng = SplitMix(seed);
        let mut plan = FaultPlan::new();
        let mut banned = false;
        let mut n = 4;
        while n <= arrivals {
            if rng.next().is_multiple_of(8) {
                let fault = match rng.next() % 12 {
                    0..=2 => Fault::ServerError { status: 503 },
                    3 | 4 => Fault::ServerError { status: 500 },
                    5 => Fault::ServerError { status: 502 },
                    6 | 7 => Fault::RateLimit {
                        retry_after: Duration::from_secs(1),
                    },
                    8 => Fault::Slow { delay: slow },
                    9 | 10 => Fault::Timestamp,
                    _ if !banned => {
                        banned = true;
                        Fault::Ban {
                            retry_after: Duration::from_secs(2),
                        }
                    }
                    _ => Fault::ServerError { status: 503 },
                };
                plan.faults.insert(n, fault);
                n += 1;
            }
            n += 1;
        }
        plan
    }

    /// The faults, by arrival.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &Fault)> {
        self.faults.iter().map(|(n, f)| (*n, f))
    }

    /// The fault scheduled for the `arrival`-th request.
    pub fn get(&self, arrival: u64) -> Option<&Fault> {
        self.faults.get(&arrival)
    }

    /// How many faults are scheduled.
    pub fn len(&self) -> usize {
        self.faults.len()
    }

    /// Whether no fault is scheduled.
    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }
}

/// A small deterministic generator (splitmix64).
#[derive(Clone, Debug)]
pub struct SplitMix(pub u64);

impl SplitMix {
    /// The next number.
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}
