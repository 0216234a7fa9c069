//! The paths the mock Graph serves and the permission each needs.
//!
//! Path segments are case-insensitive as on Graph; the `{id}` segment is percent-decoded.
//! Permissions follow the least-privileged lists of Graph's reference pages (`user-get`,
//! `user-list-messages`, `user-sendmail`):
//!
//! | resource | application (`roles`) | delegated (`scp`), own | delegated, another user |
//! |---|---|---|---|
//! | user | `User.Read.All`, `User.ReadWrite.All`, `User.ReadBasic.All`, `Directory.Read.All`, `Directory.ReadWrite.All` | those, `User.Read`, `User.ReadWrite` | those |
//! | messages | `Mail.Read`, `Mail.ReadWrite`, `Mail.ReadBasic.All` | `Mail.Read`, `Mail.ReadWrite`, `Mail.ReadBasic` | `Mail.Read.Shared`, `Mail.ReadWrite.Shared` |
//! | sendMail | `Mail.Send` | `Mail.Send` | `Mail.Send.Shared` |

use axum::http::Method;

use super::error::GraphError;
use super::token::Caller;

/// Whose data a path names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Subject {
    /// `/me`: the signed-in user.
    Me,
    /// `/users/{id}`, decoded.
    User(String),
}

/// What a path asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Resource {
    /// `GET /v1.0/users/{id}`, `GET /v1.0/me`.
    User,
    /// `GET /v1.0/users/{id}/messages`, `GET /v1.0/me/messages`.
    Messages,
    /// `POST /v1.0/users/{id}/sendMail`, `POST /v1.0/me/sendMail`.
    SendMail,
}

/// A served path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Route {
    pub subject: Subject,
    pub resource: Resource,
}

/// The version segment, checked before the token: `Err` when it is not `v1.0`.
pub(super) fn check_version(path: &str) -> Result<(), GraphError> {
    let first = path.split('/').find(|s| !s.is_empty()).unwrap_or("");
    if first.eq_ignore_ascii_case("v1.0") {
        Ok(())
    } else {
        Err(GraphError::InvalidVersion(first.to_string()))
    }
}

/// The route of a `/v1.0/…` path, or the segment Graph would not find.
pub(super) fn parse(path: &str) -> Result<Route, GraphError> {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).skip(1).collect();
    let is = |s: &str, want: &str| s.eq_ignore_ascii_case(want);
    let decoded = |id: &str| {
        percent_encoding::percent_decode_str(id)
            .decode_utf8_lossy()
            .into_owned()
    };
    let (subject, rest) = match segments.as_slice() {
        [me, rest @ ..] if is(me, "me") => (Subject::Me, rest),
        [users, id, rest @ ..] if is(users, "users") => (Subject::User(decoded(id)), rest),
        [first, ..] => return Err(GraphError::UnknownSegment(decoded(first))),
        [] => return Err(GraphError::UnknownSegment(String::new())),
    };
    let resource = match rest {
        [] => Resource::User,
        [m] if is(m, "messages") => Resource::Messages,
        [s] if is(s, "sendMail") => Resource::SendMail,
        [other, ..] => return Err(GraphError::UnknownSegment(decoded(other))),
    };
    Ok(Route { subject, resource })
}

impl Resource {
    /// Whether `method` is what the resource takes (`HEAD` with `GET`).
    pub(super) fn allows(self, method: &Method) -> bool {
        match self {
            Resource::User | Resource::Messages => method == Method::GET || method == Method::HEAD,
            Resource::SendMail => method == Method::POST,
        }
    }
}

const USER_READ_ANY: &[&str] = &[
    "User.Read.All",
    "User.ReadWrite.All",
    "User.ReadBasic.All",
    "Directory.Read.All",
    "Directory.ReadWrite.All",
];
const USER_READ_SELF: &[&str] = &["User.Read", "User.ReadWrite"];
const MAIL_READ_APP: &[&str] = &["Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic.All"];
const MAIL_READ_SELF: &[&str] = &["Mail.Read", "Mail.ReadWrite", "Mail.ReadBasic"];
const MAIL_READ_SHARED: &[&str] = &["Mail.Read.Shared", "Mail.ReadWrite.Shared"];
const MAIL_SEND: &[&str] = &["Mail.Send"];
const MAIL_SEND_SHARED: &[&str] = &["Mail.Send.Shared"];

