//! The public REST API on both farms: `/v1/openapi.json` passes a real OpenAPI validator
//! (openapi-spec-validator, installed into the venv by scripts/setup), and every route it
//! lists is called with an API key as `Authorization: Bearer`; each JSON answer carries only
//! the fields its schema names, errors are `{code, message, field}`, the event stream is
//! server-sent events.

#[macro_use]
mod common;

use std::path::PathBuf;
use std::time::Duration;

use common::{Backend, Farm, FarmOptions};
use serde_json::{json, Value};

struct Api {
    base: String,
    http: reqwest::Client,
}

impl Api {
    async fn call(
        &self,
        key: Option<&str>,
        verb: &str,
        path: &str,
        body: Option<&Value>,
    ) -> (u16, Value) {
        let url = format!("{}{path}", self.base);
        let mut req = match verb {
            "get" => self.http.get(&url),
            "post" => self.http.post(&url),
            "put" => self.http.put(&url),
            "delete" => self.http.delete(&url),
            other => panic!("verb {other}"),
        };
        if let Some(k) = key {
            req = req.header("authorization", format!("Bearer {k}"));
        }
        if verb != "get" && verb != "delete" {
            req = req
                .header("content-type", "application/json")
                .body(body.map_or_else(String::new, Value::to_string));
        }
        let resp = req.send().await.expect("http");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, value)
    }

    /// The first event of a server-sent event stream.
    async fn first_event(&self, key: &str, path: &str) -> Value {
        let mut resp = self
            .http
            .get(format!("{}{path}", self.base))
            .header("authorization", format!("Bearer {key}"))
            .send()
            .await
            .expect("http");
        assert_eq!(resp.status().as_u16(), 200);
        let kind = resp.headers()["content-type"]
            .to_str()
            .unwrap_or("")
            .to_string();
        assert!(kind.starts_with("text/event-stream"), "{kind}");
        let mut buf = String::new();
        loop {
            let chunk = tokio::time::timeout(Duration::from_secs(10), resp.chunk())
                .await
                .expect("an event in time")
                .expect("read")
                .expect("stream open");
            buf.push_str(&String::from_utf8_lossy(&chunk));
            if let Some(line) = buf.lines().find(|l| l.starts_with("data:")) {
                if buf.contains("\n\n") {
                    return serde_json::from_str(line.trim_start_matches("data:").trim())
                        .expect("event json");
                }
            }
        }
    }
}

fn venv_python() -> PathBuf {
    let venv = std::env::var("VIRTUAL_ENV")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").expect("HOME")).join(".cache/tutti/venv")
        });
    venv.join("bin/python")
}

/// The schema `s` (following `$ref`s) names every key of `v`, recursively through objects
/// and arrays of messages.
fn conforms(doc: &Value, s: &Value, v: &Value, at: &str) {
    let s = match s.get("$ref").and_then(Value::as_str) {
        Some(r) => &doc["components"]["schemas"][r.trim_start_matches("#/components/schemas/")],
        None => s,
    };
    match v {
        Value::Object(map) => {
            if let Some(props) = s.get("properties").and_then(Value::as_object) {
                for (k, x) in map {
                    let field = props
                        .get(k)
                        .unwrap_or_else(|| panic!("{at}.{k}: not in the schema {s}"));
                    conforms(doc, field, x, &format!("{at}.{k}"));
                }
            } else if let Some(values) = s.get("additionalProperties") {
                for (k, x) in map {
                    conforms(doc, values, x, &format!("{at}.{k}"));
                }
            }
        }
        Value::Array(items) => {
            if let Some(item) = s.get("items") {
                for (i, x) in items.iter().enumerate() {
                    conforms(doc, item, x, &format!("{at}[{i}]"));
                }
            }
        }
        Value::String(text) => {
            if let Some(names) = s.get("enum").and_then(Value::as_array) {
                assert!(names.contains(v), "{at}: {text} is not one of {names:?}");
            }
        }
        _ => {}
    }
}

fn answer_schema<'a>(doc: &'a Value, path: &str, verb: &str) -> &'a Value {
    let content = &doc["paths"][path][verb]["responses"]["200"]["content"];
    if content.get("application/json").is_some() {
        &content["application/json"]["schema"]
    } else {
        &content["text/event-stream"]["x-event-data"]
    }
}

