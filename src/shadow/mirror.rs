//! The request path's part of a shadow copy ([`Shadow::mirror`]: decide,
//! then hand the copy's head to a task) and the task itself ([`run`]: wait
//! for the client's body, send the copy on the worker's shadow
//! connections, wait for the client's answer, compare, count).
//!
//! The decision costs one thread-local random number and one thread-local
//! count for the methods copied, and nothing for the others. What the
//! client's request and answer carry to the task are copies made as they
//! stream ([`Tee`]): the client is never held back for them.

use std::cell::Cell;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::request::Parts;
use http::uri::PathAndQuery;
use http::{Request, Response, Uri, Version};
use http_body::Body as _;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use tokio::sync::oneshot;

use super::Shadow;
use super::book::{Compared, Example};
use super::compare::{self, Answer};
use crate::upstream::body::RequestBody;
use crate::upstream::pool::Client;
use crate::upstream::tee::Tee;
use crate::upstream::{Backend, Endpoint};

thread_local! {
    /// Copies pending or in flight on this worker thread.
    static PENDING: Cell<usize> = const { Cell::new(0) };
}

/// One place in the worker's shadow queue, given back on drop.
struct Slot;

impl Slot {
    fn take(limit: usize) -> Option<Slot> {
        PENDING.with(|p| {
            let n = p.get();
            (n < limit).then(|| {
                p.set(n + 1);
                Slot
            })
        })
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        PENDING.with(|p| p.set(p.get().saturating_sub(1)));
    }
}

/// What the request path keeps of a copy under way.
pub struct Mirror {
    shadow: Arc<Shadow>,
    request_body: Option<Tee>,
    primary: oneshot::Sender<Primary>,
}

/// The client's answer, for the comparison.
struct Primary {
    answer: Answer,
    /// Seconds to the answer's head, as the route's metrics count them.
    seconds: f64,
    body: Option<oneshot::Receiver<Bytes>>,
}

/// Everything the copy's task owns.
struct Job {
    shadow: Arc<Shadow>,
    client: Client,
    head: Head,
    body: Option<oneshot::Receiver<Bytes>>,
    primary: oneshot::Receiver<Primary>,
    /// The primary's backend and endpoint, for `noise = true`.
    noise: Option<(Arc<Backend>, Arc<Endpoint>)>,
    _slot: Slot,
}

#[derive(Clone)]
struct Head {
    method: http::Method,
    uri: Uri,
    headers: http::HeaderMap,
}

static ROOT: PathAndQuery = PathAndQuery::from_static("/");

impl Shadow {
    /// A copy of this request, or (nearly always) `None`. `never` is true
    /// for what is never copied: overrides, upgrades, gRPC streams.
    /// Requests served by the shadow backend itself are not copied.
    pub fn mirror(
        self: &Arc<Self>,
        parts: &Parts,
        body: &Incoming,
        served: (&Arc<Backend>, &Arc<Endpoint>),
        never: bool,
        client: &Client,
    ) -> Option<Mirror> {
        if never || !self.spec.methods.contains(&parts.method) {
            return None;
        }
        if let Some(t) = self.threshold
            && fastrand::u64(..) >= t
        {
            return None;
        }
        if Arc::ptr_eq(served.0, &self.backend) {
            return None;
        }
        // Only a body of known length up to `max_body` is copied: a
        // chunked one is a stream.
        let (tee, body_rx) = if body.is_end_stream() {
            (None, None)
        } else {
            match body.size_hint().exact() {
                Some(n) if n <= self.spec.max_body as u64 => {
                    let (tee, rx) = Tee::new(self.spec.max_body);
                    (Some(tee), Some(rx))
                }
                _ => {
                    self.counts.skipped.inc();
                    return None;
                }
            }
        };
        let Some(slot) = Slot::take(self.spec.queue) else {
            self.counts.dropped.inc();
            return None;
        };
        let (primary_tx, primary_rx) = oneshot::channel();
        let uri = if parts.uri.scheme().is_some() || parts.uri.authority().is_some() {
            Uri::from(
                parts
                    .uri
                    .path_and_query()
                    .cloned()
                    .unwrap_or_else(|| ROOT.clone()),
            )
        } else {
            parts.uri.clone()
        };
        let job = Job {
            shadow: self.clone(),
            client: client.shadow(),
            head: Head {
                method: parts.method.clone(),
                uri,
                headers: parts.headers.clone(),
            },
            body: body_rx,
            primary: primary_rx,
            noise: self
                .spec
                .noise
                .then(|| (served.0.clone(), served.1.clone())),
            _slot: slot,
        };
        tokio::spawn(run(job));
        Some(Mirror {
            shadow: self.clone(),
            request_body: tee,
            primary: primary_tx,
        })
    }
}

impl Mirror {
    /// The copy of the client's body to make as the primary reads it.
    pub fn request_tee(&mut self) -> Option<Tee> {
        self.request_body.take()
    }

