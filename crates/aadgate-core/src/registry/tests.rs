use super::*;

const A: &str = "11111111-2222-4333-8444-555555555555";
const B: &str = "aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee";

fn record(tenant: &str, state: TenantState) -> Change {
    Change::Record {
        tenant: tenant.into(),
        state,
        by: AddedBy::Cli,
        reason: "test".into(),
    }
}

#[test]
fn every_change_follows_the_state_rules() {
    let mut s = Snapshot::default();
    assert_eq!(
        s.apply(&record(A, TenantState::Pending), 10),
        Ok(Applied::Changed)
    );
    // An unproven sign-up never lowers an active tenant; approval needs a pending one.
    assert_eq!(
        s.apply(&Change::Approve { tenant: A.into() }, 11),
        Ok(Applied::Changed)
    );
    assert_eq!(
        s.apply(&record(A, TenantState::Pending), 12),
        Ok(Applied::Unchanged)
    );
    assert_eq!(
        s.apply(&Change::Approve { tenant: A.into() }, 13),
        Err(RegistryError::NotPending {
            tenant: A.into(),
            state: TenantState::Active
        })
    );
    let revoke = Change::Revoke {
        tenant: A.into(),
        reason: "gone".into(),
    };
    assert_eq!(s.apply(&revoke, 14), Ok(Applied::Changed));
    assert_eq!(s.apply(&revoke, 15), Ok(Applied::Unchanged));
    let r = s.get(A).expect("recorded");
    assert_eq!(
        (r.state, r.added_at, r.changed_at, r.reason.as_str()),
        (TenantState::Revoked, 10, 14, "gone")
    );
    // A later sign-up or `tenants add` makes it active again.
    assert_eq!(
        s.apply(&record(A, TenantState::Active), 16),
        Ok(Applied::Changed)
    );
    assert_eq!(
        s.apply(&Change::Remove { tenant: A.into() }, 17),
        Ok(Applied::Changed)
    );
    assert_eq!(
        s.apply(&Change::Remove { tenant: A.into() }, 18),
        Err(RegistryError::UnknownTenant(A.into()))
    );
    assert_eq!(
        s.apply(&record("contoso.com", TenantState::Active), 19),
        Err(RegistryError::NotAGuid("contoso.com".into()))
    );
}

#[test]
fn the_file_form_reads_back_and_rejects_what_it_cannot_trust() {
    let mut s = Snapshot::default();
    s.apply(
        &record(&A.to_uppercase(), TenantState::Active),
        1_764_650_000,
    )
    .expect("add");
    s.apply(&record(B, TenantState::Pending), 1_764_650_001)
        .expect("add");
    let text = s.to_json();
    assert!(
        text.contains("\"added_at\": \"2025-12-02T04:33:20Z\""),
        "{text}"
    );
    assert_eq!(Snapshot::from_json(&text), Ok(s));
    assert_eq!(Snapshot::from_json(" \n"), Ok(Snapshot::default()));
    let bad = [
        "{",
        "{\"version\": 2, \"tenants\": []}",
        "{\"version\": 1, \"tenants\": [], \"extra\": 1}",
        &text.replace(A, "not-a-guid"),
        &text.replace(B, A),
        &text.replace("\"active\"", "\"gone\""),
        &text.replace("2025-12-02T04:33:20Z", "yesterday"),
    ];
    for t in bad {
        assert!(Snapshot::from_json(t).is_err(), "{t}");
    }
}

#[tokio::test]
async fn a_file_store_writes_atomically_and_keeps_the_last_good_registry() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tenants.json");
    let store: Arc<dyn RegistryStore> = Arc::new(FileStore::new(&path));
    let metrics = Arc::new(Metrics::new());
    let registry = Registry::open(store.clone(), metrics.clone())
        .await
        .expect("empty");
    assert!(registry.snapshot().is_empty());
    registry
        .apply(&record(A, TenantState::Active))
        .await
        .expect("apply");
    assert_eq!(registry.state(A), Some(TenantState::Active));
    assert!(std::fs::read_to_string(&path).expect("written").contains(A));
    // Another writer (the CLI) adds a tenant: the refresh sees it.
    let other = FileStore::new(&path);
    other
        .update(&record(B, TenantState::Pending), 5)
        .await
        .expect("update");
    assert!(registry.refresh().await);
    assert_eq!(registry.state(B), Some(TenantState::Pending));
    // A broken file: the last good registry stays in force and the error is shown.
    std::fs::write(&path, "{ not json").expect("break");
    assert!(!registry.refresh().await);
    assert_eq!(registry.state(A), Some(TenantState::Active));
    assert!(registry
        .error()
        .is_some_and(|e| e.contains("not a valid registry")));
    // A change to a broken file fails and leaves the file as it was.
    let err = registry.apply(&record(B, TenantState::Active)).await;
    assert!(matches!(err, Err(RegistryError::Unavailable(_))), "{err:?}");
    assert_eq!(std::fs::read_to_string(&path).expect("read"), "{ not json");
    // Repaired: read again, error cleared.
    std::fs::write(&path, Snapshot::default().to_json()).expect("repair");
    assert!(registry.refresh().await);
    assert!(registry.error().is_none());
    assert_eq!(registry.state(A), None);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .expect("list")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[tokio::test]
