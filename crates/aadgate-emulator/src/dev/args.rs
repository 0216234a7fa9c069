//! The values of `aadgate dev-idp` flags that need parsing (`CLIENT_ID=…` pairs, federated
//! credentials, service accounts), each with the error message that names its expected form.

use std::path::PathBuf;
use std::str::FromStr;

use crate::is_guid;

/// `--app CLIENT_ID=CERT_PEM`: an app registration with one certificate file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppArg {
    /// Application (client) id.
    pub client_id: String,
    /// PEM certificate file whose key may sign client assertions.
    pub cert_pem: PathBuf,
}

/// `--redirect-uri CLIENT_ID=URL`: a redirect URI of an app for the admin-consent endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedirectUriArg {
    /// Application (client) id.
    pub client_id: String,
    /// The redirect URI, compared exactly by the consent page.
    pub url: String,
}

impl FromStr for RedirectUriArg {
    type Err = String;

    /// Parses `CLIENT_ID=URL` (split at the first `=`, so the URL may hold `=`); the message of
    /// the error names the expected form.
    fn from_str(text: &str) -> Result<RedirectUriArg, String> {
        let usage = || format!("expected CLIENT_ID=URL, got '{text}'");
        let (client_id, url) = text.split_once('=').ok_or_else(usage)?;
        let (client_id, url) = (client_id.trim(), url.trim());
        if client_id.is_empty() || url.is_empty() {
            return Err(usage());
        }
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!("redirect URI '{url}' is not an http(s) URL"));
        }
        Ok(RedirectUriArg {
            client_id: client_id.to_string(),
            url: url.to_string(),
        })
    }
}

/// `--consent TENANT=CLIENT_ID:ROLE1,ROLE2`: admin consent of an app in a tenant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsentArg {
    /// Tenant id (GUID).
    pub tenant: String,
    /// Application (client) id.
    pub client_id: String,
    /// Consented app roles (may be empty).
    pub roles: Vec<String>,
}

impl FromStr for AppArg {
    type Err = String;

    /// Parses `CLIENT_ID=CERT_PEM`; the message of the error names the expected form.
    fn from_str(text: &str) -> Result<AppArg, String> {
        let (client_id, path) = text
            .split_once('=')
            .ok_or_else(|| format!("expected CLIENT_ID=CERT_PEM, got '{text}'"))?;
        if client_id.trim().is_empty() || path.trim().is_empty() {
            return Err(format!("expected CLIENT_ID=CERT_PEM, got '{text}'"));
        }
        Ok(AppArg {
            client_id: client_id.trim().to_string(),
            cert_pem: PathBuf::from(path.trim()),
        })
    }
}

impl FromStr for ConsentArg {
    type Err = String;

    /// Parses `TENANT=CLIENT_ID:ROLE1,ROLE2` (the roles may be absent); the tenant must be a
    /// GUID and is lower-cased.
    fn from_str(text: &str) -> Result<ConsentArg, String> {
        let usage = || format!("expected TENANT=CLIENT_ID:ROLE1,ROLE2, got '{text}'");
        let (tenant, rest) = text.split_once('=').ok_or_else(usage)?;
        let (client_id, roles) = rest.split_once(':').unwrap_or((rest, ""));
        let tenant = tenant.trim();
        if !is_guid(tenant) {
            return Err(format!("tenant '{tenant}' is not a GUID"));
        }
        if client_id.trim().is_empty() {
            return Err(usage());
        }
        Ok(ConsentArg {
            tenant: tenant.to_ascii_lowercase(),
            client_id: client_id.trim().to_string(),
            roles: roles
                .split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }
}

/// `--app-roles CLIENT_ID=ROLE1,ROLE2`: the application permissions an app asks for; Accept on
/// the consent page grants them to its new service principal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppRolesArg {
    /// Application (client) id.
    pub client_id: String,
    /// App roles (application permissions), at least one.
    pub roles: Vec<String>,
}

impl FromStr for AppRolesArg {
    type Err = String;

