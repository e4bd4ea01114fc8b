//! Topology hints: a coordinator tells the set's watchers "look now" on the control exchange.
//!
//! A hint carries nothing a watcher trusts: it starts the next probe round at once instead of at
//! the end of the period, and may name the guest that just became master, which the watcher then
//! asks first (one probe, not a round). Every announcement still rests on what the guests report,
//! so a forged or lost hint costs at most one probe or one period, never a wrong announcement.

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
    /// Publishes a hint for `set`, naming the guest that now takes writes if there is one (best
    /// effort: a lost hint only costs the watchers one period).
    pub async fn hint(&self, set: &str, master: Option<&str>) {
        let Some(key) = routing_key(set) else { return };
        let body = serde_json::to_vec(&Hint { master: master.map(str::to_owned) }).unwrap_or_default();
        let sent = self
            .channel()
            .basic_publish(self.exchange(), &key, BasicPublishOptions::default(), &body, Default::default())
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

/// One hint: look now, and first at `master` if it names one.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Hint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub master: Option<String>,
}

impl Hint {
    /// A hint from a message body; a body that is not one is still a hint to look now.
    pub fn parse(body: &[u8]) -> Hint {
        serde_json::from_slice(body).unwrap_or_default()
    }
}

/// The hints a watcher waits on.
pub struct Hints {
    consumer: lapin::Consumer,
}

impl Hints {
    /// The next hint; `None` once the queue's connection is gone.
    pub async fn next(&mut self) -> Option<Hint> {
        match self.consumer.next().await {
            Some(Ok(delivery)) => Some(Hint::parse(&delivery.data)),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{routing_key, Hint};

    #[test]
    fn a_hint_names_the_new_master_and_any_other_body_is_a_plain_hint() {
        let named = serde_json::to_vec(&Hint { master: Some("g2".into()) }).unwrap();
        assert_eq!(Hint::parse(&named).master.as_deref(), Some("g2"));
        assert_eq!(Hint::parse(b"{}"), Hint::default(), "a watcher of an older coordinator still looks now");
        for bad in [&b"not json"[..], b"", b"{\"master\": 7}", b"[]"] {
            assert_eq!(Hint::parse(bad), Hint::default());
        }
    }

    #[test]
    fn only_plain_set_names_become_routing_keys() {
        assert_eq!(routing_key("redis-set_1").as_deref(), Some("trove-guestctl.changed.redis-set_1"));
        for bad in ["", "a.b", "a*", "#", "a b", &"x".repeat(201)] {
            assert_eq!(routing_key(bad), None, "{bad}");
        }
    }
}
