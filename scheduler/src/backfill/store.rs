//! Where backfill records live: etcd on a high-availability cluster (the
//! leader's writes fenced on the leader key, so a deposed leader cannot
//! overwrite its successor's progress), memory on a single scheduler and
//! in `sluice backfill --local`.

use std::collections::BTreeMap;
use std::sync::Arc;

use etcd_client::GetOptions;
use prost::Message;
use sluice_proto::etcd::{Client, EtcdTarget};
use sluice_proto::pb;
use tokio::sync::Mutex;

/// Why a record could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// This scheduler no longer holds the leader key: it must stop running
    /// backfills (the new leader resumes them).
    #[error("not the leader any more: {0}")]
    Deposed(String),
    #[error("etcd: {0}")]
    Etcd(String),
}

/// Backfill records.
#[derive(Clone)]
pub enum Store {
    Memory(Arc<Mutex<BTreeMap<String, pb::Backfill>>>),
    Etcd { target: EtcdTarget, client: Client, lease: i64 },
}

impl Store {
    pub fn memory() -> Self {
        Store::Memory(Arc::default())
    }

    /// Writes `record` (in etcd only while this process leads).
    ///
    /// # Errors
    /// [`StoreError::Deposed`] when another scheduler leads now.
    pub async fn save(&self, record: &pb::Backfill) -> Result<(), StoreError> {
        match self {
            Store::Memory(m) => {
                m.lock().await.insert(record.id.clone(), record.clone());
                Ok(())
            }
            Store::Etcd { target, client, lease } => {
                let key = target.backfill_key(&record.id);
                match target
                    .fenced_put(&mut client.clone(), *lease, key, record.encode_to_vec())
                    .await
                {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        // Tell a refused write from etcd trouble.
                        let mut c = client.clone();
                        match target.leader(&mut c).await {
                            Ok(Some((_, holder))) if holder == *lease => {
                                Err(StoreError::Etcd(e.to_string()))
                            }
                            Ok(_) => Err(StoreError::Deposed(e.to_string())),
                            Err(_) => Err(StoreError::Etcd(e.to_string())),
                        }
                    }
                }
            }
        }
    }

    /// One record.
    ///
    /// # Errors
    /// [`StoreError::Etcd`].
    pub async fn get(&self, id: &str) -> Result<Option<pb::Backfill>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.lock().await.get(id).cloned()),
            Store::Etcd { target, client, .. } => {
                let resp = client
                    .clone()
                    .get(target.backfill_key(id), None)
                    .await
                    .map_err(|e| StoreError::Etcd(e.to_string()))?;
                Ok(resp.kvs().first().and_then(|kv| decode(kv.key(), kv.value())))
            }
        }
    }

    /// Every record.
    ///
    /// # Errors
    /// [`StoreError::Etcd`].
    pub async fn list(&self) -> Result<Vec<pb::Backfill>, StoreError> {
        match self {
            Store::Memory(m) => Ok(m.lock().await.values().cloned().collect()),
            Store::Etcd { target, client, .. } => {
                list_etcd(target, client).await.map_err(|e| StoreError::Etcd(e.to_string()))
            }
        }
    }
}

fn decode(key: &[u8], value: &[u8]) -> Option<pb::Backfill> {
    match pb::Backfill::decode(value) {
        Ok(b) if !b.id.is_empty() => Some(b),
        _ => {
            tracing::warn!(key = %String::from_utf8_lossy(key), "unreadable backfill record skipped");
            None
        }
    }
}

/// Every backfill recorded in `target`'s etcd (for `sluice cluster status`).
///
/// # Errors
/// etcd's error.
pub async fn list_etcd(
    target: &EtcdTarget,
    client: &Client,
) -> Result<Vec<pb::Backfill>, etcd_client::Error> {
    let resp = client
        .clone()
        .get(target.backfills_prefix(), Some(GetOptions::new().with_prefix()))
        .await?;
    Ok(resp.kvs().iter().filter_map(|kv| decode(kv.key(), kv.value())).collect())
}
