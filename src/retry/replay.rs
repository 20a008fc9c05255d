//! Which requests can be sent again, and how.

/// Makes the copy of a request that the next attempt sends, and notes on the final response
/// how many attempts were made.
///
/// Implemented by [`CloneRequest`] (any `Req: Clone`), by closures
/// `Fn(&Req) -> Option<Req>`, and, with feature `http`, by
/// [`HttpReplay`](super::HttpReplay).
pub trait Replay<Req, Res> {
    /// A copy of `request` for another attempt, or `None` if it must not be sent again
    /// (then the first attempt's outcome is final).
    fn replay(&self, request: &Req) -> Option<Req>;

    /// Records on the final response that `attempts` attempts were made. Does nothing by
    /// default.
    fn record_attempts(&self, response: &mut Res, attempts: u32) {
        let _ = (response, attempts);
    }
}

/// Replays any `Req: Clone` by cloning it. The default.
#[derive(Clone, Copy, Debug, Default)]
pub struct CloneRequest;

impl<Req: Clone, Res> Replay<Req, Res> for CloneRequest {
    fn replay(&self, request: &Req) -> Option<Req> {
        Some(request.clone())
    }
}

impl<F, Req, Res> Replay<Req, Res> for F
where
    F: Fn(&Req) -> Option<Req>,
{
    fn replay(&self, request: &Req) -> Option<Req> {
        self(request)
    }
}
