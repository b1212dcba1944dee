//! tutti studio in a real browser (headless Debian chromium over WebDriver) against real farms:
//! `tutti dev` (SQLite, in-process queue, local blobs) and the farm on Postgres, RabbitMQ and S3.
//! Screenshots of each screen land in `$CARGO_TARGET_TMPDIR/studio/` (with
//! `TUTTI_STUDIO_DOCS=1` also in `docs/studio/`, the README's pictures).

#[macro_use]
mod common;

use std::time::Duration;

use common::browser::Browser;
use common::{request, Backend, Farm, FarmOptions};
use serde_json::Value;
use tutti_proto::v1 as pb;

both_backends!(
    a_listener_builds_hears_cancels_and_pages,
    a_batch_is_uploaded_followed_and_cancelled,
    the_picker_follows_the_catalogue_and_a_plain_prompt_plays
);

/// The card of the newest job on the create view.
const CARD: &str = "#jobs .job";

/// The newest card's job, as the server stored it.
async fn newest_job(farm: &Farm, b: &Browser) -> pb::Job {
    let id = b
        .js(&format!(
            "return document.querySelector('{CARD}').dataset.jobId"
        ))
        .await;
    farm.client()
        .await
        .get_job(pb::GetJobRequest {
            id: id.as_str().unwrap_or_default().into(),
        })
        .await
        .expect("the page's job exists")
        .into_inner()
}

