//! Raft messages between meta nodes: one JSON line per request and per reply
//! over a fresh TCP connection (meta talks rarely; a connection per RPC keeps
//! failure handling trivial).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use openraft::BasicNode;
use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tern_control::meta::Request;
use tern_control::tls::{self, Role};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader, ReadBuf};
use tokio::net::TcpStream;

use crate::TypeConfig;

type NodeId = u64;

/// Everything a meta node reads on its address. `Api` is what
/// `tern_control::meta` sends; the others come from the other meta nodes.
#[derive(Debug, Serialize, Deserialize)]
pub enum Envelope {
    Api(Request),
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// Sends `envelope` to `addr` and reads one reply line, within `limit`.
pub async fn exchange<R: DeserializeOwned>(
    addr: &str,
    envelope: &Envelope,
    limit: Duration,
) -> io::Result<R> {
    let work = async {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let Some(config) = tls::client() else {
            return talk(stream, envelope).await;
        };
        let ip = stream.peer_addr()?.ip();
        let connector = tokio_rustls::TlsConnector::from(config);
        let stream = connector.connect(ip.into(), Unvectored(stream)).await?;
        tls::check_server(stream.get_ref().1.peer_certificates(), addr, Role::Meta)?;
        talk(stream, envelope).await
    };
    match tokio::time::timeout(limit, work).await {
        Ok(result) => result,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "meta RPC timed out",
        )),
    }
}

/// A socket tokio-rustls writes to one buffer at a time: its vectored
/// writes are `writev` on a TcpStream, which raises SIGPIPE on a
/// connection the peer reset (see `tern_control::tls::Socket`); plain
/// writes are `send` with MSG_NOSIGNAL.
#[derive(Debug)]
pub struct Unvectored(pub TcpStream);

impl AsyncRead for Unvectored {
    fn poll_read(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        buffer: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_read(context, buffer)
    }
}

impl AsyncWrite for Unvectored {
    fn poll_write(
        mut self: Pin<&mut Self>,
        context: &mut Context<'_>,
        bytes: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(context, bytes)
    }

    fn poll_flush(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(context)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, context: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(context)
    }
}

/// One request line, then one reply line.
async fn talk<R: DeserializeOwned>(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    envelope: &Envelope,
) -> io::Result<R> {
    let mut line = serde_json::to_vec(envelope).map_err(io::Error::other)?;
    line.push(b'\n');
    stream.write_all(&line).await?;
    stream.flush().await?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    if reader.read_line(&mut answer).await? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the meta node closed the connection",
        ));
    }
    serde_json::from_str(&answer).map_err(io::Error::other)
}

/// Makes a [`Connection`] per peer.
#[derive(Clone, Debug, Default)]
pub struct Network;

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            target,
            addr: node.addr.clone(),
        }
    }
}

/// The way to one peer.
#[derive(Debug)]
pub struct Connection {
    target: NodeId,
    addr: String,
}

impl Connection {
    async fn send<R, E>(
        &self,
        envelope: Envelope,
        option: &RPCOption,
    ) -> Result<R, RPCError<NodeId, BasicNode, RaftError<NodeId, E>>>
    where
        R: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let answer: Result<R, RaftError<NodeId, E>> =
            exchange(&self.addr, &envelope, option.hard_ttl())
                .await
                .map_err(|error| RPCError::Network(NetworkError::new(&error)))?;
        answer.map_err(|error| RPCError::RemoteError(RemoteError::new(self.target, error)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(Envelope::Append(rpc), &option).await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, BasicNode, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.send(Envelope::Snapshot(rpc), &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, BasicNode, RaftError<NodeId>>> {
        self.send(Envelope::Vote(rpc), &option).await
    }
}
