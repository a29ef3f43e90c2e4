//! Receives image data: the request body is cut into 1 MiB blocks that three threads consume at
//! once — one writes the file, one computes MD5, one SHA-512 — so hashing costs no extra pass and
//! the two hashes run in parallel. At most a few blocks per thread are in flight, so memory stays
//! bounded whatever the image size.

use super::inspect::HEAD_LEN;
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, StreamExt};
use md5::Digest;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use tokio::sync::mpsc;

const BLOCK: usize = 1 << 20;
const IN_FLIGHT: usize = 4;

/// What a complete upload produced.
#[derive(Debug)]
pub struct Received {
    pub size: u64,
    pub md5: String,
    pub sha512: String,
    pub head: Vec<u8>,
}

#[derive(Debug)]
pub enum ReceiveError {
    /// More data than the limit allows.
    TooLarge { limit: u64 },
    /// The disk is full (or the file system refused the size).
    StorageFull,
    /// The client stopped sending before the body was complete.
    Client(String),
    /// Any other local failure.
    Io(std::io::Error),
}

/// Streams `body` into a new file at `path` (which must not exist), hashing on the way. On any
/// error the file is removed before returning.
pub async fn receive<S, E>(body: S, path: &Path, limit: u64) -> Result<Received, ReceiveError>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    let result = receive_inner(body, path, limit).await;
    if result.is_err() {
        let _ = tokio::fs::remove_file(path).await;
    }
    result
}

fn io_error(e: std::io::Error) -> ReceiveError {
    // ENOSPC and EDQUOT: the store is full, which Glance reports as 413.
    match e.raw_os_error() {
        Some(28) | Some(122) => ReceiveError::StorageFull,
        _ => ReceiveError::Io(e),
    }
}

async fn receive_inner<S, E>(body: S, path: &Path, limit: u64) -> Result<Received, ReceiveError>
where
    S: Stream<Item = Result<Bytes, E>> + Send,
    E: std::fmt::Display,
{
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(io_error)?;
    let (write_tx, write_rx) = mpsc::channel::<Bytes>(IN_FLIGHT);
    let (md5_tx, md5_rx) = mpsc::channel::<Bytes>(IN_FLIGHT);
    let (sha_tx, sha_rx) = mpsc::channel::<Bytes>(IN_FLIGHT);
    let writer = tokio::task::spawn_blocking(move || write_blocks(file, write_rx));
    let md5 = tokio::task::spawn_blocking(move || hash_blocks(md5::Md5::new(), md5_rx));
    let sha = tokio::task::spawn_blocking(move || hash_blocks(sha2::Sha512::new(), sha_rx));

    let mut head = Vec::with_capacity(HEAD_LEN);
    let mut total: u64 = 0;
    let mut block = BytesMut::with_capacity(BLOCK);
    let mut failure: Option<ReceiveError> = None;
    let mut body = std::pin::pin!(body);
    loop {
        let chunk = match body.next().await {
            None => None,
            Some(Ok(c)) => Some(c),
            Some(Err(e)) => {
                failure = Some(ReceiveError::Client(format!(
                    "The image data could not be read completely: {e}"
                )));
                break;
            }
        };
        if let Some(c) = &chunk {
            total += c.len() as u64;
            if total > limit {
                failure = Some(ReceiveError::TooLarge { limit });
                break;
            }
            if head.len() < HEAD_LEN {
                let take = (HEAD_LEN - head.len()).min(c.len());
                head.extend_from_slice(&c[..take]);
            }
            block.extend_from_slice(c);
        }
        if block.len() >= BLOCK || (chunk.is_none() && !block.is_empty()) {
            let b = std::mem::replace(&mut block, BytesMut::with_capacity(BLOCK)).freeze();
            // A closed channel means that worker failed; its error is collected below.
            let sent = write_tx.send(b.clone()).await.is_ok()
                && md5_tx.send(b.clone()).await.is_ok()
                && sha_tx.send(b).await.is_ok();
            if !sent {
                break;
            }
        }
        if chunk.is_none() {
            break;
        }
    }
    drop((write_tx, md5_tx, sha_tx));
    let written = writer
        .await
        .map_err(|e| ReceiveError::Io(std::io::Error::other(e)))?;
    let md5 = md5
        .await
        .map_err(|e| ReceiveError::Io(std::io::Error::other(e)))?;
    let sha = sha
        .await
        .map_err(|e| ReceiveError::Io(std::io::Error::other(e)))?;
    if let Some(f) = failure {
        return Err(f);
    }
    written.map_err(io_error)?;
    Ok(Received {
        size: total,
        md5,
        sha512: sha,
        head,
    })
}

fn write_blocks(mut file: File, mut rx: mpsc::Receiver<Bytes>) -> std::io::Result<()> {
    while let Some(b) = rx.blocking_recv() {
        file.write_all(&b)?;
    }
    // Durable before the image may become active.
    file.sync_all()
}

fn hash_blocks<D: Digest>(mut digest: D, mut rx: mpsc::Receiver<Bytes>) -> String {
    while let Some(b) = rx.blocking_recv() {
        digest.update(&b);
    }
    hex::encode(digest.finalize())
}

/// A temporary name next to the final one, unique per upload attempt.
pub fn temp_path(dir: &Path, image_id: &str) -> PathBuf {
    dir.join(format!(
        ".upload-{image_id}-{}",
        uuid::Uuid::new_v4().simple()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use sha2::Sha512;

    fn chunks(data: &[u8], size: usize) -> Vec<Result<Bytes, String>> {
        data.chunks(size)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect()
    }

    #[tokio::test]
    async fn hashes_and_size_match_the_data_whatever_the_chunking() {
        let dir = tempfile::tempdir().expect("tempdir");
        let data: Vec<u8> = (0..3_500_000u32).map(|i| (i * 7 % 251) as u8).collect();
        for (n, size) in [1usize, 4096, 1 << 20, 3 << 20].into_iter().enumerate() {
            let path = dir.path().join(format!("img{n}"));
            let got = receive(stream::iter(chunks(&data, size.max(1000))), &path, u64::MAX)
                .await
                .expect("receive");
            assert_eq!(got.size, data.len() as u64);
            assert_eq!(got.md5, hex::encode(md5::Md5::digest(&data)));
            assert_eq!(got.sha512, hex::encode(Sha512::digest(&data)));
            assert_eq!(got.head, data[..HEAD_LEN]);
            assert_eq!(std::fs::read(&path).expect("read"), data);
        }
    }

    #[tokio::test]
    async fn a_broken_body_or_the_limit_leaves_no_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("broken");
        let mut parts = chunks(&[1u8; 3 << 20], 1 << 20);
        parts.push(Err("connection reset".to_string()));
        let err = receive(stream::iter(parts), &path, u64::MAX).await;
        assert!(matches!(err, Err(ReceiveError::Client(m)) if m.contains("connection reset")));
        assert!(!path.exists());

        let err = receive(stream::iter(chunks(&[1u8; 5000], 1000)), &path, 4999).await;
        assert!(matches!(err, Err(ReceiveError::TooLarge { limit: 4999 })));
        assert!(!path.exists());
    }
}
