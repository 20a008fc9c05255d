//! The correlation ID value: validation, generation, parsing a W3C `traceparent`.

use std::fmt;

use http::HeaderValue;

/// One request's correlation ID: visible ASCII, no spaces or control characters, at most
/// [`CorrelationId::MAX_LEN`] bytes.
///
/// Cloning is cheap either way. An ID that arrived on a request is that request's validated
/// [`HeaderValue`], so a clone is a reference-count bump on the request's own buffer. A
/// [generated](Self::generate) one holds its 36 bytes of text inline, so a clone is a copy
/// with no allocation and no reference count, and the ID can sit in the request's
/// extensions, the task-local and the span for nothing more.
#[derive(Clone)]
// 16-byte aligned (its size stays 48), so every move of an ID (into the task-local and back,
// into the extension, through `extract`) is done in whole 16-byte words: reading back an ID
// that was just written in 8-byte pieces with a 16-byte load stalls the load until the
// stores reach the cache (failed store-to-load forwarding), several times per request.
#[repr(align(16))]
pub struct CorrelationId(Repr);

#[derive(Clone)]
enum Repr {
    /// Taken from a header (or parsed): validated, sharing the header's buffer.
    Header(HeaderValue),
    /// Generated here: hyphenated lowercase hex, valid by construction.
    Uuid([u8; super::uuid7::LEN]),
}

impl CorrelationId {
    /// The longest ID accepted from a peer, in bytes.
    pub const MAX_LEN: usize = 128;

    /// A fresh UUIDv7 in its hyphenated lowercase form (`0190a5b4-7c1e-7d3a-...`).
    ///
    /// UUIDv7 starts with the Unix time in milliseconds, so IDs sort by creation time in logs
    /// and databases. On Linux and Android that millisecond is read from the kernel's coarse
    /// realtime clock, so it can be up to a kernel tick (1 to 10 ms) behind the precise time.
    /// Each thread generates its own IDs, with no lock and no system call
    /// after its first: the millisecond, then a 42-bit counter that restarts at a random value
    /// each millisecond (RFC 9562's method 1), then 32 random bits from a per-thread generator
    /// seeded from the operating system. The IDs of one thread strictly increase, even within a
    /// millisecond; IDs of different threads within the same millisecond are unique but not
    /// ordered among themselves.
    pub fn generate() -> Self {
        CorrelationId(Repr::Uuid(super::uuid7::hyphenated(super::uuid7::next())))
    }

    /// Whether `bytes` is an acceptable ID: 1 to [`MAX_LEN`](Self::MAX_LEN) bytes, each a
    /// visible ASCII character (`!` to `~`).
    pub fn is_valid(bytes: &[u8]) -> bool {
        !bytes.is_empty()
            && bytes.len() <= Self::MAX_LEN
            && bytes.iter().all(|b| (b'!'..=b'~').contains(b))
    }

    /// The ID in `bytes`, copied, if it [is valid](Self::is_valid).
    pub fn parse(bytes: &[u8]) -> Option<Self> {
        if !Self::is_valid(bytes) {
            return None;
        }
        HeaderValue::from_bytes(bytes)
            .ok()
            .map(|value| CorrelationId(Repr::Header(value)))
    }

    /// The ID in a header value, if it [is valid](Self::is_valid). Shares the value's buffer.
    pub fn from_header(value: &HeaderValue) -> Option<Self> {
        Self::is_valid(value.as_bytes()).then(|| CorrelationId(Repr::Header(value.clone())))
    }

    /// The trace ID of a W3C `traceparent` header (`00-<32 hex>-<16 hex>-<2 hex>`), as an ID,
    /// if the header is well formed and the trace ID is not all zeros.
    pub fn from_traceparent(value: &HeaderValue) -> Option<Self> {
        let trace_id = traceparent_trace_id(value.as_bytes())?;
        Self::parse(trace_id)
    }

