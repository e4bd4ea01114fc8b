//! Connecting to RabbitMQ (failover across hosts, TLS) and declaring oslo's topology exactly.

use std::time::Duration;

use lapin::{
    options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions},
    tcp::{OwnedIdentity, OwnedTLSConfig},
    types::{AMQPValue, FieldTable},
    Channel, Connection, ConnectionProperties, ExchangeKind,
};
use secrecy::ExposeSecret;

use super::transport::parse_transport_url;
use super::Error;

/// Everything needed to open a connection and declare queues the way oslo.messaging does.
#[derive(Debug, Clone)]
pub struct AmqpOptions {
    pub transport_url: secrecy::SecretString,
    pub control_exchange: String,
    pub durable: bool,
    pub quorum: bool,
    pub ha: bool,
    pub transient_ttl_ms: u32,
    pub heartbeat: u16,
    /// TLS to every host, whatever the transport URL says.
    pub ssl: bool,
    pub ssl_ca_file: Option<std::path::PathBuf>,
    pub ssl_client_pkcs12: Option<std::path::PathBuf>,
    pub ssl_client_pkcs12_password: Option<secrecy::SecretString>,
    pub connection_name: String,
}

impl AmqpOptions {
    /// Plain options for a URL (used by the CLI and tests).
    pub fn new(transport_url: &str, control_exchange: &str, connection_name: &str) -> Self {
        AmqpOptions {
            transport_url: secrecy::SecretString::from(transport_url.to_owned()),
            control_exchange: control_exchange.to_owned(),
            durable: false,
            quorum: false,
            ha: false,
            transient_ttl_ms: 1_800_000,
            heartbeat: 60,
            ssl: false,
            ssl_ca_file: None,
            ssl_client_pkcs12: None,
            ssl_client_pkcs12_password: None,
            connection_name: connection_name.to_owned(),
        }
    }

    fn exchange_durable(&self) -> bool {
        self.durable || self.quorum
    }
}

/// The largest AMQP frame we ask for. lapin keeps a send and a receive buffer of 32 frames each:
/// at RabbitMQ's default 128 KiB that is 8 MiB of resident memory for an agent whose messages are
/// a few KiB; at 32 KiB it is 2 MiB. Larger bodies are simply sent in more frames.
const FRAME_MAX: u32 = 32 * 1024;

/// How long one host may take to accept a TCP connection before the next one is tried.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Opens a connection to the first host that answers.
pub async fn connect(opts: &AmqpOptions) -> Result<Connection, Error> {
    connect_from(opts, 0).await.map(|(conn, _)| conn)
}

/// Opens a connection to the first host that answers, trying them in order from host `start`
/// (modulo their number) round to the one before it; returns the connection and that host's
/// index. A reconnect starts after the host it lost (oslo's round-robin failover), so a dead
/// node is tried last instead of first.
pub async fn connect_from(opts: &AmqpOptions, start: usize) -> Result<(Connection, usize), Error> {
    let uris = parse_transport_url(opts.transport_url.expose_secret()).map_err(|e| Error::Config(e.to_string()))?;
    let n = uris.len();
    let mut last = None;
    for index in failover_order(n, start) {
        let mut uri = uris[index].clone();
        uri.query.heartbeat = Some(opts.heartbeat);
        if opts.ssl {
            uri.scheme = lapin::uri::AMQPScheme::AMQPS;
        }
        uri.query.frame_max = Some(FRAME_MAX);
        // lapin's TCP connect is a blocking one, which the timeout below cannot cut short: bound it.
        uri.query.connection_timeout = Some(CONNECT_TIMEOUT.as_millis() as u64);
        let host = format!("{}:{}", uri.authority.host, uri.authority.port);
        // A dead node's address may not even refuse (its SYNs go unanswered): find out without
        // blocking, so that the next host is tried after CONNECT_TIMEOUT, not the kernel's minute.
        let reachable = match tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect((uri.authority.host.as_str(), uri.authority.port))).await {
            Ok(Ok(_probe)) => Ok(()),
            Ok(Err(error)) => Err(format!("{host}: {error}")),
            Err(_) => Err(format!("{host}: no TCP connection within {CONNECT_TIMEOUT:?}")),
        };
        if let Err(failure) = reachable {
            if n > 1 {
                tracing::warn!(reason = %failure, "cannot connect to this RabbitMQ host; trying the next one");
            }
            last = Some(failure);
            continue;
        }
        // lapin runs its tasks on our tokio runtime rather than on an executor of its own. Its
        // reactor stays its own: the I/O loop thread outlives the runtime at exit, and on the
        // tokio reactor it would then fail loudly.
        let props = ConnectionProperties::default()
            .with_connection_name(opts.connection_name.clone().into())
            .with_executor(tokio_executor_trait::Tokio::current());
        let tls = tls_config(opts)?;
        let attempt = tokio::time::timeout(
            Duration::from_secs(10),
            Connection::connect_uri_with_config(uri, props, tls),
        )
        .await;
        let failure = match attempt {
            Ok(Ok(conn)) => {
                tracing::debug!(broker = %host, "connected to RabbitMQ");
                return Ok((conn, index));
            }
            Ok(Err(error)) => format!("{host}: {error}"),
            Err(_) => format!("{host}: connection timed out"),
        };
        if n > 1 {
            tracing::warn!(reason = %failure, "cannot connect to this RabbitMQ host; trying the next one");
        }
        last = Some(failure);
    }
    Err(Error::Connect(last.unwrap_or_else(|| "no broker".into())))
}

