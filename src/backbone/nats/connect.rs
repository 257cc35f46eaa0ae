//! Connecting to NATS: the client's options (name, timeouts, endless reconnects with backoff,
//! credentials, token, TLS), the JetStream context, the stream's config (subjects, history
//! limits, storage, replicas, duplicate window, republish, atomic batches when the server has
//! them), creating or updating the stream at startup, and creating it again after a NATS lost
//! it.
//!
//! May touch: the [`ClusterConfig`](crate::backbone::ClusterConfig) settings, the NATS client
//! and JetStream's stream API.
//! May not: store or read messages, or talk to the cores (this file builds the [`Node`] the
//! other jobs share; it sends nothing).
//!
//! Read next: [`super::store`].

use super::{Node, Setup};
use crate::backbone::{BackboneStats, Storage};
use async_nats::jetstream::{self, stream};
use hashbrown::HashMap;
use std::cell::RefCell;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Connects to NATS, creates or updates the stream and builds the [`Node`] the thread's tasks
/// share.
pub(super) async fn connect(
    setup: &Setup,
    stats: &Arc<BackboneStats>,
    events: tokio::sync::mpsc::UnboundedSender<async_nats::Event>,
) -> Result<Node, String> {
    let cc = &setup.cluster;
    let req_timeout = Duration::from_millis(cc.request_timeout_ms);
    let mut opts = async_nats::ConnectOptions::new()
        .name(format!("subsocket {}", setup.node))
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(req_timeout))
        .max_reconnects(None)
        .subscription_capacity(64 * 1024)
        .client_capacity(64 * 1024)
        .retain_servers_order()
        .reconnect_delay_callback(|attempt| {
            Duration::from_millis((50u64 << attempt.min(5)).min(1_000))
        })
        .event_callback(move |ev| {
            let events = events.clone();
            async move {
                let _ = events.send(ev);
            }
        });
    if let Some(f) = &cc.creds_file {
        opts = opts
            .credentials_file(f)
            .await
            .map_err(|e| format!("creds_file {}: {e}", f.display()))?;
    }
    if let Some(t) = &cc.token {
        opts = opts.token(t.clone());
    }
    if let Some(ca) = &cc.tls_ca_file {
        opts = opts.add_root_certificates(ca.clone());
    }
    if let (Some(c), Some(k)) = (&cc.tls_cert_file, &cc.tls_key_file) {
        opts = opts.add_client_certificate(c.clone(), k.clone());
    }
    if cc.require_tls {
        opts = opts.require_tls(true);
    }
    let urls: Vec<async_nats::ServerAddr> = cc
        .urls()
        .iter()
        .map(|u| u.parse().map_err(|e| format!("'{u}': {e}")))
        .collect::<Result<_, String>>()?;
    let client = opts.connect(urls).await.map_err(|e| e.to_string())?;
    let js = jetstream::ContextBuilder::new()
        .timeout(req_timeout)
        .ack_timeout(req_timeout)
        .max_ack_inflight(1 << 20)
        .build(client.clone());
    let in_prefix = format!("{}.in", cc.subject_prefix);
    let atomic_batches = server_at_least(&client.server_info().version, (2, 12));
    let config = stream::Config {
        name: cc.stream.clone(),
        subjects: vec![format!("{in_prefix}.>")],
        max_messages_per_subject: cc.history_per_topic,
        max_age: Duration::from_millis(cc.history_max_age_ms),
        max_bytes: cc.history_max_bytes,
        storage: match cc.storage {
            Storage::File => stream::StorageType::File,
            Storage::Memory => stream::StorageType::Memory,
        },
        num_replicas: cc.replicas,
        duplicate_window: setup.dedup_window,
        allow_direct: true,
        allow_atomic_publish: atomic_batches,
        republish: Some(stream::Republish {
            source: format!("{in_prefix}.>"),
            destination: format!("{}.out.>", cc.subject_prefix),
            headers_only: false,
        }),
        ..Default::default()
    };
    // A freshly started NATS cluster may still be electing its JetStream leader: retry.
    let deadline = Instant::now() + Duration::from_secs(20);
    let stream = loop {
        match js.create_or_update_stream(config.clone()).await {
            Ok(_) => match js.get_stream(&cc.stream).await {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    tracing::debug!("stream {}: {e}; retrying", cc.stream)
                }
                Err(e) => return Err(format!("stream {}: {e}", cc.stream)),
            },
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("stream {}: {e}; retrying", cc.stream)
            }
            Err(e) => return Err(format!("cannot create stream {}: {e}", cc.stream)),
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let (resync, _) = tokio::sync::watch::channel(0u64);
    Ok(Node {
        stream_config: config,
        client,
        js,
        stream,
        cc: cc.clone(),
        node: setup.node.clone(),
        mesh: setup.mesh.clone(),
        stats: stats.clone(),
        signer: setup.signer.clone(),
        topics: RefCell::new(HashMap::new()),
        resync,
        waiting_since: RefCell::new(std::collections::BTreeMap::new()),
        atomic_batches,
        next_batch: std::cell::Cell::new(0),
        node_tag: crate::session::tag_of_node(&setup.node),
    })
}

impl Node {
    /// Creates the stream again if it is missing (a NATS that lost its JetStream state). An
    /// existing stream is left as it is.
    pub(super) async fn ensure_stream(&self) {
        if self.js.get_stream(&self.cc.stream).await.is_ok() {
            return;
        }
        match self
            .js
            .create_or_update_stream(self.stream_config.clone())
            .await
        {
            Ok(_) => tracing::warn!(
                stream = %self.cc.stream,
                "cluster backbone: the stream was gone (NATS lost its JetStream state) and is created again; topics number from 1 again"
            ),
            Err(e) => tracing::debug!("stream {} not there yet: {e}", self.cc.stream),
        }
    }
}

/// Whether server version `v` ("2.15.1") is at least `want`.
fn server_at_least(v: &str, want: (u32, u32)) -> bool {
    let mut it = v.trim_start_matches('v').split('.').map(|p| {
        p.chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u32>()
            .unwrap_or(0)
    });
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= want
}
