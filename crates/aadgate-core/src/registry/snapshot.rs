//! The registry's content and the rules of every change, without any I/O.
//!
//! Stored as JSON (`{"version": 1, "tenants": [{…}, …]}`, tenants sorted by id, times in RFC 3339
//! UTC), so an operator can read it, back it up and diff it.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::RegistryError;
use crate::config::is_guid;

/// A registry tenant's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TenantState {
    /// Its tokens are accepted.
    Active,
    /// Signed up without proof of consent; waits for `aadgate tenants approve`.
    Pending,
    /// Consent was withdrawn (or an operator removed access); its tokens are refused.
    Revoked,
}

impl TenantState {
    /// Every state, for metrics.
    pub const ALL: [TenantState; 3] = [
        TenantState::Active,
        TenantState::Pending,
        TenantState::Revoked,
    ];

    /// `active`, `pending` or `revoked`.
    pub fn as_str(self) -> &'static str {
        match self {
            TenantState::Active => "active",
            TenantState::Pending => "pending",
            TenantState::Revoked => "revoked",
        }
    }
}

impl fmt::Display for TenantState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a tenant came into the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AddedBy {
    /// Through the sign-up pages (admin consent).
    Onboarding,
    /// Through `aadgate tenants add`.
    Cli,
}

impl AddedBy {
    /// `onboarding` or `cli`.
    pub fn as_str(self) -> &'static str {
        match self {
            AddedBy::Onboarding => "onboarding",
            AddedBy::Cli => "cli",
        }
    }
}

/// One registry entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TenantRecord {
    /// The tenant id (lower-case GUID).
    pub tenant_id: String,
    /// Its state.
    pub state: TenantState,
    /// When it was first added (Unix seconds; RFC 3339 in the file).
    #[serde(with = "rfc3339")]
    pub added_at: i64,
    /// How it was first added.
    pub added_by: AddedBy,
    /// When it last changed (Unix seconds; RFC 3339 in the file).
    #[serde(with = "rfc3339")]
    pub changed_at: i64,
    /// Why it last changed, in words.
    pub reason: String,
}

/// A change to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Record `tenant` as `state` (`active` after proven consent or `tenants add`, `pending`
    /// after an unproven sign-up). An active tenant is never lowered to `pending`.
    Record {
        /// Tenant id.
        tenant: String,
        /// `active` or `pending`.
        state: TenantState,
        /// Who adds it.
        by: AddedBy,
        /// Why, in words.
        reason: String,
    },
    /// A `pending` tenant becomes `active`.
    Approve {
        /// Tenant id.
        tenant: String,
    },
    /// An `active` tenant becomes `revoked` (other states are left alone).
    Revoke {
        /// Tenant id.
        tenant: String,
        /// Why, in words.
        reason: String,
    },
    /// The tenant is deleted from the registry.
    Remove {
        /// Tenant id.
        tenant: String,
    },
}

impl Change {
    /// The tenant it changes.
    pub fn tenant(&self) -> &str {
        match self {
            Change::Record { tenant, .. }
            | Change::Approve { tenant }
            | Change::Revoke { tenant, .. }
            | Change::Remove { tenant } => tenant,
        }
    }
}

/// What a change did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The registry changed.
    Changed,
    /// The registry already said so.
    Unchanged,
}

/// The registry's content: tenants by lower-case id. Looked up on every request of a
/// registry-mode gateway, so by hash: the cost does not grow with the number of tenants.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    tenants: HashMap<String, TenantRecord>,
}

/// The file format's top level.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileForm {
    version: u32,
    tenants: Vec<TenantRecord>,
}

/// The file format this build writes and reads.
const FORMAT_VERSION: u32 = 1;

impl Snapshot {
    /// The record of `tid` (lower case).
    pub fn get(&self, tid: &str) -> Option<&TenantRecord> {
        self.tenants.get(tid)
    }

    /// Every record, sorted by tenant id.
    pub fn tenants(&self) -> impl Iterator<Item = &TenantRecord> {
        let mut records: Vec<&TenantRecord> = self.tenants.values().collect();
        records.sort_unstable_by(|a, b| a.tenant_id.cmp(&b.tenant_id));
        records.into_iter()
    }

    /// How many tenants are in `state`.
    pub fn count(&self, state: TenantState) -> usize {
        self.tenants.values().filter(|r| r.state == state).count()
    }

    /// How many tenants it holds.
    pub fn len(&self) -> usize {
        self.tenants.len()
    }

    /// Whether it holds no tenant.
    pub fn is_empty(&self) -> bool {
        self.tenants.is_empty()
    }

