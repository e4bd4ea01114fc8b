//! The RPC server: consume the guest's queues, ack on receipt, dispatch concurrently, reconnect.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicQosOptions};
use lapin::types::FieldTable;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::backoff::{self, Backoff};
use super::connection::{self, AmqpOptions};
use super::crypto::Cipher;
use super::dispatch::{self, Deduplicator, Endpoint};
use super::envelope;
use super::publisher::{Publisher, PublisherHandle};

/// How long a reply may wait for the broker to come back before it is dropped.
const REPLY_PATIENCE: Duration = Duration::from_secs(60);

pub struct RpcServer {
    pub opts: AmqpOptions,
    /// `guestagent.<id>`
    pub topic: String,
    /// `<id>`
    pub server: String,
    pub endpoint: Arc<dyn Endpoint>,
    pub cipher: Option<Cipher>,
    pub max_body: usize,
    pub reconnect_max_backoff: Duration,
    pub publisher: Publisher,
    pub publisher_handle: PublisherHandle,
    /// Fired once the queues are declared and consumers are running (each connect).
    pub on_consuming: Option<tokio::sync::mpsc::UnboundedSender<()>>,
}

enum Ended {
    Cancelled,
    /// The connection was lost (or never made); `held` when it had been consuming long enough
    /// to reset the backoff.
    Lost { reason: String, held: bool },
}

impl Ended {
    fn lost(reason: impl Into<String>) -> Self {
        Ended::Lost { reason: reason.into(), held: false }
    }
}

