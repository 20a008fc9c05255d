//! UUIDv7 generation, per thread: no lock, no shared memory, one coarse clock read per ID.
//!
//! The millisecond comes from the cheapest realtime clock the platform offers. On Linux and
//! Android that is `CLOCK_REALTIME_COARSE`: the time the kernel stored at its last tick, read
//! from the vDSO page with no hardware counter (about 4 ns, against about 21 ns for
//! `SystemTime::now` on the project's VM). It lags the precise clock by up to one tick (1 to
//! 10 ms depending on the kernel's `HZ`; 4 ms, measured 1 to 5 ms behind, on a `HZ=250`
//! kernel), and follows every step and slew of the system clock as it happens, because it is
//! the same clock, only read coarsely. RFC 9562 (section 6.1) makes no requirement on how
//! close a UUIDv7 timestamp is to the actual time, and the IDs are labels sorted by creation,
//! so a few milliseconds early is of no consequence; each thread's IDs still strictly increase
//! (the counter below). Elsewhere the millisecond is `SystemTime::now`'s.
//!
//! Layout (RFC 9562, section 5.7), most significant bit first:
//!
//! | bits | field |
//! |---|---|
//! | 48 | Unix time in milliseconds |
//! | 4 | version `0111` |
//! | 12 | counter, high 12 bits (`rand_a`) |
//! | 2 | variant `10` |
//! | 30 | counter, low 30 bits (start of `rand_b`) |
//! | 32 | random |
//!
//! The 42-bit counter is RFC 9562's "fixed bit-length dedicated counter" (section 6.2, method
//! 1). It restarts from a random value with its top bit clear at each new millisecond and
//! goes up by one per ID within the millisecond. If it ever ran out (2^41 IDs in one
//! millisecond of one thread, which cannot happen), the millisecond is taken one ahead, as the
//! RFC allows. If the clock steps back, the thread keeps its last millisecond and counts on.
//! So a thread's IDs strictly increase, and sort by creation order.
//!
//! Threads do not coordinate. Each has its own generator state seeded once from the
//! operating system. Two threads' IDs can collide only if they share the millisecond, the
//! counter's random start plus offset, and 32 random bits. One case is not covered: a process
//! that `fork`s without `exec` after generating IDs gives the child a copy of the forking
//! thread's state, so the two would make the same IDs in the same milliseconds.
//!
//! The random bits come from wyrand (a 64-bit counter mixed by one 128-bit multiply). It is
//! fast and statistically sound, but not cryptographic. A correlation ID is a label for logs,
//! not a secret, and RFC 9562 (section 8) warns against using a UUID as a security
//! capability.

use std::cell::Cell;
use std::hash::BuildHasher;

/// Length of the hyphenated text form.
pub(crate) const LEN: usize = 36;

const COUNTER_BITS: u32 = 42;

#[derive(Clone, Copy)]
struct Generator {
    /// wyrand state; `None` until the thread's first ID.
    rng: Option<u64>,
    /// The millisecond of the thread's last ID (may run ahead of the clock, see the module doc).
    millis: u64,
    /// The counter of the thread's last ID, below 2^42.
    counter: u64,
}

thread_local! {
    // `const` and `Copy`: no lazy-init check and no destructor, so access is a plain load
    // from thread-local storage.
    static GENERATOR: Cell<Generator> = const {
        Cell::new(Generator { rng: None, millis: 0, counter: 0 })
    };
}

/// One step of wyrand: add an odd constant, then fold a 128-bit product.
fn wyrand(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0xa076_1d64_78bd_642f);
    let product = u128::from(*state) * u128::from(*state ^ 0xe703_7ed1_a0b4_28db);
    (product as u64) ^ ((product >> 64) as u64)
}

/// A seed from the operating system's randomness. std seeds each thread's `RandomState`
/// keys from the OS (`getrandom` on Linux) on first use, so the hash of anything under a
/// fresh `RandomState` is 64 OS-random bits. It is called once per thread.
fn os_seed() -> u64 {
    std::collections::hash_map::RandomState::new().hash_one(std::thread::current().id())
}

/// Milliseconds since the Unix epoch, from the kernel's last tick (see the module doc).
/// A clock set before 1970 gives 0; the counter still keeps the thread's IDs ordered.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn unix_millis() -> u64 {
    use rustix::time::{ClockId, clock_gettime};
    let now = clock_gettime(ClockId::RealtimeCoarse);
    match (u64::try_from(now.tv_sec), u64::try_from(now.tv_nsec)) {
        (Ok(secs), Ok(nanos)) => secs * 1000 + nanos / 1_000_000,
        _ => 0,
    }
}

/// Milliseconds since the Unix epoch. A clock set before 1970 gives 0; the counter still
/// keeps the thread's IDs ordered.
#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn unix_millis() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    since.as_secs() * 1000 + u64::from(since.subsec_millis())
}

/// The next ID of this thread, as its 128 bits.
pub(crate) fn next() -> u128 {
    let now = unix_millis();
    GENERATOR.with(|cell| {
        let mut g = cell.get();
        let mut rng = g.rng.unwrap_or_else(os_seed);
        if now > g.millis {
            g.millis = now;
            g.counter = wyrand(&mut rng) >> (64 - (COUNTER_BITS - 1));
        } else {
            g.counter += 1;
            if g.counter >> COUNTER_BITS != 0 {
                g.millis += 1;
                g.counter = wyrand(&mut rng) >> (64 - (COUNTER_BITS - 1));
            }
        }
        let random = wyrand(&mut rng) as u32;
        g.rng = Some(rng);
        cell.set(g);
        layout(g.millis, g.counter, random)
    })
}

