//! One `Unary` call summarised on one line: what `aadgate demo` prints when `grpcurl` is not
//! installed.

use bytes::Bytes;
use http::HeaderMap;

use tonic::Status;

use super::client::{GrpcClientError, GrpcEchoClient, UnaryOutcome};
use super::code_name;

/// Response metadata a summary leaves out: transport details, not what the call says.
const NOT_SUMMARISED: &[&str] = &["content-type", "content-length", "date", "server"];

/// Connects to `url` (h2c: `http://host:port`), makes one `Unary` call with `message` and,
/// when `token` is given, `authorization: Bearer <token>`, and returns one line for a person:
///
/// - `OK: reply "hello"; trailers grpc-status=0, x-echo-trailer=done`
/// - `UNAUTHENTICATED (16): <grpc-message>; x-aadgate-reason=…, www-authenticate=…`
///
/// A call that fails is still a summary (`Ok`); `Err` means no call could be made (bad URL,
/// nothing listening). The token itself never appears in the line.
pub async fn grpc_call(
    url: &str,
    token: Option<&str>,
    message: &str,
) -> Result<String, GrpcClientError> {
    let client = GrpcEchoClient::connect(url).await?;
    let authorization = token.map(|token| format!("Bearer {token}"));
    let metadata: Vec<(&str, &str)> = authorization
        .iter()
        .map(|value| ("authorization", value.as_str()))
        .collect();
    Ok(summary(
        client.unary(message, Bytes::new(), &metadata).await,
    ))
}

/// The one-line summary of a call's outcome.
fn summary(outcome: Result<UnaryOutcome, Status>) -> String {
    match outcome {
        Ok(outcome) => format!(
            "OK: reply {:?}; trailers {}",
            outcome.reply.message,
            metadata_line(&outcome.trailers)
        ),
        Err(status) => {
            let mut line = format!(
                "{} ({}): {}",
                code_name(status.code()),
                status.code() as i32,
                status.message()
            );
            let metadata = metadata_line(&status.metadata().clone().into_headers());
            if !metadata.is_empty() {
                line.push_str("; ");
                line.push_str(&metadata);
            }
            line
        }
    }
}

/// `name=value, …` sorted by name, without transport headers; binary values as `<N bytes>`.
fn metadata_line(headers: &HeaderMap) -> String {
    let mut entries: Vec<String> = headers
        .iter()
        .filter(|(name, _)| !NOT_SUMMARISED.contains(&name.as_str()))
        .map(|(name, value)| match value.to_str() {
            Ok(text) if !name.as_str().ends_with("-bin") => format!("{name}={text}"),
            _ => format!("{name}=<{} bytes>", value.len()),
        })
        .collect();
    entries.sort();
    entries.join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::metadata::MetadataMap;
    use tonic::Code;

    #[test]
    fn a_rejection_is_summarised_with_its_code_message_and_reason() {
        let mut headers = HeaderMap::new();
        headers.insert("x-aadgate-reason", "token_expired".parse().expect("value"));
        headers.insert("content-type", "application/grpc".parse().expect("value"));
        let status = Status::with_metadata(
            Code::Unauthenticated,
            "the token has expired",
            MetadataMap::from_headers(headers),
        );
        assert_eq!(
            summary(Err(status)),
            "UNAUTHENTICATED (16): the token has expired; x-aadgate-reason=token_expired"
        );
    }
}
