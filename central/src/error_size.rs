//! Bounds the sentence of every error central sends. An error often names what it refused (a
//! store id, a command, a profile's problems), and what it refused may be a megabyte: sent back
//! whole in the `grpc-message` header it makes the client's HTTP/2 library close the whole
//! connection, breaking every other call on it. So the sentence is cut here, in one place for
//! both ports, to [`MAX_ERROR_BYTES`].

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::http::{HeaderValue, Request, Response};
use tower::{Layer, Service};

/// The longest error sentence central sends (percent-encoded, as it travels).
pub const MAX_ERROR_BYTES: usize = 2048;

#[derive(Clone, Copy, Debug, Default)]
pub struct ErrorSizeLayer;

impl<S> Layer<S> for ErrorSizeLayer {
    type Service = ErrorSize<S>;
    fn layer(&self, inner: S) -> ErrorSize<S> {
        ErrorSize { inner }
    }
}

#[derive(Clone, Debug)]
pub struct ErrorSize<S> {
    inner: S,
}

impl<S, B, RB> Service<Request<B>> for ErrorSize<S>
where
    S: Service<Request<B>, Response = Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let fut = self.inner.call(req);
        Box::pin(async move {
            let mut resp = fut.await?;
            if let Some(v) = resp.headers().get("grpc-message")
                && v.len() > MAX_ERROR_BYTES
                && let Some(cut) = cut_encoded(v.as_bytes())
            {
                resp.headers_mut().insert("grpc-message", cut);
            }
            Ok(resp)
        })
    }
}

/// A percent-encoded message cut to at most [`MAX_ERROR_BYTES`], never inside an escape, with a
/// note that it was cut.
fn cut_encoded(v: &[u8]) -> Option<HeaderValue> {
    const NOTE: &[u8] = b"%E2%80%A6 (cut)";
    let mut end = MAX_ERROR_BYTES.saturating_sub(NOTE.len()).min(v.len());
    // Step back out of a `%XX` escape, and out of a multi-byte character's escapes: an escape
    // of a continuation byte (%80–%BF) is not where a character starts.
    loop {
        if end >= 1 && v[end - 1] == b'%' {
            end -= 1;
        } else if end >= 2 && v[end - 2] == b'%' {
            end -= 2;
        } else if end + 1 < v.len()
            && v[end] == b'%'
            && matches!(v[end + 1], b'8' | b'9' | b'A' | b'B' | b'a' | b'b')
        {
            end -= 3.min(end);
            continue;
        } else {
            break;
        }
    }
    let mut out = v[..end].to_vec();
    out.extend_from_slice(NOTE);
    HeaderValue::from_bytes(&out).ok()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn decode(v: &[u8]) -> String {
        let mut out = Vec::new();
        let mut i = 0;
        while i < v.len() {
            if v[i] == b'%' {
                out.push(
                    u8::from_str_radix(std::str::from_utf8(&v[i + 1..i + 3]).unwrap(), 16).unwrap(),
                );
                i += 3;
            } else {
                out.push(v[i]);
                i += 1;
            }
        }
        String::from_utf8(out).expect("cut on a character boundary")
    }

    #[test]
    fn a_long_message_is_cut_between_characters() {
        for prefix in 0..4 {
            let text = format!("{}{}", "a".repeat(prefix), "€".repeat(2000));
            let encoded: String = text
                .bytes()
                .map(|b| {
                    if b.is_ascii_alphanumeric() {
                        (b as char).to_string()
                    } else {
                        format!("%{b:02X}")
                    }
                })
                .collect();
            let cut = cut_encoded(encoded.as_bytes()).unwrap();
            assert!(cut.len() <= MAX_ERROR_BYTES, "{}", cut.len());
            let back = decode(cut.as_bytes());
            assert!(back.ends_with("… (cut)"), "{back}");
        }
    }
}
