//! The span of one task: a child of the `dispatch` span whose context came in the message's
//! headers, or, from a producer that sent none, of the job's submit (the context stored with
//! the job's spec). Either way the task, its S3 reads and writes and its result join the trace
//! that the client's submit started.

use std::collections::HashMap;

use tutti_shared::messages::TaskMessage;

pub(crate) fn task_span(task: &TaskMessage, headers: &HashMap<String, String>) -> tracing::Span {
    let span = tracing::info_span!(
        "task",
        otel.name = task_name(task),
        job_id = %task.job_id,
        tenant = %task.tenant,
        chunk = task.chunk,
        attempt = task.attempt,
        kind = task.kind.as_str(),
    );
    if !tutti_shared::telemetry::set_parent_from_headers(&span, headers) {
        let submit: HashMap<String, String> = task.spec.trace_context.clone().into_iter().collect();
        tutti_shared::telemetry::set_parent_from_headers(&span, &submit);
    }
    span
}

fn task_name(task: &TaskMessage) -> &'static str {
    match task.kind {
        tutti_shared::job::TaskKind::Denoise => "task denoise",
        tutti_shared::job::TaskKind::Vocode => "task vocode",
    }
}
