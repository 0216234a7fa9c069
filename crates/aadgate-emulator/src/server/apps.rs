//! The directory side of the handle: app registrations ([`AppRegistration`]), tenants and
//! tenant names, admin consent (service principals with app roles), and app certificates
//! (removal and revocation for rollover tests).

use std::fmt;

use super::EmulatorHandle;
use crate::keys::{cert_info, certificate_thumbprint_hex, x5t_of, x5t_s256_of, SigningKey};
use crate::serve::write;
use crate::state::{RegisteredApp, RegisteredCert};
use crate::EmulatorError;

/// An application registration: a client id with its credentials.
///
/// Registering an app does not make it usable in any tenant: like AAD's client credentials
/// grant, a token is issued only in tenants where the app has a service principal, which
/// [`EmulatorHandle::consent`] creates (with the consented app roles). `home_tenant`, when set,
/// gets a service principal without roles at registration, as AAD creates one in the home
/// tenant. `Debug` redacts the secrets.
#[derive(Clone, Default)]
pub struct AppRegistration {
    /// Application (client) id.
    pub client_id: String,
    /// Display name used in AAD messages. Default: the client id.
    pub display_name: String,
    /// Certificates (DER) whose keys may sign client assertions.
    pub certificates: Vec<Vec<u8>>,
    /// Client secrets accepted as `client_secret` (tokens then carry strength `"1"`).
    pub secrets: Vec<String>,
    /// Tenant the app is registered in, if it should have a service principal there.
    pub home_tenant: Option<String>,
}

impl fmt::Debug for AppRegistration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppRegistration")
            .field("client_id", &self.client_id)
            .field("display_name", &self.display_name)
            .field(
                "certificates",
                &self
                    .certificates
                    .iter()
                    .map(|der| certificate_thumbprint_hex(der))
                    .collect::<Vec<_>>(),
            )
            .field("secrets", &format!("<{} redacted>", self.secrets.len()))
            .field("home_tenant", &self.home_tenant)
            .finish()
    }
}

impl AppRegistration {
    /// An app with this client id and no credentials yet.
    pub fn new(client_id: &str) -> Self {
        AppRegistration {
            client_id: client_id.to_string(),
            display_name: client_id.to_string(),
            ..AppRegistration::default()
        }
    }

    /// Adds the certificate of a [`SigningKey`] (e.g. the gateway's exchange certificate).
    pub fn with_certificate(mut self, key: &SigningKey) -> Self {
        self.certificates.push(key.certificate_der().to_vec());
        self
    }

    /// Adds a DER certificate.
    pub fn with_certificate_der(mut self, der: Vec<u8>) -> Self {
        self.certificates.push(der);
        self
    }

    /// Adds a PEM certificate.
    pub fn with_certificate_pem(mut self, pem: &str) -> Result<Self, EmulatorError> {
        self.certificates
            .push(crate::keys::certificate_der_from_pem(pem)?);
        Ok(self)
    }

    /// Adds a client secret.
    pub fn with_secret(mut self, secret: &str) -> Self {
        self.secrets.push(secret.to_string());
        self
    }

    /// Sets the display name.
    pub fn with_display_name(mut self, name: &str) -> Self {
        self.display_name = name.to_string();
        self
    }

    /// Sets the home tenant (gets a service principal without roles).
    pub fn with_home_tenant(mut self, tenant: &str) -> Self {
        self.home_tenant = Some(tenant.to_string());
        self
    }
}

impl EmulatorHandle {
    /// Makes `tenant` (a GUID) known, so its metadata and token endpoint answer.
    pub fn add_tenant(&self, tenant: &str) {
        write(&self.state().directory)
            .tenants
            .insert(tenant.to_ascii_lowercase());
    }

    /// Registers `name` (a domain such as `contoso.onmicrosoft.com`, compared ignoring case) as
    /// a name of tenant `tenant` (a GUID, which becomes known): metadata and keys under that
    /// name answer as the tenant's, as Entra ID does for a verified domain.
    pub fn add_tenant_name(&self, name: &str, tenant: &str) {
        let tenant = tenant.to_ascii_lowercase();
        let mut dir = write(&self.state().directory);
        dir.tenants.insert(tenant.clone());
        dir.tenant_names.insert(name.to_ascii_lowercase(), tenant);
    }

