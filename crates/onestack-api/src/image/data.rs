//! `/v2/images/{id}/file`: streamed upload and download. Neither ever holds an image in memory.

use super::ImageState;
use crate::error::{ApiError, ApiResult};
use crate::extract::Auth;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

const READ_CHUNK: usize = 256 * 1024;

fn header_u64(headers: &HeaderMap, name: &str) -> Option<u64> {
    headers.get(name)?.to_str().ok()?.trim().parse().ok()
}

pub async fn upload(
    State(state): State<ImageState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<StatusCode> {
    let ctype = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream");
    if !ctype.starts_with("application/octet-stream") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!(
                "Unsupported Content-Type '{ctype}': image data must be application/octet-stream."
            ),
        ));
    }
    // The SDK announces the size; a larger Content-Length is refused before any byte is read.
    let declared = header_u64(&headers, "content-length")
        .into_iter()
        .chain(header_u64(&headers, "x-openstack-image-size"))
        .max();
    state
        .images
        .upload(&ctx, &id, body.into_data_stream(), declared)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// A single `bytes=a-b` / `bytes=a-` / `bytes=-n` range, resolved against `len`.
fn parse_range(value: &str, len: u64) -> Option<(u64, u64)> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None;
    }
    let (a, b) = spec.split_once('-')?;
    let (start, end) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().ok()?;
            if n == 0 {
                return None;
            }
            (len.saturating_sub(n), len.checked_sub(1)?)
        }
        (s, "") => (s.parse().ok()?, len.checked_sub(1)?),
        (s, e) => (
            s.parse().ok()?,
            e.parse::<u64>().ok()?.min(len.checked_sub(1)?),
        ),
    };
    (start <= end && start < len).then_some((start, end))
}

pub async fn download(
    State(state): State<ImageState>,
    Auth(ctx): Auth,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let dl = state.images.download(&ctx, &id).await?;
    let Some(path) = dl.path else {
        // Glance: an image without data answers 204 No Content.
        return Ok(StatusCode::NO_CONTENT.into_response());
    };
    let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
        ApiError::from(onestack_core::CoreError::Internal(format!(
            "image {id} data unreadable at {}: {e}",
            path.display()
        )))
    })?;
    let len = file
        .metadata()
        .await
        .map(|m| m.len())
        .map_err(|e| ApiError::from(onestack_core::CoreError::Internal(e.to_string())))?;
    let range = headers
        .get(header::RANGE)
        .and_then(|v| v.to_str().ok())
        .map(|v| parse_range(v, len));
    let mut resp_headers = HeaderMap::new();
    resp_headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    if let Some(md5) = dl.image.checksum.as_deref() {
        if let Ok(v) = HeaderValue::from_str(md5) {
            resp_headers.insert("content-md5", v);
        }
    }
    let (status, body) = match range {
        None => (
            StatusCode::OK,
            Body::from_stream(ReaderStream::with_capacity(file, READ_CHUNK)),
        ),
        Some(None) => {
            let mut resp = ApiError::new(
                StatusCode::RANGE_NOT_SATISFIABLE,
                format!("Requested range not satisfiable (image size {len})."),
            )
            .into_response();
            if let Ok(v) = HeaderValue::from_str(&format!("bytes */{len}")) {
                resp.headers_mut().insert(header::CONTENT_RANGE, v);
            }
            return Ok(resp);
        }
        Some(Some((start, end))) => {
            file.seek(std::io::SeekFrom::Start(start))
                .await
                .map_err(|e| ApiError::from(onestack_core::CoreError::Internal(e.to_string())))?;
            if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{end}/{len}")) {
                resp_headers.insert(header::CONTENT_RANGE, v);
            }
            // The checksum covers the whole image, not the part.
            resp_headers.remove("content-md5");
            let part = file.take(end - start + 1);
            (
                StatusCode::PARTIAL_CONTENT,
                Body::from_stream(ReaderStream::with_capacity(part, READ_CHUNK)),
            )
        }
    };
    let length = match status {
        StatusCode::PARTIAL_CONTENT => range.flatten().map(|(s, e)| e - s + 1).unwrap_or(0),
        _ => len,
    };
    resp_headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    Ok((status, resp_headers, body).into_response())
}

#[cfg(test)]
mod tests {
    use super::parse_range;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some((0, 9)));
        assert_eq!(parse_range("bytes=90-", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=-10", 100), Some((90, 99)));
        assert_eq!(parse_range("bytes=50-500", 100), Some((50, 99)));
        assert_eq!(parse_range("bytes=100-", 100), None);
        assert_eq!(parse_range("bytes=9-1", 100), None);
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_range("bytes=0-0", 0), None);
    }
}
