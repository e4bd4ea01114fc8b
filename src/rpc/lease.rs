//! A leadership lease held in RabbitMQ itself: an exclusive queue that only one connection may own.
//!
//! The broker grants the queue to the first connection that declares it and refuses every other
//! (`RESOURCE_LOCKED`) until that connection closes or misses its heartbeats, when the broker
//! deletes the queue. Holding the lease is holding the queue; `check` asks the broker again.

use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Connection};

use super::connection::{connect, AmqpOptions};
use super::Error;

/// The held lease: the connection that owns the queue.
pub struct Lease {
    conn: Connection,
    channel: Channel,
    queue: String,
}

impl Lease {
    /// Tries once to take the lease named `name`; `Ok(None)` when another connection holds it.
    pub async fn try_acquire(opts: &AmqpOptions, name: &str) -> Result<Option<Lease>, Error> {
        let conn = connect(opts).await?;
        let channel = conn.create_channel().await?;
        let queue = format!("{name}.lease");
        let declared = channel
            .queue_declare(&queue, QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() }, FieldTable::default())
            .await;
        match declared {
            Ok(_) => Ok(Some(Lease { conn, channel, queue })),
            Err(e) if is_locked(&e) => {
                let _ = conn.close(200, "lease held elsewhere").await;
                Ok(None)
            }
            Err(e) => {
                let _ = conn.close(200, "lease error").await;
                Err(Error::declare(&queue, e))
            }
        }
    }

    /// True while this connection still owns the queue (asked of the broker, not remembered).
    pub async fn check(&self) -> bool {
        if !self.conn.status().connected() {
            return false;
        }
        let passive = QueueDeclareOptions { passive: true, exclusive: true, ..Default::default() };
        self.channel.queue_declare(&self.queue, passive, FieldTable::default()).await.is_ok()
    }

    /// Gives the lease up.
    pub async fn release(self) {
        let _ = self.conn.close(200, "lease released").await;
    }
}

fn is_locked(e: &lapin::Error) -> bool {
    // 405 RESOURCE_LOCKED: "cannot obtain exclusive access to locked queue".
    e.to_string().contains("RESOURCE_LOCKED") || e.to_string().contains("exclusive access")
}
