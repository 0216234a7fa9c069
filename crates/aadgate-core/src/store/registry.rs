//! The tenant registry in Redis (`[store] kind = "redis"`): one hash of JSON records by tenant
//! id, and a version counter every change increments. Replicas poll the counter (one `GET`
//! every half second), so a change applies everywhere within a second.
//!
//! A change is a compare-and-set: the record and the version are read together, the change is
//! applied by [`Snapshot::apply`] (the same rules as the file store), and a Lua script writes it
//! only if the version did not move meanwhile (else it is tried again). Both keys share a hash
//! tag, so the script also runs on Redis Cluster.

use std::sync::Arc;

use async_trait::async_trait;

use super::SharedStore;
use crate::registry::{
    Applied, Change, RegistryError, RegistryStore, Snapshot, TenantRecord, Version,
};

/// Tries of a change that keeps meeting concurrent changes.
const CAS_TRIES: usize = 8;

/// Writes every record and version 1, only if no version exists (a store that lost its data).
const RESTORE_LUA: &str = r"
if redis.call('EXISTS', KEYS[2]) == 1 then return 0 end
for i = 1, #ARGV, 2 do
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
end
redis.call('SET', KEYS[2], '1')
return 1
";

/// Reads the version and every record at once.
const LOAD_LUA: &str = r"
return {redis.call('GET', KEYS[2]) or '', redis.call('HVALS', KEYS[1])}
";

/// Reads the version and one record at once.
const READ_LUA: &str = r"
return {redis.call('GET', KEYS[2]) or '', redis.call('HGET', KEYS[1], ARGV[1]) or ''}
";

/// Writes (or deletes, for an empty value) one record if the version is still `ARGV[1]`.
const WRITE_LUA: &str = r"
local v = redis.call('GET', KEYS[2]) or ''
if v ~= ARGV[1] then return 0 end
if ARGV[3] == '' then
  redis.call('HDEL', KEYS[1], ARGV[2])
else
  redis.call('HSET', KEYS[1], ARGV[2], ARGV[3])
end
redis.call('INCR', KEYS[2])
return 1
";

/// The registry in Redis; see the module documentation.
#[derive(Debug)]
pub struct RedisRegistry {
    store: Arc<SharedStore>,
    records: String,
    version: String,
    load: redis::Script,
    read: redis::Script,
    write: redis::Script,
    restore: redis::Script,
}

impl RedisRegistry {
    /// The registry under the store's key prefix.
    pub fn new(store: Arc<SharedStore>) -> Self {
        RedisRegistry {
            records: store.key("{tenants}"),
            version: store.key("{tenants}:version"),
            store,
            load: redis::Script::new(LOAD_LUA),
            read: redis::Script::new(READ_LUA),
            write: redis::Script::new(WRITE_LUA),
            restore: redis::Script::new(RESTORE_LUA),
        }
    }

    fn unavailable(&self, e: impl std::fmt::Display) -> RegistryError {
        RegistryError::Unavailable(format!("tenant registry in {}: {e}", self.store.describe()))
    }

    async fn try_change(
        &self,
        change: &Change,
        now: i64,
    ) -> Result<Option<Applied>, RegistryError> {
        let tid = change.tenant().to_ascii_lowercase();
        let keys = [self.records.as_str(), self.version.as_str()];
        let (version, current): (String, String) = self
            .store
            .script("get", &self.read, &keys, &[tid.as_bytes()])
            .await
            .map_err(|e| self.unavailable(e))?;
        let records = match current.as_str() {
            "" => Vec::new(),
            json => vec![serde_json::from_str::<TenantRecord>(json)
                .map_err(|e| self.unavailable(format!("record of {tid} is not valid: {e}")))?],
        };
        let mut one = Snapshot::from_records(records).map_err(|e| self.unavailable(e))?;
        let applied = one.apply(change, now)?;
        if applied == Applied::Unchanged {
            return Ok(Some(applied));
        }
        let value = match one.get(&tid) {
            Some(r) => serde_json::to_string(r).map_err(|e| self.unavailable(e))?,
            None => String::new(),
        };
        let args = [version.as_bytes(), tid.as_bytes(), value.as_bytes()];
        let written: i64 = self
            .store
            .script("set", &self.write, &keys, &args)
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok((written == 1).then_some(applied))
    }
}

#[async_trait]
impl RegistryStore for RedisRegistry {
    fn describe(&self) -> String {
        format!("{} key {}", self.store.describe(), self.records)
    }

    fn counts_errors(&self) -> bool {
        true
    }

    async fn version(&self) -> Result<Option<Version>, RegistryError> {
        let v = self
            .store
            .get(&self.version)
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(v.map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    async fn load(&self) -> Result<(Snapshot, Option<Version>), RegistryError> {
        let keys = [self.records.as_str(), self.version.as_str()];
        let (version, values): (String, Vec<String>) = self
            .store
            .script("get", &self.load, &keys, &[])
            .await
            .map_err(|e| self.unavailable(e))?;
        let mut records = Vec::with_capacity(values.len());
        for v in values {
            let record: TenantRecord = serde_json::from_str(&v)
                .map_err(|e| self.unavailable(format!("a record is not valid: {e}")))?;
            records.push(record);
        }
        let snapshot = Snapshot::from_records(records).map_err(|e| self.unavailable(e))?;
        Ok((snapshot, (!version.is_empty()).then_some(version)))
    }

    async fn restore(&self, snapshot: &Snapshot) -> Result<bool, RegistryError> {
        let mut fields = Vec::with_capacity(snapshot.len() * 2);
        for r in snapshot.tenants() {
            fields.push(r.tenant_id.clone().into_bytes());
            fields.push(serde_json::to_vec(r).map_err(|e| self.unavailable(e))?);
        }
        let args: Vec<&[u8]> = fields.iter().map(Vec::as_slice).collect();
        let keys = [self.records.as_str(), self.version.as_str()];
        let wrote: i64 = self
            .store
            .script("set", &self.restore, &keys, &args)
            .await
            .map_err(|e| self.unavailable(e))?;
        Ok(wrote == 1)
    }

    async fn update(
        &self,
        change: &Change,
        now: i64,
    ) -> Result<(Snapshot, Option<Version>, Applied), RegistryError> {
        for _ in 0..CAS_TRIES {
            if let Some(applied) = self.try_change(change, now).await? {
                let (snapshot, version) = self.load().await?;
                return Ok((snapshot, version, applied));
            }
        }
        Err(self.unavailable("too many concurrent changes; try again"))
    }
}
