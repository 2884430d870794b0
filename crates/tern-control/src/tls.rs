//! Mutual TLS for the control plane: meta's API and Raft messages, and the
//! replicas' TCP listener (state transfers and large values). Every process
//! has an identity, a certificate its cluster's authority signed and its
//! key, taken at start ([`use_identity`]); with none it speaks plain TCP
//! (a cluster without TLS). Both sides present a
//! certificate and check the other's against the authority.
//!
//! A certificate names the process's **role** as a DNS name
//! `<role>.role.tern` (`meta.role.tern`, `replica.role.tern`, …) and the IP
//! addresses it serves at; a client checks that the server holds the role
//! it expects at the address it dialled, a server checks what the client's
//! role may ask (meta refuses a replica's `RemoveReplica`, a replica an
//! unknown peer's snapshot request). Files, in the certificates directory
//! (`[tls] dir` of the cluster map, `tern certs`): `ca.pem`, and for each
//! identity NAME `NAME.pem` and `NAME.key`.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use rustls::client::ResolvesClientCert;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::danger::ClientCertVerifier;
use rustls::sign::CertifiedKey;
use rustls::{ClientConnection, RootCertStore, ServerConnection, StreamOwned};

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);

/// What a certificate lets its holder do.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// A meta node: Raft messages to other meta nodes.
    Meta,
    /// A coordinator: its heartbeats, resequencing its shards.
    Coordinator,
    /// A replica: its heartbeats, leaving its chain, state transfer from
    /// its predecessor.
    Replica,
    /// The Redis gateway: maps, slot copies for SCAN, large values.
    Gateway,
    /// An operator's tools (`tern node`, `tern reshard`, `tern cluster`):
    /// every change of the map.
    Operator,
    /// An application: maps and large values only.
    Client,
}

impl Role {
    pub const ALL: [Role; 6] = [
        Role::Meta,
        Role::Coordinator,
        Role::Replica,
        Role::Gateway,
        Role::Operator,
        Role::Client,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Role::Meta => "meta",
            Role::Coordinator => "coordinator",
            Role::Replica => "replica",
            Role::Gateway => "gateway",
            Role::Operator => "operator",
            Role::Client => "client",
        }
    }

    /// The DNS name a certificate of this role carries.
    pub fn dns_name(self) -> String {
        format!("{}.role.tern", self.name())
    }

    pub fn parse(name: &str) -> Option<Role> {
        Role::ALL.into_iter().find(|role| role.name() == name)
    }
}

impl fmt::Display for Role {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// A process's certificate and key with the authority that checks its
/// peers, as rustls configurations for both ends of a connection.
pub struct Identity {
    name: String,
    dir: PathBuf,
    role: Role,
    roots: Arc<RootCertStore>,
    certified: Arc<CertifiedKey>,
    client: Arc<rustls::ClientConfig>,
    server: Arc<rustls::ServerConfig>,
}

impl fmt::Debug for Identity {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("Identity")
            .field("name", &self.name)
            .field("dir", &self.dir)
            .field("role", &self.role)
            .finish_non_exhaustive()
    }
}

/// Reads the PEM certificates of `path`; the error names the file.
pub fn read_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let named = |error: &dyn fmt::Display| format!("{}: {error}", path.display());
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|error| named(&error))?
        .collect::<Result<_, _>>()
        .map_err(|error| named(&error))?;
    if chain.is_empty() {
        return Err(named(&"no certificate in the file"));
    }
    Ok(chain)
}

/// Reads a PEM private key; the error names the file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, String> {
    PrivateKeyDer::from_pem_file(path).map_err(|error| format!("{}: {error}", path.display()))
}

/// The authorities of a PEM file, for checking peers.
pub fn read_roots(path: &Path) -> Result<Arc<RootCertStore>, String> {
    let mut roots = RootCertStore::empty();
    for certificate in read_certificates(path)? {
        roots
            .add(certificate)
            .map_err(|error| format!("{}: {error}", path.display()))?;
    }
    Ok(Arc::new(roots))
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A verifier requiring client certificates that `roots` signed.
pub fn client_verifier(roots: Arc<RootCertStore>) -> Result<Arc<dyn ClientCertVerifier>, String> {
    rustls::server::WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|error| error.to_string())
}

