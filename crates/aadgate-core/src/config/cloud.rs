//! `[identity] cloud`: the Entra ID cloud instance (SPEC section 12) and the defaults it implies
//! for the metadata URL, the issuer templates, the admin-consent authority and the audience of
//! federated credentials. Each value comes from Microsoft's documentation, cited in
//! `docs/configuration.md#identity-cloud`:
//!
//! - authentication hosts: <https://learn.microsoft.com/entra/identity-platform/authentication-national-cloud>;
//! - federated-credential audiences: <https://learn.microsoft.com/entra/workload-id/workload-identity-federation-create-trust>.

/// One Entra ID cloud instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Cloud {
    /// `"public"`: the global service, `login.microsoftonline.com`.
    #[default]
    Public,
    /// `"usgov"`: Azure Government, `login.microsoftonline.us`.
    UsGov,
    /// `"china"`: Microsoft Azure operated by 21Vianet, `login.partner.microsoftonline.cn`.
    China,
}

/// The global cloud's authority host (the defaults of `[onboarding] authority` and of the
/// global cloud's `metadata_url`).
pub(crate) const PUBLIC_AUTHORITY: &str = "https://login.microsoftonline.com";

/// The global cloud's v1 and v2 issuer templates (the default `[tenants] issuers`).
pub(crate) const PUBLIC_ISSUERS: [&str; 2] = [
    "https://sts.windows.net/{tenantid}/",
    "https://login.microsoftonline.com/{tenantid}/v2.0",
];

impl Cloud {
    /// The names `cloud` accepts.
    pub const NAMES: [&'static str; 3] = ["public", "usgov", "china"];

    /// The cloud named `name` (`public`, `usgov`, `china`).
    pub fn from_name(name: &str) -> Option<Cloud> {
        match name {
            "public" => Some(Cloud::Public),
            "usgov" => Some(Cloud::UsGov),
            "china" => Some(Cloud::China),
            _ => None,
        }
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        match self {
            Cloud::Public => "public",
            Cloud::UsGov => "usgov",
            Cloud::China => "china",
        }
    }

    /// The Entra ID authentication endpoint (authority host), without a trailing `/`.
    pub fn authority(self) -> &'static str {
        match self {
            Cloud::Public => PUBLIC_AUTHORITY,
            Cloud::UsGov => "https://login.microsoftonline.us",
            Cloud::China => "https://login.partner.microsoftonline.cn",
        }
    }

    /// The default `metadata_url`: the `common` v2.0 OpenID configuration of the authority.
    pub fn metadata_url(self) -> String {
        format!(
            "{}/common/v2.0/.well-known/openid-configuration",
            self.authority()
        )
    }

    /// The default `[tenants] issuers`: the v1 (`sts`) and v2 issuer templates of the cloud's
    /// access tokens. Azure Government's v1 tokens carry the global `sts.windows.net` issuer;
    /// the China cloud's carry `sts.chinacloudapi.cn`, and its v2 tokens the current
    /// (`login.partner.microsoftonline.cn`) or the older (`login.chinacloudapi.cn`) host.
    pub fn issuers(self) -> Vec<String> {
        let list: &[&str] = match self {
            Cloud::Public => &PUBLIC_ISSUERS,
            Cloud::UsGov => &[
                "https://sts.windows.net/{tenantid}/",
                "https://login.microsoftonline.us/{tenantid}/v2.0",
            ],
            Cloud::China => &[
                "https://sts.chinacloudapi.cn/{tenantid}/",
                "https://login.partner.microsoftonline.cn/{tenantid}/v2.0",
                "https://login.chinacloudapi.cn/{tenantid}/v2.0",
            ],
        };
        list.iter().map(|s| s.to_string()).collect()
    }

    /// The audience of a federated credential's assertion in this cloud (what the app
    /// registration's federated identity credential lists, and what a managed identity's token
    /// is requested for).
    pub fn federated_audience(self) -> &'static str {
        match self {
            Cloud::Public => "api://AzureADTokenExchange",
            Cloud::UsGov => "api://AzureADTokenExchangeUSGov",
            Cloud::China => "api://AzureADTokenExchangeChina",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_cloud_has_its_hosts_and_round_trips_its_name() {
        for name in Cloud::NAMES {
            let c = Cloud::from_name(name).expect("known");
            assert_eq!(c.name(), name);
            assert!(c.metadata_url().starts_with(c.authority()));
            assert!(c
                .issuers()
                .iter()
                .all(|i| i.starts_with("https://") && i.contains("{tenantid}")));
            assert!(c
                .federated_audience()
                .starts_with("api://AzureADTokenExchange"));
        }
        assert_eq!(Cloud::default(), Cloud::Public);
        assert_eq!(
            Cloud::UsGov.metadata_url(),
            "https://login.microsoftonline.us/common/v2.0/.well-known/openid-configuration"
        );
        assert_eq!(Cloud::from_name("germany"), None);
    }
}
