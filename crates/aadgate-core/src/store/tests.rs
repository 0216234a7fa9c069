use super::*;

fn store() -> Arc<SharedStore> {
    let settings = StoreSettings {
        kind: StoreKind::Redis {
            url: "redis://user:secret@127.0.0.1:1/0".into(),
            target: Box::new(RedisTarget::parse("redis://user:secret@127.0.0.1:1/0").expect("url")),
            encryption_key: Arc::new([9u8; 32]),
            encryption_key_file: "k".into(),
        },
        ..StoreSettings::default()
    };
    SharedStore::new(&settings, Arc::new(Metrics::new()))
        .expect("valid")
        .expect("redis")
}

#[test]
fn sealed_values_open_only_under_their_own_key_name() {
    let s = store();
    let sealed = s.seal("aadgate:a", b"token").expect("seal");
    assert!(!sealed.windows(5).any(|w| w == b"token"));
    assert_eq!(s.open("aadgate:a", &sealed).as_deref(), Some(&b"token"[..]));
    assert_eq!(s.open("aadgate:b", &sealed), None);
    let mut tampered = sealed.clone();
    let last = tampered.len() - 1;
    tampered[last] ^= 1;
    assert_eq!(s.open("aadgate:a", &tampered), None);
    assert_eq!(s.open("aadgate:a", b"short"), None);
    // A fresh nonce each time.
    assert_ne!(s.seal("aadgate:a", b"token"), Some(sealed));
}

#[test]
fn the_password_never_shows() {
    let s = store();
    assert!(!format!("{s:?}").contains("secret"));
    assert!(!s.describe().contains("secret"));
}

#[tokio::test]
async fn a_store_that_is_down_answers_at_once() {
    let s = store();
    // No connection attempt while down: the health check decides when to try again.
    let got = s.get("k").await;
    assert!(got.is_err_and(|e| e.0.contains("down")));
}
