//! The job store suite: Tenants, keys and their limits.

use super::*;

pub(super) async fn tenants_keys_and_revocation(s: &dyn JobStore) {
    let limits = Limits {
        max_jobs_in_flight: Some(3),
        submits_per_second: Some(2.5),
        submit_burst: Some(5),
        max_batch_items: Some(100),
        priorities: Some(vec![Priority::Standard, Priority::Batch]),
        max_duration_s: Some(12.5),
        max_steps: Some(40),
        budgets: crate::tenancy::Budgets {
            audio_seconds_per_day: Some(600.0),
            audio_seconds_per_month: None,
            device_seconds_per_day: None,
            device_seconds_per_month: Some(36_000.5),
        },
        retain_outputs_days: Some(30),
        retain_inputs_days: Some(7),
        retain_manifests_days: Some(90),
    };
    s.create_tenant("acme", &limits).await.expect("create");
    s.create_tenant("zeta", &Limits::default())
        .await
        .expect("create");
    let dup = s.create_tenant("acme", &Limits::default()).await;
    assert!(matches!(dup, Err(Error::AlreadyExists(_))), "{dup:?}");
    let acme = s.tenant("acme").await.expect("tenant").expect("acme");
    assert_eq!(acme.limits, limits);
    assert!(s.tenant("nobody").await.expect("tenant").is_none());
    let names: Vec<String> = s
        .tenants()
        .await
        .expect("tenants")
        .into_iter()
        .map(|t| t.name)
        .collect();
    assert_eq!(names, ["acme", "zeta"]);
    s.set_limits(
        "zeta",
        &Limits {
            max_steps: Some(8),
            ..Default::default()
        },
    )
    .await
    .expect("set limits");
    assert_eq!(
        s.tenant("zeta")
            .await
            .expect("tenant")
            .expect("zeta")
            .limits
            .max_steps,
        Some(8)
    );
    assert!(matches!(
        s.set_limits("nobody", &Limits::default()).await,
        Err(Error::NotFound(_))
    ));

    let key = ApiKey::generate();
    let admin = ApiKey::generate();
    s.insert_key("acme", &key, false).await.expect("key");
    s.insert_key("zeta", &admin, true).await.expect("admin key");
    assert!(matches!(
        s.insert_key("nobody", &ApiKey::generate(), false).await,
        Err(Error::NotFound(_))
    ));
    let owner = s.key_owner(&key).await.expect("owner").expect("live key");
    assert_eq!((owner.tenant.as_str(), owner.admin), ("acme", false));
    assert_eq!(owner.limits, limits);
    let owner = s.key_owner(&admin).await.expect("owner").expect("live key");
    assert_eq!((owner.tenant.as_str(), owner.admin), ("zeta", true));
    // Same id, other secret: not the stored key.
    let forged = ApiKey::parse(&format!("tt_{}_{}", key.id(), "0".repeat(64))).expect("parse");
    assert!(s.key_owner(&forged).await.expect("owner").is_none());
    assert!(s
        .key_owner(&ApiKey::generate())
        .await
        .expect("owner")
        .is_none());
    // Nothing stored reveals the key.
    let keys = s.keys().await.expect("keys");
    assert_eq!(keys.len(), 2);
    assert!(keys
        .iter()
        .all(|k| !k.id.is_empty() && k.revoked_at.is_none()));

    assert!(s.revoke_key(key.id()).await.expect("revoke"));
    assert!(s.key_owner(&key).await.expect("owner").is_none());
    assert!(!s.revoke_key(key.id()).await.expect("revoke again"));
    assert!(matches!(
        s.revoke_key("000000000000").await,
        Err(Error::NotFound(_))
    ));
    let revoked = s.keys().await.expect("keys");
    assert!(revoked
        .iter()
        .any(|k| k.id == key.id() && k.revoked_at.is_some()));
    assert!(s.key_owner(&admin).await.expect("owner").is_some());
}

pub(super) async fn jobs_in_flight_limit_stores_nothing_and_admin_sees_all(s: &dyn JobStore) {
    s.create_tenant(
        T,
        &Limits {
            max_jobs_in_flight: Some(1),
            ..Default::default()
        },
    )
    .await
    .expect("tenant");
    let (first, _) = s
        .insert_job(T, &new_job(4, 4, Some("k")))
        .await
        .expect("first");
    let over = s.insert_job(T, &new_job(4, 4, None)).await;
    match over {
        Err(Error::ResourceExhausted { limit, .. }) => assert_eq!(limit, "max_jobs_in_flight"),
        other => panic!("expected max_jobs_in_flight, got {other:?}"),
    }
    // The refused submit stored nothing; a retry of the admitted one still answers.
    let all = s
        .list_jobs(T.into(), None, &BTreeMap::new(), None, 10)
        .await
        .expect("list");
    assert_eq!(all.len(), 1);
    let (again, created) = s
        .insert_job(T, &new_job(4, 4, Some("k")))
        .await
        .expect("replay");
    assert!(!created);
    assert_eq!(again.job.id, first.job.id);
    // A tenant without a row has no limits.
    let (other, _) = s
        .insert_job("tenant-b", &new_job(4, 4, None))
        .await
        .expect("b");
    s.insert_job("tenant-b", &new_job(4, 4, None))
        .await
        .expect("b again");
    // Cancelling frees the slot.
    s.cancel_job(T.into(), first.job.id)
        .await
        .expect("cancel")
        .expect("job");
    s.insert_job(T, &new_job(4, 4, None))
        .await
        .expect("after cancel");

    // Scope::All reads and cancels any tenant's job; a tenant scope only its own.
    assert!(s
        .get_job(Scope::All, other.job.id)
        .await
        .expect("get")
        .is_some());
    assert!(s
        .get_job(T.into(), other.job.id)
        .await
        .expect("get")
        .is_none());
    let every = s
        .list_jobs(Scope::All, None, &BTreeMap::new(), None, 10)
        .await
        .expect("list");
    assert_eq!(every.len(), 4);
    let (_, changed) = s
        .cancel_job(Scope::All, other.job.id)
        .await
        .expect("cancel")
        .expect("job");
    assert!(changed);
}

job_store_suite!(
    tenants_keys_and_revocation,
    jobs_in_flight_limit_stores_nothing_and_admin_sees_all,
);
