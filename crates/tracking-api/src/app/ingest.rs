//! The ingest path: `POST /v1/events` (and the pixel, through
//! [`App::ingest`]): admission, body, validation, dead letters, and the task
//! that resolves sessions and hands events to the sink.

use super::*;
use crate::cors::Decision;
use crate::inspect::{Channel, RejectedView, Rendered};

/// What an accepted request did.
#[derive(Debug)]
pub(super) struct Ingested {
    pub(super) accepted: usize,
    pub(super) rejected: Vec<Rejected>,
    pub(super) new_visitor: Option<ClientId>,
}

/// A request's events, validated and admitted (`admission` is `None` when
/// none was valid), and the refused ones, already sent to the dead-letter
/// output.
#[derive(Debug)]
pub(super) struct Validated {
    accepted: Vec<Event>,
    admission: Option<Admission>,
    rejected: Vec<Rejected>,
}

/// A request whose body has arrived, holding its in-flight slot.
#[derive(Debug)]
pub(super) struct Received {
    pub(super) parts: http::request::Parts,
    raw: service_kit::server::BodyBuf,
    inflated: Option<service_kit::server::BodyBuf>,
    _permit: tokio::sync::OwnedSemaphorePermit,
}

impl Received {
    /// The body as sent, or inflated.
    pub(super) fn body(&self) -> &[u8] {
        self.inflated.as_deref().unwrap_or(&self.raw)
    }
}

