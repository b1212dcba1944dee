//! The job store suite: Dispatch rounds: capacity, classes, fair share, preemption, chunk affinity.

use super::*;

pub(super) async fn bounds_in_flight_tasks(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    for _ in 0..3 {
        s.insert_job(T, &new_job(4, 4, None)).await.expect("insert");
    }
    assert_eq!(dispatch_once(s, &q, &bound(2)).await.expect("dispatch"), 2);
    assert_eq!(dispatch_once(s, &q, &bound(2)).await.expect("dispatch"), 0);
    let tasks = drain(&q).await;
    s.record_result(at(&tasks[0]), &done(1), POLICY)
        .await
        .expect("result");
    // The finished chunk frees a denoise slot for the third job; its vocode task has a
    // queue (and a bound) of its own.
    assert_eq!(dispatch_once(s, &q, &bound(2)).await.expect("dispatch"), 2);
    let mut kinds: Vec<TaskKind> = drain(&q).await.into_iter().map(|t| t.kind).collect();
    kinds.sort_by_key(|k| k.as_str());
    assert_eq!(kinds, vec![TaskKind::Denoise, TaskKind::Vocode]);
}

pub(super) async fn capacity_follows_the_heartbeats_of_live_workers(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    for _ in 0..6 {
        s.insert_job(T, &new_job(4, 4, None)).await.expect("insert");
    }
    let policy = bound(64);
    s.record_heartbeat(&heartbeat("w1", 3, &[], false))
        .await
        .expect("heartbeat");
    // Three slots, not the static bound of 64.
    assert_eq!(dispatch_once(s, &q, &policy).await.expect("dispatch"), 3);
    let tasks = drain(&q).await;
    // A draining worker takes nothing new, even with a slot free.
    s.record_heartbeat(&heartbeat("w1", 3, &[], true))
        .await
        .expect("heartbeat");
    s.record_result(by(&tasks[0], "w1"), &done(1), POLICY)
        .await
        .expect("result");
    let denoise = |q: Vec<TaskMessage>| q.iter().filter(|t| t.kind == TaskKind::Denoise).count();
    dispatch_once(s, &q, &policy).await.expect("dispatch");
    assert_eq!(denoise(drain(&q).await), 0);
    // Another worker joins with 3 slots; 2 of them are taken by w1's tasks in flight.
    s.record_heartbeat(&heartbeat("w2", 3, &[], false))
        .await
        .expect("heartbeat");
    dispatch_once(s, &q, &policy).await.expect("dispatch");
    assert_eq!(denoise(drain(&q).await), 1);
    // Every worker silent past the timeout: no capacity at all (not the static bound).
    tokio::time::sleep(Duration::from_millis(30)).await;
    s.record_result(by(&tasks[1], "w1"), &done(1), POLICY)
        .await
        .expect("result");
    let silent = Policy {
        worker_timeout: Duration::from_millis(10),
        ..bound(64)
    };
    dispatch_once(s, &q, &silent).await.expect("dispatch");
    assert_eq!(denoise(drain(&q).await), 0);
}

pub(super) async fn classes_go_in_order_and_batch_keeps_a_share(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let mut class = std::collections::HashMap::new();
    for p in [
        Priority::Batch,
        Priority::Batch,
        Priority::Standard,
        Priority::Standard,
        Priority::Interactive,
        Priority::Interactive,
    ] {
        let (j, _) = s.insert_job(T, &job_of(p, 4)).await.expect("insert");
        class.insert(j.job.id, p);
    }
    // Three slots, one kept for batch while batch work waits.
    let policy = Policy {
        batch_share: 0.1,
        ..bound(3)
    };
    assert_eq!(dispatch_once(s, &q, &policy).await.expect("dispatch"), 3);
    let first = drain(&q).await;
    let classes: Vec<Priority> = first.iter().map(|t| class[&t.job_id]).collect();
    assert_eq!(
        classes,
        [
            Priority::Interactive,
            Priority::Interactive,
            Priority::Batch
        ]
    );
    for t in &first[..2] {
        s.record_result(at(t), &done(1), POLICY)
            .await
            .expect("result");
    }
    // The two free denoise slots go to standard work (batch has its share in flight); the
    // interactive jobs' vocode tasks go out on their own bound.
    dispatch_once(s, &q, &policy).await.expect("dispatch");
    let next: Vec<(TaskKind, Priority)> = drain(&q)
        .await
        .iter()
        .map(|t| (t.kind, class[&t.job_id]))
        .collect();
    let denoise: Vec<Priority> = next
        .iter()
        .filter(|t| t.0 == TaskKind::Denoise)
        .map(|t| t.1)
        .collect();
    assert_eq!(denoise, [Priority::Standard, Priority::Standard]);
    assert_eq!(next.iter().filter(|t| t.0 == TaskKind::Vocode).count(), 2);
}