/// A server configuration presenting `chain` (with `key`), requiring
/// clients to present a certificate `verifier` accepts when given.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    verifier: Option<Arc<dyn ClientCertVerifier>>,
) -> Result<Arc<rustls::ServerConfig>, String> {
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|error| error.to_string())?;
    let builder = match verifier {
        Some(verifier) => builder.with_client_cert_verifier(verifier),
        None => builder.with_no_client_auth(),
    };
    builder
        .with_single_cert(chain, key)
        .map(Arc::new)
        .map_err(|error| error.to_string())
}

/// The role a certificate names (None: it names none, or is unreadable).
pub fn role_of(certificate: &CertificateDer<'_>) -> Option<Role> {
    let certificate = webpki::EndEntityCert::try_from(certificate).ok()?;
    Role::ALL.into_iter().find(|role| {
        ServerName::try_from(role.dns_name())
            .is_ok_and(|name| certificate.verify_is_valid_for_subject_name(&name).is_ok())
    })
}

/// Whether a certificate names `ip` as one of its addresses.
fn names_ip(certificate: &CertificateDer<'_>, ip: Ipv4Addr) -> bool {
    webpki::EndEntityCert::try_from(certificate).is_ok_and(|certificate| {
        let name = ServerName::IpAddress(IpAddr::V4(ip).into());
        certificate.verify_is_valid_for_subject_name(&name).is_ok()
    })
}

impl Identity {
    /// Identity `name` of the certificates directory `dir`: `dir/ca.pem`,
    /// `dir/NAME.pem`, `dir/NAME.key`. Refused, with a message naming the
    /// file, when one is missing or unreadable, or when the certificate is
    /// not one the authority signed, has expired, or names no role.
    pub fn load(dir: &Path, name: &str) -> Result<Identity, String> {
        let ca = dir.join("ca.pem");
        let cert = dir.join(format!("{name}.pem"));
        let key = dir.join(format!("{name}.key"));
        for file in [&ca, &cert, &key] {
            if !file.exists() {
                return Err(format!(
                    "{}: no such file (identity {name:?}; issue one with `tern certs issue --dir {} --name {name} --role ROLE`, or pick another with --identity)",
                    file.display(),
                    dir.display()
                ));
            }
        }
        let roots = read_roots(&ca)?;
        let chain = read_certificates(&cert)?;
        let key_der = read_key(&key)?;
        let verifier = client_verifier(roots.clone())?;
        verifier
            .verify_client_cert(&chain[0], &chain[1..], UnixTime::now())
            .map_err(|error| {
                format!(
                    "{}: not a valid certificate of the authority in {}: {error}",
                    cert.display(),
                    ca.display()
                )
            })?;
        let role = role_of(&chain[0]).ok_or_else(|| {
            format!(
                "{}: the certificate names no Tern role (a DNS name ROLE.role.tern)",
                cert.display()
            )
        })?;
        let both =
            |error: &dyn fmt::Display| format!("{} and {}: {error}", cert.display(), key.display());
        let certified = Arc::new(
            CertifiedKey::from_der(chain.clone(), key_der.clone_key(), &provider())
                .map_err(|error| both(&error))?,
        );
        let client = client_config(
            roots.clone(),
            Certificates(vec![(roots.clone(), certified.clone())]),
        )?;
        let server = server_config(chain, key_der, Some(verifier)).map_err(|error| both(&error))?;
        Ok(Identity {
            name: name.to_string(),
            dir: dir.to_path_buf(),
            role,
            roots,
            certified,
            client,
            server,
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn role(&self) -> Role {
        self.role
    }

    /// For connections this process opens as this identity alone.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        self.client.clone()
    }

    /// For connections this process accepts.
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        self.server.clone()
    }
}

/// A client configuration trusting `roots` and presenting what
/// `certificates` picks.
fn client_config(
    roots: Arc<RootCertStore>,
    certificates: Certificates,
) -> Result<Arc<rustls::ClientConfig>, String> {
    Ok(Arc::new(
        rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|error| error.to_string())?
            .with_root_certificates(roots)
            .with_client_cert_resolver(Arc::new(certificates)),
    ))
}

