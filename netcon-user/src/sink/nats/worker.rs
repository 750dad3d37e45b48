//! The NATS forwarder's worker task: connects, makes sure of the stream, and publishes the
//! queued messages (with acknowledgements and retries into a `JetStream` stream).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::jetstream;
use futures_util::{FutureExt as _, StreamExt as _, future::BoxFuture, stream::FuturesUnordered};
use tokio::sync::mpsc;

use super::message::{Outgoing, Queued};
use super::{
    ACK_TIMEOUT, ACK_WINDOW, CONNECT_TIMEOUT, CONNECTED_POLL, DUPLICATE_WINDOW, NatsUrl,
    RECONNECT_MAX, RECONNECT_MIN, StreamOptions,
};
use crate::sink::worker::DeliveryCounters;

/// Counters shared with the worker: in `delivery`, `sent` counts messages the server took
/// (acknowledged by the stream, or with core NATS written), `failed` messages taken from the
/// queue that will never be sent (too large for the server), `errors` failed stream set-ups,
/// failed publishes and acknowledgements that did not come.
#[derive(Debug, Default)]
pub(super) struct Counters {
    pub(super) delivery: DeliveryCounters,
    /// Of those sent, acknowledged as duplicates (another collector's copy came first).
    pub(super) duplicates: AtomicU64,
    /// Publishes made again after a missing or failed acknowledgement.
    pub(super) retries: AtomicU64,
}

/// Exponential backoff between [`RECONNECT_MIN`] and [`RECONNECT_MAX`].
fn backoff(attempt: usize) -> Duration {
    let shift = u32::try_from(attempt.min(16)).unwrap_or(16);
    RECONNECT_MIN.saturating_mul(1 << shift).min(RECONNECT_MAX)
}

/// A publish waiting for its acknowledgement, with its message.
type PendingAck = BoxFuture<'static, (Queued, Result<jetstream::publish::PublishAck, String>)>;

/// What the worker thread runs.
pub(super) struct Task {
    pub(super) url: NatsUrl,
    pub(super) stream: Option<StreamOptions>,
    pub(super) counters: Arc<Counters>,
}

impl Task {
    /// Connects and delivers until the queue is closed and every message is delivered.
    pub(super) async fn serve(self, mut queue: mpsc::Receiver<Outgoing>) {
        let queue = &mut queue;
        let Some(client) = self.connect().await else {
            return;
        };
        match &self.stream {
            None => self.publish_core(&client, queue).await,
            Some(stream) => {
                let context = jetstream::ContextBuilder::new()
                    .timeout(ACK_TIMEOUT)
                    .max_ack_inflight(ACK_WINDOW * 2)
                    .build(client.clone());
                self.ensure_stream(&client, &context, stream).await;
                self.publish_acked(&client, &context, queue).await;
            }
        }
        // Written before the connection closes (bounded by the grace period).
        let _ = client.flush().await;
    }

