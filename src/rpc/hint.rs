//! Topology hints: a coordinator tells the set's watchers "look now" on the control exchange.
//!
//! A hint carries nothing a watcher trusts: it only starts the next probe round at once instead
//! of at the end of the period, and the round reads the topology from the guests as always. So a
//! forged or lost hint costs at most one round or one period, never a wrong announcement.

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;

use super::client::RpcClient;
use super::{envelope, Error};

/// The routing key of a set's hints, or `None` when the set's name cannot be one (a topic
/// binding key treats `.`, `*` and `#` as syntax): its watchers then only poll.
pub fn routing_key(set: &str) -> Option<String> {
    let plain =
        !set.is_empty() && set.len() <= 200 && set.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    plain.then(|| format!("trove-guestctl.changed.{set}"))
}

impl RpcClient {
    /// Publishes a hint for `set` (best effort: a lost hint only costs the watchers one period).
    pub async fn hint(&self, set: &str) {
        let Some(key) = routing_key(set) else { return };
        let sent = self
            .channel()
            .basic_publish(self.exchange(), &key, BasicPublishOptions::default(), b"{}", Default::default())
            .await;
        if let Err(error) = sent {
            tracing::debug!(%error, "topology hint not sent");
        }
    }

    /// A queue of this connection's own that receives `set`'s hints; `None` when the name cannot
    /// be a routing key. Ends (yields `None`) when the connection goes.
    pub async fn hints(&self, set: &str) -> Result<Option<Hints>, Error> {
        let Some(key) = routing_key(set) else {
            return Ok(None);
        };
        let channel = self.channel();
        let queue = format!("trove-guestctl.hints.{}", envelope::new_id());
        let opts = QueueDeclareOptions { exclusive: true, auto_delete: true, ..Default::default() };
        channel.queue_declare(&queue, opts, FieldTable::default()).await?;
        channel.queue_bind(&queue, self.exchange(), &key, QueueBindOptions::default(), FieldTable::default()).await?;
        let consumer = channel
            .basic_consume(
                &queue,
                "",
                BasicConsumeOptions { no_ack: true, exclusive: true, ..Default::default() },
                FieldTable::default(),
            )
            .await?;
        Ok(Some(Hints { consumer }))
    }
}

/// The hints a watcher waits on.
pub struct Hints {
    consumer: lapin::Consumer,
}

impl Hints {
    /// The next hint; `None` once the queue's connection is gone.
    pub async fn next(&mut self) -> Option<()> {
        match self.consumer.next().await {
            Some(Ok(_)) => Some(()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::routing_key;

    #[test]
    fn only_plain_set_names_become_routing_keys() {
        assert_eq!(routing_key("redis-set_1").as_deref(), Some("trove-guestctl.changed.redis-set_1"));
        for bad in ["", "a.b", "a*", "#", "a b", &"x".repeat(201)] {
            assert_eq!(routing_key(bad), None, "{bad}");
        }
    }
}
