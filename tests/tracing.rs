//! One trace across the farm's processes: a job submitted with a W3C `traceparent` leaves
//! spans in the coordinator and the worker that share the caller's trace id, the worker's task
//! spans descend from the submit through the coordinator's dispatch span (AMQP headers), and
//! the vocode task's S3 upload is inside it. Spans are received by an OTLP/gRPC collector run
//! by the test. The processes' JSON log lines for the job carry the same trace id, the job id
//! and the tenant.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{request, state, Farm, FarmOptions};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use tutti_proto::v1 as pb;

/// One span as the collector received it (ids in lowercase hex).
#[derive(Debug, Clone)]
struct Received {
    service: String,
    name: String,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
}

/// An OTLP trace receiver that keeps every span it is sent.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<Received>>>,
}

fn strings(attrs: &[KeyValue]) -> HashMap<String, String> {
    attrs
        .iter()
        .filter_map(|kv| {
            let v = match kv.value.as_ref()?.value.as_ref()? {
                any_value::Value::StringValue(s) => s.clone(),
                any_value::Value::IntValue(i) => i.to_string(),
                any_value::Value::BoolValue(b) => b.to_string(),
                any_value::Value::DoubleValue(d) => d.to_string(),
                _ => return None,
            };
            Some((kv.key.clone(), v))
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for rs in request.into_inner().resource_spans {
            let resource = rs
                .resource
                .map(|r| strings(&r.attributes))
                .unwrap_or_default();
            let service = resource.get("service.name").cloned().unwrap_or_default();
            for span in rs.scope_spans.into_iter().flat_map(|s| s.spans) {
                got.push(Received {
                    service: service.clone(),
                    name: span.name.clone(),
                    trace_id: hex::encode(&span.trace_id),
                    span_id: hex::encode(&span.span_id),
                    parent_span_id: hex::encode(&span.parent_span_id),
                    attributes: strings(&span.attributes),
                });
            }
        }
        self.spans.lock().expect("spans").extend(got);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    async fn start() -> (Collector, SocketAddr) {
        let collector = Collector::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the collector");
        let addr = listener.local_addr().expect("collector address");
        let service = TraceServiceServer::new(collector.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await
                .expect("collector server");
        });
        (collector, addr)
    }

    fn spans(&self) -> Vec<Received> {
        self.spans.lock().expect("spans").clone()
    }
}

/// The chain of span ids from `span` up through the parents the collector has seen.
fn ancestors<'a>(spans: &'a [Received], span: &'a Received) -> Vec<&'a Received> {
    let by_id: HashMap<&str, &Received> = spans.iter().map(|s| (s.span_id.as_str(), s)).collect();
    let mut chain = Vec::new();
    let mut at = span;
    while let Some(parent) = by_id.get(at.parent_span_id.as_str()) {
        if chain.len() > 64 {
            break;
        }
        chain.push(*parent);
        at = parent;
    }
    chain
}

/// JSON log lines of one process that name the job.
fn job_lines(log: &str, job: &str) -> Vec<serde_json::Value> {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v.get("job_id").and_then(|j| j.as_str()) == Some(job))
        .collect()
}

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test]
async fn one_trace_spans_submit_dispatch_tasks_and_upload_across_processes() {
    let (collector, collector_addr) = Collector::start().await;
    let env = [
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT",
            format!("http://{collector_addr}"),
        ),
        ("OTEL_BSP_SCHEDULE_DELAY", "100".into()),
        ("RUST_LOG", "info".into()),
        ("TUTTI_LOG_FORMAT", "json".into()),
    ];
    let farm = Farm::start(FarmOptions {
        workers: 1,
        chunk_steps: 4,
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
        log_files: true,
        ..Default::default()
    })
    .await;

    let mut req = request("traced bossa nova");
    req.steps = Some(8);
    let mut call = tonic::Request::new(req);
    call.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-{CALLER_SPAN}-01")
            .parse()
            .expect("metadata"),
    );
    let job = farm
        .client()
        .await
        .submit_generation(call)
        .await
        .expect("submit")
        .into_inner();
    let job = farm.wait_job(&job.id, Duration::from_secs(90)).await;
    assert_eq!(state(&job), pb::JobState::Succeeded, "{job:?}");

    // Spans arrive in batches; wait for the upload, the last thing a worker does.
    let deadline = Instant::now() + Duration::from_secs(30);
    let spans = loop {
        let spans = collector.spans();
        let uploaded = spans.iter().any(|s| {
            s.name == "s3.put"
                && s.attributes
                    .get("key")
                    .is_some_and(|k| k.starts_with("outputs/"))
        });
        let tasks = spans.iter().filter(|s| s.name.starts_with("task ")).count();
        if uploaded && tasks >= 3 {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans did not arrive: {:#?}",
            spans
                .iter()
                .map(|s| (&s.service, &s.name))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let submit = spans
        .iter()
        .find(|s| s.name == "SubmitGeneration")
        .expect("a submit span");
    assert_eq!(submit.service, "tutti-coordinator");
    assert_eq!(
        submit.trace_id, TRACE_ID,
        "the submit joins the caller's trace"
    );
    assert_eq!(submit.parent_span_id, CALLER_SPAN);
    assert_eq!(submit.attributes.get("job_id"), Some(&job.id));

    let of_job: Vec<&Received> = spans
        .iter()
        .filter(|s| s.attributes.get("job_id") == Some(&job.id))
        .collect();
    assert!(
        of_job.iter().all(|s| s.trace_id == TRACE_ID),
        "every span of the job is in one trace: {of_job:#?}"
    );

    // 8 steps in chunks of 4: two denoise tasks and a vocode task, all on the worker process,
    // each the child of a dispatch span of the coordinator, under the submit.
    let tasks: Vec<&Received> = of_job
        .iter()
        .copied()
        .filter(|s| s.name.starts_with("task "))
        .collect();
    let kinds: Vec<&str> = tasks.iter().map(|s| s.name.as_str()).collect();
    assert!(
        kinds.iter().filter(|k| **k == "task denoise").count() >= 2
            && kinds.contains(&"task vocode"),
        "{kinds:?}"
    );
    for task in &tasks {
        assert_eq!(task.service, "tutti-worker", "{task:?}");
        let chain = ancestors(&spans, task);
        let parent = chain.first().expect("the task's parent was exported");
        assert_eq!(
            (parent.name.as_str(), parent.service.as_str()),
            ("dispatch", "tutti-coordinator"),
            "a task continues its dispatch (trace context in the AMQP headers)"
        );
        assert_eq!(parent.attributes.get("chunk"), task.attributes.get("chunk"));
        assert!(
            chain.iter().any(|s| s.span_id == submit.span_id),
            "the task {task:?} descends from the submit: {chain:#?}"
        );
    }

    let vocode = tasks
        .iter()
        .find(|s| s.name == "task vocode")
        .expect("a vocode task");
    let upload = spans
        .iter()
        .find(|s| {
            s.name == "s3.put"
                && s.attributes
                    .get("key")
                    .is_some_and(|k| k.starts_with(&format!("outputs/default/{}/", job.id)))
        })
        .expect("an upload span for the output");
    assert_eq!(upload.service, "tutti-worker");
    assert_eq!(upload.trace_id, TRACE_ID);
    assert!(
        ancestors(&spans, upload)
            .iter()
            .any(|s| s.span_id == vocode.span_id),
        "the upload is inside the vocode task"
    );

    // JSON logs: the lines about the job carry its trace, id and tenant, in both processes.
    for process in ["coordinator", "w0"] {
        let log = farm.log(process);
        let lines = job_lines(&log, &job.id);
        assert!(
            !lines.is_empty(),
            "{process} logged nothing about the job:\n{log}"
        );
        for line in &lines {
            assert_eq!(line["trace_id"], TRACE_ID, "{process}: {line}");
            assert_eq!(line["tenant"], "default", "{process}: {line}");
            assert!(line["message"].is_string(), "{process}: {line}");
        }
    }
}
