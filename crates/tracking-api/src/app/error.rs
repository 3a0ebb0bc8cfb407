//! Why a request was not (fully) taken, and the responses that say so:
//! [`ApiError::status`] chooses the status of every error answer.

use super::*;

/// One refused event of a request.
#[derive(Debug, Clone, Serialize)]
pub struct Rejected {
    pub index: usize,
    pub error: String,
}

/// Why a request was not (fully) taken. Whose fault and whether a retry
/// helps decide the status, in [`ApiError::status`] only.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The body could not be read as sent (client's fault, except `Io` and
    /// `NoMemory`, which is ours).
    #[error("{0}")]
    Read(#[from] BodyReadError),
    /// The body is not a valid envelope (client's fault).
    #[error("{0}")]
    Body(#[from] BodyError),
    /// The request lacks what the route needs (client's fault).
    #[error("{0}")]
    BadRequest(&'static str),
    /// Every event was invalid (client's fault).
    #[error("every event was rejected")]
    AllRejected(Vec<Rejected>),
    /// Too many requests in flight (ours; retry later).
    #[error("too many requests in flight; retry later")]
    Overloaded,

    /// The sink cannot take more events now (ours; retry later).
    #[error("the event queue is full; retry later")]
    QueueFull,
    /// The output is failing; what was accepted is kept (ours; retry later).
    #[error("the event output is failing; retry later")]
    OutputFailing(String),
    /// Shutting down (ours; retry, another instance will answer).
    #[error("shutting down; retry later")]
    Draining,
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed(&'static str),
    #[error("origin not allowed")]
    OriginRefused,
    /// A Segment route's write key is missing or unknown (client's fault).
    #[error("{0}")]
    Unauthorized(#[from] crate::segment::KeyError),
    /// A bug (ours).
    #[error("internal error")]
    Internal(String),
}

impl ApiError {
    /// The one place where errors become status codes.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Read(
                BodyReadError::Read(ReadError::TooLarge(_)) | BodyReadError::InflatedTooLarge(_),
            ) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Read(
                BodyReadError::UnsupportedType(_) | BodyReadError::UnsupportedEncoding(_),
            ) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::Read(BodyReadError::BadGzip(_) | BodyReadError::Read(ReadError::Io(_))) => {
                StatusCode::BAD_REQUEST
            }
            Self::Body(BodyError::TooManyEvents { .. } | BodyError::ExpandsTooMuch { .. }) => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            Self::Body(_) | Self::AllRejected(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Read(BodyReadError::Read(ReadError::TimedOut(_))) => StatusCode::REQUEST_TIMEOUT,
            Self::Read(BodyReadError::Read(ReadError::NoMemory)) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Overloaded | Self::QueueFull | Self::OutputFailing(_) | Self::Draining => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            Self::OriginRefused => StatusCode::FORBIDDEN,
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub(super) fn into_response(self) -> Response<Full<Bytes>> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            rejected: Option<&'a [Rejected]>,
        }
        let body = Body {
            error: self.to_string(),
            rejected: self.rejected(),
        };
        self.respond(&body)
    }

    /// The answer on a Segment route: `{"code", "message"}`, which the
    /// SDKs read (analytics-python logs both).
    pub(super) fn into_segment_response(self) -> Response<Full<Bytes>> {
        #[derive(Serialize)]
        struct Body<'a> {
            code: &'static str,
            message: String,
            #[serde(skip_serializing_if = "Option::is_none")]
            rejected: Option<&'a [Rejected]>,
        }
        let body = Body {
            code: self.code(),
            message: self.to_string(),
            rejected: self.rejected(),
        };
        self.respond(&body)
    }

    /// The error's kind as a word, from its status: the Segment routes'
    /// `code`, the inspector's `reason` for a refused request.
    pub(super) fn code(&self) -> &'static str {
        match self.status() {
            StatusCode::BAD_REQUEST => "invalid_request",
            StatusCode::UNAUTHORIZED => "unauthorized",
            StatusCode::FORBIDDEN => "forbidden",
            StatusCode::NOT_FOUND => "not_found",
            StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
            StatusCode::REQUEST_TIMEOUT => "request_timeout",
            StatusCode::PAYLOAD_TOO_LARGE => "payload_too_large",
            StatusCode::UNSUPPORTED_MEDIA_TYPE => "unsupported_media_type",
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "headers_too_large",
            StatusCode::SERVICE_UNAVAILABLE => "service_unavailable",
            _ => "internal_error",
        }
    }

    fn rejected(&self) -> Option<&[Rejected]> {
        match self {
            Self::AllRejected(r) => Some(r),
            _ => None,
        }
    }

    /// `body` with the error's status and headers (`Retry-After` on `503`,
    /// `Allow` on `405`).
    fn respond<T: Serialize>(&self, body: &T) -> Response<Full<Bytes>> {
        let status = self.status();
        let mut resp = json_response(status, body);
        if status == StatusCode::SERVICE_UNAVAILABLE {
            resp.headers_mut()
                .insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if let Self::MethodNotAllowed(allow) = self {
            resp.headers_mut()
                .insert(ALLOW, HeaderValue::from_static(allow));
        }
        resp
    }
}

pub(super) fn json_response<T: Serialize>(status: StatusCode, body: &T) -> Response<Full<Bytes>> {
    let bytes =
        serde_json::to_vec(body).unwrap_or_else(|_| b"{\"error\":\"internal error\"}".to_vec());
    let mut resp = Response::new(Full::new(Bytes::from(bytes)));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

pub(super) fn empty(status: StatusCode) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::new()));
    *resp.status_mut() = status;
    resp
}

pub(super) fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