    /// Registers (or replaces) an app. Fails when a certificate cannot be parsed or is not RSA.
    pub fn register_app(&self, app: AppRegistration) -> Result<(), EmulatorError> {
        let mut certs = Vec::with_capacity(app.certificates.len());
        for der in &app.certificates {
            let info = cert_info(der)?;
            certs.push(RegisteredCert {
                thumbprint_hex: certificate_thumbprint_hex(der),
                x5t: x5t_of(der),
                x5t_s256: x5t_s256_of(der),
                n: info.n,
                e: info.e,
                not_before: info.not_before,
                not_after: info.not_after,
                revoked: false,
            });
        }
        let client_id = app.client_id.to_ascii_lowercase();
        let display_name = if app.display_name.is_empty() {
            app.client_id.clone()
        } else {
            app.display_name.clone()
        };
        let mut dir = write(&self.state().directory);
        if let Some(home) = &app.home_tenant {
            let home = home.to_ascii_lowercase();
            dir.tenants.insert(home.clone());
            dir.principals.entry((home, client_id.clone())).or_default();
        }
        dir.apps.insert(
            client_id,
            RegisteredApp {
                client_id: app.client_id,
                display_name,
                certs,
                secrets: app.secrets,
            },
        );
        Ok(())
    }

    /// Admin consent: creates (or updates) the app's service principal in `tenant` with these
    /// app roles, and makes the tenant known. The roles go into the `roles` claim of the
    /// app-only tokens issued for that (tenant, app), whatever the resource.
    pub fn consent(&self, tenant_id: &str, client_id: &str, roles: Vec<String>) {
        let tenant = tenant_id.to_ascii_lowercase();
        let mut dir = write(&self.state().directory);
        dir.tenants.insert(tenant.clone());
        let sp = dir
            .principals
            .entry((tenant, client_id.to_ascii_lowercase()))
            .or_default();
        sp.roles = roles;
    }

    /// Deletes the app's service principal in `tenant` (the tenant's admin removed the app).
    pub fn revoke_consent(&self, tenant_id: &str, client_id: &str) {
        write(&self.state().directory).principals.remove(&(
            tenant_id.to_ascii_lowercase(),
            client_id.to_ascii_lowercase(),
        ));
    }

    /// Disables (or re-enables) the app's service principal in `tenant`; token requests then
    /// get AADSTS7000112.
    pub fn set_app_disabled(&self, tenant_id: &str, client_id: &str, disabled: bool) {
        if let Some(sp) = write(&self.state().directory).principals.get_mut(&(
            tenant_id.to_ascii_lowercase(),
            client_id.to_ascii_lowercase(),
        )) {
            sp.disabled = disabled;
        }
    }

    /// Removes a certificate from an app, named by thumbprint: hex SHA-1 (any case, `:` or
    /// spaces allowed) or the base64url `x5t`. Assertions signed with it then get AADSTS700027.
    /// Returns whether a certificate was removed.
    pub fn remove_app_certificate(&self, client_id: &str, thumbprint: &str) -> bool {
        let mut dir = write(&self.state().directory);
        let Some(app) = dir.apps.get_mut(&client_id.to_ascii_lowercase()) else {
            return false;
        };
        let before = app.certs.len();
        app.certs.retain(|c| !cert_matches(c, thumbprint));
        app.certs.len() != before
    }

    /// Marks an app certificate revoked (AADSTS7000214 for assertions it signs). Returns whether
    /// the certificate was found.
    pub fn revoke_app_certificate(&self, client_id: &str, thumbprint: &str) -> bool {
        let mut dir = write(&self.state().directory);
        let Some(app) = dir.apps.get_mut(&client_id.to_ascii_lowercase()) else {
            return false;
        };
        let mut found = false;
        for cert in app.certs.iter_mut().filter(|c| cert_matches(c, thumbprint)) {
            cert.revoked = true;
            found = true;
        }
        found
    }
}

fn cert_matches(cert: &RegisteredCert, thumbprint: &str) -> bool {
    let hex: String = thumbprint
        .chars()
        .filter(|c| !matches!(c, ':' | ' '))
        .collect();
    cert.thumbprint_hex.eq_ignore_ascii_case(&hex)
        || cert.x5t == thumbprint
        || cert.x5t_s256 == thumbprint
}