/// The 128 bits of a UUIDv7 with these fields (see the module doc).
fn layout(millis: u64, counter: u64, random: u32) -> u128 {
    let millis = u128::from(millis & ((1 << 48) - 1));
    let counter = u128::from(counter);
    (millis << 80)
        | (0x7 << 76)
        | ((counter >> 30) << 64)
        | (0b10 << 62)
        | ((counter & ((1 << 30) - 1)) << 32)
        | u128::from(random)
}

/// `bits` in the hyphenated lowercase form, `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub(crate) fn hyphenated(bits: u128) -> [u8; LEN] {
    let mut out = [b'-'; LEN];
    let [a, b, c, d] = [96, 64, 32, 0].map(|shift| hex8((bits >> shift) as u32));
    out[0..8].copy_from_slice(&a);
    out[9..13].copy_from_slice(&b[..4]);
    out[14..18].copy_from_slice(&b[4..]);
    out[19..23].copy_from_slice(&c[..4]);
    out[24..28].copy_from_slice(&c[4..]);
    out[28..36].copy_from_slice(&d);
    out
}

/// The 8 lowercase hex digits of `x`, most significant first, computed in one register: each
/// nibble is spread into its own byte, then offset to `0`-`9` or `a`-`f` without a branch.
fn hex8(x: u32) -> [u8; 8] {
    let mut x = u64::from(x);
    x = (x | (x << 16)) & 0x0000_ffff_0000_ffff;
    x = (x | (x << 8)) & 0x00ff_00ff_00ff_00ff;
    x = (x | (x << 4)) & 0x0f0f_0f0f_0f0f_0f0f;
    // 1 in each byte whose nibble is 10 or more (adding 6 carries into bit 4).
    let letters = ((x + 0x0606_0606_0606_0606) >> 4) & 0x0101_0101_0101_0101;
    // `0` is 0x30; `a` is 0x27 past `0` + 10.
    (x + 0x3030_3030_3030_3030 + letters * 0x27).to_be_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_puts_version_variant_and_fields_in_place() {
        let bits = layout(0x0190_a5b4_7c1e, (0xabc << 30) | 0x1234_5678, 0xdead_beef);
        let uuid = uuid::Uuid::from_u128(bits);
        assert_eq!(uuid.get_version_num(), 7);
        assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122);
        assert_eq!(
            std::str::from_utf8(&hyphenated(bits)).unwrap(),
            uuid.hyphenated().to_string()
        );
        assert_eq!(
            std::str::from_utf8(&hyphenated(bits)).unwrap(),
            "0190a5b4-7c1e-7abc-9234-5678deadbeef"
        );
    }

    #[test]
    fn hex_digits_match_the_formatter() {
        for x in [
            0,
            1,
            9,
            10,
            15,
            16,
            0xdead_beef,
            0x0123_4567,
            0x89ab_cdef,
            u32::MAX,
        ] {
            assert_eq!(std::str::from_utf8(&hex8(x)).unwrap(), format!("{x:08x}"));
        }
        let bits = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210_u128;
        assert_eq!(
            std::str::from_utf8(&hyphenated(bits)).unwrap(),
            "01234567-89ab-cdef-fedc-ba9876543210"
        );
    }

    #[test]
    fn a_thread_counts_on_when_the_clock_does_not_move() {
        let first = next();
        let mut last = first;
        for _ in 0..10_000 {
            let id = next();
            assert!(id > last);
            last = id;
        }
        // The timestamp is the clock's (give or take a rollover, which does not happen here).
        let millis = (last >> 80) as u64;
        assert!(millis.abs_diff(unix_millis()) < 60_000, "{millis}");
    }

    #[test]
    fn the_millisecond_is_the_realtime_clocks_at_most_a_tick_behind() {
        let millis_now = || {
            let since = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            u64::try_from(since.as_millis()).unwrap()
        };
        for _ in 0..1_000 {
            let before = millis_now();
            let coarse = unix_millis();
            let after = millis_now();
            // Never ahead of the precise clock; behind by a tick at most (10 ms at `HZ=100`).
            // `before` is read first, so a descheduled test thread only makes `coarse` later;
            // 50 ms leaves room for a missed tick on a busy VM.
            assert!(coarse <= after, "{coarse} > {after}");
            assert!(coarse + 50 >= before, "{coarse} vs {before}");
        }
    }

    #[test]
    fn counter_rollover_takes_the_next_millisecond() {
        GENERATOR.with(|cell| {
            let far_future = unix_millis() + 3_600_000;
            cell.set(Generator {
                rng: Some(1),
                millis: far_future,
                counter: (1 << COUNTER_BITS) - 1,
            });
            let id = next();
            assert_eq!((id >> 80) as u64, far_future + 1);
            let counter = cell.get().counter;
            assert!(counter < 1 << (COUNTER_BITS - 1));
            // Leave the thread's generator usable for other tests (clock time again).
            cell.set(Generator {
                rng: None,
                millis: 0,
                counter: 0,
            });
        });
    }
}
