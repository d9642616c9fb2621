//! Snapshot format and loading: a round trip, and every way a file can be unusable.

use std::sync::{Arc, Mutex};

use ss_crypto::{Generation, Key};

use super::*;

const METHOD: Method = Method::Aes256Gcm;

fn key(password: &str) -> Key {
    Key::from_password(METHOD, password).unwrap()
}

fn history_with(password: &str, salts: std::ops::Range<u32>) -> SaltHistory {
    let mut history = SaltHistory::new(&key(password), 1000);
    for n in salts {
        history.insert(&n.to_be_bytes());
    }
    history
}

#[test]
fn a_snapshot_round_trips_into_a_fresh_history() {
    let saved = history_with("k", 0..1500);
    let bytes = encode(METHOD, &saved);
    let mut restored = SaltHistory::new(&key("k"), 1000);
    assert_eq!(decode_into(&bytes, METHOD, &mut restored), Ok(1500));
    for n in 0..1500u32 {
        assert!(!restored.insert(&n.to_be_bytes()), "salt {n} forgotten across the restart");
    }
    assert!(restored.insert(&2000u32.to_be_bytes()));
}

#[test]
fn unusable_files_are_refused_and_record_nothing() {
    let bytes = encode(METHOD, &history_with("k", 0..10));
    let mut flipped = bytes.clone();
    let in_a_fingerprint = flipped.len() - 40;
    flipped[in_a_fingerprint] ^= 1;
    let mut wrong_version = bytes.clone();
    wrong_version[9] = 9;
    let cases: Vec<(&str, Vec<u8>, SnapshotError)> = vec![
        ("empty", Vec::new(), SnapshotError::Foreign("wrong magic")),
        ("text", b"{\"not\": \"a snapshot\"}".to_vec(), SnapshotError::Foreign("wrong magic")),
        ("version", wrong_version, SnapshotError::Foreign("unknown version")),
        ("cut in the header", bytes[..20].to_vec(), SnapshotError::Damaged("cut short")),
        (
            "cut in the body",
            bytes[..bytes.len() - 1].to_vec(),
            SnapshotError::Damaged("length does not match its counts"),
        ),
        ("bit flip", flipped, SnapshotError::Damaged("checksum mismatch")),
    ];
    for (what, file, expected) in cases {
        let mut history = SaltHistory::new(&key("k"), 1000);
        assert_eq!(decode_into(&file, METHOD, &mut history), Err(expected), "{what}");
        assert!(history.insert(&0u32.to_be_bytes()), "{what}: nothing recorded");
    }
    let mut other_key = SaltHistory::new(&key("another key"), 1000);
    assert_eq!(decode_into(&bytes, METHOD, &mut other_key), Err(SnapshotError::OtherKey));
    let mut other_method = SaltHistory::new(&key("k"), 1000);
    assert_eq!(
        decode_into(&bytes, Method::ChaCha20IetfPoly1305, &mut other_method),
        Err(SnapshotError::OtherKey)
    );
}

#[test]
fn huge_counts_are_refused_without_allocating() {
    let mut bytes = encode(METHOD, &history_with("k", 0..3));
    let counts = header_len(METHOD.name().len()) - 16;
    bytes[counts..counts + 16].copy_from_slice(&[0xff; 16]);
    let mut history = SaltHistory::new(&key("k"), 1000);
    assert!(decode_into(&bytes, METHOD, &mut history).is_err());
}

/// Collects what the server logs while `f` runs.
fn logs_of(f: impl FnOnce()) -> String {
    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }
    let sink = Sink::default();
    let writer = sink.clone();
    let subscriber = tracing_subscriber::fmt().with_ansi(false).with_writer(move || writer.clone()).finish();
    tracing::subscriber::with_default(subscriber, f);
    let logs = sink.0.lock().unwrap().clone();
    String::from_utf8(logs).unwrap()
}

#[tokio::test]
async fn saved_then_loaded_and_a_corrupt_file_is_ignored_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state").join("replay.snapshot");
    let filter = ReplayFilter::new(&key("k"), Generation::Classic, 1000, Duration::from_secs(10));
    let salt = ss_crypto::Salt::from_slice(METHOD, &[7; 32]).unwrap();
    assert!(filter.insert(&salt));
    save(&filter, METHOD, &path).await;
    assert!(!path.with_extension("snapshot.tmp").exists(), "the temporary file was renamed");

    let restarted = ReplayFilter::new(&key("k"), Generation::Classic, 1000, Duration::from_secs(10));
    let logs = logs_of(|| load(&path, METHOD, &restarted));
    assert!(logs.contains("snapshot loaded"), "{logs}");
    assert!(!restarted.insert(&salt), "a salt from before the restart is refused");

    std::fs::write(&path, b"garbage that is not a snapshot").unwrap();
    let fresh = ReplayFilter::new(&key("k"), Generation::Classic, 1000, Duration::from_secs(10));
    let logs = logs_of(|| load(&path, METHOD, &fresh));
    assert!(logs.contains("WARN") && logs.contains("snapshot ignored"), "{logs}");
    assert!(logs.contains(&path.display().to_string()), "the line names the file: {logs}");
    assert!(fresh.insert(&salt), "an ignored file leaves an empty filter");

    let missing = dir.path().join("none");
    let logs = logs_of(|| load(&missing, METHOD, &fresh));
    assert!(!logs.contains("WARN"), "a missing file is a first start, not a problem: {logs}");
}

#[test]
fn the_default_path_follows_systemd_then_xdg_then_home() {
    let env = |vars: &'static [(&'static str, &'static str)]| {
        move |name: &str| vars.iter().find(|(key, _)| *key == name).map(|(_, value)| value.into())
    };
    let all = env(&[("STATE_DIRECTORY", "/var/lib/ss"), ("XDG_STATE_HOME", "/x"), ("HOME", "/h")]);
    assert_eq!(default_path(8388, all), Some(PathBuf::from("/var/lib/ss/replay-8388.snapshot")));
    let two = env(&[("STATE_DIRECTORY", "/var/lib/a:/var/lib/b")]);
    assert_eq!(default_path(1, two), Some(PathBuf::from("/var/lib/a/replay-1.snapshot")));
    let xdg = env(&[("STATE_DIRECTORY", ""), ("XDG_STATE_HOME", "/x"), ("HOME", "/h")]);
    assert_eq!(default_path(8388, xdg), Some(PathBuf::from("/x/ss-rs/replay-8388.snapshot")));
    let home = env(&[("HOME", "/h")]);
    assert_eq!(default_path(8388, home), Some(PathBuf::from("/h/.local/state/ss-rs/replay-8388.snapshot")));
    assert_eq!(default_path(8388, env(&[])), None);
}