    /// A client that connects (and reconnects) in the background; `None` only when the
    /// addresses cannot be used at all.
    async fn connect(&self) -> Option<async_nats::Client> {
        let scheme = if self.url.tls { "tls" } else { "nats" };
        let servers: Result<Vec<async_nats::ServerAddr>, _> = self
            .url
            .servers
            .iter()
            .map(|s| format!("{scheme}://{s}").parse())
            .collect();
        let servers = match servers {
            Ok(servers) => servers,
            Err(error) => {
                self.counters.delivery.count_error();
                tracing::warn!(url = %self.url, %error, "cannot use the NATS server address");
                return None;
            }
        };
        let url = self.url.to_string();
        let options = async_nats::ConnectOptions::new()
            .name("netcon-sniff")
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(CONNECT_TIMEOUT)
            .reconnect_delay_callback(backoff)
            .require_tls(self.url.tls)
            .event_callback(move |event| {
                let url = url.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracing::info!(url, "connected to NATS");
                        }
                        async_nats::Event::Disconnected => {
                            tracing::warn!(
                                url,
                                "disconnected from NATS; queueing and reconnecting"
                            );
                        }
                        other => tracing::debug!(url, event = %other, "NATS"),
                    }
                }
            });
        match options.connect(servers).await {
            Ok(client) => Some(client),
            Err(error) => {
                self.counters.delivery.count_error();
                tracing::warn!(url = %self.url, %error, "cannot connect to NATS");
                None
            }
        }
    }

    /// Core NATS: publish as soon as a server is connected; the message is sent once it is in
    /// the client's buffer.
    async fn publish_core(
        &self,
        client: &async_nats::Client,
        queue: &mut mpsc::Receiver<Outgoing>,
    ) {
        while let Some(outgoing) = queue.recv().await {
            let Some(message) = self.message(outgoing) else {
                continue;
            };
            wait_connected(client).await;
            let mut headers = async_nats::HeaderMap::new();
            if let Some(id) = &message.id {
                headers.insert(async_nats::header::NATS_MESSAGE_ID, id.as_str());
            }
            let result = client
                .publish_with_headers(message.subject.clone(), headers, message.payload.clone())
                .await;
            drop(message);
            match result {
                Ok(()) => {
                    self.counters.delivery.count_sent(1);
                }
                Err(error) => {
                    self.counters.delivery.count_failed(1);
                    self.counters.delivery.count_error();
                    tracing::warn!(url = %self.url, %error, "cannot publish to NATS");
                }
            }
        }
    }

    /// Makes sure `stream` exists and covers `PREFIX.>` with a duplicate window of at least
    /// [`DUPLICATE_WINDOW`]; retries with backoff until it does (messages queue meanwhile).
    async fn ensure_stream(
        &self,
        client: &async_nats::Client,
        context: &jetstream::Context,
        stream: &StreamOptions,
    ) {
        let subjects = format!("{}.>", self.url.prefix);
        let wanted = jetstream::stream::Config {
            name: stream.name.clone(),
            subjects: vec![subjects.clone()],
            num_replicas: stream.replicas,
            duplicate_window: DUPLICATE_WINDOW,
            ..Default::default()
        };
        let mut attempt = 0;
        loop {
            wait_connected(client).await;
            let result = async {
                let mut existing = context
                    .get_or_create_stream(wanted.clone())
                    .await
                    .map_err(|e| e.to_string())?;
                let mut config = existing
                    .info()
                    .await
                    .map_err(|e| e.to_string())?
                    .config
                    .clone();
                if config.subjects.contains(&subjects)
                    && config.duplicate_window >= DUPLICATE_WINDOW
                {
                    return Ok(());
                }
                if !config.subjects.contains(&subjects) {
                    config.subjects.push(subjects.clone());
                }
                config.duplicate_window = config.duplicate_window.max(DUPLICATE_WINDOW);
                tracing::info!(
                    url = %self.url,
                    stream = stream.name,
                    "adding {subjects} and a duplicate window of {}s to the existing stream",
                    DUPLICATE_WINDOW.as_secs()
                );
                context
                    .update_stream(config)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            }
            .await;
            match result {
                Ok(()) => {
                    tracing::debug!(url = %self.url, stream = stream.name, "stream ready");
                    return;
                }
                Err(error) => {
                    self.counters.delivery.count_error();
                    if attempt == 0 {
                        tracing::warn!(
                            url = %self.url,
                            stream = stream.name,
                            %error,
                            "cannot set up the JetStream stream; queueing and retrying"
                        );
                    }
                    tokio::time::sleep(backoff(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    /// `JetStream`: up to [`ACK_WINDOW`] publishes waiting for acknowledgement; a message whose
    /// acknowledgement fails or does not come is published again, until the queue is closed
    /// and every message acknowledged (or the grace period ends).
    async fn publish_acked(
        &self,
        client: &async_nats::Client,
        context: &jetstream::Context,
        queue: &mut mpsc::Receiver<Outgoing>,
    ) {
        let mut waiting: FuturesUnordered<PendingAck> = FuturesUnordered::new();
        let mut retry: VecDeque<Queued> = VecDeque::new();
        let mut closed = false;
        let mut failures = 0;
        loop {
            while waiting.len() < ACK_WINDOW
                && let Some(message) = retry.pop_front()
            {
                self.counters.retries.fetch_add(1, Ordering::Relaxed);
                if let Err(message) = self.publish(client, context, message, &mut waiting).await {
                    retry.push_front(message);
                    tokio::time::sleep(backoff(failures)).await;
                    failures += 1;
                    break;
                }
            }
            if closed && waiting.is_empty() && retry.is_empty() {
                return;
            }
            tokio::select! {
                biased;
                Some((message, result)) = waiting.next(), if !waiting.is_empty() => {
                    match result {
                        Ok(ack) => {
                            failures = 0;
                            drop(message);
                            self.counters.delivery.count_sent(1);
                            if ack.duplicate {
                                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Err(error) => {
                            self.counters.delivery.count_error();
                            if failures == 0 {
                                tracing::warn!(
                                    url = %self.url,
                                    %error,
                                    "no acknowledgement from the JetStream stream; publishing again"
                                );
                            }
                            failures += 1;
                            retry.push_back(message);
                        }
                    }
                }
                message = queue.recv(), if !closed && waiting.len() < ACK_WINDOW && retry.is_empty() => {
                    match message {
                        Some(outgoing) => {
                            if let Some(message) = self.message(outgoing)
                                && let Err(message) =
                                    self.publish(client, context, message, &mut waiting).await
                            {
                                retry.push_back(message);
                            }
                        }
                        None => closed = true,
                    }
                }
                else => {}
            }
        }
    }

    /// The message for `outgoing`, formatted here rather than on the capture thread; an event
    /// that is not forwarded (none is queued) counts as failed, so the counters still add up.
    fn message(&self, outgoing: Outgoing) -> Option<Queued> {
        let message = outgoing.into_message(&self.url.prefix);
        if message.is_none() {
            self.counters.delivery.count_failed(1);
        }
        message
    }

    /// Publishes one message once a server is connected and adds its acknowledgement to
    /// `waiting`; gives the message back when the publish itself failed.
    async fn publish(
        &self,
        client: &async_nats::Client,
        context: &jetstream::Context,
        message: Queued,
        waiting: &mut FuturesUnordered<PendingAck>,
    ) -> Result<(), Queued> {
        wait_connected(client).await;
        let mut publish =
            jetstream::message::PublishMessage::build().payload(message.payload.clone());
        if let Some(id) = &message.id {
            publish = publish.message_id(id);
        }
        match context.send_publish(message.subject.clone(), publish).await {
            Ok(ack) => {
                waiting
                    .push(async move { (message, ack.await.map_err(|e| e.to_string())) }.boxed());
                Ok(())
            }
            Err(error)
                if error.kind() == jetstream::context::PublishErrorKind::MaxPayloadExceeded =>
            {
                // It will never fit: give it up rather than retry forever.
                drop(message);
                self.counters.delivery.count_failed(1);
                self.counters.delivery.count_error();
                tracing::warn!(url = %self.url, %error, "message too large for NATS, dropped");
                Ok(())
            }
            Err(error) => {
                self.counters.delivery.count_error();
                tracing::debug!(url = %self.url, %error, "cannot publish to JetStream");
                Err(message)
            }
        }
    }
}

/// Returns once the client is connected to a server.
async fn wait_connected(client: &async_nats::Client) {
    while client.connection_state() != async_nats::connection::State::Connected {
        tokio::time::sleep(CONNECTED_POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        assert_eq!(backoff(0), RECONNECT_MIN);
        assert_eq!(backoff(1), RECONNECT_MIN * 2);
        assert_eq!(backoff(100), RECONNECT_MAX);
    }
}