impl App {
    pub(super) async fn events<B>(&self, req: Request<B>, peer: IpAddr) -> Response<Full<Bytes>>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let decision = self.state.parts.cors.decide(req.headers());
        // A page of an origin that is not allowed: its events are refused,
        // not written (a simple request needs no preflight, so the
        // allowlist is enforced here, not only by the browser).
        if matches!(decision, Decision::Refused) {
            self.inspect_refused(&ApiError::OriginRefused, &Channel::Events);
            let mut r = ApiError::OriginRefused.into_response();
            Cors::apply(&decision, r.headers_mut());
            return r;
        }
        let mut resp = match self.events_inner(req, peer).await {
            Ok(i) if i.rejected.is_empty() => {
                let mut r = empty(StatusCode::NO_CONTENT);
                self.set_cookie(&mut r, i.new_visitor.as_ref());
                r
            }
            Ok(i) => {
                #[derive(Serialize)]
                struct Partial<'a> {
                    accepted: usize,
                    rejected: &'a [Rejected],
                }
                let mut r = json_response(
                    StatusCode::OK,
                    &Partial {
                        accepted: i.accepted,
                        rejected: &i.rejected,
                    },
                );
                self.set_cookie(&mut r, i.new_visitor.as_ref());
                r
            }
            Err(e) => {
                self.inspect_refused(&e, &Channel::Events);
                e.into_response()
            }
        };
        Cors::apply(&decision, resp.headers_mut());
        resp
    }

    pub(super) fn set_cookie(&self, resp: &mut Response<Full<Bytes>>, id: Option<&ClientId>) {
        if let Some(id) = id {
            resp.headers_mut()
                .insert(SET_COOKIE, self.state.parts.cookie.set(id));
        }
    }

    pub(super) async fn events_inner<B>(
        &self,
        req: Request<B>,
        peer: IpAddr,
    ) -> Result<Ingested, ApiError>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let limits = self.state.parts.limits;
        let (parts, body) = req.into_parts();
        let received = self
            .receive(
                parts,
                body,
                Media::JsonOrText,
                limits.max_body_bytes,
                limits.max_decompressed_bytes,
            )
            .await?;
        // Boxed: the ingest state is allocated only once a body has arrived,
        // so a connection waiting for one keeps a small future.
        Box::pin(self.ingest(
            received.body(),
            &received.parts.headers,
            peer,
            Channel::Events,
        ))
        .await
    }

    /// Reads a request's body within `max_body` bytes as sent, takes an
    /// in-flight slot, and inflates a gzip body into at most
    /// `max_inflated` bytes: the body first, so that a slow one holds its
    /// connection and the bytes it sent, never an in-flight slot.
    pub(super) async fn receive<B>(
        &self,
        parts: http::request::Parts,
        body: B,
        media: Media,
        max_body: usize,
        max_inflated: usize,
    ) -> Result<Received, ApiError>
    where
        B: Body,
        B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let encoding = check_headers(&parts.headers, media, max_body)?;
        let memory = &self.state.body_memory;
        let raw = read_body(body, max_body, memory)
            .await
            .map_err(|e| self.body_error(e))?;
        let permit = self.admit()?;
        let inflated = match encoding {
            Encoding::Identity => None,
            Encoding::Gzip => {
                let _span = tracing::debug_span!("gunzip", bytes = raw.len()).entered();
                Some(inflate_bounded(&raw, max_inflated, memory).map_err(|e| self.body_error(e))?)
            }
        };
        Ok(Received {
            parts,
            raw,
            inflated,
            _permit: permit,
        })
    }

    /// A body that could not be read or inflated; counted as shed when it
    /// is our memory that ran out. Not a readiness signal: bodies fill it
    /// because clients send slowly, and another pod would meet the same
    /// clients (taking this one out of the load balancer would be theirs
    /// to decide).
    pub(super) fn body_error(&self, e: BodyReadError) -> ApiError {
        if matches!(e, BodyReadError::Read(ReadError::NoMemory)) {
            self.state.parts.metrics.record_shed(ShedReason::BodyMemory);
        }
        ApiError::Read(e)
    }

    /// Takes an in-flight slot, or sheds the request.
    pub(super) fn admit(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let overload = &self.state.parts.overload;
        match Arc::clone(&self.state.inflight).try_acquire_owned() {
            Ok(permit) => {
                overload.record_admitted();
                Ok(permit)
            }
            Err(_) => {
                overload.record_shed();
                self.state.parts.metrics.record_shed(ShedReason::Inflight);
                Err(ApiError::Overloaded)
            }
        }
    }

    /// Validates the events of a body and, when any is valid, processes them.
    pub(super) async fn ingest(
        &self,
        body: &[u8],
        headers: &HeaderMap,
        peer: IpAddr,
        channel: Channel,
    ) -> Result<Ingested, ApiError> {
        let st = &self.state;
        let received_at = st.parts.clock.now();
        let received = std::time::Instant::now();
        let items = {
            let _span = tracing::debug_span!("decode", bytes = body.len()).entered();
            parse_body(body, st.parts.limits.max_batch_events)?
        };
        let mut new_visitor = None;
        let validated = self.validate(items.len(), received_at, &channel, || {
            let cookie_id = st.parts.cookie.read(headers);
            let needs_fallback = items
                .iter()
                .any(|i| i.event.as_ref().is_ok_and(|r| r.client_id.is_none()));
            let fallback = match cookie_id {
                Some(id) => Some(id),
                None if needs_fallback => {
                    let id = ClientId::parse(&st.parts.ids.new_id(received_at).to_string());
                    new_visitor.clone_from(&id);
                    id
                }
                None => None,
            };
            let mut accepted: Vec<Event> = Vec::with_capacity(items.len());
            let mut rejected: Vec<(usize, RejectReason, &str)> = Vec::new();
            for item in items {
                let event = item.event.and_then(|mut raw| {
                    raw.fallback_client_id.clone_from(&fallback);
                    Event::try_from(raw)
                });
                match event {
                    Ok(e) => accepted.push(e),
                    Err(reason) => rejected.push((item.index, reason, item.raw)),
                }
            }
            (accepted, rejected)
        })?;
        let ingested = self
            .dispatch(validated, headers, peer, received_at, received, channel)
            .await?;
        Ok(Ingested {
            new_visitor,
            ..ingested
        })
    }

    /// Runs `validate` (a request's `events` split into valid events and
    /// refused ones) in the `validate` span, then admits them.
    pub(super) fn validate<'b>(
        &self,
        events: usize,
        received_at: tracking_core::Timestamp,
        channel: &Channel,
        validate: impl FnOnce() -> (Vec<Event>, Vec<(usize, RejectReason, &'b str)>),
    ) -> Result<Validated, ApiError> {
        let span = tracing::debug_span!(
            "validate",
            events,
            accepted = tracing::field::Empty,
            rejected = tracing::field::Empty,
        )
        .entered();
        let (accepted, rejected) = validate();
        let (admission, rejected) = self.admit_events(&accepted, rejected, received_at, channel)?;
        span.record("accepted", accepted.len());
        span.record("rejected", rejected.len());
        Ok(Validated {
            accepted,
            admission,
            rejected,
        })
    }

    /// Reserves the sink's room for a request's valid events (`None` when
    /// there are none), then sends its refused ones to the dead-letter
    /// output. When the sink has no room nothing is taken, not even the
    /// dead letters: the client will send the whole request again.
    fn admit_events(
        &self,
        accepted: &[Event],
        rejected: Vec<(usize, RejectReason, &str)>,
        received_at: tracking_core::Timestamp,
        channel: &Channel,
    ) -> Result<(Option<Admission>, Vec<Rejected>), ApiError> {
        let st = &self.state;
        let admission = if accepted.is_empty() {
            None
        } else {
            let bytes = accepted.iter().map(enriched_size_hint).sum();
            Some(
                st.parts
                    .sink
                    .try_admit(accepted.len(), bytes)
                    .map_err(|e| match e {
                        SinkError::Full { .. } => {
                            st.parts.metrics.record_shed(ShedReason::QueueFull);
                            ApiError::QueueFull
                        }
                        SinkError::Unavailable(why) => {
                            st.parts.metrics.record_shed(ShedReason::OutputFailing);
                            ApiError::OutputFailing(why)
                        }
                        SinkError::Closed | SinkError::Failed(_) => {
                            st.parts.metrics.record_shed(ShedReason::Draining);
                            ApiError::Draining
                        }
                    })?,
            )
        };
        let rejected = rejected
            .into_iter()
            .map(|(index, reason, raw)| {
                st.parts.metrics.record_rejected(reason);
                if let Some(inspector) = &st.parts.inspect {
                    // What the client is answered: the refusals listed
                    // beside the accepted events, or all refused.
                    let answer = match (channel, accepted.is_empty()) {
                        (Channel::Pixel, _) | (_, false) => 200,
                        (_, true) => 400,
                    };
                    inspector.rejected(
                        RejectedView {
                            time: received_at,
                            reason: reason.as_str(),
                            error: &reason.to_string(),
                            index: Some(index),
                            raw: Some(raw),
                        },
                        channel,
                        answer,
                    );
                }
                self.dead_letter(
                    received_at,
                    reason.as_str(),
                    reason.to_string(),
                    Some(index),
                    raw.to_owned(),
                );
                Rejected {
                    index,
                    error: reason.to_string(),
                }
            })
            .collect();
        Ok((admission, rejected))
    }

    /// Hands admitted events to the `process` task, with what the request
    /// tells about them, and waits for it; returns how many there were, and
    /// the refused ones (no visitor minted). A request whose every event was
    /// refused is answered as such.
    pub(super) async fn dispatch(
        &self,
        validated: Validated,
        headers: &HeaderMap,
        peer: IpAddr,
        received_at: tracking_core::Timestamp,
        received: Instant,
        channel: Channel,
    ) -> Result<Ingested, ApiError> {
        let st = &self.state;
        let Validated {
            accepted,
            admission,
            rejected,
        } = validated;
        let request_span = tracing::Span::current();
        if !rejected.is_empty() {
            request_span.record("rejected", rejected.len());
        }
        let Some(admission) = admission else {
            return Err(ApiError::AllRejected(rejected));
        };
        let ip = st.parts.client_ip.resolve(peer, headers);
        let ctx = RequestContext {
            received_at,
            ip: Some(anonymize_ip(ip)),
            ua: headers
                .get(USER_AGENT)
                .and_then(|v| v.to_str().ok())
                .map(|ua| st.ua.parse(ua)),
            geo: st.parts.geo.as_ref().and_then(|g| g.lookup(ip)),
        };
        let call = CallContext {
            headers: st
                .parts
                .forward_headers
                .iter()
                .filter_map(|name| {
                    let value = headers.get(name)?.to_str().ok()?;
                    (value.len() <= MAX_FORWARDED_HEADER_BYTES)
                        .then(|| (name.as_str().into(), value.into()))
                })
                .collect(),
            received: Some(received),
        };
        let n = accepted.len();
        Metrics::add(&st.parts.metrics.events_accepted, n as u64);
        request_span.record("events", n);
        // The answer the accepted events get, for the inspector.
        let answer = match channel {
            Channel::Events if rejected.is_empty() => 204,
            _ => 200,
        };
        let task = st.tracker.spawn(
            process(
                Arc::clone(st),
                accepted,
                ctx,
                call,
                admission,
                (channel, answer),
            )
            .instrument(request_span),
        );
        let written = task.await.map_err(|e| ApiError::Internal(e.to_string()))?;
        if let Err(e) = written {
            // The disk acknowledgement mode could not make them durable: not
            // answered 2xx, the client sends them again.
            st.parts.metrics.record_shed(ShedReason::OutputFailing);
            return Err(ApiError::OutputFailing(e.to_string()));
        }
        Ok(Ingested {
            accepted: n,
            rejected,
            new_visitor: None,
        })
    }

    pub(super) fn dead_letter(
        &self,
        received_at: tracking_core::Timestamp,
        reason: &'static str,
        error: String,
        index: Option<usize>,
        raw: String,
    ) {
        let kept = self.state.parts.deadletters.reject(DeadLetter {
            received_at,
            reason,
            error,
            index,
            raw,
        });
        if !kept {
            Metrics::add(&self.state.parts.metrics.deadletters_dropped, 1);
        }
    }
}

