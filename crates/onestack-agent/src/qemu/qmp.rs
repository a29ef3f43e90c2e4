//! A minimal QMP client: one connection per operation, closed on drop. QEMU serves one QMP client
//! at a time, so holding a connection no longer than needed keeps other callers from waiting.

use crate::driver::{DriverError, DriverResult};
use serde_json::{json, Value};
use std::io::IoSlice;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::path::Path;
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Interest};
use tokio::net::UnixStream;

/// Longest QMP message accepted: a bound, so a misbehaving QEMU cannot exhaust the agent's memory.
const MAX_MESSAGE: u64 = 4 << 20;

pub(crate) struct Qmp {
    io: BufReader<UnixStream>,
    timeout: Duration,
}

fn failed(what: impl std::fmt::Display) -> DriverError {
    DriverError::Failed(what.to_string())
}

impl Qmp {
    /// Connects, reads the greeting and leaves capabilities negotiation mode. `expect_pid` guards
    /// against talking to a different QEMU than the one whose pid we verified (stale socket path).
    pub async fn connect(
        path: &Path,
        timeout: Duration,
        expect_pid: Option<i32>,
    ) -> DriverResult<Qmp> {
        let stream = tokio::time::timeout(timeout, UnixStream::connect(path))
            .await
            .map_err(|_| failed(format!("QMP connect to {}: timed out", path.display())))?
            .map_err(|e| failed(format!("QMP connect to {}: {e}", path.display())))?;
        if let Some(want) = expect_pid {
            let peer = stream.peer_cred().ok().and_then(|c| c.pid());
            if peer.is_some_and(|p| p != want) {
                return Err(failed(format!(
                    "QMP socket {} belongs to pid {peer:?}, not QEMU pid {want}",
                    path.display()
                )));
            }
        }
        let mut qmp = Qmp {
            io: BufReader::new(stream),
            timeout,
        };
        let greeting = qmp.read_message().await?;
        if greeting.get("QMP").is_none() {
            return Err(failed(format!("unexpected QMP greeting: {greeting}")));
        }
        qmp.execute("qmp_capabilities", None).await?;
        Ok(qmp)
    }

