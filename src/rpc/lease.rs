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

/// A watcher's seat at the broker: one connection, kept open, on which the lease is tried (a
/// standby asks again on a new channel, not a new connection) and held. The connection's AMQP
/// heartbeat is short (`AmqpOptions::heartbeat`), so the broker drops a hung or cut-off holder,
/// and with it the lease, within two heartbeats.
pub struct Lease {
    conn: Connection,
    channel: Option<Channel>,
    queue: String,
}

impl Lease {
    /// Opens a seat for the lease named `name` (not yet held).
    pub async fn seat(opts: &AmqpOptions, name: &str) -> Result<Lease, Error> {
        let conn = connect(opts).await?;
        Ok(Lease { conn, channel: None, queue: format!("{name}.lease") })
    }

    /// Whether the seat's connection is up (a closed one must be opened again).
    pub fn connected(&self) -> bool {
        self.conn.status().connected()
    }

    /// Whether this seat took the lease (see `check` for whether it still owns it).
    pub fn held(&self) -> bool {
        self.channel.is_some()
    }

    /// Tries once to take the lease; false when another connection holds it.
    pub async fn try_take(&mut self) -> Result<bool, Error> {
        if self.channel.is_some() {
            return Ok(true);
        }
        let channel = self.conn.create_channel().await?;
        let declared = channel
            .queue_declare(&self.queue, QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() }, FieldTable::default())
            .await;
        match declared {
            Ok(_) => {
                self.channel = Some(channel);
                Ok(true)
            }
            Err(e) if is_locked(&e) => Ok(false),
            Err(e) => Err(Error::declare(&self.queue, e)),
        }
    }

    /// True while this connection still owns the queue (asked of the broker, not remembered).
    pub async fn check(&self) -> bool {
        let Some(channel) = &self.channel else { return false };
        if !self.conn.status().connected() {
            return false;
        }
        let passive = QueueDeclareOptions { passive: true, exclusive: true, ..Default::default() };
        channel.queue_declare(&self.queue, passive, FieldTable::default()).await.is_ok()
    }

    /// Gives the lease (and the seat) up.
    pub async fn release(self) {
        let _ = self.conn.close(200, "lease released").await;
    }
}

fn is_locked(e: &lapin::Error) -> bool {
    // 405 RESOURCE_LOCKED: "cannot obtain exclusive access to locked queue".
    e.to_string().contains("RESOURCE_LOCKED") || e.to_string().contains("exclusive access")
}