pub(super) async fn tenants_share_a_class_by_weight(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    for _ in 0..40 {
        for tenant in ["light", "heavy"] {
            s.insert_job(tenant, &job_of(Priority::Standard, 4))
                .await
                .expect("insert");
        }
    }
    let policy = Policy {
        weights: "light=1,heavy=3".parse().expect("weights"),
        ..bound(4)
    };
    // Both stay backlogged for 40 tasks: 10 to 30.
    let mut served = std::collections::HashMap::<String, usize>::new();
    let mut total = 0;
    while total < 40 {
        assert!(dispatch_once(s, &q, &policy).await.expect("dispatch") > 0);
        for t in drain(&q).await {
            if t.kind == TaskKind::Denoise {
                *served.entry(t.tenant.clone()).or_default() += 1;
                total += 1;
            }
            s.record_result(at(&t), &done(1), POLICY)
                .await
                .expect("result");
        }
    }
    assert_eq!((served["light"], served["heavy"]), (10, 30), "{served:?}");
}

pub(super) async fn a_batch_chunk_yields_to_interactive_work_and_resumes(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let (batch, _) = s
        .insert_job(T, &job_of(Priority::Batch, 8))
        .await
        .expect("insert");
    let batch = batch.job.id;
    let policy = Policy {
        batch_share: 0.1,
        ..bound(1)
    };
    dispatch_once(s, &q, &policy).await.expect("dispatch");
    let b0 = drain(&q).await.pop().expect("batch chunk 0");
    let (inter, _) = s
        .insert_job(T, &job_of(Priority::Interactive, 4))
        .await
        .expect("insert");
    s.record_result(at(&b0), &done(1), POLICY)
        .await
        .expect("result");
    // The batch job's next chunk waits in the backlog; the interactive job goes first.
    dispatch_once(s, &q, &policy).await.expect("dispatch");
    let i0 = drain(&q).await.pop().expect("interactive chunk");
    assert_eq!(i0.job_id, inter.job.id);
    dispatch_once(s, &q, &policy).await.expect("dispatch");
    assert!(drain(&q).await.is_empty());
    s.record_result(at(&i0), &done(1), POLICY)
        .await
        .expect("result");
    dispatch_once(s, &q, &policy).await.expect("dispatch");
    let resumed = drain(&q)
        .await
        .into_iter()
        .find(|t| t.kind == TaskKind::Denoise)
        .expect("batch chunk 1");
    assert_eq!(
        (resumed.job_id, resumed.chunk, resumed.from_step),
        (batch, 1, 4)
    );
    let history = s.history(batch).await.expect("history");
    assert_eq!(
        kinds_of(&history),
        [
            "queued",
            "dispatched",
            "chunk_done",
            "preempted",
            "dispatched"
        ]
    );
    assert_eq!(history[3].chunk, Some(1));
}