/// Resolves sessions for each event in order, enriches them, hands them to
/// the sink and waits for its receipt (in the `disk` acknowledgement mode,
/// until they are on disk). Runs as its own task: nothing here is cancelled
/// by the client.
///
/// With deduplication on, an event whose client-given id the store has
/// from within the window (or that an earlier event of the same request
/// carried, for the same visitor) is a retry: counted, logged at debug
/// level, and not output. The ids are recorded once the events are handed
/// to the sink (in the `disk` mode, once the receipt says they are on
/// disk): a process killed before that leaves the client's retry to be
/// output.
///
/// The inspector, when on, sees the events (and the retries) once they are
/// accepted for good, with the answer (`tap`: channel and status) the
/// request gets.
pub(super) async fn process(
    st: Arc<AppState>,
    events: Vec<Event>,
    ctx: RequestContext,
    call: CallContext,
    admission: Admission,
    tap: (Channel, u16),
) -> Result<(), SinkError> {
    let inspector = st.parts.inspect.as_deref();
    let mut inspected: Vec<Rendered> = Vec::new();
    let mut out = Vec::with_capacity(events.len());
    let mut unavailable = 0usize;
    let labels = st.parts.span_labels;
    let dedup = st.parts.dedup;
    let batch = events.len() > 1;
    // Hashes of (visitor, id) seen earlier in this request.
    let mut in_request = Vec::new();
    for event in events {
        let check = dedup.check(&event);
        if let Some(id) = check.id().filter(|_| batch) {
            let key = {
                use std::hash::{Hash, Hasher};
                let mut h = std::hash::DefaultHasher::new();
                (event.client_id(), id).hash(&mut h);
                h.finish()
            };
            if in_request.contains(&key) {
                let at = ctx.received_at;
                duplicate(&st, &event, id, at, at, &tap, &mut inspected);
                continue;
            }
            in_request.push(key);
        }
        // `lookup` is recorded by the Bigtable and legacy stores: `hit` (a
        // live session), `miss`, or `fallback` (found through migration-proxy).
        let span = tracing::debug_span!(
            "session",
            store = labels.store,
            mode = labels.mode,
            outcome = tracing::field::Empty,
            lookup = tracing::field::Empty,
            short_new = tracing::field::Empty,
            long_new = tracing::field::Empty,
        );
        let touch = st
            .parts
            .store
            .touch_event(
                event.client_id(),
                ctx.received_at,
                event.via(),
                check,
                &call,
            )
            .instrument(span.clone());
        let outcome = match tokio::time::timeout(st.parts.limits.session_timeout, touch).await {
            Ok(Ok(Touched::Duplicate { accepted_at })) => {
                span.record("outcome", "duplicate");
                if let Some(id) = check.id() {
                    let at = ctx.received_at;
                    duplicate(&st, &event, id, accepted_at, at, &tap, &mut inspected);
                }
                continue;
            }
            Ok(Ok(Touched::Sessions(s))) => {
                let m = &st.parts.metrics;
                if s.short_new {
                    Metrics::add(&m.sessions_short_new, 1);
                }
                if s.long_new {
                    Metrics::add(&m.sessions_long_new, 1);
                }
                if !s.short_new && !s.long_new {
                    Metrics::add(&m.sessions_continued, 1);
                }
                span.record("short_new", s.short_new);
                span.record("long_new", s.long_new);
                SessionOutcome::Resolved(s)
            }
            Ok(Err(e)) => {
                Metrics::add(&st.parts.metrics.session_store_failures, 1);
                Metrics::add(&st.parts.metrics.sessions_unavailable, 1);
                st.warn_store(&e);
                SessionOutcome::Unavailable
            }
            Err(_) => {
                Metrics::add(&st.parts.metrics.session_store_timeouts, 1);
                Metrics::add(&st.parts.metrics.sessions_unavailable, 1);
                st.warn_store(&StoreError::Timeout(st.parts.limits.session_timeout));
                SessionOutcome::Unavailable
            }
        };
        span.record("outcome", outcome.status());
        if matches!(outcome, SessionOutcome::Unavailable) {
            unavailable += 1;
            service_kit::telemetry::set_error(&span, "session store unavailable");
        }
        // A Segment call may name its own user agent and (server-side
        // keys) address.
        let own = event
            .segment()
            .filter(|p| p.user_agent().is_some() || p.ip().is_some())
            .map(|p| st.context_for(&ctx, p.user_agent(), p.ip()));
        let unchecked = check.id().is_some() && matches!(outcome, SessionOutcome::Unavailable);
        let mut enriched = enrich(event, outcome, own.as_ref().unwrap_or(&ctx), &*st.parts.ids);
        if unchecked {
            Metrics::add(&st.parts.metrics.dedup_unchecked, 1);
            enriched.mark_dedup_unchecked();
        }
        if let Some(i) = inspector {
            inspected.extend(i.accepted(&enriched, &tap.0, tap.1));
        }
        out.push(enriched);
    }
    if unavailable > 0 {
        // Kept even when the trace is not sampled: the request span is.
        let request = tracing::Span::current();
        request.record("sessions.unavailable", unavailable);
        service_kit::telemetry::set_error(
            &request,
            format!("{unavailable} events without sessions (store unavailable)"),
        );
    }
    if out.is_empty() {
        // Every event was a retry: nothing to write, the admission goes back.
        if let Some(i) = inspector {
            i.keep(inspected);
        }
        return Ok(());
    }
    let n = out.len();
    let settle = |inspected: Vec<Rendered>| {
        if let Some(i) = inspector {
            i.count_accepted(n);
            i.keep(inspected);
        }
    };
    // The checked ids, recorded once the events are accepted for good: as
    // they are handed over (`memory` mode: nothing can fail between here
    // and the hand-over), or once on disk. Not when the store did not
    // answer the check: the write would most likely fail too, and crowd
    // out renewals meanwhile.
    let mut to_remember: Vec<(ClientId, Box<str>)> = Vec::new();
    if dedup.window.is_some() {
        let checked = out
            .iter()
            .filter(|e| !e.dedup_unchecked())
            .filter_map(|e| Some((e.client_id(), e.client_event_id()?)));
        if dedup.after_receipt {
            to_remember.extend(checked.map(|(c, id)| (c.clone(), id.into())));
        } else {
            for (client_id, id) in checked {
                st.parts.store.remember(client_id, &[id], ctx.received_at);
            }
        }
    }
    let receipt = {
        let _sink = tracing::debug_span!("sink.send", events = out.len()).entered();
        st.parts.sink.send(out, admission)
    };
    if receipt.is_held() {
        settle(inspected);
        return Ok(());
    }
    // A disk that hangs (a frozen filesystem, a dying device) answers 503
    // rather than never: the events may still reach the disk (a duplicate
    // when the client sends them again), never a 2xx without it.
    let written = tokio::time::timeout(ACK_TIMEOUT, receipt.wait())
        .await
        .unwrap_or_else(|_| {
            Err(SinkError::Unavailable(format!(
                "the disk did not confirm the write within {ACK_TIMEOUT:?}"
            )))
        });
    if written.is_ok() {
        settle(inspected);
        for (client_id, id) in &to_remember {
            st.parts
                .store
                .remember(client_id, &[&**id], ctx.received_at);
        }
    }
    written
}

/// Counts and logs a retry, received at `received_at`, of an event accepted
/// at `accepted_at`, and shows it to the inspector (its entry joins
/// `inspected`, kept with the request's other entries).
fn duplicate(
    st: &AppState,
    event: &Event,
    id: &str,
    accepted_at: tracking_core::Timestamp,
    received_at: tracking_core::Timestamp,
    (channel, answer): &(Channel, u16),
    inspected: &mut Vec<Rendered>,
) {
    Metrics::add(&st.parts.metrics.events_duplicates, 1);
    if let Some(i) = &st.parts.inspect {
        inspected.extend(i.duplicate(received_at, event, id, accepted_at, channel, *answer));
    }
    tracing::debug!(
        client_id = event.client_id().as_str(),
        event_id = id,
        accepted_at = %accepted_at,
        "Duplicate event: its id was accepted for this visitor within the dedup window; answered as accepted, not output again."
    );
}

/// The longest a request of the disk acknowledgement mode waits for its
/// events' `fdatasync`.
const ACK_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