    /// Changes how long each later read or write may take.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    async fn read_message(&mut self) -> DriverResult<Value> {
        let mut line = String::new();
        let mut limited = (&mut self.io).take(MAX_MESSAGE);
        let n = tokio::time::timeout(self.timeout, limited.read_line(&mut line))
            .await
            .map_err(|_| failed("QMP: no answer from QEMU (timed out)"))?
            .map_err(|e| failed(format!("QMP read: {e}")))?;
        if n == 0 {
            return Err(failed("QMP: QEMU closed the connection"));
        }
        serde_json::from_str(&line).map_err(|e| failed(format!("QMP: bad message ({e})")))
    }

    fn request(cmd: &str, args: Option<Value>) -> Vec<u8> {
        let mut msg = match args {
            Some(a) => json!({ "execute": cmd, "arguments": a }),
            None => json!({ "execute": cmd }),
        }
        .to_string()
        .into_bytes();
        msg.push(b'\n');
        msg
    }

    async fn send(&mut self, msg: &[u8]) -> DriverResult<()> {
        tokio::time::timeout(self.timeout, self.io.get_mut().write_all(msg))
            .await
            .map_err(|_| failed("QMP write: timed out"))?
            .map_err(|e| failed(format!("QMP write: {e}")))
    }

    /// Waits for the reply to the command just sent, skipping asynchronous events.
    async fn reply(&mut self, cmd: &str) -> DriverResult<Value> {
        loop {
            let msg = self.read_message().await?;
            if let Some(r) = msg.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = msg.get("error") {
                let class = e.get("class").and_then(Value::as_str).unwrap_or("Error");
                let desc = e.get("desc").and_then(Value::as_str).unwrap_or("");
                return Err(failed(format!("QEMU {cmd}: {class}: {desc}")));
            }
            // Anything else is an event ({"event": …}); they are not needed here.
        }
    }

    pub async fn execute(&mut self, cmd: &str, args: Option<Value>) -> DriverResult<Value> {
        let msg = Self::request(cmd, args);
        self.send(&msg).await?;
        self.reply(cmd).await
    }

    /// Sends `cmd` with `fd` attached (SCM_RIGHTS), as `getfd` needs: QEMU takes the descriptor
    /// from the message that carries the command.
    pub async fn execute_with_fd(
        &mut self,
        cmd: &str,
        args: Option<Value>,
        fd: BorrowedFd<'_>,
    ) -> DriverResult<Value> {
        let msg = Self::request(cmd, args);
        let stream = self.io.get_ref();
        let fds = [fd.as_raw_fd()];
        let sent = tokio::time::timeout(self.timeout, async {
            loop {
                stream.writable().await?;
                match stream.try_io(Interest::WRITABLE, || {
                    let cmsg = [nix::sys::socket::ControlMessage::ScmRights(&fds)];
                    nix::sys::socket::sendmsg::<()>(
                        stream.as_raw_fd(),
                        &[IoSlice::new(&msg)],
                        &cmsg,
                        nix::sys::socket::MsgFlags::MSG_NOSIGNAL,
                        None,
                    )
                    .map_err(std::io::Error::from)
                }) {
                    Ok(n) => return Ok(n),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(e) => return Err(e),
                }
            }
        })
        .await
        .map_err(|_| failed("QMP sendmsg: timed out"))?
        .map_err(|e| failed(format!("QMP sendmsg: {e}")))?;
        if let Some(rest) = msg.get(sent..).filter(|r| !r.is_empty()) {
            self.send(rest).await?;
        }
        self.reply(cmd).await
    }

    /// Asks QEMU to exit. Its reply may be lost as it closes the socket, which is success too.
    pub async fn quit(mut self) -> DriverResult<()> {
        let msg = Self::request("quit", None);
        self.send(&msg).await?;
        match self.reply("quit").await {
            Err(DriverError::Failed(e)) if e.starts_with("QEMU quit:") => {
                Err(DriverError::Failed(e))
            }
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    /// A fake QEMU: greets, answers capabilities, then answers each command with the scripted
    /// lines (events before the reply are how real QEMU interleaves them).
    async fn fake_qemu(listener: UnixListener, script: Vec<(&'static str, Vec<&'static str>)>) {
        let Ok((s, _)) = listener.accept().await else {
            return;
        };
        let mut s = BufReader::new(s);
        let greeting = "{\"QMP\": {\"version\": {}, \"capabilities\": []}}\r\n";
        let _ = s.get_mut().write_all(greeting.as_bytes()).await;
        let mut line = String::new();
        let _ = s.read_line(&mut line).await;
        assert!(line.contains("qmp_capabilities"), "{line}");
        let _ = s.get_mut().write_all(b"{\"return\": {}}\r\n").await;
        for (cmd, replies) in script {
            line.clear();
            let _ = s.read_line(&mut line).await;
            assert!(line.contains(cmd), "expected {cmd}, got {line}");
            for r in replies {
                let _ = s.get_mut().write_all(format!("{r}\r\n").as_bytes()).await;
            }
        }
    }

    #[tokio::test]
    async fn commands_events_and_errors() -> DriverResult<()> {
        let dir = tempfile::tempdir().map_err(failed)?;
        let path = dir.path().join("qmp.sock");
        let listener = UnixListener::bind(&path).map_err(failed)?;
        let server = tokio::spawn(fake_qemu(
            listener,
            vec![
                (
                    "query-status",
                    vec![
                        r#"{"event": "RESET", "data": {}}"#,
                        r#"{"return": {"status": "running", "running": true}}"#,
                    ],
                ),
                (
                    "cont",
                    vec![r#"{"error": {"class": "GenericError", "desc": "no can do"}}"#],
                ),
                ("quit", vec![]),
            ],
        ));
        let mut q = Qmp::connect(&path, Duration::from_secs(5), None).await?;
        let r = q.execute("query-status", None).await?;
        assert_eq!(r["status"], "running");
        match q.execute("cont", None).await {
            Err(DriverError::Failed(e)) => assert_eq!(e, "QEMU cont: GenericError: no can do"),
            other => panic!("{other:?}"),
        }
        // QEMU closing the socket instead of answering `quit` is success.
        q.quit().await?;
        server.await.map_err(failed)?;
        Ok(())
    }

    #[tokio::test]
    async fn a_silent_peer_times_out() -> DriverResult<()> {
        let dir = tempfile::tempdir().map_err(failed)?;
        let path = dir.path().join("qmp.sock");
        let _listener = UnixListener::bind(&path).map_err(failed)?;
        let r = Qmp::connect(&path, Duration::from_millis(200), None).await;
        assert!(matches!(r, Err(DriverError::Failed(e)) if e.contains("timed out")));
        Ok(())
    }
}
