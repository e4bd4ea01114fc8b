//! The taskmanager's side of the RPC: calls with reply correlation, casts, per-guest keys.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use serde_json::{json, Map, Value};
use tokio::sync::oneshot;

use super::connection::{self, AmqpOptions};
use super::crypto::Cipher;
use super::envelope;
use super::failure::RemoteFailure;
use super::publisher::properties;
use super::Error;

type Pending = Arc<Mutex<HashMap<String, oneshot::Sender<Value>>>>;

/// One connection, one reply queue, any number of concurrent calls.
pub struct RpcClient {
    conn: Connection,
    channel: Channel,
    exchange: String,
    reply_q: String,
    pending: Pending,
    /// Set when the reply consumer ended (connection lost): no reply can arrive any more.
    closed: Arc<AtomicBool>,
}

impl RpcClient {
    pub async fn connect(opts: &AmqpOptions) -> Result<Self, Error> {
        let conn = connection::connect(opts).await?;
        let channel = conn.create_channel().await?;
        connection::declare_control_exchange(&channel, opts).await?;
        let reply_q = format!("reply_{}", envelope::new_id());
        connection::declare_reply_queue(&channel, &reply_q, opts.transient_ttl_ms).await?;
        let mut consumer = channel
            .basic_consume(&reply_q, "", BasicConsumeOptions { no_ack: true, ..Default::default() }, FieldTable::default())
            .await?;
        let pending: Pending = Arc::default();
        let routes = pending.clone();
        let closed = Arc::new(AtomicBool::new(false));
        let ended = closed.clone();
        tokio::spawn(async move {
            while let Some(Ok(delivery)) = consumer.next().await {
                let Ok(reply) = envelope::decode_reply(&delivery.data) else { continue };
                let ending = reply.get("ending").and_then(Value::as_bool).unwrap_or(true);
                if !ending {
                    continue;
                }
                let Some(msg_id) = reply.get("_msg_id").and_then(Value::as_str) else { continue };
                let waiter = routes.lock().unwrap_or_else(|p| p.into_inner()).remove(msg_id);
                if let Some(waiter) = waiter {
                    let _ = waiter.send(Value::Object(reply));
                }
            }
            // The reply queue lived on the connection's node: calls still waiting fail now
            // (their waiters are dropped) instead of at their timeouts.
            ended.store(true, Ordering::SeqCst);
            routes.lock().unwrap_or_else(|p| p.into_inner()).clear();
        });
        Ok(RpcClient { conn, channel, exchange: opts.control_exchange.clone(), reply_q, pending, closed })
    }

    /// Calls `method` on `topic` and waits up to `timeout` for its one reply.
    pub async fn call(
        &self,
        topic: &str,
        method: &str,
        args: Map<String, Value>,
        version: &str,
        timeout: Duration,
        cipher: Option<&Cipher>,
    ) -> Result<Value, Error> {
        self.call_with_context(topic, method, args, version, timeout, cipher, Map::new()).await
    }

