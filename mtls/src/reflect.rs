//! Kubernetes reflectors as the control plane and the gateway run them: list, then watch, resumed
//! with back-off after errors, every change counted on a `watch` channel so a consumer can
//! debounce and recompute (feature `kubernetes`).

use std::fmt::Debug;
use std::hash::Hash;

use kube::api::Api;
use kube::runtime::reflector::{self, Store};
use kube::runtime::{watcher, WatchStreamExt};
use kube::Resource;
use serde::de::DeserializeOwned;
use tokio::sync::watch;
use tokio_stream::StreamExt;

/// Drives a reflector for `K` in the background and returns its store; every change after the
/// first list bumps `changes`. `kind` names it in logs.
pub fn reflect<K>(
    api: Api<K>,
    writer: reflector::store::Writer<K>,
    changes: watch::Sender<u64>,
    kind: &str,
) -> Store<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Eq + Hash + Clone,
{
    let store = writer.as_reader();
    let kind = kind.to_owned();
    tokio::spawn(async move {
        let stream = watcher(api, watcher::Config::default())
            .default_backoff()
            .reflect(writer);
        let mut stream = std::pin::pin!(stream);
        while let Some(event) = stream.next().await {
            match event {
                Ok(watcher::Event::Init | watcher::Event::InitApply(_)) => {}
                Ok(_) => changes.send_modify(|n| *n += 1),
                Err(e) => tracing::warn!(%kind, error = %e, "watch failed; retrying with back-off"),
            }
        }
    });
    store
}