    /// Applies `change` at `now` (Unix seconds).
    pub fn apply(&mut self, change: &Change, now: i64) -> Result<Applied, RegistryError> {
        let tid = change.tenant().to_ascii_lowercase();
        if !is_guid(&tid) {
            return Err(RegistryError::NotAGuid(change.tenant().to_string()));
        }
        let entry = self.tenants.get_mut(&tid);
        match (change, entry) {
            (
                Change::Record {
                    state, by, reason, ..
                },
                None,
            ) => {
                self.tenants.insert(
                    tid.clone(),
                    TenantRecord {
                        tenant_id: tid,
                        state: *state,
                        added_at: now,
                        added_by: *by,
                        changed_at: now,
                        reason: reason.clone(),
                    },
                );
                Ok(Applied::Changed)
            }
            (Change::Record { state, reason, .. }, Some(r)) => {
                let keep = r.state == *state
                    || (r.state == TenantState::Active && *state == TenantState::Pending);
                if keep {
                    return Ok(Applied::Unchanged);
                }
                set(r, *state, reason.clone(), now)
            }
            (Change::Approve { .. }, Some(r)) if r.state == TenantState::Pending => set(
                r,
                TenantState::Active,
                "approved by an operator".into(),
                now,
            ),
            (Change::Approve { .. }, Some(r)) => Err(RegistryError::NotPending {
                tenant: tid,
                state: r.state,
            }),
            (Change::Revoke { reason, .. }, Some(r)) if r.state == TenantState::Active => {
                set(r, TenantState::Revoked, reason.clone(), now)
            }
            (Change::Revoke { .. }, Some(_)) => Ok(Applied::Unchanged),
            (Change::Remove { .. }, Some(_)) => {
                self.tenants.remove(&tid);
                Ok(Applied::Changed)
            }
            (Change::Approve { .. } | Change::Revoke { .. } | Change::Remove { .. }, None) => {
                Err(RegistryError::UnknownTenant(tid))
            }
        }
    }

    /// A registry of `records` (ids lower-cased); two records of one tenant are an error.
    pub fn from_records(records: Vec<TenantRecord>) -> Result<Snapshot, String> {
        let mut tenants = HashMap::with_capacity(records.len());
        for mut record in records {
            if !is_guid(&record.tenant_id) {
                return Err(format!("{:?} is not a tenant id (GUID)", record.tenant_id));
            }
            record.tenant_id.make_ascii_lowercase();
            if tenants.contains_key(&record.tenant_id) {
                return Err(format!("tenant {} is listed twice", record.tenant_id));
            }
            tenants.insert(record.tenant_id.clone(), record);
        }
        Ok(Snapshot { tenants })
    }

    /// The stored form: pretty JSON with a final newline.
    pub fn to_json(&self) -> String {
        let form = FileForm {
            version: FORMAT_VERSION,
            tenants: self.tenants().cloned().collect(),
        };
        let mut text = serde_json::to_string_pretty(&form).unwrap_or_default();
        text.push('\n');
        text
    }

    /// Reads the stored form; an empty (or all-whitespace) text is an empty registry. Errors
    /// name the line and column.
    pub fn from_json(text: &str) -> Result<Snapshot, String> {
        if text.trim().is_empty() {
            return Ok(Snapshot::default());
        }
        let form: FileForm = serde_json::from_str(text).map_err(|e| e.to_string())?;
        if form.version != FORMAT_VERSION {
            return Err(format!(
                "registry format version {} is not supported (this build reads version {FORMAT_VERSION})",
                form.version
            ));
        }
        Snapshot::from_records(form.tenants)
    }
}

fn set(
    r: &mut TenantRecord,
    state: TenantState,
    reason: String,
    now: i64,
) -> Result<Applied, RegistryError> {
    r.state = state;
    r.reason = reason;
    r.changed_at = now;
    Ok(Applied::Changed)
}

/// RFC 3339 UTC for Unix seconds, e.g. `2026-12-02T05:00:00Z`.
pub fn format_time(secs: i64) -> String {
    let t = UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).unwrap_or(0));
    humantime::format_rfc3339_seconds(t).to_string()
}

/// Times in the file: RFC 3339 strings.
mod rfc3339 {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::UNIX_EPOCH;

    pub(super) fn serialize<S: Serializer>(secs: &i64, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&super::format_time(*secs))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        let text = String::deserialize(d)?;
        let t = humantime::parse_rfc3339_weak(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not an RFC 3339 time: {e}"))
        })?;
        let secs = t
            .duration_since(UNIX_EPOCH)
            .map_err(|_| serde::de::Error::custom(format!("{text:?} is before 1970")))?
            .as_secs();
        i64::try_from(secs).map_err(|_| serde::de::Error::custom("time out of range"))
    }
}