async fn a_revocation_applies_at_once_and_is_counted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tenants.json");
    let metrics = Arc::new(Metrics::new());
    let registry = Registry::open(Arc::new(FileStore::new(&path)), metrics.clone())
        .await
        .expect("open");
    registry
        .apply(&record(A, TenantState::Active))
        .await
        .expect("add");
    assert!(registry.revoke(A, "consent withdrawn").await);
    assert!(!registry.revoke(A, "again").await);
    assert!(!registry.revoke(B, "never added").await);
    assert_eq!(registry.state(A), Some(TenantState::Revoked));
    assert_eq!(metrics.tenant_revocations.get(), 1);
    assert_eq!(metrics.tenants.with_label_values(&["revoked"]).get(), 1);
    let stored = FileStore::new(&path).load().await.expect("load").0;
    assert_eq!(stored.get(A).map(|r| r.state), Some(TenantState::Revoked));
}

#[test]
fn an_unreadable_registry_fails_the_open() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tenants.json");
    std::fs::write(&path, "[]").expect("write");
    let opened = Registry::open_blocking(Arc::new(FileStore::new(&path)), Arc::new(Metrics::new()));
    assert!(matches!(opened, Err(RegistryError::Unavailable(_))));
}

#[tokio::test]
async fn a_deleted_registry_keeps_the_last_one_and_a_lost_revocation_is_stored_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("tenants.json");
    let metrics = Arc::new(Metrics::new());
    let registry = Registry::open(Arc::new(FileStore::new(&path)), metrics)
        .await
        .expect("open");
    registry
        .apply(&record(A, TenantState::Active))
        .await
        .expect("add");
    let saved = std::fs::read_to_string(&path).expect("read");
    // Deleted under the running gateway: not an empty registry.
    std::fs::remove_file(&path).expect("remove");
    assert!(!registry.refresh().await);
    assert_eq!(registry.state(A), Some(TenantState::Active));
    assert!(registry.error().is_some_and(|e| e.contains("gone")));
    // A folder where the file was: the revocation cannot be stored, yet applies here, and
    // survives the next reads until it is stored.
    std::fs::create_dir(&path).expect("mkdir");
    assert!(registry.revoke(A, "consent withdrawn").await);
    assert!(!registry.refresh().await);
    assert_eq!(registry.state(A), Some(TenantState::Revoked));
    std::fs::remove_dir(&path).expect("rmdir");
    std::fs::write(&path, saved).expect("restore the old file, A active");
    registry.refresh().await;
    assert_eq!(registry.state(A), Some(TenantState::Revoked));
    let stored = FileStore::new(&path).load().await.expect("load").0;
    assert_eq!(stored.get(A).map(|r| r.state), Some(TenantState::Revoked));
}

#[test]
fn records_are_listed_and_stored_sorted_by_tenant_id_whatever_the_order_they_came_in() {
    let ids: Vec<String> = (0..50u32)
        .map(|i| {
            let n = i.wrapping_mul(2_654_435_761);
            format!("{n:08x}-0000-4000-8000-{i:012x}")
        })
        .collect();
    let mut s = Snapshot::default();
    for (i, id) in ids.iter().enumerate() {
        s.apply(&record(id, TenantState::Active), i as i64)
            .expect("add");
    }
    let mut sorted = ids.clone();
    sorted.sort();
    let listed: Vec<&str> = s.tenants().map(|r| r.tenant_id.as_str()).collect();
    assert_eq!(listed, sorted);
    let text = s.to_json();
    let positions: Vec<usize> = sorted
        .iter()
        .map(|id| text.find(id.as_str()).expect("stored"))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]), "{text}");
    assert_eq!(s.count(TenantState::Active), 50);
    assert_eq!(s.count(TenantState::Pending), 0);
}