    /// As `call`, with more request-context keys (e.g. the user's `auth_token` and service
    /// catalog, as Trove's API passes them on).
    #[allow(clippy::too_many_arguments)]
    pub async fn call_with_context(
        &self,
        topic: &str,
        method: &str,
        args: Map<String, Value>,
        version: &str,
        timeout: Duration,
        cipher: Option<&Cipher>,
        extra: Map<String, Value>,
    ) -> Result<Value, Error> {
        let msg_id = envelope::new_id();
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(msg_id.clone(), tx);
        // Checked after the insert: a consumer that ends from now on drops this waiter.
        if self.closed.load(Ordering::SeqCst) {
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&msg_id);
            return Err(Error::NotConnected);
        }
        let (args, context) = seal_with(args, cipher, extra);
        let body = envelope::request(method, args, version, &context, Some((&msg_id, &self.reply_q)));
        let expiration = Some(timeout.as_millis() as u64);
        let sent = self
            .channel
            .basic_publish(&self.exchange, topic, BasicPublishOptions::default(), &body, properties(expiration))
            .await;
        if let Err(e) = sent {
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&msg_id);
            return Err(e.into());
        }
        let reply = match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => reply,
            Ok(Err(_)) => return Err(Error::ReplyLost { method: method.to_owned() }),
            Err(_) => {
                self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&msg_id);
                return Err(Error::Timeout { method: method.to_owned(), timeout });
            }
        };
        if let Some(failure) = reply.get("failure").and_then(Value::as_str) {
            let failure = RemoteFailure::from_wire(failure)
                .ok_or_else(|| Error::BadReply(format!("unreadable failure from {method}")))?;
            return Err(Error::Remote { method: method.to_owned(), failure });
        }
        let result = reply.get("result").cloned().unwrap_or(Value::Null);
        match cipher {
            Some(c) => c
                .decrypt_value(&result)
                .map_err(|e| Error::BadReply(format!("result of {method} could not be decrypted: {e}"))),
            None => Ok(result),
        }
    }

    pub(super) fn channel(&self) -> &Channel {
        &self.channel
    }

    pub(super) fn exchange(&self) -> &str {
        &self.exchange
    }

    /// How many consumers the broker counts on the queue `topic` (a guest's: its agent, while it
    /// runs), by a passive declare on a channel of its own (a missing queue closes that channel).
    /// None when the broker does not say.
    pub async fn consumers(&self, topic: &str) -> Option<u32> {
        let channel = self.conn.create_channel().await.ok()?;
        let declared = channel
            .queue_declare(topic, QueueDeclareOptions { passive: true, ..Default::default() }, FieldTable::default())
            .await
            .ok();
        tokio::spawn(async move {
            let _ = channel.close(200, "consumer count read").await;
        });
        declared.map(|q| q.consumer_count())
    }

    /// Whether the connection is up (a watcher reconnects when it is not).
    pub fn connected(&self) -> bool {
        self.conn.status().connected()
    }

    /// Closes the connection (before the runtime stops, so lapin's I/O loop ends cleanly).
    pub async fn close(&self) {
        if let Err(error) = self.conn.close(200, "client closing").await {
            tracing::debug!(%error, "closing the AMQP connection");
        }
    }

    /// Sends `method` to `topic` without waiting.
    pub async fn cast(&self, topic: &str, method: &str, args: Map<String, Value>, version: &str, cipher: Option<&Cipher>) -> Result<(), Error> {
        self.cast_with_context(topic, method, args, version, cipher, Map::new()).await
    }

    /// As `cast`, with more request-context keys (e.g. the user's `auth_token`, as Trove's API
    /// passes it on for backups).
    pub async fn cast_with_context(
        &self,
        topic: &str,
        method: &str,
        args: Map<String, Value>,
        version: &str,
        cipher: Option<&Cipher>,
        extra: Map<String, Value>,
    ) -> Result<(), Error> {
        let (args, context) = seal_with(args, cipher, extra);
        let body = envelope::request(method, args, version, &context, None);
        self.channel
            .basic_publish(&self.exchange, topic, BasicPublishOptions::default(), &body, properties(None))
            .await?
            .await?;
        Ok(())
    }
}

/// Encrypts argument values and the context as Trove's SecureSerializer does.
fn seal_with(args: Map<String, Value>, cipher: Option<&Cipher>, extra: Map<String, Value>) -> (Map<String, Value>, Map<String, Value>) {
    let mut context = Map::new();
    context.insert("user".into(), json!("trove-guestctl"));
    context.insert("is_admin".into(), json!(true));
    context.insert("read_only".into(), json!(false));
    context.insert("show_deleted".into(), json!(false));
    context.insert("request_id".into(), json!(format!("req-{}", envelope::new_id())));
    context.extend(extra);
    match cipher {
        None => (args, context),
        Some(c) => {
            let args = args.into_iter().map(|(k, v)| (k, Value::String(c.encrypt_value(&v)))).collect();
            let mut sealed = Map::new();
            sealed.insert("context".into(), Value::String(c.encrypt_value(&Value::Object(context))));
            (args, sealed)
        }
    }
}