impl RpcServer {
    /// Serves until `cancel` fires, reconnecting with capped, jittered backoff (from 100 ms, reset
    /// after a connection that held); in-flight handlers go into `tracker`.
    pub async fn run(self, cancel: CancellationToken, tracker: TaskTracker) {
        let this = Arc::new(self);
        let dedup = Arc::new(Deduplicator::new(1024));
        let mut backoff = Backoff::new(backoff::FIRST_DELAY, this.reconnect_max_backoff);
        loop {
            let ended = tokio::select! {
                _ = cancel.cancelled() => Ended::Cancelled,
                ended = this.clone().serve_once(&cancel, &tracker, &dedup) => ended,
            };
            match ended {
                Ended::Cancelled => break,
                Ended::Lost { reason, held } => {
                    this.publisher_handle.set(None);
                    if held {
                        backoff.reset();
                    }
                    let delay = backoff.next_delay(&mut rand::thread_rng());
                    tracing::warn!(%reason, retry_in = ?delay, "rpc connection lost");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
        tracing::info!("stopped consuming");
    }

    async fn serve_once(self: Arc<Self>, cancel: &CancellationToken, tracker: &TaskTracker, dedup: &Arc<Deduplicator>) -> Ended {
        let conn = match connection::connect(&self.opts).await {
            Ok(c) => c,
            Err(e) => return Ended::lost(e.to_string()),
        };
        let setup = async {
            let consume_channel = conn.create_channel().await?;
            let publish_channel = conn.create_channel().await?;
            publish_channel.confirm_select(Default::default()).await?;
            consume_channel.basic_qos(64, BasicQosOptions::default()).await?;
            let queues = connection::declare_rpc_server(&consume_channel, &self.opts, &self.topic, &self.server).await?;
            let mut consumers = Vec::new();
            for queue in &queues {
                let consumer = consume_channel
                    .basic_consume(queue, "", BasicConsumeOptions { no_ack: false, ..Default::default() }, FieldTable::default())
                    .await?;
                consumers.push(consumer);
            }
            Ok::<_, super::Error>((consume_channel, publish_channel, consumers, queues))
        };
        let (consume_channel, publish_channel, consumers, queues) = match setup.await {
            Ok(s) => s,
            Err(e) => {
                let _ = conn.close(0, "setup failed").await;
                return Ended::lost(e.to_string());
            }
        };
        self.publisher_handle.set(Some(publish_channel));
        self.publisher_handle.set_connection(conn).await;
        tracing::info!(?queues, "consuming");
        if let Some(tx) = &self.on_consuming {
            let _ = tx.send(());
        }
        let consuming_since = std::time::Instant::now();
        let tags: Vec<String> = consumers.iter().map(|c| c.tag().to_string()).collect();
        let mut stream = futures_util::stream::select_all(consumers);
        let ended = loop {
            tokio::select! {
                _ = cancel.cancelled() => break Ended::Cancelled,
                next = stream.next() => match next {
                    None => break Ended::lost("consumer stream ended"),
                    Some(Err(e)) => break Ended::lost(e.to_string()),
                    Some(Ok(delivery)) => {
                        // At-most-once, like oslo: ack on receipt, before dispatch.
                        if let Err(error) = delivery.acker.ack(BasicAckOptions::default()).await {
                            tracing::warn!(%error, "ack failed; message dropped");
                            continue;
                        }
                        let this = self.clone();
                        let dedup = dedup.clone();
                        tracker.spawn(async move { this.handle(delivery.data, &dedup).await });
                    }
                }
            }
        };
        let ended = match ended {
            Ended::Lost { reason, .. } => Ended::Lost { reason, held: consuming_since.elapsed() >= backoff::HELD },
            cancelled => cancelled,
        };
        if matches!(ended, Ended::Cancelled) {
            // Stop taking new work; replies of in-flight calls still go out on the publish channel.
            for tag in &tags {
                let _ = consume_channel.basic_cancel(tag, Default::default()).await;
            }
            let _ = consume_channel.close(200, "shutting down").await;
        }
        ended
    }

    async fn handle(&self, body: Vec<u8>, dedup: &Deduplicator) {
        let request = match envelope::decode(&body, self.max_body) {
            Ok(r) => r,
            Err(error) => {
                tracing::warn!(reason = %error.reason, bytes = body.len(), "malformed message");
                if let (Some(msg_id), Some(reply_q)) = (&error.msg_id, &error.reply_q) {
                    if dispatch::valid_reply_queue(reply_q) {
                        let failure = super::RemoteFailure::guest_error(&format!("malformed message: {}", error.reason));
                        let body = envelope::reply(msg_id, serde_json::Value::Null, Some(failure.to_wire()));
                        self.send_reply(reply_q, &body).await;
                    }
                }
                return;
            }
        };
        if let Some(id) = &request.unique_id {
            if !dedup.first_time(id) {
                tracing::info!(unique_id = %id, method = %request.method, "duplicate message dropped");
                return;
            }
        }
        // The request id is recorded from the context: here when it is plaintext, in dispatch once
        // secure RPC has decrypted it (calls and casts alike).
        let span = tracing::info_span!(
            "rpc",
            method = %request.method,
            msg_id = request.msg_id.as_deref().unwrap_or("-"),
            request_id = tracing::field::Empty,
        );
        if let Some(id) = request.context.get("request_id").and_then(|v| v.as_str()) {
            span.record("request_id", id);
        }
        async {
            let started = std::time::Instant::now();
            let kind = if request.is_call() { "call" } else { "cast" };
            if let Some(q) = request.reply_q.as_deref().filter(|q| !dispatch::valid_reply_queue(q)) {
                tracing::warn!(reply_q = %q, "reply queue name refused; no reply will be sent");
            }
            let outcome = dispatch::dispatch(self.endpoint.as_ref(), self.cipher.as_ref(), request).await;
            match &outcome.failure {
                Some(f) => tracing::warn!(kind, class = %f.class, error = %f.message, elapsed_ms = started.elapsed().as_millis() as u64, "request failed"),
                None => tracing::info!(kind, elapsed_ms = started.elapsed().as_millis() as u64, "request done"),
            }
            if let Some((reply_q, body)) = outcome.reply {
                self.send_reply(&reply_q, &body).await;
            }
        }
        .instrument(span)
        .await
    }

    async fn send_reply(&self, reply_q: &str, body: &[u8]) {
        if let Err(error) = self.publisher.publish("", reply_q, body, REPLY_PATIENCE).await {
            tracing::warn!(%error, reply_q, "reply could not be sent");
        }
    }
}
