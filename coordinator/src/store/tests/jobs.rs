//! The job store suite: Storing, reading and listing jobs.

use super::*;

pub(super) async fn stores_jobs_with_idempotency_and_tenants(s: &dyn JobStore) {
    let (a, created) = s
        .insert_job(T, &new_job(8, 4, Some("k1")))
        .await
        .expect("insert");
    assert!(created);
    assert_eq!((a.job.state.as_str(), a.job.steps_total), ("queued", 8));
    let (again, created) = s
        .insert_job(T, &new_job(8, 4, Some("k1")))
        .await
        .expect("insert");
    assert!(!created);
    assert_eq!(again.job.id, a.job.id);
    let conflict = s.insert_job(T, &new_job(9, 4, Some("k1"))).await;
    assert!(
        matches!(conflict, Err(Error::AlreadyExists(_))),
        "{conflict:?}"
    );
    assert!(s
        .get_job("tenant-b".into(), a.job.id)
        .await
        .expect("get")
        .is_none());
    assert!(s
        .cancel_job("tenant-b".into(), a.job.id)
        .await
        .expect("cancel")
        .is_none());
    let got = s
        .get_job(T.into(), a.job.id)
        .await
        .expect("get")
        .expect("job");
    assert_eq!(got.job.spec.0, new_job(8, 4, None).spec);
    assert_eq!(got.job.labels.0.get("team").map(String::as_str), Some("a"));
}

pub(super) async fn lists_newest_first_by_label_and_page(s: &dyn JobStore) {
    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(
            s.insert_job(T, &new_job(4, 4, None))
                .await
                .expect("insert")
                .0
                .job
                .id,
        );
    }
    let mut other = new_job(4, 4, None);
    other.labels = BTreeMap::from([("team".to_string(), "b".to_string())]);
    s.insert_job(T, &other).await.expect("insert");
    let team_a = BTreeMap::from([("team".to_string(), "a".to_string())]);
    let page = s
        .list_jobs(T.into(), None, &team_a, None, 2)
        .await
        .expect("list");
    let got: Vec<Uuid> = page.iter().map(|r| r.job.id).collect();
    assert_eq!(got, vec![ids[2], ids[1]]);
    let last = &page[1].job;
    let rest = s
        .list_jobs(
            T.into(),
            None,
            &team_a,
            Some((last.created_at, last.id)),
            10,
        )
        .await
        .expect("list");
    assert_eq!(
        rest.iter().map(|r| r.job.id).collect::<Vec<_>>(),
        vec![ids[0]]
    );
    let all = s
        .list_jobs(T.into(), None, &BTreeMap::new(), None, 10)
        .await
        .expect("list");
    assert_eq!(all.len(), 4);
    let none = s
        .list_jobs(
            T.into(),
            Some(tutti_shared::job::JobState::Running),
            &BTreeMap::new(),
            None,
            10,
        )
        .await
        .expect("list");
    assert!(none.is_empty());
}

job_store_suite!(
    stores_jobs_with_idempotency_and_tenants,
    lists_newest_first_by_label_and_page,
);