/// Whether `caller` holds a permission for `resource` of the user it names (`own`: the signed-in
/// user itself). `Err` with Graph's refusal otherwise; `/me` with an app-only token is refused
/// before this.
pub(super) fn authorize(caller: &Caller, resource: Resource, own: bool) -> Result<(), GraphError> {
    let granted = if caller.app_only {
        caller.roles.as_deref()
    } else {
        caller.scopes.as_deref()
    };
    let Some(granted) = granted else {
        return Err(GraphError::NoPermissionClaims);
    };
    let has = |list: &[&str]| granted.iter().any(|g| list.contains(&g.as_str()));
    let allowed = match (resource, caller.app_only) {
        (Resource::User, true) => has(USER_READ_ANY),
        (Resource::User, false) => has(USER_READ_ANY) || (own && has(USER_READ_SELF)),
        (Resource::Messages, true) => has(MAIL_READ_APP),
        (Resource::Messages, false) => has(MAIL_READ_SHARED) || (own && has(MAIL_READ_SELF)),
        (Resource::SendMail, true) => has(MAIL_SEND),
        (Resource::SendMail, false) => has(MAIL_SEND_SHARED) || (own && has(MAIL_SEND)),
    };
    match (allowed, resource) {
        (true, _) => Ok(()),
        (false, Resource::User) => Err(GraphError::DirectoryDenied),
        (false, Resource::Messages | Resource::SendMail) => Err(GraphError::MailDenied),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(subject: Subject, resource: Resource) -> Result<Route, GraphError> {
        Ok(Route { subject, resource })
    }

    #[test]
    fn served_paths_parse_ignoring_case_and_decoding_the_id() {
        let user = |id: &str| Subject::User(id.to_string());
        assert_eq!(
            parse("/v1.0/users/alice%40contoso.example"),
            route(user("alice@contoso.example"), Resource::User)
        );
        assert_eq!(
            parse("/V1.0/Users/bob/Messages"),
            route(user("bob"), Resource::Messages)
        );
        assert_eq!(
            parse("/v1.0/users/bob/sendmail/"),
            route(user("bob"), Resource::SendMail)
        );
        assert_eq!(parse("/v1.0/me"), route(Subject::Me, Resource::User));
        assert_eq!(
            parse("/v1.0/me/messages"),
            route(Subject::Me, Resource::Messages)
        );
    }

    #[test]
    fn other_paths_name_the_segment_graph_does_not_find() {
        assert_eq!(
            parse("/v1.0/groups"),
            Err(GraphError::UnknownSegment("groups".into()))
        );
        assert_eq!(
            parse("/v1.0/users/bob/events"),
            Err(GraphError::UnknownSegment("events".into()))
        );
        assert_eq!(
            parse("/v1.0/users"),
            Err(GraphError::UnknownSegment("users".into()))
        );
        assert_eq!(
            parse("/v1.0"),
            Err(GraphError::UnknownSegment(String::new()))
        );
        assert_eq!(check_version("/v1.0/me"), Ok(()));
        assert_eq!(
            check_version("/beta/me"),
            Err(GraphError::InvalidVersion("beta".into()))
        );
    }

    fn caller(app_only: bool, granted: &[&str]) -> Caller {
        let granted = Some(granted.iter().map(|g| g.to_string()).collect());
        Caller {
            tid: String::new(),
            client_id: None,
            app_only,
            roles: if app_only { granted.clone() } else { None },
            scopes: if app_only { None } else { granted },
            oid: None,
            user_names: Vec::new(),
            not_before: 0,
            cae_capable: false,
        }
    }

    /// (app-only, permissions granted, resource, the caller's own, expected answer)
    type Case = (
        bool,
        &'static [&'static str],
        Resource,
        bool,
        Result<(), GraphError>,
    );

    #[test]
    fn each_resource_needs_its_permission() {
        use GraphError::{DirectoryDenied, MailDenied};
        let cases: &[Case] = &[
            (true, &["User.Read.All"], Resource::User, false, Ok(())),
            (true, &["Directory.Read.All"], Resource::User, false, Ok(())),
            (
                true,
                &["Mail.Read"],
                Resource::User,
                false,
                Err(DirectoryDenied),
            ),
            (true, &["Mail.Read"], Resource::Messages, false, Ok(())),
            (true, &["Mail.ReadWrite"], Resource::Messages, false, Ok(())),
            (
                true,
                &["Mail.Send"],
                Resource::Messages,
                false,
                Err(MailDenied),
            ),
            (true, &["Mail.Send"], Resource::SendMail, false, Ok(())),
            (
                true,
                &["Mail.ReadWrite"],
                Resource::SendMail,
                false,
                Err(MailDenied),
            ),
            (false, &["User.Read"], Resource::User, true, Ok(())),
            (
                false,
                &["User.Read"],
                Resource::User,
                false,
                Err(DirectoryDenied),
            ),
            (false, &["Mail.Read"], Resource::Messages, true, Ok(())),
            (
                false,
                &["Mail.Read"],
                Resource::Messages,
                false,
                Err(MailDenied),
            ),
            (
                false,
                &["Mail.Read.Shared"],
                Resource::Messages,
                false,
                Ok(()),
            ),
            (
                false,
                &["Mail.Send"],
                Resource::SendMail,
                false,
                Err(MailDenied),
            ),
            (
                false,
                &["Mail.Send.Shared"],
                Resource::SendMail,
                false,
                Ok(()),
            ),
        ];
        for (app_only, granted, resource, own, want) in cases {
            assert_eq!(
                authorize(&caller(*app_only, granted), *resource, *own),
                *want,
                "app_only={app_only} {granted:?} {resource:?} own={own}"
            );
        }
    }

    #[test]
    fn a_token_without_roles_or_scp_is_refused_as_a_token() {
        let mut c = caller(true, &[]);
        c.roles = None;
        assert_eq!(
            authorize(&c, Resource::Messages, false),
            Err(GraphError::NoPermissionClaims)
        );
    }
}