    /// The ID as text.
    pub fn as_str(&self) -> &str {
        // Only visible ASCII gets in, so this never fails.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The ID's bytes (visible ASCII).
    pub fn as_bytes(&self) -> &[u8] {
        match &self.0 {
            Repr::Header(value) => value.as_bytes(),
            Repr::Uuid(text) => text,
        }
    }

    /// The ID as a header value, ready to insert. For an ID taken from a header, that header's
    /// value (a reference-count bump); for a generated one, a new value in a 36-byte buffer of
    /// its own, so that dropping it frees it without an atomic reference count (cloning the
    /// value shares that buffer, at the cost of one more allocation for the count).
    pub fn header_value(&self) -> HeaderValue {
        match &self.0 {
            Repr::Header(value) => value.clone(),
            Repr::Uuid(text) => {
                HeaderValue::from_bytes(text).expect("a hyphenated UUID is a valid header value")
            }
        }
    }

    /// The ID of the request being handled by the current task, if a
    /// [`CorrelationLayer`](super::CorrelationLayer) or [`scope`](super::scope) set one.
    pub fn current() -> Option<Self> {
        super::task::current()
    }
}

impl fmt::Display for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for CorrelationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CorrelationId")
            .field(&self.as_str())
            .finish()
    }
}

impl AsRef<str> for CorrelationId {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl From<CorrelationId> for HeaderValue {
    fn from(id: CorrelationId) -> Self {
        match id.0 {
            Repr::Header(value) => value,
            Repr::Uuid(_) => id.header_value(),
        }
    }
}

/// Two IDs are equal when their text is, wherever each came from.
impl PartialEq for CorrelationId {
    fn eq(&self, other: &Self) -> bool {
        self.as_bytes() == other.as_bytes()
    }
}

impl Eq for CorrelationId {}

impl std::hash::Hash for CorrelationId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.as_bytes().hash(state);
    }
}

/// The parts of a version-00 `traceparent`: trace ID, parent span ID and flags, as lowercase hex
/// slices of `value`. `None` when the header is malformed, per the W3C Trace Context rules
/// (unknown versions are accepted if their first four fields are well formed; `ff` is not).
pub(crate) fn traceparent_parts(value: &[u8]) -> Option<(&[u8], &[u8], &[u8])> {
    // version "-" trace-id "-" parent-id "-" flags: 2 + 1 + 32 + 1 + 16 + 1 + 2 = 55.
    if value.len() < 55 {
        return None;
    }
    let (version, trace_id, parent_id, flags) =
        (&value[0..2], &value[3..35], &value[36..52], &value[53..55]);
    let dashes = value[2] == b'-' && value[35] == b'-' && value[52] == b'-';
    let hex = |s: &[u8]| {
        s.iter()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b))
    };
    let ok = dashes
        && hex(version)
        && version != b"ff"
        && (version != b"00" || value.len() == 55)
        && (value.len() == 55 || value[55] == b'-')
        && hex(trace_id)
        && hex(parent_id)
        && hex(flags)
        && trace_id.iter().any(|&b| b != b'0')
        && parent_id.iter().any(|&b| b != b'0');
    ok.then_some((trace_id, parent_id, flags))
}

fn traceparent_trace_id(value: &[u8]) -> Option<&[u8]> {
    traceparent_parts(value).map(|(trace_id, _, _)| trace_id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_visible_ascii_up_to_128_bytes() {
        assert!(CorrelationId::is_valid(b"abc-123_XYZ:~!"));
        assert!(CorrelationId::is_valid(&[b'a'; 128]));
        assert!(!CorrelationId::is_valid(&[b'a'; 129]));
        assert!(!CorrelationId::is_valid(b""));
        for hostile in [
            &b"a b"[..],
            b"a\tb",
            b"a\r\nSet-Cookie: x=1",
            b"a\x00b",
            b"a\x1bb",
            b"a\x7fb",
            "caf\u{e9}".as_bytes(),
        ] {
            assert!(!CorrelationId::is_valid(hostile), "{hostile:?}");
            assert!(CorrelationId::parse(hostile).is_none());
        }
    }

    #[test]
    fn generated_ids_are_uuid_v7_and_distinct() {
        let a = CorrelationId::generate();
        let b = CorrelationId::generate();
        assert_ne!(a, b);
        let uuid = uuid::Uuid::parse_str(a.as_str()).unwrap();
        assert_eq!(uuid.get_version_num(), 7);
        assert!(CorrelationId::is_valid(a.as_str().as_bytes()));
    }

    #[test]
    fn traceparent_gives_its_trace_id() {
        let tp =
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01");
        assert_eq!(
            CorrelationId::from_traceparent(&tp).unwrap().as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(
                CorrelationId::from_traceparent(&HeaderValue::from_static(bad)).is_none(),
                "{bad}"
            );
        }
        // A future version may append fields.
        let v1 = HeaderValue::from_static(
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-comes-next",
        );
        assert!(CorrelationId::from_traceparent(&v1).is_some());
    }
}
