//! Status codes as the gRPC specification and the API's documentation write them.

use tonic::Code;

/// The canonical name of `code`: `NOT_FOUND`, `RESOURCE_EXHAUSTED`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_canonical_name() {
        // The numbers are the specification's; each name is the upper-snake form of its variant.
        for n in 0..=16 {
            let code = Code::from_i32(n);
            let name = code_name(code);
            let variant: String = format!("{code:?}")
                .chars()
                .flat_map(|c| {
                    let upper = c.to_ascii_uppercase();
                    if c.is_ascii_uppercase() {
                        vec!['_', upper]
                    } else {
                        vec![upper]
                    }
                })
                .collect();
            assert_eq!(name, variant.trim_start_matches('_'), "code {n}");
        }
    }
}
