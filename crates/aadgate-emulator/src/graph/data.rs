//! The mock Graph's data: users synthesised from any GUID or UPN (the same id always gives the
//! same user in a tenant), a small inbox per user, and sendMail bodies checked the way Graph
//! checks them before Exchange takes the message.

use serde_json::{json, Map, Value};

use super::error::GraphError;
use crate::{b64url, derived_guid, is_guid, iso_timestamp};

/// Graph's base for `@odata.context` URLs.
const METADATA: &str = "https://graph.microsoft.com/v1.0/$metadata";

/// A user of a tenant, synthesised from the id in the path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Person {
    /// Object id.
    pub id: String,
    /// User principal name (also the mail address).
    pub upn: String,
    /// Given name.
    pub given_name: String,
    /// Surname (may be empty).
    pub surname: String,
}

impl Person {
    /// The user `id` names in tenant `tid`: a GUID is the object id (with a UPN made from it in
    /// the tenant's `onmicrosoft.com` domain), a UPN gets an object id derived from it and the
    /// tenant. `None` for anything else (Graph finds no such user).
    pub(super) fn resolve(tid: &str, id: &str) -> Option<Person> {
        if is_guid(id) {
            let id = id.to_ascii_lowercase();
            let short = &id[..8];
            let domain = format!("tenant-{}.onmicrosoft.com", &tid[..tid.len().min(8)]);
            return Some(Person {
                upn: format!("user-{short}@{domain}"),
                given_name: "User".to_string(),
                surname: short.to_string(),
                id,
            });
        }
        let (local, domain) = id.split_once('@')?;
        if local.is_empty() || domain.is_empty() || domain.contains('@') {
            return None;
        }
        let mut words = local
            .split(['.', '_', '-', '+'])
            .filter(|w| !w.is_empty())
            .map(capitalised);
        let given_name = words.next().unwrap_or_else(|| local.to_string());
        let surname = words.collect::<Vec<_>>().join(" ");
        Some(Person {
            id: derived_guid(&["graph-user", tid, &id.to_ascii_lowercase()]),
            upn: id.to_string(),
            given_name,
            surname,
        })
    }

    /// The same user with object id `id` (the signed-in user's, from its token).
    pub(super) fn with_id(mut self, id: &str) -> Person {
        self.id = id.to_ascii_lowercase();
        self
    }

    fn display_name(&self) -> String {
        if self.surname.is_empty() {
            self.given_name.clone()
        } else {
            format!("{} {}", self.given_name, self.surname)
        }
    }

    /// The user object with Graph's default properties.
    pub(super) fn to_json(&self) -> Value {
        let surname = if self.surname.is_empty() {
            Value::Null
        } else {
            Value::from(self.surname.clone())
        };
        json!({
            "@odata.context": format!("{METADATA}#users/$entity"),
            "businessPhones": [],
            "displayName": self.display_name(),
            "givenName": self.given_name,
            "jobTitle": null,
            "mail": self.upn,
            "mobilePhone": null,
            "officeLocation": null,
            "preferredLanguage": "en-US",
            "surname": surname,
            "userPrincipalName": self.upn,
            "id": self.id,
        })
    }

    /// A three-message inbox, the same on every call.
    pub(super) fn messages(&self) -> Value {
        let subjects = ["Quarterly report", "Lunch on Friday?", "Your build passed"];
        let value: Vec<Value> = subjects
            .iter()
            .enumerate()
            .map(|(i, subject)| {
                let n = i.to_string();
                let key = derived_guid(&["graph-message", &self.id, &n]);
                let received = iso_timestamp(1_700_000_000 + 3_600 * i as i64);
                let received = format!("{}Z", &received[..19]);
                json!({
                    "@odata.etag": format!("W/\"{}\"", b64url(derived_guid(&["etag", &key]).as_bytes())),
                    "id": format!("AAMkA{}", b64url(key.as_bytes())),
                    "createdDateTime": received,
                    "receivedDateTime": received,
                    "subject": subject,
                    "bodyPreview": format!("Message {n} in the mailbox of {}.", self.upn),
                    "importance": "normal",
                    "isRead": i % 2 == 0,
                    "from": { "emailAddress": {
                        "name": format!("Sender {n}"),
                        "address": format!("sender{n}@fabrikam.example"),
                    } },
                    "toRecipients": [ { "emailAddress": {
                        "name": self.display_name(),
                        "address": self.upn,
                    } } ],
                })
            })
            .collect();
        json!({
            "@odata.context": format!("{METADATA}#users('{}')/messages", self.id),
            "value": value,
        })
    }
}

fn capitalised(word: &str) -> String {
    let mut chars = word.chars();
    match chars.next() {
        Some(first) => first.to_uppercase().chain(chars).collect(),
        None => String::new(),
    }
}

/// A message the mock Graph accepted on `sendMail`, for tests to inspect.
#[derive(Debug, Clone, PartialEq)]
pub struct SentMail {
    /// Tenant of the token (`tid`).
    pub tenant: String,
    /// The sending mailbox: the user's UPN, as the path named it or `/me` resolved.
    pub mailbox: String,
    /// Client application id of the token (`appid`/`azp`), if it had one.
    pub client_id: Option<String>,
    /// `message.subject`, if any.
    pub subject: Option<String>,
    /// Every recipient address (`toRecipients`, then `ccRecipients`, then `bccRecipients`).
    pub recipients: Vec<String>,
    /// `saveToSentItems` (Graph's default: `true`).
    pub save_to_sent_items: bool,
    /// The `message` object as sent.
    pub message: Value,
}

