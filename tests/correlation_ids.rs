//! Generated correlation IDs: unique across threads, ordered within a thread, UUIDv7-shaped,
//! and the same however they are put on the wire.
#![cfg(feature = "correlation")]

use std::collections::HashSet;

use http::HeaderValue;
use palisade::correlation::CorrelationId;

const THREADS: usize = 8;
const PER_THREAD: usize = 50_000;

/// Each thread's IDs in the order it made them.
fn generate_on_threads() -> Vec<Vec<CorrelationId>> {
    let barrier = std::sync::Barrier::new(THREADS);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..THREADS)
            .map(|_| {
                s.spawn(|| {
                    // Start together, so the threads share milliseconds.
                    barrier.wait();
                    (0..PER_THREAD)
                        .map(|_| CorrelationId::generate())
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

#[test]
fn ids_made_on_many_threads_at_once_are_all_distinct() {
    let per_thread = generate_on_threads();
    let mut seen = HashSet::with_capacity(THREADS * PER_THREAD);
    for id in per_thread.iter().flatten() {
        assert!(seen.insert(id.as_str().to_owned()), "duplicate {id}");
    }
    assert_eq!(seen.len(), THREADS * PER_THREAD);
    // The threads did share milliseconds, or the test would prove little: some millisecond
    // is in more than one thread's IDs.
    let millis_of = |ids: &Vec<CorrelationId>| -> HashSet<String> {
        ids.iter().map(|id| id.as_str()[..13].to_owned()).collect()
    };
    let each: Vec<_> = per_thread.iter().map(millis_of).collect();
    let union: HashSet<_> = each.iter().flatten().collect();
    assert!(
        each.iter().map(HashSet::len).sum::<usize>() > union.len(),
        "no two threads made an ID in the same millisecond"
    );
}

#[test]
fn a_thread_makes_ids_in_increasing_order_and_each_is_a_uuid_v7() {
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    for ids in generate_on_threads() {
        for pair in ids.windows(2) {
            // Hyphenated lowercase hex sorts as the 128-bit number does.
            assert!(
                pair[0].as_str() < pair[1].as_str(),
                "{} !< {}",
                pair[0],
                pair[1]
            );
        }
        for id in &ids {
            let uuid: uuid::Uuid = id.as_str().parse().unwrap();
            assert_eq!(uuid.get_version_num(), 7, "{id}");
            assert_eq!(uuid.get_variant(), uuid::Variant::RFC4122, "{id}");
            assert_eq!(uuid.hyphenated().to_string(), id.as_str());
            assert!(CorrelationId::is_valid(id.as_bytes()));
        }
        // The timestamp is the clock's, not a counter's. On Linux it is read from the coarse
        // realtime clock, which lags the precise one by up to a kernel tick (at most 10 ms).
        // `before` was read first, so a delay of the test thread can only make the ID later:
        // 50 ms leaves room for a missed tick on a busy VM and nothing more.
        let first = ids[0].as_str().parse::<uuid::Uuid>().unwrap();
        let (secs, nanos) = first.get_timestamp().unwrap().to_unix();
        let millis = secs * 1000 + u64::from(nanos) / 1_000_000;
        assert!(
            millis + 50 >= before && millis < before + 60_000,
            "{millis} vs {before}"
        );
    }
}

#[test]
fn a_generated_id_is_the_same_id_as_a_header_value_and_when_parsed_back() {
    let id = CorrelationId::generate();
    let value: HeaderValue = id.header_value();
    assert_eq!(value.as_bytes(), id.as_bytes());
    let parsed = CorrelationId::from_header(&value).unwrap();
    assert_eq!(parsed, id);
    assert_eq!(HeaderValue::from(id.clone()), value);
    assert_eq!(
        format!("{id:?}"),
        format!("CorrelationId({:?})", id.as_str())
    );
    let mut set = HashSet::new();
    set.insert(id);
    assert!(set.contains(&parsed), "equal IDs hash alike");
}
