//! A leadership lease held in RabbitMQ itself: a token message on a single-active-consumer queue.
//!
//! Every watcher consumes from the queue `<name>.leader` (`x-single-active-consumer`), with a
//! prefetch of one and without acknowledging. The broker delivers only to its one active consumer,
//! which receives the token and keeps it unacknowledged: holding the token is holding the lease.
//! When the holder's channel closes (it exits, or the broker drops its connection after missed
//! heartbeats), the broker requeues the token and activates the next consumer, which receives it at
//! once: standbys wait on the broker, they never poll. `check` asks the broker again.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection};

use super::connection::{connect, AmqpOptions};
use super::Error;

/// A watcher's seat at the broker: one connection and one consumer, kept open; the lease is held
/// while its consumer keeps the token. The connection's AMQP heartbeat is short
/// (`AmqpOptions::heartbeat`), so the broker drops a hung or cut-off holder, and hands the token on,
/// within two heartbeats.
pub struct Lease {
    conn: Connection,
    channel: Channel,
    queue: String,
    held: Arc<AtomicBool>,
    consuming: Arc<AtomicBool>,
}

impl Lease {
    /// Opens a seat for the lease named `name`: declares the queue, puts a token in it when it
    /// has none ready, and consumes (held once the broker delivers the token to this seat).
    pub async fn seat(opts: &AmqpOptions, name: &str) -> Result<Lease, Error> {
        let conn = connect(opts).await?;
        let channel = conn.create_channel().await?;
        let queue = format!("{name}.leader");
        let mut args = FieldTable::default();
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        let declared = channel
            .queue_declare(&queue, QueueDeclareOptions::default(), args)
            .await
            .map_err(|e| Error::declare(&queue, e))?;
        // A token held by the leader is not "ready": a second ready one is harmless (only the one
        // active consumer receives, one at a time), and at most one more is ever added.
        if declared.message_count() == 0 {
            channel.basic_publish("", &queue, BasicPublishOptions::default(), b"lease", BasicProperties::default()).await?.await?;
        }
        channel.basic_qos(1, BasicQosOptions::default()).await?;
        let mut consumer = channel.basic_consume(&queue, "", BasicConsumeOptions::default(), FieldTable::default()).await?;
        let held = Arc::new(AtomicBool::new(false));
        let consuming = Arc::new(AtomicBool::new(true));
        let (h, c) = (held.clone(), consuming.clone());
        tokio::spawn(async move {
            // Deliveries are kept, never acknowledged: the token returns to the queue only when
            // this channel closes.
            let mut kept = Vec::new();
            while let Some(Ok(delivery)) = consumer.next().await {
                kept.push(delivery);
                h.store(true, Ordering::SeqCst);
            }
            h.store(false, Ordering::SeqCst);
            c.store(false, Ordering::SeqCst);
        });
        Ok(Lease { conn, channel, queue, held, consuming })
    }

    /// Whether the seat still works: its connection up and its consumer not cancelled (a seat that
    /// does not must be opened again).
    pub fn connected(&self) -> bool {
        self.conn.status().connected() && self.consuming.load(Ordering::SeqCst)
    }

    /// Whether this seat holds the token (see `check` for whether the broker still agrees).
    pub fn held(&self) -> bool {
        self.held.load(Ordering::SeqCst)
    }

    /// True while this seat holds the token and the broker answers on its connection.
    pub async fn check(&self) -> bool {
        if !self.held() || !self.connected() {
            return false;
        }
        let passive = QueueDeclareOptions { passive: true, ..Default::default() };
        self.channel.queue_declare(&self.queue, passive, FieldTable::default()).await.is_ok()
    }

    /// Gives the lease (and the seat) up: the broker hands the token to the next watcher.
    pub async fn release(self) {
        let _ = self.conn.close(200, "lease released").await;
    }
}
