//! The directory side of the handle: app registrations ([`AppRegistration`], with the redirect
//! URIs and app roles the admin-consent flow uses), tenants and tenant names, admin consent
//! (service principals with app roles), and app certificates (removal and revocation for
//! rollover tests).

use std::fmt;
use std::time::SystemTime;

use super::EmulatorHandle;
use crate::keys::{cert_info, certificate_thumbprint_hex, x5t_of, x5t_s256_of, SigningKey};
use crate::serve::{read, write};
use crate::state::{FederatedCredential, RegisteredApp, RegisteredCert, TrustedSubject};
use crate::EmulatorError;

/// An application registration: a client id with its credentials.
///
/// Registering an app does not make it usable in any tenant: like AAD's client credentials
/// grant, a token is issued only in tenants where the app has a service principal, which
/// [`EmulatorHandle::consent`] creates (with the consented app roles). `home_tenant`, when set,
/// gets a service principal without roles at registration, as AAD creates one in the home
/// tenant. An admin can also consent on the emulator's consent page
/// (`/{tenant}/v2.0/adminconsent`), which needs a registered redirect URI
/// ([`AppRegistration::with_redirect_uri`]) and grants the app roles of
/// [`AppRegistration::with_app_roles`]. `Debug` redacts the secrets.
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
    /// Redirect URIs the admin-consent endpoints may send the browser back to, compared
    /// exactly (case, trailing slash and query included), as Entra ID does. Default: none, so
    /// the consent page answers AADSTS50011 for any `redirect_uri`.
    pub redirect_uris: Vec<String>,
    /// Application permissions (app roles) the app asks for: shown on the consent page and
    /// granted to its service principal on Accept. Default: none.
    pub app_roles: Vec<String>,
    /// Federated identity credentials: external tokens (a Kubernetes service account's, a
    /// managed identity's, …) the app accepts as its client assertion. Default: none.
    pub federated_credentials: Vec<FederatedCredential>,
    /// Trusted certificate subjects (subject name + issuer authentication): certificates sent
    /// in an assertion's `x5c`, not registered one by one. Default: none.
    pub trusted_subjects: Vec<TrustedSubject>,
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
            .field("redirect_uris", &self.redirect_uris)
            .field("app_roles", &self.app_roles)
            .field("federated_credentials", &self.federated_credentials)
            .field(
                "trusted_subjects",
                &self
                    .trusted_subjects
                    .iter()
                    .map(|t| t.subject_name.as_str())
                    .collect::<Vec<_>>(),
            )
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

    /// Adds a redirect URI for the admin-consent endpoints (several may be added; each is
    /// compared exactly).
    pub fn with_redirect_uri(mut self, url: &str) -> Self {
        self.redirect_uris.push(url.to_string());
        self
    }

    /// Adds a federated identity credential trusting tokens whose `iss` is `issuer`, whose
    /// `sub` is `subject` and whose `aud` holds `audience` (usually
    /// [`crate::TOKEN_EXCHANGE_AUDIENCE`]).
    pub fn with_federated_credential(
        mut self,
        issuer: &str,
        subject: &str,
        audience: &str,
    ) -> Self {
        self.federated_credentials
            .push(FederatedCredential::new(issuer, subject).with_audience(audience));
        self
    }

    /// Trusts certificates with the subject name `subject_name` issued by the authority whose
    /// certificate is `authority_pem` (subject name + issuer authentication): an assertion
    /// carrying such a certificate in `x5c` is accepted. Fails when the PEM holds no
    /// certificate.
    pub fn with_trusted_subject(
        mut self,
        subject_name: &str,
        authority_pem: &str,
    ) -> Result<Self, EmulatorError> {
        self.trusted_subjects.push(TrustedSubject {
            subject_name: subject_name.to_string(),
            authority_der: crate::keys::certificate_der_from_pem(authority_pem)?,
        });
        Ok(self)
    }

    /// Adds a federated identity credential.
    pub fn with_federated(mut self, credential: FederatedCredential) -> Self {
        self.federated_credentials.push(credential);
        self
    }

    /// Adds application permissions (app roles) the app asks for; an admin's Accept on the
    /// consent page grants them in the chosen tenant.
    pub fn with_app_roles<I, S>(mut self, roles: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        for role in roles {
            let role = role.into();
            if !self.app_roles.contains(&role) {
                self.app_roles.push(role);
            }
        }
        self
    }
}

impl EmulatorHandle {
    /// Makes `tenant` (a GUID) seen: the consent page's organization picker lists it. (Every
    /// well-formed GUID is a tenant for metadata, keys and the token endpoint, added or not.)
    pub fn add_tenant(&self, tenant: &str) {
        write(&self.state().directory).add_tenant(tenant);
    }

    /// Registers `name` (a domain such as `contoso.onmicrosoft.com`, compared ignoring case) as
    /// a name of tenant `tenant` (a GUID, which becomes seen): metadata, keys, the token
    /// endpoint and the consent pages under that name answer as the tenant's, as Entra ID does
    /// for a verified domain, and the consent page's picker labels the tenant with it.
    pub fn add_tenant_name(&self, name: &str, tenant: &str) {
        write(&self.state().directory).add_tenant_name(name, tenant);
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
                redirect_uris: app.redirect_uris,
                app_roles: app.app_roles,
                federated: app.federated_credentials,
                trusted_subjects: app.trusted_subjects,
            },
        );
        Ok(())
    }

    /// Admin consent: creates (or updates) the app's service principal in `tenant` with these
    /// app roles (replacing any it had), and makes the tenant seen. The roles go into the `roles` claim of the
    /// app-only tokens issued for that (tenant, app), whatever the resource.
    pub fn consent(&self, tenant_id: &str, client_id: &str, roles: Vec<String>) {
        write(&self.state().directory).set_consent(tenant_id, client_id, roles);
    }

    /// Deletes the app's service principal in `tenant` (the tenant's admin removed the app);
    /// its client-credentials grants there then get AADSTS700016. Returns whether there was one.
    pub fn revoke_consent(&self, tenant_id: &str, client_id: &str) -> bool {
        write(&self.state().directory).revoke(tenant_id, client_id)
    }

    /// Whether the app has a service principal in `tenant` (a GUID): created by
    /// [`EmulatorHandle::consent`], an Accept on the consent page or the home tenant, and not
    /// revoked since.
    pub fn has_service_principal(&self, tenant_id: &str, client_id: &str) -> bool {
        read(&self.state().directory)
            .principal(tenant_id, client_id)
            .is_some()
    }

    /// When the app's service principal in `tenant` was last removed
    /// ([`EmulatorHandle::revoke_consent`] or the control endpoint's `DELETE`); `None` when it
    /// never was, or consent was given again since.
    pub fn consent_revoked_at(&self, tenant_id: &str, client_id: &str) -> Option<SystemTime> {
        read(&self.state().directory)
            .revoked_at
            .get(&(
                tenant_id.to_ascii_lowercase(),
                client_id.to_ascii_lowercase(),
            ))
            .copied()
    }

    /// The app roles of the app's service principal in `tenant`; `None` without one.
    pub fn service_principal_roles(&self, tenant_id: &str, client_id: &str) -> Option<Vec<String>> {
        read(&self.state().directory)
            .principal(tenant_id, client_id)
            .map(|sp| sp.roles.clone())
    }

    /// The tenants the consent page offers (seen tenants), as (GUID, registered name or GUID),
    /// sorted by name.
    pub fn known_tenants(&self) -> Vec<(String, String)> {
        read(&self.state().directory).seen_tenants()
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
