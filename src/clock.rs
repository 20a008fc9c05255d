//! One clock read shared by the stack's layers while palisade's own code runs.
//!
//! A call through the whole stack used to read tokio's clock five times on the success path
//! (the error metrics' start and end, the total and attempt timeouts' deadlines, the
//! breaker's time window), each read a few tens of nanoseconds. Only the stack knows the
//! layers' order, so only the stack shares one read between them: it opens a *step*
//! ([`step`]) for its `call` and for each poll of its future, and wraps the user's service
//! in [`Outside`](crate::stack::Outside), which closes the step while user code runs.
//!
//! Inside a step, [`now`] reads tokio's clock once and hands the same instant to every
//! later reader in the step. When the user's service (or a fallback) is called or polled,
//! the step is suspended ([`outside`]): the user's code, and any palisade layer inside it,
//! reads the clock itself; when it returns, the remembered instant is forgotten, so the next
//! reader reads the clock again. The instant a reader gets is thus never older than the
//! palisade code that ran since it was read (the layers' bookkeeping, and the stack's
//! synchronous hooks: selection, request replay, classification), never the user's service.
//!
//! Outside a step (a layer used alone, or code inside the user's service), [`now`] is
//! `tokio::time::Instant::now()`: layers used alone behave as they always did. It is tokio's
//! clock that is remembered, so paused-clock tests see exactly the time they set (a paused
//! clock only moves between polls, never within one step).

use std::cell::Cell;

use tokio::time::Instant;

#[derive(Clone, Copy)]
enum State {
    /// No step open: every read goes to the clock.
    Off,
    /// In a step, nothing read since it opened or since user code last ran.
    Empty,
    /// In a step: the instant read by its first reader.
    Read(Instant),
}

thread_local! {
    static NOW: Cell<State> = const { Cell::new(State::Off) };
}

/// tokio's time: the step's instant if one was read in it, else a fresh read.
#[inline]
pub(crate) fn now() -> Instant {
    NOW.with(|state| match state.get() {
        State::Read(at) => at,
        State::Off => Instant::now(),
        State::Empty => {
            let at = Instant::now();
            state.set(State::Read(at));
            at
        }
    })
}

/// Opens a step until the guard is dropped; inside an open step, opens nothing (the outer
/// step keeps its instant and closes itself).
#[inline]
pub(crate) fn step() -> Step {
    NOW.with(|state| {
        if let State::Off = state.get() {
            state.set(State::Empty);
            Step { opened: true }
        } else {
            Step { opened: false }
        }
    })
}

/// An open step; dropping it (unwinding included) closes the step it opened.
#[must_use = "the step closes when this is dropped"]
pub(crate) struct Step {
    opened: bool,
}

impl Drop for Step {
    #[inline]
    fn drop(&mut self) {
        if self.opened {
            NOW.set(State::Off);
        }
    }
}

/// Runs user code (the user's service, a fallback) outside the step: it reads the clock
/// itself, and the step's instant is forgotten when it returns (it is older than the user's
/// code by then).
#[inline]
pub(crate) fn outside<R>(f: impl FnOnce() -> R) -> R {
    struct Reopen;
    impl Drop for Reopen {
        #[inline]
        fn drop(&mut self) {
            NOW.set(State::Empty);
        }
    }
    let was = NOW.replace(State::Off);
    if let State::Off = was {
        return f();
    }
    let _reopen = Reopen;
    f()
}

/// Whether a step is open and shares its read on this thread (for tests of the boundary).
#[cfg(test)]
pub(crate) fn in_step() -> bool {
    !matches!(NOW.get(), State::Off)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_step_shares_one_read_and_user_code_reads_its_own() {
        let before = now();
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(
            now(),
            before + Duration::from_millis(5),
            "no step: the clock"
        );
        let step = step();
        let first = now();
        assert_eq!(first, before + Duration::from_millis(5));
        // A step opened inside a step changes nothing.
        drop(super::step());
        assert!(matches!(NOW.get(), State::Read(at) if at == first));
        outside(|| assert!(matches!(NOW.get(), State::Off)));
        assert!(
            matches!(NOW.get(), State::Empty),
            "forgotten after user code"
        );
        drop(step);
        assert!(matches!(NOW.get(), State::Off));
        // Outside a step, `outside` leaves things as they were.
        outside(|| ());
        assert!(matches!(NOW.get(), State::Off));
    }

    #[test]
    fn a_panic_in_user_code_closes_nothing_it_did_not_open() {
        let step = step();
        let _ = now();
        let caught = std::panic::catch_unwind(|| outside(|| panic!("user code")));
        assert!(caught.is_err());
        assert!(matches!(NOW.get(), State::Empty));
        drop(step);
        assert!(matches!(NOW.get(), State::Off));
    }
}