    /// The client's answer arrived: its head goes to the task now, and its
    /// body is copied as it streams to the client (the returned tee), up to
    /// `max_body`.
    pub fn answered(self, resp: &Response<Incoming>, seconds: f64) -> Option<Tee> {
        let spec = &self.shadow.spec;
        let answer = Answer::new(
            resp.status().as_u16(),
            resp.headers(),
            &spec.compare_headers,
        );
        let fits = resp
            .body()
            .size_hint()
            .exact()
            .is_none_or(|n| n <= spec.max_body as u64);
        let (tee, body) = if fits {
            let (tee, rx) = Tee::new(spec.max_body);
            (Some(tee), Some(rx))
        } else {
            (None, None)
        };
        let _ = self.primary.send(Primary {
            answer,
            seconds,
            body,
        });
        tee
    }
}

/// The copy's task.
async fn run(job: Job) {
    let Job {
        shadow,
        client,
        head,
        body,
        primary,
        noise,
        _slot,
    } = job;
    let spec = &shadow.spec;
    let deadline = tokio::time::Instant::now() + spec.timeout;
    // 1. The client's body, once the primary has read it all.
    let body = match body {
        None => None,
        Some(rx) => match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(b)) => Some(b),
            _ => {
                shadow.counts.skipped.inc();
                return;
            }
        },
    };
    // 2. The copy, and with `noise` another to a second endpoint of the
    //    primary's backend, on this worker's shadow connections.
    let to_shadow = send(&client, &shadow, &shadow.backend, None, &head, &body);
    let to_primary = async {
        let (backend, served) = noise.as_ref()?;
        let other = backend.pick_other(served)?;
        send(&client, &shadow, backend, Some(other), &head, &body)
            .await
            .ok()
    };
    let sent = Instant::now();
    let evidence = &shadow.evidence;
    let Ok((copy, noise)) =
        tokio::time::timeout_at(deadline, async { tokio::join!(to_shadow, to_primary) }).await
    else {
        shadow.counts.error.inc();
        evidence.shadow.record(true, sent.elapsed().as_secs_f64());
        return;
    };
    let Ok((copy, seconds)) = copy else {
        shadow.counts.error.inc();
        evidence.shadow.record(true, sent.elapsed().as_secs_f64());
        return;
    };
    shadow.counts.sent.inc();
    evidence.shadow.record(copy.status >= 500, seconds);
    // 3. The client's answer, as the client got it.
    let Ok(Ok(primary)) = tokio::time::timeout_at(deadline, primary).await else {
        return;
    };
    evidence
        .primary
        .record(primary.answer.status >= 500, primary.seconds);
    let mut answer = primary.answer;
    if let Some(rx) = primary.body
        && let Ok(Ok(b)) = tokio::time::timeout_at(deadline, rx).await
    {
        answer.body = Some(b);
    }
    // 4. Compare, and count.
    let Some(classes) = compare::classes(&answer, &copy, &spec.compare_headers, &spec.ignore)
    else {
        return;
    };
    let noise = noise
        .and_then(|(n, _)| compare::classes(&answer, &n, &spec.compare_headers, &spec.ignore))
        .unwrap_or_default();
    let example = (spec.keep_examples && !classes.is_empty()).then(|| {
        let (a, b) = (
            answer.body.as_deref().unwrap_or_default(),
            copy.body.as_deref().unwrap_or_default(),
        );
        Example {
            request: format!(
                "{} {}",
                head.method,
                head.uri.path_and_query().map_or("/", |p| p.as_str())
            ),
            primary_status: answer.status,
            shadow_status: copy.status,
            diff: compare::short_diff(a, b, EXAMPLE_DIFF),
            primary_body: truncated(a),
            shadow_body: truncated(b),
        }
    });
    shadow.book.record(
        &shadow.route,
        &shadow.spec.backend,
        Compared {
            classes,
            noise,
            example,
        },
    );
}

/// Bytes of each body around the first difference in an example.
const EXAMPLE_DIFF: usize = 80;
/// Bytes of each body kept in an example.
const EXAMPLE_BODY: usize = 512;

fn truncated(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(EXAMPLE_BODY)]).into_owned()
}

/// Sends one copy and reads its answer (the body up to `max_body`);
/// `Err` when nothing came back. The seconds are those to the answer's
/// head, as for the client's.
async fn send(
    client: &Client,
    shadow: &Shadow,
    backend: &Backend,
    endpoint: Option<&Arc<Endpoint>>,
    head: &Head,
    body: &Option<Bytes>,
) -> Result<(Answer, f64), ()> {
    let endpoint = endpoint.or_else(|| backend.pick()).ok_or(())?;
    let mut req = Request::new(match body {
        Some(b) => RequestBody::Buffered(Some(b.clone())),
        None => RequestBody::Empty,
    });
    *req.method_mut() = head.method.clone();
    *req.uri_mut() = head.uri.clone();
    *req.version_mut() = Version::HTTP_11;
    *req.headers_mut() = head.headers.clone();
    let started = Instant::now();
    let (resp, lease) = client
        .send(endpoint, req, backend.max_connections)
        .await
        .map_err(drop)?;
    let seconds = started.elapsed().as_secs_f64();
    let (parts, body) = resp.into_parts();
    // Set-Cookie and every other header not compared go no further.
    let mut answer = Answer::new(
        parts.status.as_u16(),
        &parts.headers,
        &shadow.spec.compare_headers,
    );
    if let Ok(b) = Limited::new(body, shadow.spec.max_body).collect().await {
        answer.body = Some(b.to_bytes());
        lease.release();
    }
    Ok((answer, seconds))
}