async fn every_listed_route_answers_as_documented(backend: Backend) {
    let farm = Farm::start(FarmOptions {
        auth: true,
        coordinator_env: vec![("TUTTI_WEBHOOK_ALLOW_PRIVATE", "true".into())],
        ..FarmOptions::on(backend)
    })
    .await;
    for t in ["a", "b", "ops"] {
        farm.operator(&["tenant", "create", t]);
    }
    let (ka, kb, kadmin) = (
        farm.create_key("a", false),
        farm.create_key("b", false),
        farm.create_key("ops", true),
    );
    let api = Api {
        base: format!("http://{}", farm.studio_addr),
        http: reqwest::Client::new(),
    };

    // The document, checked by a real validator.
    let (status, doc) = api.call(None, "get", "/v1/openapi.json", None).await;
    assert_eq!(status, 200);
    assert_eq!(doc["openapi"], "3.1.0");
    let file = farm.dir().join("openapi.json");
    std::fs::write(&file, doc.to_string()).expect("write");
    let out = std::process::Command::new(venv_python())
        .args([
            "-c",
            "import json, sys; from openapi_spec_validator import validate; \
             validate(json.load(open(sys.argv[1]))); print('valid')",
        ])
        .arg(&file)
        .output()
        .expect("run the validator");
    assert!(
        out.status.success(),
        "openapi-spec-validator: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "valid");

    // No key, a bad request: errors name the code and the field.
    let (status, e) = api.call(None, "get", "/v1/jobs", None).await;
    assert_eq!((status, e["code"].as_str()), (401, Some("UNAUTHENTICATED")));
    let bad = json!({ "prompt": "x", "steps": 100000 });
    let (status, e) = api.call(Some(&ka), "post", "/v1/jobs", Some(&bad)).await;
    assert_eq!(
        (status, e["code"].as_str(), e["field"].as_str()),
        (400, Some("INVALID_ARGUMENT"), Some("steps"))
    );

    // The objects the routes name.
    let submit = json!({
        "prompt": "warm rhodes, 80 BPM",
        "duration_seconds": 2,
        "webhook": { "url": "http://127.0.0.1:9/hook", "events": ["WEBHOOK_EVENT_QUEUED"] },
    });
    let (status, job) = api.call(Some(&ka), "post", "/v1/jobs", Some(&submit)).await;
    assert_eq!(status, 200, "{job}");
    let job_id = job["id"].as_str().expect("id").to_string();
    let (_, models) = api.call(Some(&ka), "get", "/v1/models", None).await;
    let model = models["models"][0]["name"]
        .as_str()
        .expect("a model")
        .to_string();
    let delivery = {
        let mut found = None;
        for _ in 0..50 {
            let (_, page) = api
                .call(Some(&ka), "get", "/v1/webhooks/deliveries", None)
                .await;
            if let Some(id) = page["deliveries"][0]["id"].as_str() {
                found = Some(id.to_string());
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        found.expect("a delivery")
    };
    // Another tenant's job is not found.
    let (status, e) = api
        .call(Some(&kb), "get", &format!("/v1/jobs/{job_id}"), None)
        .await;
    assert_eq!((status, e["code"].as_str()), (404, Some("NOT_FOUND")));

    let bodies = |path: &str| -> Option<Value> {
        match path {
            "/v1/jobs" => Some(submit.clone()),
            "/v1/prompt/render" => Some(json!({ "prompt": "lofi piano, 70 BPM" })),
            "/v1/webhooks" => Some(json!({ "webhook": {
                "url": "http://127.0.0.1:9/tenant", "events": ["WEBHOOK_EVENT_SUCCEEDED"] } })),
            "/v1/webhooks/rotate" => Some(json!({ "overlap_seconds": 60 })),
            "/v1/operator/dead-letters/replay" => Some(json!({ "limit": 10 })),
            _ => None,
        }
    };
    let unknown = uuid::Uuid::new_v4().to_string();
    // DELETE /v1/jobs/{id} deletes a job of its own, so the other routes keep theirs.
    let (status, doomed) = api.call(Some(&ka), "post", "/v1/jobs", Some(&submit)).await;
    assert_eq!(status, 200, "{doomed}");
    let doomed_id = doomed["id"].as_str().expect("id").to_string();
    let mut called = 0;
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        for verb in ops.as_object().expect("ops").keys() {
            let target = if verb == "delete" && path == "/v1/jobs/{id}" {
                &doomed_id
            } else {
                &job_id
            };
            let concrete = path
                .replace("/v1/jobs/{id}", &format!("/v1/jobs/{target}"))
                .replace("{name}", &model)
                .replace("/v1/batches/{id}", &format!("/v1/batches/{unknown}"))
                .replace("/deliveries/{id}", &format!("/deliveries/{delivery}"));
            assert!(!concrete.contains('{'), "unfilled {concrete}");
            let operator = path.starts_with("/v1/operator/");
            let key = if operator { &kadmin } else { &ka };
            called += 1;
            if path.ends_with("/events") {
                let event = api.first_event(key, &concrete).await;
                assert_eq!(event["kind"], "KIND_SNAPSHOT");
                conforms(&doc, answer_schema(&doc, path, verb), &event, path);
                continue;
            }
            let (status, value) = api
                .call(Some(key), verb, &concrete, bodies(path).as_ref())
                .await;
            if concrete.contains(&unknown) {
                // No such batch: the documented error.
                assert_eq!(
                    (status, value["code"].as_str()),
                    (404, Some("NOT_FOUND")),
                    "{verb} {concrete}"
                );
                conforms(
                    &doc,
                    &json!({ "$ref": "#/components/schemas/Error" }),
                    &value,
                    path,
                );
                continue;
            }
            assert_eq!(status, 200, "{verb} {concrete}: {value}");
            conforms(&doc, answer_schema(&doc, path, verb), &value, path);
            if operator {
                let (status, e) = api.call(Some(&ka), verb, &concrete, None).await;
                assert_eq!(
                    (status, e["code"].as_str()),
                    (403, Some("PERMISSION_DENIED"))
                );
            }
        }
    }
    assert!(called >= 24, "only {called} routes listed");
    // The deleted job stays, marked deleted, with its prompt gone; a second delete is a no-op.
    let (status, gone) = api
        .call(Some(&ka), "get", &format!("/v1/jobs/{doomed_id}"), None)
        .await;
    assert_eq!(status, 200, "{gone}");
    assert!(gone["deleted_at"].is_string(), "{gone}");
    let (status, _) = api
        .call(Some(&ka), "delete", &format!("/v1/jobs/{doomed_id}"), None)
        .await;
    assert_eq!(status, 200);
    let (status, e) = api
        .call(Some(&kb), "delete", &format!("/v1/jobs/{doomed_id}"), None)
        .await;
    assert_eq!((status, e["code"].as_str()), (404, Some("NOT_FOUND")));
}

both_backends!(every_listed_route_answers_as_documented);
