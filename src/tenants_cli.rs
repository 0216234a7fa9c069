//! `aadgate tenants list|show|add|remove|approve|verify [TENANT] -c FILE [--json]`: the tenant
//! registry of the configuration (SPEC section 9) — the `[tenants] registry` file, or Redis with
//! `[store] kind = "redis"`. Changes go through the same locked, atomic writes (or Redis
//! compare-and-set) the gateway makes; running gateways apply them within a second.
//!
//! Exit codes: 0 done; 1 `verify` found no consent (or could not ask); 2 usage or
//! configuration error, a tenant id that is not a GUID, an unknown tenant, approving a tenant
//! that is not pending; 3 the registry cannot be read or written (nothing was changed).

use std::path::Path;
use std::process::ExitCode;
use std::sync::Arc;

use aadgate_core::config::{self, Config, TenantMode};
use aadgate_core::exchange::Exchanger;
use aadgate_core::metrics::Metrics;
use aadgate_core::reason::Reason;
use aadgate_core::registry::{
    format_time, AddedBy, Applied, Change, FileStore, RegistryError, RegistryStore, Snapshot,
    TenantRecord, TenantState,
};
use aadgate_core::store::{RedisRegistry, SharedStore};
use clap::{Args, Subcommand};

/// `tenants`
#[derive(Debug, Args)]
pub(crate) struct TenantsArgs {
    /// Print JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    #[command(subcommand)]
    pub action: TenantsAction,
}

/// What to do with the registry.
#[derive(Debug, Subcommand)]
pub(crate) enum TenantsAction {
    /// Every tenant with its state, when and how it was added, and the last change.
    List,
    /// One tenant's record.
    Show {
        /// Tenant id (GUID).
        tenant: String,
    },
    /// Record a tenant `active` (also re-activates a revoked one).
    Add {
        /// Tenant id (GUID).
        tenant: String,
        /// Why, recorded with the change.
        #[arg(long, default_value = "added by an operator")]
        reason: String,
    },
    /// Delete a tenant from the registry.
    Remove {
        /// Tenant id (GUID).
        tenant: String,
    },
    /// Turn a `pending` tenant `active`.
    Approve {
        /// Tenant id (GUID).
        tenant: String,
    },
    /// Ask the tenant's token endpoint for an app-only token with `[onboarding]
    /// verify_exchange`, and print whether the application is consented there.
    Verify {
        /// Tenant id (GUID).
        tenant: String,
    },
}

/// An error with its exit code.
struct Failure(u8, String);

impl From<RegistryError> for Failure {
    fn from(e: RegistryError) -> Self {
        let code = match e {
            RegistryError::Unavailable(_) => 3,
            _ => 2,
        };
        Failure(code, e.to_string())
    }
}

/// Runs `aadgate tenants …` with the configuration at `path`.
pub(crate) fn main(path: &Path, args: &TenantsArgs) -> ExitCode {
    match run(path, args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("aadgate tenants: {message}");
            ExitCode::from(code)
        }
    }
}

fn run(path: &Path, args: &TenantsArgs) -> Result<(), Failure> {
    let config = config::load(path).map_err(|e| Failure(2, e.to_string()))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Failure(3, e.to_string()))?;
    let shared = SharedStore::new(&config.store, Arc::new(Metrics::new()))
        .map_err(|e| Failure(2, e.to_string()))?;
    let store: Arc<dyn RegistryStore> = match (&config.tenants.mode, &config.tenants.registry, shared) {
        (TenantMode::Registry, _, Some(shared)) => {
            rt.block_on(shared.connect()).map_err(|e| Failure(3, e.to_string()))?;
            Arc::new(RedisRegistry::new(shared))
        }
        (TenantMode::Registry, Some(file), None) => Arc::new(FileStore::new(file.clone())),
        _ => {
            return Err(Failure(
                2,
                format!(
                    "{} has no tenant registry: set [tenants] mode = \"registry\" and registry = \"FILE\" (or [store] kind = \"redis\")",
                    path.display()
                ),
            ))
        }
    };
    let json = args.json;
    let change = |change: Change| -> Result<(), Failure> {
        let tid = change.tenant().to_ascii_lowercase();
        let now = aadgate_core::clock::unix_now();
        let (snapshot, _, applied) = rt.block_on(store.update(&change, now))?;
        print_change(&snapshot, &tid, applied, json);
        Ok(())
    };
    match &args.action {
        TenantsAction::List => {
            let (snapshot, _) = rt.block_on(store.load())?;
            print_list(&snapshot, json);
            Ok(())
        }
        TenantsAction::Show { tenant } => {
            let tid = guid(tenant)?;
            let (snapshot, _) = rt.block_on(store.load())?;
            let record = snapshot
                .get(&tid)
                .ok_or(RegistryError::UnknownTenant(tid.clone()))?;
            print_record(record, json);
            Ok(())
        }
        TenantsAction::Add { tenant, reason } => change(Change::Record {
            tenant: guid(tenant)?,
            state: TenantState::Active,
            by: AddedBy::Cli,
            reason: reason.clone(),
        }),
        TenantsAction::Remove { tenant } => change(Change::Remove {
            tenant: guid(tenant)?,
        }),
        TenantsAction::Approve { tenant } => change(Change::Approve {
            tenant: guid(tenant)?,
        }),
        TenantsAction::Verify { tenant } => verify(&rt, &config, &guid(tenant)?, json),
    }
}