pub(super) async fn a_next_chunk_is_routed_to_the_worker_holding_its_latent(s: &dyn JobStore) {
    let q = MemoryQueue::new();
    let (held, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let (other, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let (reported, _) = s.insert_job(T, &new_job(8, 4, None)).await.expect("insert");
    let (held, other, reported) = (held.job.id, other.job.id, reported.job.id);
    s.record_heartbeat(&heartbeat("w1", 4, &[held, other], false))
        .await
        .expect("heartbeat");
    s.record_heartbeat(&heartbeat("w2", 4, &[], false))
        .await
        .expect("heartbeat");
    dispatch_once(s, &q, &bound(8)).await.expect("dispatch");
    let first = drain(&q).await;
    let t_held = first.iter().find(|t| t.job_id == held).expect("held");
    let t_other = first.iter().find(|t| t.job_id == other).expect("other");
    s.record_result(by(t_held, "w1"), &done(1), POLICY)
        .await
        .expect("result");
    // w2 ran the other job's chunk but does not hold its latent.
    s.record_result(by(t_other, "w2"), &done(1), POLICY)
        .await
        .expect("result");
    // w2 ran this one's chunk and says in its result that it holds the latent: routed at
    // once, before any heartbeat lists the job.
    let t_reported = first
        .iter()
        .find(|t| t.job_id == reported)
        .expect("reported");
    let held_done = Outcome::Done {
        millis: 1,
        outputs: Vec::new(),
        held: true,
    };
    s.record_result(by(t_reported, "w2"), &held_done, POLICY)
        .await
        .expect("result");
    assert_eq!(dispatch_once(s, &q, &bound(8)).await.expect("dispatch"), 3);
    drain(&q).await;
    let routed = |h: Vec<crate::store::HistoryEvent>| {
        h.into_iter()
            .filter(|e| e.kind == "dispatched" && e.chunk == Some(1))
            .map(|e| e.detail.get("routed_to").cloned())
            .collect::<Vec<_>>()
    };
    assert_eq!(
        routed(s.history(held).await.expect("history")),
        [Some(serde_json::json!("w1"))]
    );
    assert_eq!(routed(s.history(other).await.expect("history")), [None]);
    assert_eq!(
        routed(s.history(reported).await.expect("history")),
        [Some(serde_json::json!("w2"))]
    );
}

pub(super) async fn the_fleet_view_shows_what_heartbeats_told(s: &dyn JobStore) {
    let models = [
        "tiny@1".to_string(),
        "stable-audio-open-small@1".to_string(),
    ];
    s.record_heartbeat(&Heartbeat {
        device: "cuda:0",
        chunks_per_forward: 3.5,
        express_slots: 4,
        models: &models,
        ..heartbeat("gpu-1", 32, &[], false)
    })
    .await
    .expect("heartbeat");
    s.record_heartbeat(&heartbeat("cpu-1", 8, &[], true))
        .await
        .expect("heartbeat");
    let fleet = s.workers_view().await.expect("workers");
    let gpu = fleet.iter().find(|w| w.worker == "gpu-1").expect("gpu-1");
    assert_eq!(gpu.device, "cuda:0");
    assert_eq!(gpu.chunks_per_forward, 3.5);
    assert_eq!((gpu.denoise_slots, gpu.express_slots), (32, 4));
    assert_eq!(gpu.models, models);
    let cpu = fleet.iter().find(|w| w.worker == "cpu-1").expect("cpu-1");
    assert_eq!((cpu.device.as_str(), cpu.draining), ("cpu", true));
    assert!(cpu.models.is_empty(), "{:?}", cpu.models);
    // The next heartbeat replaces what the last one said.
    s.record_heartbeat(&Heartbeat {
        device: "cuda:1",
        chunks_per_forward: 0.0,
        ..heartbeat("gpu-1", 32, &[], false)
    })
    .await
    .expect("heartbeat");
    let fleet = s.workers_view().await.expect("workers");
    let gpu = fleet.iter().find(|w| w.worker == "gpu-1").expect("gpu-1");
    assert_eq!(
        (gpu.device.as_str(), gpu.chunks_per_forward),
        ("cuda:1", 0.0)
    );
}

pub(super) async fn dead_letters_causes_are_kept_newest_first(s: &dyn JobStore) {
    for (i, queue) in ["denoise", "vocode", "results"].iter().enumerate() {
        s.record_dead_letter(&crate::store::DeadLetter {
            by: if *queue == "results" {
                "coordinator"
            } else {
                "w1"
            },
            queue,
            error: &format!("expected value at line 1 column {i}"),
            size_bytes: 10 + i as u64,
        })
        .await
        .expect("record");
    }
    let letters = s.dead_letters(2).await.expect("dead letters");
    let seen: Vec<(&str, &str, u64)> = letters
        .iter()
        .map(|d| (d.by.as_str(), d.queue.as_str(), d.size_bytes))
        .collect();
    assert_eq!(seen, [("coordinator", "results", 12), ("w1", "vocode", 11)]);
    assert!(letters[0].error.ends_with("column 2"));
    assert!(letters[0].at >= letters[1].at);
}

job_store_suite!(
    dead_letters_causes_are_kept_newest_first,
    the_fleet_view_shows_what_heartbeats_told,
    bounds_in_flight_tasks,
    capacity_follows_the_heartbeats_of_live_workers,
    classes_go_in_order_and_batch_keeps_a_share,
    tenants_share_a_class_by_weight,
    a_batch_chunk_yields_to_interactive_work_and_resumes,
    a_next_chunk_is_routed_to_the_worker_holding_its_latent,
);
