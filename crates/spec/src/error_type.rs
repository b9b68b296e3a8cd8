//! The one outcome vocabulary: every error enum of every layer says which of these it is, and
//! that label is the `outcome` of every service's request counter and picks its gRPC status.

use std::fmt;

/// How a request ended, as metrics label it (`outcome="..."`); the same values in every service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorType {
    /// The request broke a documented limit; nothing ran.
    InvalidArgument,
    /// A queue or admission limit was full; retrying later (or elsewhere) may succeed.
    ResourceExhausted,
    /// The service is draining, or no replica of a stage could be reached.
    Unavailable,
    /// The caller's deadline passed.
    DeadlineExceeded,
    /// The caller went away or cancelled.
    Cancelled,
    /// Something failed that the caller could not have caused.
    Internal,
}

impl ErrorType {
    /// The metrics label.
    pub fn label(self) -> &'static str {
        match self {
            Self::InvalidArgument => "invalid_argument",
            Self::ResourceExhausted => "resource_exhausted",
            Self::Unavailable => "unavailable",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Cancelled => "cancelled",
            Self::Internal => "internal",
        }
    }
}

impl fmt::Display for ErrorType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.label())
    }
}

/// The label of a request that succeeded.
pub const COMPLETED: &str = "completed";