/// A lower-case tenant GUID, or exit 2.
fn guid(tenant: &str) -> Result<String, Failure> {
    if config::is_guid(tenant) {
        Ok(tenant.to_ascii_lowercase())
    } else {
        Err(RegistryError::NotAGuid(tenant.to_string()).into())
    }
}

fn verify(
    rt: &tokio::runtime::Runtime,
    config: &Config,
    tid: &str,
    json: bool,
) -> Result<(), Failure> {
    let name = (config.onboarding.as_ref())
        .and_then(|o| o.verify_exchange.clone())
        .ok_or_else(|| {
            Failure(
                2,
                "`verify` needs [onboarding] verify_exchange (the exchange whose token request proves consent)".into(),
            )
        })?;
    let settings = config
        .exchanges
        .get(&name)
        .cloned()
        .ok_or_else(|| Failure(2, format!("no exchange named {name:?}")))?;
    let exchanger = Arc::new(Exchanger::new(settings));
    let answer = rt.block_on(exchanger.verify(tid, &Metrics::new()));
    let (consented, detail) = match &answer {
        Ok(token) if !aadgate_core::onboarding::grants_roles(&token.access_token) => (
            Some(false),
            "an app-only token was issued, but without application permissions (roles): no administrator granted admin consent".to_string(),
        ),
        Ok(_) => (Some(true), "an app-only token with application permissions was issued".to_string()),
        Err(r) if r.reason == Reason::TenantNotConsented => (Some(false), r.message.clone()),
        Err(r) => (None, r.message.clone()),
    };
    if json {
        let body = serde_json::json!({
            "tenant_id": tid,
            "exchange": name,
            "consented": consented,
            "detail": detail,
        });
        println!("{body}");
    } else {
        let verdict = match consented {
            Some(true) => "consented",
            Some(false) => "NOT consented",
            None => "could not be checked",
        };
        println!("tenant {tid}: {verdict} ({detail})");
    }
    if consented == Some(true) {
        Ok(())
    } else {
        Err(Failure(1, format!("tenant {tid}: {detail}")))
    }
}

/// A record as `GET /tenants` and `--json` show it.
pub(crate) fn record_json(record: &TenantRecord) -> serde_json::Value {
    serde_json::to_value(record).unwrap_or(serde_json::Value::Null)
}

fn print_list(snapshot: &Snapshot, json: bool) {
    if json {
        let tenants: Vec<_> = snapshot.tenants().map(record_json).collect();
        println!("{}", serde_json::json!({ "tenants": tenants }));
        return;
    }
    if snapshot.is_empty() {
        println!("no tenants in the registry");
        return;
    }
    println!(
        "{:<36}  {:<7}  {:<20}  {:<10}  {:<20}  REASON",
        "TENANT", "STATE", "ADDED", "BY", "CHANGED"
    );
    for r in snapshot.tenants() {
        println!(
            "{:<36}  {:<7}  {:<20}  {:<10}  {:<20}  {}",
            r.tenant_id,
            r.state,
            format_time(r.added_at),
            r.added_by.as_str(),
            format_time(r.changed_at),
            r.reason
        );
    }
}

fn print_record(r: &TenantRecord, json: bool) {
    if json {
        println!("{}", record_json(r));
        return;
    }
    println!("tenant:   {}", r.tenant_id);
    println!("state:    {}", r.state);
    println!(
        "added:    {} by {}",
        format_time(r.added_at),
        r.added_by.as_str()
    );
    println!("changed:  {}", format_time(r.changed_at));
    println!("reason:   {}", r.reason);
}

fn print_change(snapshot: &Snapshot, tid: &str, applied: Applied, json: bool) {
    let record = snapshot.get(tid);
    let changed = applied == Applied::Changed;
    if json {
        let body = serde_json::json!({
            "tenant_id": tid,
            "changed": changed,
            "record": record.map(record_json),
        });
        println!("{body}");
        return;
    }
    let state = record.map_or("removed".to_string(), |r| r.state.to_string());
    let note = if changed { "" } else { " (unchanged)" };
    println!("tenant {tid}: {state}{note}");
}