    /// Parses `CLIENT_ID=ROLE1,ROLE2`.
    fn from_str(text: &str) -> Result<AppRolesArg, String> {
        let usage = || format!("expected CLIENT_ID=ROLE1,ROLE2, got '{text}'");
        let (client_id, roles) = text.split_once('=').ok_or_else(usage)?;
        let roles: Vec<String> = roles
            .split(',')
            .map(str::trim)
            .filter(|r| !r.is_empty())
            .map(str::to_string)
            .collect();
        if client_id.trim().is_empty() || roles.is_empty() {
            return Err(usage());
        }
        Ok(AppRolesArg {
            client_id: client_id.trim().to_string(),
            roles,
        })
    }
}

/// `--federated APP=ISSUER|SUBJECT[|AUDIENCE]`: a federated identity credential of an app.
///
/// Two issuers are shorthands resolved when the emulator starts: `k8s` is the emulator's own
/// service-account issuer (`{base}/k8s`), and `managed-identity` takes as subject `system` or a
/// user-assigned identity's client id and stands for that managed identity (issuer
/// `https://login.microsoftonline.com/{tenant}/v2.0`, subject its principal id).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FederatedArg {
    /// Application (client) id of the app that trusts the credential.
    pub client_id: String,
    /// The external issuer (`iss`), or `k8s` / `managed-identity`.
    pub issuer: String,
    /// The external subject (`sub`); for `managed-identity`, `system` or a client id.
    pub subject: String,
    /// The audience; default `api://AzureADTokenExchange`.
    pub audience: Option<String>,
}

impl FromStr for FederatedArg {
    type Err = String;

    /// Parses `APP=ISSUER|SUBJECT[|AUDIENCE]`.
    fn from_str(text: &str) -> Result<FederatedArg, String> {
        let usage = || format!("expected APP=ISSUER|SUBJECT[|AUDIENCE], got '{text}'");
        let (client_id, rest) = text.split_once('=').ok_or_else(usage)?;
        let parts: Vec<&str> = rest.split('|').map(str::trim).collect();
        let (issuer, subject, audience) = match parts.as_slice() {
            [issuer, subject] => (*issuer, *subject, None),
            [issuer, subject, audience] if !audience.is_empty() => {
                (*issuer, *subject, Some(audience.to_string()))
            }
            _ => return Err(usage()),
        };
        if client_id.trim().is_empty() || issuer.is_empty() || subject.is_empty() {
            return Err(usage());
        }
        let shorthand = issuer == "k8s" || issuer == "managed-identity";
        if !(shorthand || issuer.starts_with("https://") || issuer.starts_with("http://")) {
            return Err(format!(
                "issuer '{issuer}' is not an http(s) URL, 'k8s' or 'managed-identity'"
            ));
        }
        Ok(FederatedArg {
            client_id: client_id.trim().to_string(),
            issuer: issuer.to_string(),
            subject: subject.to_string(),
            audience,
        })
    }
}

/// `--sa NAMESPACE/NAME`: the Kubernetes service account a written token is for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountArg {
    /// Namespace.
    pub namespace: String,
    /// Service account name.
    pub name: String,
}

impl Default for ServiceAccountArg {
    fn default() -> Self {
        ServiceAccountArg {
            namespace: "default".into(),
            name: "default".into(),
        }
    }
}

impl FromStr for ServiceAccountArg {
    type Err = String;

    /// Parses `NAMESPACE/NAME`.
    fn from_str(text: &str) -> Result<ServiceAccountArg, String> {
        let usage = || format!("expected NAMESPACE/NAME, got '{text}'");
        let (namespace, name) = text.split_once('/').ok_or_else(usage)?;
        let (namespace, name) = (namespace.trim(), name.trim());
        let bad = |s: &str| s.is_empty() || s.contains(':') || s.contains('/');
        if bad(namespace) || bad(name) {
            return Err(usage());
        }
        Ok(ServiceAccountArg {
            namespace: namespace.to_string(),
            name: name.to_string(),
        })
    }
}