async fn a_listener_builds_hears_cancels_and_pages(backend: Backend) {
    let farm = Farm::start(FarmOptions::on(backend)).await;
    let b = Browser::start().await;
    b.open(&format!("{}?page_size=2", farm.studio_url())).await;
    let tag = match backend {
        Backend::Distributed => "farm",
        Backend::Embedded => "dev",
    };

    // A bad field: the server's rule appears next to the field, in the preview and on submit,
    // and nothing is stored.
    b.wait_js(
        "return document.querySelectorAll('#f-instruments input').length > 0",
        "the suggestions from RenderPrompt",
    )
    .await;
    b.fill("#f-genre", "ambient").await;
    b.fill("#f-tempo", "500").await;
    b.click("#submit").await;
    b.wait_js(
        "return document.querySelector('#form-status').textContent.startsWith('Not submitted')",
        "the refused submit",
    )
    .await;
    let err = b
        .text(r#".error[data-error-for="structured.tempo_bpm"]"#)
        .await;
    assert_eq!(err, "must be between 40 and 240 BPM");
    assert_eq!(
        b.js("return document.querySelector('#f-tempo').getAttribute('aria-invalid')")
            .await,
        "true"
    );
    assert_eq!(
        b.js("return document.querySelectorAll('.job').length")
            .await,
        0
    );
    assert_eq!(farm.job_count().await, 0, "a refused form stored a job");
    if backend == Backend::Embedded {
        b.screenshot("field-error").await;
    }

    // The form builds a structured prompt; the preview is the server's prompt builder.
    b.fill("#f-tempo", "100").await;
    b.fill("#f-mood", "calm").await;
    b.select("#f-key", "A").await;
    b.select("#f-mode", "minor").await;
    b.click(r#"#f-instruments input[value="piano"]"#).await;
    b.click(r#"#f-structure input[value="intro"]"#).await;
    b.fill("#f-duration", "3").await;
    let expected = "calm ambient with piano, 100 BPM, in A minor, intro";
    b.wait_js(
        &format!("return document.querySelector('#preview').textContent === {expected:?}"),
        "the preview of the structured prompt",
    )
    .await;
    assert_eq!(
        b.text(r#".error[data-error-for="structured.tempo_bpm"]"#)
            .await,
        "",
        "the fixed field still shows its error"
    );

    // Submit: the progress bar reaches 100% and the player holds the asked length.
    b.click("#submit").await;
    b.wait_js(
        &format!("const c = document.querySelector('{CARD}'); return !!c && c.dataset.state === 'succeeded'"),
        "the job to succeed",
    )
    .await;
    assert_eq!(b.text(&format!("{CARD} .percent")).await, "100%");
    let bar = b
        .js(&format!(
            "const p = document.querySelector('{CARD} progress'); return [p.value, p.max]"
        ))
        .await;
    assert_eq!(bar[0], bar[1], "progress bar not full: {bar}");
    assert!(bar[1].as_f64().unwrap_or(0.0) > 1.0, "no steps: {bar}");
    assert_eq!(b.text(&format!("{CARD} .prompt-text")).await, expected);
    b.wait_js(
        &format!(
            "const a = document.querySelector('{CARD} audio'); return !!a && a.readyState >= 1"
        ),
        "the audio's metadata",
    )
    .await;
    let duration = b
        .js(&format!(
            "return document.querySelector('{CARD} audio').duration"
        ))
        .await
        .as_f64()
        .expect("audio duration");
    assert!(
        (duration - 3.0).abs() < 0.02,
        "the audio lasts {duration} s, asked 3 s"
    );
    // Seeking works (the audio is served with ranges): a seek lands where it was asked.
    b.js(&format!(
        "const a = document.querySelector('{CARD} audio'); a.currentTime = 2.0; return true"
    ))
    .await;
    b.wait_js(
        &format!(
            "const a = document.querySelector('{CARD} audio'); return !a.seeking && Math.abs(a.currentTime - 2.0) < 0.05"
        ),
        "the seek",
    )
    .await;
    assert_eq!(
        b.js(&format!(
            "const a = document.querySelector('{CARD} audio'); return a.seekable.length > 0 && a.seekable.end(0) > 2.9"
        ))
        .await,
        true,
        "the audio is not seekable"
    );
    let stored = newest_job(&farm, &b).await;
    assert_eq!(stored.prompt_text, expected);
    let sent = stored.request.expect("request");
    assert_eq!(sent.duration_seconds, Some(3.0));
    match sent.prompt_kind {
        Some(pb::submit_generation_request::PromptKind::Structured(s)) => {
            assert_eq!((s.genre.as_str(), s.mood.as_str()), ("ambient", "calm"));
            assert_eq!(s.tempo_bpm, Some(100.0));
            assert_eq!(s.key, "A minor");
            assert_eq!(s.instruments, vec!["piano".to_string()]);
        }
        other => panic!("the page sent {other:?}"),
    }
    // The waveform was drawn from the decoded audio (not a blank canvas).
    b.wait_js(
        &format!(
            "const c = document.querySelector('{CARD} canvas.wave'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
             for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 200 && d[i] < 100) return true; return false"
        ),
        "the waveform",
    )
    .await;
    b.screenshot(&format!("create-{tag}")).await;

    // Same again: the same seed; variation: another seed.
    b.click(&format!("{CARD} .same")).await;
    b.wait_js(
        "return document.querySelectorAll('#jobs .job').length === 2",
        "the same-again job",
    )
    .await;
    let seeds = b
        .js("return Array.from(document.querySelectorAll('#jobs .job .params pre')).map(p => p.textContent.split('\\n')[0])")
        .await;
    assert_eq!(seeds[0], seeds[1], "same again changed the seed: {seeds}");

    // A long job is cancelled from its card.
    b.fill("#f-steps", "200").await;
    b.fill("#f-duration", "20").await;
    b.click("#submit").await;
    b.wait_js(
        "return document.querySelectorAll('#jobs .job').length === 3",
        "the long job's card",
    )
    .await;
    b.wait_js(
        &format!("return document.querySelector('{CARD}').dataset.state === 'running'"),
        "the long job to start",
    )
    .await;
    b.click(&format!("{CARD} .cancel")).await;
    b.wait_js(
        &format!("return document.querySelector('{CARD}').dataset.state === 'cancelled'"),
        "the cancel",
    )
    .await;
    let long_id = b
        .js(&format!(
            "return document.querySelector('{CARD}').dataset.jobId"
        ))
        .await;
    let cancelled = farm
        .wait_job(
            long_id.as_str().unwrap_or_default(),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(common::state(&cancelled), pb::JobState::Cancelled);
    assert!(cancelled.steps_done < 200);

    // History: newest first, two to a page, a search by prompt text.
    let mut client = farm.client().await;
    for p in ["zebra crossing groove", "quiet harbour"] {
        client.submit_generation(request(p)).await.expect("submit");
    }
    b.click(r#".tab[data-view="history"]"#).await;
    let items = "Array.from(document.querySelectorAll('#history li[data-job-id]')).map(l => l.dataset.jobId)";
    b.wait_js(&format!("return {items}.length === 2"), "the first page")
        .await;
    let first = b.js(&format!("return {items}")).await;
    let page1: Vec<String> = serde_json::from_value(first).expect("ids");
    let mut seen = page1.clone();
    let listed = list_all(&farm).await;
    assert_eq!(page1, listed[..2].to_vec(), "page 1 is not the newest two");
    while b
        .js("return !document.querySelector('#history-older').disabled")
        .await
        == true
    {
        let before = b.text("#history-page").await;
        b.click("#history-older").await;
        b.wait_js(
            &format!("return document.querySelector('#history-page').textContent !== {before:?}"),
            "the next page",
        )
        .await;
        let ids: Vec<String> =
            serde_json::from_value(b.js(&format!("return {items}")).await).expect("ids");
        assert!(ids.len() <= 2 && !ids.is_empty());
        seen.extend(ids);
    }
    assert_eq!(
        seen, listed,
        "paging did not walk every job once, newest first"
    );
    b.click("#history-newer").await;
    b.wait_js(
        "return document.querySelector('#history-page').textContent !== ''",
        "a page",
    )
    .await;
    b.fill("#h-text", "ZEBRA").await;
    b.click("#history-form button[type=submit]").await;
    b.wait_js(
        &format!(
            "const l = {items}; return l.length === 1 && document.querySelector('#history li .prompt-text').textContent === 'zebra crossing groove'"
        ),
        "the search",
    )
    .await;
    b.fill("#h-text", "").await;
    b.select("#h-state", "cancelled").await;
    b.click("#history-form button[type=submit]").await;
    b.wait_js(
        &format!("const l = {items}; return l.length === 1 && l[0] === {long_id}"),
        "the state filter",
    )
    .await;
    b.select("#h-state", "").await;
    b.click("#history-form button[type=submit]").await;
    b.wait_js(
        &format!("return {items}.length === 2"),
        "the first page again",
    )
    .await;
    b.screenshot(&format!("history-{tag}")).await;

    // The operator view shows the farm's worker.
    let worker = match backend {
        Backend::Distributed => "w0",
        Backend::Embedded => "embedded-w0",
    };
    b.click(r#".tab[data-view="operator"]"#).await;
    b.wait_js(
        &format!(
            "const r = document.querySelector('#workers tr[data-worker=\"{worker}\"]'); return !!r && r.dataset.state === 'live'"
        ),
        "the worker in the operator view",
    )
    .await;
    // Its device and the fill of its forwards come from its heartbeats (it ran jobs above).
    let row = format!("#workers tr[data-worker=\"{worker}\"]");
    assert_eq!(b.text(&format!("{row} td.device")).await, "cpu");
    b.wait_js(
        &format!(
            "const c = document.querySelector('{row} td:nth-child(9)'); return !!c && Number(c.textContent) >= 1"
        ),
        "chunks per forward of a worker that ran jobs",
    )
    .await;
    if backend == Backend::Embedded {
        b.screenshot("operator-dev").await;
        // A phone-width screen: the form is one column and nothing scrolls sideways.
        b.set_width(390, 844).await;
        b.click(r#".tab[data-view="create"]"#).await;
        b.wait_js(
            "return document.documentElement.scrollWidth <= window.innerWidth",
            "a page as wide as the phone",
        )
        .await;
        b.screenshot("phone").await;
    }
    b.close().await;
}

/// A batch from the page: a manifest with bad lines is refused whole with the server's reason
/// for each line (nothing stored); a good CSV manifest is submitted by upload, its card shows
/// the counts as items end, and it is cancelled from the keyboard; then its results manifest
/// is linked. The page is usable at phone width and every control has a label.
async fn a_batch_is_uploaded_followed_and_cancelled(backend: Backend) {
    let farm = Farm::start(FarmOptions::on(backend)).await;
    let b = Browser::start().await;
    b.open(&farm.studio_url()).await;
    let tag = match backend {
        Backend::Distributed => "farm",
        Backend::Embedded => "dev",
    };
    let mut batches =
        pb::batches_client::BatchesClient::new(farm.channel().await.expect("channel"));
    b.click(r#".tab[data-view="batches"]"#).await;
    b.wait_js(
        "return document.querySelector('#batches').textContent.includes('No batches')",
        "the empty list",
    )
    .await;

    // Every form control of every view has a label.
    let unlabelled = b
        .js("return Array.from(document.querySelectorAll('input, select, textarea')).filter(e => \
             !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.getAttribute('aria-labelledby')).map(e => e.id)")
        .await;
    assert_eq!(
        unlabelled,
        serde_json::json!([]),
        "controls without a label"
    );

    // Bad lines: the page lists the server's rule for each, and nothing is submitted.
    let dir = tempfile::tempdir().expect("tempdir");
    let bad = dir.path().join("bad.jsonl");
    std::fs::write(
        &bad,
        concat!(
            "{\"item_id\": \"a\", \"prompt\": \"calm piano\", \"duration_seconds\": 1}\n",
            "{\"item_id\": \"b\", \"prompt\": \"loud drums\", \"steps\": 5000}\n",
            "{\"item_id\": \"c\", \"prompt\": \"folk\", \"tempo\": 90}\n",
            "not json at all\n",
        ),
    )
    .expect("write manifest");
    upload(&b, &bad).await;
    b.wait_js(
        "return document.querySelector('#batch-status').textContent.startsWith('Not submitted')",
        "the refused manifest",
    )
    .await;
    let problems = b
        .js("return Array.from(document.querySelectorAll('#batch-problems li')).map(l => [l.dataset.line, l.textContent])")
        .await;
    let problems: Vec<(String, String)> = serde_json::from_value(problems).expect("problems");
    let lines: Vec<&str> = problems.iter().map(|(l, _)| l.as_str()).collect();
    assert_eq!(lines, ["2", "3", "4"], "{problems:?}");
    assert!(problems[0].1.contains("steps: must be"), "{problems:?}");
    assert!(problems[1].1.contains("tempo"), "{problems:?}");
    assert!(
        b.text("#batch-status").await.contains("3 of 4 rows"),
        "{}",
        b.text("#batch-status").await
    );
    assert_eq!(
        b.js("return document.querySelector('#b-file').getAttribute('aria-invalid')")
            .await,
        "true"
    );
    let listed = batches
        .list_batches(pb::ListBatchesRequest::default())
        .await
        .expect("list batches")
        .into_inner();
    assert!(listed.batches.is_empty(), "a refused manifest made a batch");
    assert_eq!(farm.job_count().await, 0, "a refused manifest stored jobs");
    if backend == Backend::Embedded {
        b.screenshot("batch-refused").await;
    }

    // A good CSV manifest: two short items, three long ones.
    let good = dir.path().join("catalog.csv");
    let mut csv = String::from("item_id,prompt,duration_seconds,steps\n");
    for i in 0..2 {
        csv.push_str(&format!("short-{i},quiet harbour {i},1,4\n"));
    }
    for i in 0..3 {
        csv.push_str(&format!("long-{i},endless drone {i},20,200\n"));
    }
    std::fs::write(&good, csv).expect("write manifest");
    b.fill("#b-name", "catalog").await;
    upload(&b, &good).await;
    b.wait_js(
        "return document.querySelector('#batch-status').textContent.startsWith('Submitted catalog')",
        "the submitted manifest",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelectorAll('#batch-problems li').length")
            .await,
        0
    );
    let card = "#batches .batch";
    let count = |k: &str| {
        format!("Number(document.querySelector('{card} dd[data-count=\"{k}\"]').textContent)")
    };
    b.wait_js(
        &format!(
            "return !!document.querySelector('{card}') && {} === 5",
            count("total")
        ),
        "the batch's card",
    )
    .await;
    let id = b
        .js(&format!(
            "return document.querySelector('{card}').dataset.batchId"
        ))
        .await;
    let id = id.as_str().expect("batch id").to_string();
    let stored = batches
        .get_batch(pb::GetBatchRequest { id: id.clone() })
        .await
        .expect("the page's batch exists")
        .into_inner();
    assert_eq!((stored.name.as_str(), stored.total), ("catalog", 5));
    assert!(
        stored.manifest_uri.ends_with(".csv"),
        "{}",
        stored.manifest_uri
    );
    // The counts follow the items as the two short ones end.
    b.wait_js_for(
        &format!("return {} === 2", count("succeeded")),
        "two items to succeed",
        Duration::from_secs(120),
    )
    .await;
    b.wait_js(
        &format!("return document.querySelector('{card} .rate').textContent.includes('items/s')"),
        "throughput and ETA",
    )
    .await;
    b.screenshot(&format!("batches-{tag}")).await;

    // Cancel from the keyboard: focus the button and press Enter.
    b.js(&format!(
        "document.querySelector('{card} button.cancel').focus(); return true"
    ))
    .await;
    b.client
        .active_element()
        .await
        .expect("focused element")
        .send_keys("\u{E007}")
        .await
        .expect("press Enter");
    b.wait_js(
        &format!("return document.querySelector('{card}').dataset.state === 'cancelled'"),
        "the cancel",
    )
    .await;
    let cancelled = batches
        .get_batch(pb::GetBatchRequest { id: id.clone() })
        .await
        .expect("get batch")
        .into_inner();
    assert_eq!(cancelled.state(), pb::BatchState::Cancelled);
    assert_eq!(cancelled.succeeded, 2);
    // Once every item has ended, the card links the results manifest: one line per item.
    b.wait_js_for(
        &format!("return !!document.querySelector('{card} a.results')"),
        "the results link",
        Duration::from_secs(60),
    )
    .await;
    assert_eq!(
        b.text(&format!("{card} dd[data-count=\"cancelled\"]"))
            .await,
        "3"
    );
    let href = b
        .js(&format!(
            "return document.querySelector('{card} a.results').href"
        ))
        .await;
    let results = farm.fetch(href.as_str().expect("href")).await;
    let results = String::from_utf8(results).expect("utf-8 results");
    assert_eq!(results.lines().count(), 5, "{results}");
    assert!(
        results.contains("short-0") && results.contains("long-2"),
        "{results}"
    );

    // Delete the batch: the first click arms the button, the second deletes its items' jobs.
    b.click(&format!("{card} button.delete")).await;
    assert_eq!(
        b.text(&format!("{card} button.delete")).await,
        "Really delete?"
    );
    b.click(&format!("{card} button.delete")).await;
    b.wait_js(
        &format!("const c = document.querySelector('{card}'); return !!c && c.dataset.deleted === 'true'"),
        "the deleted batch",
    )
    .await;
    let note = b.text(&format!("{card} .deleted-note")).await;
    assert!(note.starts_with("Deleted: "), "{note}");
    let jobs = farm
        .client()
        .await
        .list_jobs(pb::ListJobsRequest {
            page_size: 500,
            labels: [("tutti.batch".to_string(), id.clone())].into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .jobs;
    assert!(!jobs.is_empty());
    assert!(
        jobs.iter().all(|j| j.deleted_at.is_some()),
        "every item's job is deleted"
    );

    // Phone width: the batches view fits.
    b.set_width(390, 844).await;
    b.wait_js(
        "return document.documentElement.scrollWidth <= window.innerWidth",
        "a batches view as wide as the phone",
    )
    .await;
    if backend == Backend::Embedded {
        b.screenshot("batches-phone").await;
    }
    b.close().await;
}

/// The model picker and the plain prompt box: the picker lists the packs the farm serves (the
/// default marked and chosen, each with its limits and whether workers can run it); a model
/// shows only the fields it takes and its own samplers, and what was typed stays across a
/// switch; a prompt written as people write it shows its controls in the preview, the builder
/// adds what it lacks and writes it into the box, and it submits and plays.
async fn the_picker_follows_the_catalogue_and_a_plain_prompt_plays(backend: Backend) {
    let farm = Farm::start(FarmOptions {
        packs: Some(common::packs::stable_audio_and_tiny_key_serving),
        coordinator_env: vec![("TUTTI_DEFAULT_MODEL", "tiny".into())],
        ..FarmOptions::on(backend)
    })
    .await;
    let b = Browser::start().await;
    b.open(&farm.studio_url()).await;
    let tag = match backend {
        Backend::Distributed => "farm",
        Backend::Embedded => "dev",
    };

    // The picker: every served pack, the default marked and chosen, limits beside each.
    let cards =
        "Array.from(document.querySelectorAll('#models .model-card')).map(c => c.dataset.model)";
    b.wait_js(&format!("return {cards}.length === 3"), "the picker")
        .await;
    assert_eq!(
        b.js(&format!("return {cards}")).await,
        serde_json::json!(["stable-audio-open-1.0", "stable-audio-open-small", "tiny"])
    );
    assert_eq!(
        b.js("return Array.from(document.querySelectorAll('#models .badge')).map(x => x.closest('.model-card').dataset.model)")
            .await,
        serde_json::json!(["tiny"])
    );
    assert_eq!(
        b.js("return document.querySelector('#models input:checked').value")
            .await,
        "tiny"
    );
    let card = |m: &str| format!(r#"#models .model-card[data-model="{m}"]"#);
    let small = card("stable-audio-open-small");
    let limits = b.text(&format!("{small} .model-limits")).await;
    assert!(
        limits.starts_with("stereo 44.1 kHz · up to 1.4") && limits.ends_with("1 sampler"),
        "{limits}"
    );
    assert!(b
        .text(&format!("{} .model-limits", card("tiny")))
        .await
        .starts_with("mono 16 kHz · up to 30 s"),);
    // How a pack serves asked keys, where it does more than render them as asked.
    assert_eq!(
        b.text(&format!("{} .model-keys", card("tiny"))).await,
        "\"minor\" alone is served in C, E, G; other tonics are rendered up to 1 semitone away \
         and played back in the asked key"
    );
    assert_eq!(
        b.js(&format!(
            "return getComputedStyle(document.querySelector('{small} .model-keys')).display"
        ))
        .await,
        "none",
        "a pack that renders keys as asked says nothing of them"
    );
    b.wait_js(
        "const s = Array.from(document.querySelectorAll('#models .model-state')); return s.length === 3 && s.every(x => x.dataset.ready === 'true')",
        "every model ready (the worker's heartbeat)",
    )
    .await;

    // The fields follow the model; what was typed stays.
    let shown =
        |input: &str| format!("return !document.querySelector('[data-input=\"{input}\"]').hidden");
    let samplers =
        "return Array.from(document.querySelectorAll('#f-sampler option')).map(o => o.value)";
    assert_eq!(b.js(&shown("MODEL_INPUT_INIT_AUDIO")).await, false);
    assert_eq!(b.js(&shown("MODEL_INPUT_LYRICS")).await, false);
    assert_eq!(b.js(&shown("MODEL_INPUT_NEGATIVE_PROMPT")).await, true);
    assert_eq!(
        b.js(samplers).await,
        serde_json::json!(["SAMPLER_UNSPECIFIED", "SAMPLER_FLOW_EULER"])
    );
    b.fill("#f-negative", "distortion").await;
    b.select("#f-sampler", "SAMPLER_FLOW_EULER").await;
    b.click(&format!("{small} input")).await;
    b.wait_js(
        &shown("MODEL_INPUT_INIT_AUDIO"),
        "the init audio field of a waveform-VAE model",
    )
    .await;
    assert_eq!(
        b.js(samplers).await,
        serde_json::json!(["SAMPLER_UNSPECIFIED", "SAMPLER_PING_PONG"])
    );
    assert_eq!(
        b.js("return document.querySelector('#f-sampler').value")
            .await,
        "SAMPLER_UNSPECIFIED"
    );
    let hint = b.text("#f-duration-limit").await;
    assert!(
        hint.ends_with("longer than stable-audio-open-small makes"),
        "{hint}"
    );
    assert!(b
        .text("#preview-model")
        .await
        .contains("reads the tempo and key in the text only"),);
    assert_eq!(
        b.js("return document.querySelector('#f-negative').value")
            .await,
        "distortion"
    );
    b.screenshot(&format!("models-{tag}")).await;
    // Audio-to-audio from the page: the clip goes with the request, and the job runs from it.
    let dir = tempfile::tempdir().expect("tempdir");
    let clip = dir.path().join("clip.wav");
    let samples: Vec<f32> = (0..44100)
        .flat_map(|i| {
            let x = (i as f32 * 440.0 * std::f32::consts::TAU / 44100.0).sin() * 0.5;
            [x, x]
        })
        .collect();
    std::fs::write(
        &clip,
        tutti_shared::audio::encode_wav(&samples, 2, 44100).expect("encode"),
    )
    .expect("write clip");
    b.client
        .find(fantoccini::Locator::Css("#f-init-audio"))
        .await
        .expect("file input")
        .send_keys(&clip.display().to_string())
        .await
        .expect("choose the clip");
    b.fill("#f-prompt", "a calm piano").await;
    b.fill("#f-duration", "1").await;
    b.click("#submit").await;
    b.wait_js(
        &format!("const c = document.querySelector('{CARD}'); return !!c && c.dataset.state === 'succeeded'"),
        "the audio-to-audio job",
    )
    .await;
    let job = newest_job(&farm, &b).await;
    let sent = job.request.expect("request");
    assert_eq!(
        sent.init_strength,
        Some(0.7),
        "no clip went with the request"
    );
    assert_eq!(
        sent.model.map(|m| m.name).as_deref(),
        Some("stable-audio-open-small")
    );
    assert_eq!(job.outputs[0].channels, 2);
    b.fill("#f-prompt", "").await;
    b.fill("#f-duration", "4").await;
    b.click(&format!("{} input", card("tiny"))).await;
    b.wait_js(
        "return document.querySelector('[data-input=\"MODEL_INPUT_INIT_AUDIO\"]').hidden",
        "the init audio field to go",
    )
    .await;
    assert_eq!(
        b.js("return document.querySelector('#f-sampler').value")
            .await,
        "SAMPLER_FLOW_EULER",
        "the sampler chosen for tiny did not come back"
    );

    // A prompt as people write it: the preview reads its controls.
    let plain = "melancholic lo-fi piano, 75 BPM, late night study session";
    b.fill("#f-prompt", plain).await;
    b.wait_js(
        &format!(
            "return document.querySelector('#preview').textContent === {plain:?} && \
             document.querySelector('#preview-controls').textContent === 'tempo 75 BPM · key unknown'"
        ),
        "the preview of the plain prompt",
    )
    .await;
    assert_eq!(
        b.text("#preview-model").await,
        "tiny takes the tempo and key as controls."
    );
    // The builder adds what the text lacks (piano is there already).
    b.fill("#f-genre", "hip hop").await;
    b.click(r#"#f-instruments input[value="piano"]"#).await;
    b.select("#f-key", "A").await;
    b.select("#f-mode", "minor").await;
    let expected = format!("{plain}, hip hop, in A minor");
    b.wait_js(
        &format!(
            "return document.querySelector('#preview').textContent === {expected:?} && \
             document.querySelector('#preview-controls').textContent === 'tempo 75 BPM · key A minor'"
        ),
        "the completed prompt",
    )
    .await;
    assert_eq!(
        b.text("#preview-added").await,
        "The builder adds: hip hop, in A minor"
    );
    if backend == Backend::Embedded {
        b.screenshot("plain-prompt").await;
    }
    // ... and writes it into the box.
    b.click("#builder-fill").await;
    b.wait_js(
        &format!(
            "return document.querySelector('#f-prompt').value === {expected:?} && \
             document.querySelector('#f-genre').value === '' && document.querySelector('#f-key').value === '' && \
             document.querySelectorAll('#f-instruments input:checked').length === 0"
        ),
        "the prompt box to hold the builder's additions",
    )
    .await;

    // It submits and plays.
    b.fill("#f-duration", "2").await;
    b.click("#submit").await;
    b.wait_js(
        &format!("const c = document.querySelector('{CARD}'); return document.querySelectorAll('{CARD}').length === 2 && c.dataset.state === 'succeeded'"),
        "the plain prompt's job",
    )
    .await;
    assert_eq!(b.text(&format!("{CARD} .prompt-text")).await, expected);
    b.wait_js(
        &format!(
            "const a = document.querySelector('{CARD} audio'); return !!a && a.readyState >= 1 && Math.abs(a.duration - 2) < 0.02"
        ),
        "the audio of the plain prompt",
    )
    .await;
    let stored = newest_job(&farm, &b).await;
    let sent = stored.request.expect("request");
    assert_eq!(
        sent.prompt_kind,
        Some(pb::submit_generation_request::PromptKind::Prompt(
            expected.clone()
        ))
    );
    assert_eq!(sent.sampler(), pb::Sampler::FlowEuler);
    assert_eq!(sent.negative_prompt, "distortion");
    assert_eq!(
        sent.model.map(|m| m.name).as_deref(),
        Some("tiny"),
        "the picked model"
    );
    b.close().await;
}

/// Chooses `path` in the manifest file input and submits the upload form.
async fn upload(b: &Browser, path: &std::path::Path) {
    b.js("document.querySelector('#batch-status').textContent = ''; return true")
        .await;
    b.client
        .find(fantoccini::Locator::Css("#b-file"))
        .await
        .expect("file input")
        .send_keys(&path.display().to_string())
        .await
        .expect("choose the file");
    b.click("#batch-upload button[type=submit]").await;
}

/// Every job of the farm's default tenant, newest first, through ListJobs.
async fn list_all(farm: &Farm) -> Vec<String> {
    farm.client()
        .await
        .list_jobs(pb::ListJobsRequest {
            page_size: 500,
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner()
        .jobs
        .into_iter()
        .map(|j| j.id)
        .collect()
}

/// With auth on: the operator view needs an admin key, shows workers come and go; one
/// tenant's key sees none of another's jobs.
#[tokio::test]
async fn operators_see_the_fleet_and_tenants_see_only_their_jobs() {
    let mut farm = Farm::start(FarmOptions {
        auth: true,
        coordinator_env: vec![("TUTTI_WORKER_TIMEOUT", "2s".into())],
        ..FarmOptions::on(Backend::Distributed)
    })
    .await;
    for t in ["ops", "alice", "bob"] {
        farm.operator(&["tenant", "create", t]);
    }
    let admin = farm.create_key("ops", true);
    let alice = farm.create_key("alice", false);
    let bob = farm.create_key("bob", false);
    let b = Browser::start().await;
    b.open(&farm.studio_url()).await;
    assert_eq!(
        b.js("return document.querySelector('#key-form').hidden")
            .await,
        false,
        "auth is on but the page asks for no key"
    );

    use_key(&b, &admin).await;
    b.click(r#".tab[data-view="operator"]"#).await;
    let row = |w: &str, state: &str| {
        format!(
            "const r = document.querySelector('#workers tr[data-worker=\"{w}\"]'); return !!r && r.dataset.state === '{state}'"
        )
    };
    b.wait_js(&row("w0", "live"), "w0 in the operator view")
        .await;
    let w1 = farm.add_worker(&[]);
    b.wait_js(&row("w1", "live"), "w1 to appear").await;
    assert_eq!(
        b.text(r#"#workers tr[data-worker="w1"] td.device"#).await,
        "cpu",
        "the device its heartbeat told"
    );
    b.screenshot("operator").await;
    farm.terminate_worker(w1);
    b.wait_js(&row("w1", "gone"), "w1 to be marked gone").await;
    assert!(b.js(&row("w0", "live")).await == true, "w0 went with w1");

    // The CLI reads the same service: `tutti workers` with the admin key, not with a tenant's.
    let server = format!("http://{}", farm.addr);
    let cli = |key: &str, sub: &str| {
        std::process::Command::new(common::bin())
            .args([sub, "--server", &server, "--api-key", key])
            .env("RUST_LOG", "warn")
            .output()
            .expect("run tutti")
    };
    let out = cli(&admin, "workers");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("w0 ") && l.contains("live") && l.contains(" cpu ")),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("w1 ") && l.contains("gone")),
        "{stdout}"
    );
    let out = cli(&alice, "queues");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("PermissionDenied"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A tenant's key may not see the fleet.
    use_key(&b, &alice).await;
    b.click(r#".tab[data-view="operator"]"#).await;
    b.wait_js(
        "return document.querySelector('#operator-error').textContent.includes('admin key')",
        "the operator view to refuse a tenant key",
    )
    .await;

    // Alice makes a job from the page.
    b.click(r#".tab[data-view="create"]"#).await;
    b.fill("#f-genre", "folk").await;
    b.fill("#f-duration", "2").await;
    b.click("#submit").await;
    b.wait_js(
        &format!("const c = document.querySelector('{CARD}'); return !!c && c.dataset.state === 'succeeded'"),
        "alice's job",
    )
    .await;
    let alice_job = b
        .js(&format!(
            "return document.querySelector('{CARD}').dataset.jobId"
        ))
        .await;
    let alice_job = alice_job.as_str().expect("job id").to_string();
    assert_eq!(farm.tenant_job_count("alice").await, 1);
    b.click(r#".tab[data-view="history"]"#).await;
    b.wait_js(
        &format!(
            "return Array.from(document.querySelectorAll('#history li[data-job-id]')).map(l => l.dataset.jobId).join() === {alice_job:?}"
        ),
        "alice's history",
    )
    .await;

    // Bob sees none of it: an empty history, and alice's job id is not found.
    use_key(&b, &bob).await;
    b.wait_js(
        "return document.querySelector('#history li') !== null && document.querySelectorAll('#history li[data-job-id]').length === 0",
        "bob's empty history",
    )
    .await;
    let r: Value = b
        .client
        .execute_async(
            "const [id, done] = arguments; \
             fetch('/api/jobs/' + id, { headers: { Authorization: 'Bearer ' + localStorage.getItem('tutti.studio.key') } }) \
               .then(async r => done([r.status, await r.json()]));",
            vec![Value::String(alice_job.clone())],
        )
        .await
        .expect("fetch as bob");
    assert_eq!(r[0], 404, "bob reached alice's job: {r}");
    assert_eq!(r[1]["code"], "NOT_FOUND");
    b.screenshot("tenant-isolation").await;
    b.close().await;
}

async fn use_key(b: &Browser, key: &str) {
    b.fill("#api-key", key).await;
    b.click("#key-form button[type=submit]").await;
    b.wait_js(
        "return document.querySelector('#key-status').textContent !== ''",
        "the key to be saved",
    )
    .await;
    b.js("document.querySelector('#key-status').textContent = ''; return true")
        .await;
}