/// The identities a process holds, each with the authority that signed it:
/// a server names the authorities it accepts, and the client presents the
/// certificate of that one (a test, or an operator's tool, may talk to
/// several clusters at once).
#[derive(Debug)]
struct Certificates(Vec<(Arc<RootCertStore>, Arc<CertifiedKey>)>);

impl ResolvesClientCert for Certificates {
    fn resolve(
        &self,
        root_hint_subjects: &[&[u8]],
        _schemes: &[rustls::SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        let signed_by_hinted = |roots: &RootCertStore| {
            roots
                .subjects()
                .iter()
                .any(|subject| root_hint_subjects.contains(&subject.as_ref()))
        };
        self.0
            .iter()
            .find(|(roots, _)| signed_by_hinted(roots))
            .or(self.0.first())
            .map(|(_, certified)| certified.clone())
    }

    fn has_certs(&self) -> bool {
        !self.0.is_empty()
    }
}

/// The identities in use, the first serving this process's listeners.
struct Installed {
    identities: Vec<Arc<Identity>>,
    client: Arc<rustls::ClientConfig>,
}

static INSTALLED: RwLock<Option<Installed>> = RwLock::new(None);

/// Makes identity `name` of `dir` this process's for the control
/// connections it opens from now on (those to the cluster of `dir`'s
/// authority) and, if it is the first, for those it accepts. Loading the
/// same one again changes nothing.
pub fn use_identity(dir: &Path, name: &str) -> Result<Arc<Identity>, String> {
    let mut installed = INSTALLED
        .write()
        .unwrap_or_else(|poison| poison.into_inner());
    let held = installed.iter().flat_map(|installed| &installed.identities);
    if let Some(identity) = held
        .clone()
        .find(|identity| identity.name == name && identity.dir == dir)
    {
        return Ok(identity.clone());
    }
    let identity = Arc::new(Identity::load(dir, name)?);
    let mut identities: Vec<Arc<Identity>> = held.cloned().collect();
    identities.push(identity.clone());
    let mut roots = RootCertStore::empty();
    for held in &identities {
        roots.roots.extend(held.roots.roots.iter().cloned());
    }
    let certificates = identities
        .iter()
        .map(|held| (held.roots.clone(), held.certified.clone()))
        .collect();
    let client = client_config(Arc::new(roots), Certificates(certificates))?;
    *installed = Some(Installed { identities, client });
    Ok(identity)
}

/// The identity serving this process's listeners (None: plain TCP).
pub fn identity() -> Option<Arc<Identity>> {
    let installed = INSTALLED
        .read()
        .unwrap_or_else(|poison| poison.into_inner());
    installed
        .as_ref()
        .map(|installed| installed.identities[0].clone())
}

/// The configuration for control connections this process opens (None:
/// plain TCP).
pub fn client() -> Option<Arc<rustls::ClientConfig>> {
    let installed = INSTALLED
        .read()
        .unwrap_or_else(|poison| poison.into_inner());
    installed.as_ref().map(|installed| installed.client.clone())
}

static NAME: OnceLock<String> = OnceLock::new();

/// Names the identity this process takes from every certificates
/// directory a map file points to (`--identity`). Once, at start, before
/// any map is loaded; later calls change nothing.
pub fn set_identity_name(name: &str) {
    let _ = NAME.set(name.to_string());
}

/// The identity this process takes: the one named at start, else
/// `operator` (the command-line tools).
pub fn identity_name() -> String {
    NAME.get().map_or("operator", String::as_str).to_string()
}

/// Refuses to run a process of `role` under another role's certificate
/// (its peers would refuse what it asks).
pub fn require_role(role: Role) -> Result<(), String> {
    match identity() {
        Some(identity) if identity.role != role => Err(format!(
            "identity {:?} of {} holds a certificate of role {}; a {role} needs one of role {role}: \
             give --identity NAME (issue it with `tern certs issue --dir {} --name NAME --role {role} --ip ADDRESS`)",
            identity.name,
            identity.dir.display(),
            identity.role,
            identity.dir.display(),
        )),
        _ => Ok(()),
    }
}

static REFUSED: AtomicU64 = AtomicU64::new(0);

/// Control connections and requests this process refused: handshakes that
/// failed (no certificate, another authority's, expired) and requests the
/// peer's role may not make (the `control_refused` metric).
pub fn refused() -> u64 {
    REFUSED.load(Ordering::Relaxed)
}

/// Counts and logs a refusal.
pub fn refuse(peer: Option<SocketAddr>, why: &dyn fmt::Display) {
    REFUSED.fetch_add(1, Ordering::Relaxed);
    tracing::warn!(?peer, %why, "control connection refused");
}

/// A socket rustls writes to one buffer at a time. rustls hands its records
/// to `write_vectored`, which on a TcpStream is `writev`: that raises
/// SIGPIPE on a connection the peer reset, and kills a process that has
/// not ignored it (the `tern` tools restore the default for `| head`).
/// Plain `write` is `send` with MSG_NOSIGNAL.
#[derive(Debug)]
pub struct Socket(pub TcpStream);

impl Read for Socket {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        self.0.read(buffer)
    }
}

