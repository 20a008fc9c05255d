//! Hot reload: swapping the running policy table, rejecting bad tables, watching a file.

use std::time::Duration;

use palisade::policy::{IssueKind, Policies, PolicyLoader, PolicyStore};

const V1: &str = "
policies:
  api_call:
    timeout: { total: 10s }
  database_operation:
    retry: { max_retries: 5 }
  legacy: {}
";

const V2: &str = "
policies:
  api_call:
    timeout: { total: 2s }
  database_operation:
    retry: { max_retries: 5 }
  reporting: {}
";

fn store() -> PolicyStore {
    PolicyStore::new(Policies::from_yaml_str(V1).unwrap())
}

#[test]
fn a_reload_reports_added_removed_and_changed_operations() {
    let store = store();
    let report = store.reload_from_str(V2).unwrap();
    assert_eq!(report.added, ["reporting"]);
    assert_eq!(report.removed, ["legacy"]);
    assert_eq!(report.changed, ["api_call"]);
    assert!(!report.other_changes);
    assert_eq!(report.generation, 1);
    assert_eq!(store.generation(), 1);

    let again = store.reload_from_str(V2).unwrap();
    assert!(again.is_empty(), "{again:?}");
    assert_eq!(again.generation, 2);
}

#[test]
fn snapshots_taken_before_a_reload_keep_their_policy() {
    let store = store();
    let in_flight = store.current();
    store.reload_from_str(V2).unwrap();
    assert_eq!(
        in_flight.for_operation("api_call").timeout.total,
        Duration::from_secs(10)
    );
    assert_eq!(
        store.current().for_operation("api_call").timeout.total,
        Duration::from_secs(2)
    );
}

#[test]
fn an_invalid_reload_is_rejected_reported_and_the_running_table_stays() {
    let store = store();
    let err = store
        .reload_from_str("policies:\n  api_call:\n    timeout: { total: soon }\n")
        .unwrap_err();
    assert_eq!(err.issues()[0].path, "policies.api_call.timeout.total");
    assert_eq!(store.last_error(), Some(err));
    assert_eq!(store.generation(), 0);
    assert!(store.current().get("legacy").is_some());

    store.reload_from_str(V2).unwrap();
    assert_eq!(store.last_error(), None, "a good reload clears the error");
}

#[test]
fn reloading_without_a_file_is_an_io_error() {
    let err = store().reload_from_file().unwrap_err();
    assert_eq!(err.issues()[0].kind, IssueKind::Io);
}

#[tokio::test]
async fn subscribers_see_each_new_table() {
    let store = store();
    let mut changes = store.subscribe();
    store.reload_from_str(V2).unwrap();
    changes.changed().await.unwrap();
    assert!(changes.borrow_and_update().get("reporting").is_some());
}

struct TempFile(std::path::PathBuf);

impl TempFile {
    fn new(name: &str, contents: &str) -> TempFile {
        let dir =
            std::env::temp_dir().join(format!("palisade-reload-{}-{name}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("policies.yaml");
        std::fs::write(&path, contents).unwrap();
        TempFile(path)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(self.0.parent().unwrap());
    }
}

#[tokio::test(start_paused = true)]
async fn the_file_watcher_reloads_changes_and_skips_bad_ones() {
    let file = TempFile::new("watch", V1);
    let store = PolicyStore::from_path_with(&file.0, PolicyLoader::new()).unwrap();
    let mut changes = store.subscribe();
    let watcher = store.watch_file(Duration::from_secs(1));

    std::fs::write(&file.0, V2).unwrap();
    // The paused clock jumps to the watcher's next tick; bounded so a bug fails, not hangs.
    tokio::time::timeout(Duration::from_secs(10), changes.changed())
        .await
        .expect("the watcher saw the change")
        .unwrap();
    assert_eq!(
        store.current().for_operation("api_call").timeout.total,
        Duration::from_secs(2)
    );

    // A broken file is reported and leaves the running table alone.
    std::fs::write(&file.0, "policies:\n  api_call:\n    retyr: {}\n").unwrap();
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        if store.last_error().is_some() {
            break;
        }
    }
    let err = store.last_error().expect("the bad file was seen");
    assert_eq!(err.issues()[0].path, "policies.api_call.retyr");
    assert_eq!(store.generation(), 1);
    assert!(store.current().get("reporting").is_some());
    watcher.abort();
}
