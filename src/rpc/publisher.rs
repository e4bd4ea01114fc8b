//! The shared publishing handle: survives reconnects, so a reply outlives the connection it was asked on.

use std::time::Duration;

use std::sync::Arc;

use lapin::{options::BasicPublishOptions, BasicProperties, Channel, Connection};
use tokio::sync::{watch, Mutex};

use super::Error;

/// Publishes on whichever channel the server currently holds.
#[derive(Clone)]
pub struct Publisher {
    channel: watch::Receiver<Option<Channel>>,
    conn: Arc<Mutex<Option<Connection>>>,
}

/// The server side that installs a fresh channel (and its connection) after each reconnect.
pub struct PublisherHandle {
    channel: watch::Sender<Option<Channel>>,
    conn: Arc<Mutex<Option<Connection>>>,
}

pub fn publisher() -> (PublisherHandle, Publisher) {
    let (tx, rx) = watch::channel(None);
    let conn = Arc::new(Mutex::new(None));
    (PublisherHandle { channel: tx, conn: conn.clone() }, Publisher { channel: rx, conn })
}

impl PublisherHandle {
    pub fn set(&self, channel: Option<Channel>) {
        self.channel.send_replace(channel);
    }

    /// Keeps the connection the channel lives on, until `Publisher::close` (replacing a lost one).
    pub async fn set_connection(&self, conn: Connection) {
        *self.conn.lock().await = Some(conn);
    }
}

/// The AMQP properties oslo.messaging (kombu) puts on every message.
pub fn properties(expiration_ms: Option<u64>) -> BasicProperties {
    let props = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_content_encoding("utf-8".into())
        .with_delivery_mode(2)
        .with_priority(0)
        .with_headers(Default::default());
    match expiration_ms {
        Some(ms) => props.with_expiration(ms.to_string().into()),
        None => props,
    }
}

impl Publisher {
    /// Closes the connection, last thing at shutdown, while the runtime still drives lapin's I/O.
    pub async fn close(&self) {
        if let Some(conn) = self.conn.lock().await.take() {
            if let Err(error) = conn.close(200, "agent stopping").await {
                tracing::debug!(%error, "closing the AMQP connection");
            }
        }
    }

    /// Publishes `body`, waiting up to `patience` for a connection if there is none.
    pub async fn publish(&self, exchange: &str, routing_key: &str, body: &[u8], patience: Duration) -> Result<(), Error> {
        let deadline = tokio::time::Instant::now() + patience;
        let mut rx = self.channel.clone();
        loop {
            let channel = rx.borrow_and_update().clone();
            if let Some(channel) = channel.filter(|c| c.status().connected()) {
                let sent = channel
                    .basic_publish(exchange, routing_key, BasicPublishOptions::default(), body, properties(None))
                    .await;
                match sent {
                    Ok(confirm) => {
                        confirm.await?;
                        return Ok(());
                    }
                    Err(error) => tracing::warn!(%error, routing_key, "publish failed, waiting for a new channel"),
                }
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                Ok(Err(_)) | Err(_) => return Err(Error::NotConnected),
            }
        }
    }
}
