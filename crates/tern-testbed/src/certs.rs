//! The certificates of a cluster's control plane (`tern certs`, and `tern
//! cluster up` by default): an authority, `ca.pem` with its key `ca.key`,
//! and for each process NAME a certificate `NAME.pem` with its key
//! `NAME.key`, naming its role (`ROLE.role.tern`) and the IP addresses it
//! serves at. What each role may ask is in `tern_control::tls`.

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result, bail, ensure};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose, SanType,
};
use tern_client::tls::Role;

/// How long an authority made by [`create_authority`] is valid.
pub const AUTHORITY_DAYS: u64 = 3650;
/// How long a certificate is valid unless told (`--days`).
pub const CERTIFICATE_DAYS: u64 = 365;
/// How far back a validity starts: clocks of two hosts differ.
const CLOCK_SKEW: Duration = Duration::from_secs(3600);

const DAY: Duration = Duration::from_secs(86_400);

/// `tern certs`.
#[derive(Debug, clap::Subcommand)]
pub enum CertsCommand {
    /// Create a certificate authority in DIR (ca.pem, and its key ca.key,
    /// readable by its owner only: keep it off the servers).
    Ca {
        #[arg(long)]
        dir: PathBuf,
    },
    /// Issue a certificate the authority of DIR signs: DIR/NAME.pem and
    /// DIR/NAME.key, for a process started with `--identity NAME`.
    Issue {
        #[arg(long)]
        dir: PathBuf,
        /// The file name of the pair, and the certificate's common name.
        #[arg(long)]
        name: String,
        /// What its holder may do: meta, coordinator, replica, gateway,
        /// operator or client.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        /// An address the process serves at (repeat for several): a peer
        /// checks that the server it dialled holds it, and meta that a
        /// heartbeat comes from the process it names.
        #[arg(long = "ip")]
        ips: Vec<Ipv4Addr>,
        #[arg(long, default_value_t = CERTIFICATE_DAYS)]
        days: u64,
    },
}

fn parse_role(text: &str) -> Result<Role, String> {
    Role::parse(text).ok_or_else(|| {
        let names: Vec<&str> = Role::ALL.iter().map(|role| role.name()).collect();
        format!("unknown role {text:?}: one of {}", names.join(", "))
    })
}

pub fn run(command: CertsCommand) -> Result<()> {
    match command {
        CertsCommand::Ca { dir } => {
            create_authority(&dir)?;
            println!("{}", dir.join("ca.pem").display());
        }
        CertsCommand::Issue {
            dir,
            name,
            role,
            ips,
            days,
        } => {
            let path = issue(&dir, &name, role, &ips, days)?;
            println!("{}", path.display());
        }
    }
    Ok(())
}

fn named(common_name: &str) -> DistinguishedName {
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Tern");
    name.push(DnType::CommonName, common_name);
    name
}

/// Writes `text` to `path`, readable by its owner only when `secret`;
/// refuses to replace a file.
fn write_new(path: &Path, text: &str, secret: bool) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(if secret { 0o600 } else { 0o644 })
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    file.write_all(text.as_bytes())
        .with_context(|| format!("writing {}", path.display()))
}

/// Creates the authority of `dir` (made if missing): `ca.pem` and `ca.key`.
/// Refused if `dir` has one already.
pub fn create_authority(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    if dir.join("ca.key").exists() || dir.join("ca.pem").exists() {
        bail!(
            "{} has an authority already (ca.pem, ca.key)",
            dir.display()
        );
    }
    let now = SystemTime::now();
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    // Each authority its own name: a client presents the certificate of
    // the authority the server names (tern_control::tls).
    let unique = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    params.distinguished_name = named(&format!("Tern authority {unique:x}-{}", std::process::id()));
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + DAY * AUTHORITY_DAYS as u32).into();
    let certificate = params.self_signed(&key)?;
    write_new(&dir.join("ca.key"), &key.serialize_pem(), true)?;
    write_new(&dir.join("ca.pem"), &certificate.pem(), false)
}

/// Issues certificate `name` of `role` for `ips`, valid from now (less a
/// clock skew) for `days`: `dir/NAME.pem` and `dir/NAME.key`.
pub fn issue(dir: &Path, name: &str, role: Role, ips: &[Ipv4Addr], days: u64) -> Result<PathBuf> {
    ensure!(days > 0, "--days must be at least 1");
    let now = SystemTime::now();
    issue_valid(
        dir,
        name,
        role,
        ips,
        now - CLOCK_SKEW,
        now + DAY * days as u32,
    )
}

/// As [`issue`], valid from `not_before` to `not_after`.
pub fn issue_valid(
    dir: &Path,
    name: &str,
    role: Role,
    ips: &[Ipv4Addr],
    not_before: SystemTime,
    not_after: SystemTime,
) -> Result<PathBuf> {
    if name.is_empty()
        || name == "ca"
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        || name.starts_with('.')
    {
        bail!("certificate name {name:?}: letters, digits, '-', '_' and '.' only, and not \"ca\"");
    }
    let authority = |file: &str| {
        let path = dir.join(file);
        std::fs::read_to_string(&path).with_context(|| {
            format!(
                "reading {} (create an authority with `tern certs ca --dir {}`)",
                path.display(),
                dir.display()
            )
        })
    };
    let ca_key = KeyPair::from_pem(&authority("ca.key")?).context("ca.key")?;
    let ca = CertificateParams::from_ca_cert_pem(&authority("ca.pem")?)
        .context("ca.pem")?
        .self_signed(&ca_key)
        .context("ca.pem and ca.key do not match")?;
    let mut params = CertificateParams::default();
    params.distinguished_name = named(name);
    params.subject_alt_names = std::iter::once(SanType::DnsName(role.dns_name().try_into()?))
        .chain(ips.iter().map(|ip| SanType::IpAddress(IpAddr::V4(*ip))))
        .collect();
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    params.not_before = not_before.into();
    params.not_after = not_after.into();
    let key = KeyPair::generate()?;
    let certificate = params.signed_by(&key, &ca, &ca_key)?;
    let (cert_path, key_path) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.key")),
    );
    write_new(&key_path, &key.serialize_pem(), true)?;
    write_new(&cert_path, &certificate.pem(), false)?;
    Ok(cert_path)
}