impl Write for Socket {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        self.0.write(bytes)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.0.flush()
    }
}

/// A control connection: plain TCP or TLS over it.
#[derive(Debug)]
pub enum Stream {
    Plain(TcpStream),
    Client(Box<StreamOwned<ClientConnection, Socket>>),
    Server(Box<StreamOwned<ServerConnection, Socket>>),
}

impl Stream {
    /// The socket under it (for timeouts).
    pub fn socket(&self) -> &TcpStream {
        match self {
            Stream::Plain(socket) => socket,
            Stream::Client(tls) => &tls.get_ref().0,
            Stream::Server(tls) => &tls.get_ref().0,
        }
    }
}

impl Read for Stream {
    fn read(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let read = match self {
            Stream::Plain(socket) => socket.read(buffer),
            Stream::Client(tls) => tls.read(buffer),
            Stream::Server(tls) => tls.read(buffer),
        };
        match read {
            // Closed without close_notify: an end all the same (the
            // protocols above know a message cut short).
            Err(error) if error.kind() == io::ErrorKind::UnexpectedEof => Ok(0),
            other => other,
        }
    }
}

impl Write for Stream {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(socket) => socket.write(bytes),
            Stream::Client(tls) => tls.write(bytes),
            Stream::Server(tls) => tls.write(bytes),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(socket) => socket.flush(),
            Stream::Client(tls) => tls.flush(),
            Stream::Server(tls) => tls.flush(),
        }
    }
}

/// Connects to `addr`, a server of role `server`, as this process's
/// identities (plain TCP without one).
pub fn connect(addr: SocketAddrV4, timeout: Duration, server: Role) -> io::Result<Stream> {
    connect_with(client(), addr, timeout, server)
}

/// Connects to `addr` as `identity` (plain TCP with None).
pub fn connect_as(
    identity: Option<&Identity>,
    addr: SocketAddrV4,
    timeout: Duration,
    server: Role,
) -> io::Result<Stream> {
    connect_with(identity.map(Identity::client_config), addr, timeout, server)
}

/// Connects to `addr`: under TLS, the handshake completes within `timeout`
/// and the server's certificate must name `server` and the address's IP.
/// The socket keeps `timeout` for reads and writes.
fn connect_with(
    config: Option<Arc<rustls::ClientConfig>>,
    addr: SocketAddrV4,
    timeout: Duration,
    server: Role,
) -> io::Result<Stream> {
    let socket = TcpStream::connect_timeout(&SocketAddr::V4(addr), timeout)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.set_write_timeout(Some(timeout))?;
    socket.set_nodelay(true)?;
    let Some(config) = config else {
        return Ok(Stream::Plain(socket));
    };
    let mut socket = Socket(socket);
    let name = ServerName::IpAddress(IpAddr::V4(*addr.ip()).into());
    let mut connection = ClientConnection::new(config, name).map_err(io::Error::other)?;
    let refused =
        |error: io::Error| io::Error::new(error.kind(), format!("TLS with {addr}: {error}"));
    while connection.is_handshaking() {
        connection.complete_io(&mut socket).map_err(refused)?;
    }
    check_server(connection.peer_certificates(), addr, server)?;
    Ok(Stream::Client(Box::new(StreamOwned::new(
        connection, socket,
    ))))
}

