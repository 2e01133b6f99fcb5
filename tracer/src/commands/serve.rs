//! `tcptrace serve`: trace until stopped and answer `GET /metrics` with the
//! tracker's state in the OpenMetrics text format, for Prometheus. The
//! tracker thread rebuilds the snapshot every `--interval`; a scrape only
//! encodes the latest one, so scrapes never wait for the tracker.

use std::{convert::Infallible, sync::Arc};

use anyhow::Result;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode, body::Incoming, header, server::conn::http1, service::service_fn,
};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

use crate::{
    cli::{Format, ServeArgs},
    commands::run::{SessionStart, block_on, owner_filter, print_report, session},
    error::EnvError,
    host::netns::PortRanges,
    metrics::{self, SharedSnapshot, build::MetricsBuilder},
    pipeline::{Consumer, StreamOptions},
    report::{EventCounts, Report, ReportContext},
    track::{Limits, Tracker},
    workload::resolve::Workloads,
};

/// OpenMetrics 1.0, which Prometheus negotiates and parses natively.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const CLASSIC_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub fn serve(args: ServeArgs) -> Result<()> {
    block_on(async move {
        let owner_filter = owner_filter(&args.filters)?;
        // Bind before loading anything: a taken port is the likeliest mistake.
        let listener = TcpListener::bind(args.listen)
            .await
            .map_err(|e| EnvError::new(format!("cannot listen on {}: {e}", args.listen)))?;
        let shared = SharedSnapshot::default();
        let registry = Arc::new(shared.registry());
        let filters = args.filters.clone();
        let (mut tracker, end) = session(
            &args.tuning,
            false,
            &args.filters,
            args.duration,
            Some(args.interval),
            |start: &SessionStart, _closed| {
                let mut tracker = Tracker::new(Limits::from_env(), start.timers_available);
                tracker.owner_filter = owner_filter;
                args.thresholds.apply(&mut tracker);
                let stream = StreamOptions {
                    format: Format::Text,
                    show_events: false,
                    all_events: false,
                    clock: start.clock,
                };
                let mut builder = MetricsBuilder::new(
                    usize::from(args.top),
                    PortRanges::new(start.registry.paths_snapshot()),
                    start.counters.clone(),
                )
                .with_workloads(Workloads::discover(&args.filters.kubelet_logs));
                // Something to serve before the first tick: every family, at zero.
                shared.replace(builder.snapshot(&tracker, &Default::default()));
                Ok(Consumer::new(tracker, filters, stream, start.started_ns)
                    .with_metrics(builder, shared.clone())
                    .with_summaries(start.summaries))
            },
            || {
                tokio::spawn(accept_loop(listener, registry.clone()));
                eprintln!("tcptrace: serving http://{}/metrics", args.listen);
                Ok(())
            },
        )
        .await?;
        let events = EventCounts::new(&end.kernel, &end.user);
        let mut ctx =
            ReportContext { workloads: Workloads::discover(&args.filters.kubelet_logs), netns: end.registry };
        let report = Report::build(end.elapsed.as_secs_f64(), events, end.notes, &mut tracker, &mut ctx);
        print_report(&report, Format::Text)
    })
}

/// Serves connections until the runtime shuts down (end of the session).
async fn accept_loop(listener: TcpListener, registry: Arc<Registry>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors and the like: the next accept may work.
                log::warn!("accepting a /metrics connection: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| {
                let response = respond(&request, &registry);
                async move { Ok::<_, Infallible>(response) }
            });
            if let Err(e) = http1::Builder::new().serve_connection(TokioIo::new(stream), service).await {
                log::debug!("/metrics connection: {e}");
            }
        });
    }
}

fn respond(request: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, content_type: &str, body: String| {
        let mut response = Response::new(Full::new(Bytes::from(body)));
        *response.status_mut() = status;
        if let Ok(value) = content_type.parse() {
            response.headers_mut().insert(header::CONTENT_TYPE, value);
        }
        response
    };
    match (request.method(), request.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            // OpenMetrics to those who ask for it (Prometheus does), the
            // classic text format to everyone else.
            let openmetrics = request
                .headers()
                .get_all(header::ACCEPT)
                .iter()
                .any(|v| v.to_str().is_ok_and(|v| v.contains("application/openmetrics-text")));
            let text = metrics::exposition(registry);
            if openmetrics {
                reply(StatusCode::OK, CONTENT_TYPE, text)
            } else {
                reply(StatusCode::OK, CLASSIC_CONTENT_TYPE, metrics::classic_text(&text))
            }
        }
        (&Method::GET | &Method::HEAD, "/") => {
            reply(StatusCode::OK, "text/plain; charset=utf-8", "tcptrace: metrics are at /metrics\n".into())
        }
        (&Method::GET | &Method::HEAD, _) => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
        _ => reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "only GET\n".into()),
    }
}