/// Host indices in the order to try them: from `start` (modulo `n`) round to the one before it.
fn failover_order(n: usize, start: usize) -> impl Iterator<Item = usize> {
    (0..n).map(move |i| (start + i) % n.max(1))
}

fn tls_config(opts: &AmqpOptions) -> Result<OwnedTLSConfig, Error> {
    let cert_chain = match &opts.ssl_ca_file {
        Some(path) => Some(
            std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read ssl_ca_file {}: {e}", path.display())))?,
        ),
        None => None,
    };
    let identity = match &opts.ssl_client_pkcs12 {
        Some(path) => Some(OwnedIdentity {
            der: std::fs::read(path)
                .map_err(|e| Error::Config(format!("cannot read ssl_client_pkcs12 {}: {e}", path.display())))?,
            password: opts
                .ssl_client_pkcs12_password
                .as_ref()
                .map(|p| p.expose_secret().to_owned())
                .unwrap_or_default(),
        }),
        None => None,
    };
    Ok(OwnedTLSConfig { identity, cert_chain })
}

/// Declares the control exchange (topic), as oslo does.
pub async fn declare_control_exchange(channel: &Channel, opts: &AmqpOptions) -> Result<(), Error> {
    channel
        .exchange_declare(
            &opts.control_exchange,
            ExchangeKind::Topic,
            ExchangeDeclareOptions { durable: opts.exchange_durable(), auto_delete: false, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .map_err(|e| Error::declare(&opts.control_exchange, e))
}

/// Declares the RPC server's queues for `topic` and `server`, returning the queue names to consume.
///
/// Topic queue `<topic>` and server queue `<topic>.<server>` on the control exchange, and the
/// fanout exchange `<topic>_fanout` with queue `<topic>_fanout_<uuid>` (`x-expires`).
pub async fn declare_rpc_server(
    channel: &Channel,
    opts: &AmqpOptions,
    topic: &str,
    server: &str,
) -> Result<Vec<String>, Error> {
    declare_control_exchange(channel, opts).await?;
    let mut args = FieldTable::default();
    if opts.quorum {
        args.insert("x-queue-type".into(), AMQPValue::LongString("quorum".into()));
    } else if opts.ha {
        args.insert("x-ha-policy".into(), AMQPValue::LongString("all".into()));
    }
    let durable = opts.exchange_durable();
    let server_queue = format!("{topic}.{server}");
    for name in [topic, server_queue.as_str()] {
        channel
            .queue_declare(name, QueueDeclareOptions { durable, auto_delete: false, ..Default::default() }, args.clone())
            .await
            .map_err(|e| Error::declare(name, e))?;
        channel
            .queue_bind(name, &opts.control_exchange, name, QueueBindOptions::default(), FieldTable::default())
            .await
            .map_err(|e| Error::declare(name, e))?;
    }
    let fanout_exchange = format!("{topic}_fanout");
    channel
        .exchange_declare(
            &fanout_exchange,
            ExchangeKind::Fanout,
            ExchangeDeclareOptions { durable: false, auto_delete: true, ..Default::default() },
            FieldTable::default(),
        )
        .await
        .map_err(|e| Error::declare(&fanout_exchange, e))?;
    let fanout_queue = format!("{topic}_fanout_{}", super::envelope::new_id());
    let mut fanout_args = FieldTable::default();
    fanout_args.insert("x-expires".into(), AMQPValue::LongInt(opts.transient_ttl_ms as i32));
    channel
        .queue_declare(&fanout_queue, QueueDeclareOptions { durable: false, auto_delete: false, ..Default::default() }, fanout_args)
        .await
        .map_err(|e| Error::declare(&fanout_queue, e))?;
    channel
        .queue_bind(&fanout_queue, &fanout_exchange, topic, QueueBindOptions::default(), FieldTable::default())
        .await
        .map_err(|e| Error::declare(&fanout_queue, e))?;
    Ok(vec![topic.to_owned(), server_queue, fanout_queue])
}

/// Declares a caller's reply queue `reply_<uuid>` like current oslo (non-durable, `x-expires`).
pub async fn declare_reply_queue(channel: &Channel, name: &str, ttl_ms: u32) -> Result<(), Error> {
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(ttl_ms as i32));
    channel
        .queue_declare(name, QueueDeclareOptions { durable: false, auto_delete: false, ..Default::default() }, args)
        .await
        .map(|_| ())
        .map_err(|e| Error::declare(name, e))
}

#[cfg(test)]
mod tests {
    use super::failover_order;

    #[test]
    fn reconnects_start_after_the_host_last_used() {
        assert_eq!(failover_order(3, 0).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(failover_order(3, 1).collect::<Vec<_>>(), [1, 2, 0]);
        assert_eq!(failover_order(3, 3).collect::<Vec<_>>(), [0, 1, 2]);
        assert_eq!(failover_order(1, 7).collect::<Vec<_>>(), [0]);
        assert_eq!(failover_order(0, 2).count(), 0);
    }
}