/// What a sendMail body asks for, once checked.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct MailRequest {
    pub message: Value,
    pub subject: Option<String>,
    pub recipients: Vec<String>,
    pub save_to_sent_items: bool,
}

/// Checks a sendMail body: a JSON object with a `message` object that has at least one
/// recipient with an address, and a boolean `saveToSentItems` if any.
pub(super) fn parse_send_mail(body: &[u8]) -> Result<MailRequest, GraphError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(GraphError::EmptyPayload);
    }
    let body: Map<String, Value> =
        serde_json::from_slice(body).map_err(|_| GraphError::InvalidJson)?;
    let member = |name: &str| {
        body.iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
    };
    let message = match member("message") {
        Some(Value::Object(m)) => m,
        _ => return Err(GraphError::MissingMessage),
    };
    let save_to_sent_items = match member("saveToSentItems") {
        None | Some(Value::Null) => true,
        Some(Value::Bool(b)) => *b,
        Some(_) => return Err(GraphError::InvalidSaveToSentItems),
    };
    let mut recipients = Vec::new();
    for list in ["toRecipients", "ccRecipients", "bccRecipients"] {
        let Some(entries) = message.get(list).and_then(Value::as_array) else {
            continue;
        };
        for entry in entries {
            let address = entry
                .pointer("/emailAddress/address")
                .and_then(Value::as_str)
                .unwrap_or("");
            let usable = address
                .split_once('@')
                .is_some_and(|(l, d)| !l.is_empty() && !d.is_empty());
            if !usable {
                return Err(GraphError::InvalidRecipient(address.to_string()));
            }
            recipients.push(address.to_string());
        }
    }
    if recipients.is_empty() {
        return Err(GraphError::NoRecipients);
    }
    Ok(MailRequest {
        subject: message
            .get("subject")
            .and_then(Value::as_str)
            .map(str::to_string),
        message: Value::Object(message.clone()),
        recipients,
        save_to_sent_items,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TID: &str = "8b0a5b2e-1c3d-4f5a-9e7b-6c2d1a0f3e4b";

    #[test]
    fn users_are_synthesised_from_guids_and_upns_deterministically() {
        let guid = "3F2504E0-4F89-11D3-9A0C-0305E82C3301";
        let by_guid = Person::resolve(TID, guid).expect("guid user");
        assert_eq!(by_guid.id, guid.to_ascii_lowercase());
        assert_eq!(by_guid.upn, "user-3f2504e0@tenant-8b0a5b2e.onmicrosoft.com");

        let alice = Person::resolve(TID, "alice.smith@contoso.example").expect("upn user");
        assert_eq!(
            alice,
            Person::resolve(TID, "alice.smith@contoso.example").expect("again")
        );
        assert!(is_guid(&alice.id));
        assert_eq!(alice.to_json()["displayName"], "Alice Smith");
        let elsewhere = Person::resolve("72f988bf-86f1-41af-91ab-2d7cd011db47", &alice.upn);
        assert_ne!(elsewhere.map(|p| p.id), Some(alice.id.clone()));

        for bad in ["alice", "@contoso.example", "alice@", "a@b@c", ""] {
            assert_eq!(Person::resolve(TID, bad), None, "{bad}");
        }
    }

    #[test]
    fn send_mail_bodies_are_checked_like_graph() {
        let ok = br#"{"message":{"subject":"Hi","toRecipients":[{"emailAddress":{"address":"bob@contoso.example"}}],
            "ccRecipients":[{"emailAddress":{"address":"carol@contoso.example"}}]},"saveToSentItems":false}"#;
        let mail = parse_send_mail(ok).expect("valid");
        assert_eq!(mail.subject.as_deref(), Some("Hi"));
        assert_eq!(
            mail.recipients,
            ["bob@contoso.example", "carol@contoso.example"]
        );
        assert!(!mail.save_to_sent_items);

        let cases: &[(&[u8], GraphError)] = &[
            (b"", GraphError::EmptyPayload),
            (b"  \n", GraphError::EmptyPayload),
            (b"{not json", GraphError::InvalidJson),
            (b"[1]", GraphError::InvalidJson),
            (b"{}", GraphError::MissingMessage),
            (br#"{"message":"hi"}"#, GraphError::MissingMessage),
            (br#"{"message":{"subject":"x"}}"#, GraphError::NoRecipients),
            (
                br#"{"message":{"toRecipients":[{"emailAddress":{"address":"bob"}}]}}"#,
                GraphError::InvalidRecipient("bob".into()),
            ),
            (
                br#"{"message":{"toRecipients":[{"emailAddress":{"address":"b@c"}}]},"saveToSentItems":"no"}"#,
                GraphError::InvalidSaveToSentItems,
            ),
        ];
        for (body, want) in cases {
            assert_eq!(
                parse_send_mail(body).err().as_ref(),
                Some(want),
                "{}",
                String::from_utf8_lossy(body)
            );
        }
    }
}