/// Whether the server at `addr` presented a certificate of role `server`
/// (its address, and the authority, are checked by the handshake).
pub fn check_server(
    chain: Option<&[CertificateDer<'static>]>,
    addr: impl fmt::Display,
    server: Role,
) -> io::Result<()> {
    let role = chain.and_then(|chain| chain.first()).and_then(role_of);
    if role == Some(server) {
        return Ok(());
    }
    Err(io::Error::new(
        io::ErrorKind::PermissionDenied,
        format!(
            "TLS with {addr}: its certificate is a {}'s, not a {server}'s",
            role.map_or("no role", Role::name)
        ),
    ))
}

/// Who is at the other end of an accepted connection.
#[derive(Clone, Debug)]
pub enum Peer {
    /// Plain TCP: nobody is checked (a cluster without TLS).
    Unchecked,
    /// Checked against the authority: its certificate.
    Certified(CertificateDer<'static>),
}

impl Peer {
    /// The peer of a TLS connection, from the chain it presented.
    pub fn of(chain: Option<&[CertificateDer<'static>]>) -> Peer {
        match chain.and_then(|chain| chain.first()) {
            Some(certificate) => Peer::Certified(certificate.clone()),
            // A TLS server requires a certificate: no chain means none was
            // checked, and nothing is permitted.
            None => Peer::Certified(CertificateDer::from(Vec::new())),
        }
    }

    /// The role its certificate names (None: unchecked, or none).
    pub fn role(&self) -> Option<Role> {
        match self {
            Peer::Unchecked => None,
            Peer::Certified(certificate) => role_of(certificate),
        }
    }

    /// Whether the peer may do what `roles` may.
    pub fn is(&self, roles: &[Role]) -> bool {
        match self {
            Peer::Unchecked => true,
            Peer::Certified(_) => self.role().is_some_and(|role| roles.contains(&role)),
        }
    }

    /// Whether the peer may speak for the process at `addr`: unchecked, or
    /// its certificate names the address's IP.
    pub fn speaks_for(&self, addr: SocketAddrV4) -> bool {
        match self {
            Peer::Unchecked => true,
            Peer::Certified(certificate) => names_ip(certificate, *addr.ip()),
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self, self.role()) {
            (Peer::Unchecked, _) => formatter.write_str("an unchecked peer"),
            (_, Some(role)) => write!(formatter, "a {role}"),
            (_, None) => formatter.write_str("a certificate with no role"),
        }
    }
}

/// Takes an accepted connection: under this process's identity, the TLS
/// handshake (within `HANDSHAKE_TIMEOUT`; the client must present a
/// certificate the authority signed). The socket's timeouts are reset
/// to none; the caller sets its own.
pub fn accept(socket: TcpStream) -> io::Result<(Stream, Peer)> {
    let Some(identity) = identity() else {
        return Ok((Stream::Plain(socket), Peer::Unchecked));
    };
    socket.set_read_timeout(Some(HANDSHAKE_TIMEOUT))?;
    socket.set_write_timeout(Some(HANDSHAKE_TIMEOUT))?;
    let mut socket = Socket(socket);
    let mut connection =
        ServerConnection::new(identity.server_config()).map_err(io::Error::other)?;
    while connection.is_handshaking() {
        if let Err(error) = connection.complete_io(&mut socket) {
            refuse(
                socket.0.peer_addr().ok(),
                &format!("TLS handshake: {error}"),
            );
            return Err(error);
        }
    }
    socket.0.set_read_timeout(None)?;
    socket.0.set_write_timeout(None)?;
    let peer = Peer::of(connection.peer_certificates());
    Ok((
        Stream::Server(Box::new(StreamOwned::new(connection, socket))),
        peer,
    ))
}
