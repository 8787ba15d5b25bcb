//! The data dir: database, generated token secret and generated QUIC certificate. Everything the
//! embedded defaults need is created here on first start, so `chorus serve` needs no set-up.

use anyhow::{Context, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::io::Write;
use std::path::{Path, PathBuf};

use crate::config::Config;

pub const SECRET_FILE: &str = "token-secret";
pub const CERT_FILE: &str = "quic-cert.pem";
pub const KEY_FILE: &str = "quic-key.pem";
pub const DB_FILE: &str = "chorus.db";

pub fn ensure(config: &Config) -> anyhow::Result<()> {
    std::fs::create_dir_all(&config.data_dir)
        .with_context(|| format!("cannot create data dir {}", config.data_dir.display()))
}

/// Write a file readable by its owner only, atomically (write a temp file, then rename), so a
/// crash never leaves half a secret behind.
fn write_private(path: &Path, contents: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options
        .open(&tmp)
        .with_context(|| format!("cannot write {}", tmp.display()))?;
    file.write_all(contents)?;
    file.sync_all()?;
    std::fs::rename(&tmp, path)?;
    Ok(())
}

/// The token secret: the configured one, or the one generated into the data dir on first use.
pub fn token_secret(config: &Config) -> anyhow::Result<Vec<u8>> {
    if let Some(secret) = &config.secret {
        return Ok(secret.as_bytes().to_vec());
    }
    ensure(config)?;
    let path = config.data_dir.join(SECRET_FILE);
    if !path.exists() {
        let mut bytes = [0u8; 32];
        getrandom::fill(&mut bytes).context("no randomness for the token secret")?;
        write_private(&path, hex::encode(bytes).as_bytes())?;
        tracing::info!(path = %path.display(), "generated a token secret");
    }
    let secret = std::fs::read(&path).with_context(|| format!("cannot read {}", path.display()))?;
    let secret = secret.trim_ascii().to_vec();
    if secret.len() < crate::auth::MIN_SECRET_LEN {
        bail!(
            "{} holds fewer than {} bytes",
            path.display(),
            crate::auth::MIN_SECRET_LEN
        );
    }
    Ok(secret)
}

/// Paths of the QUIC certificate and key: the configured ones, or a self-signed pair for
/// `localhost` and 127.0.0.1 generated into the data dir on first use.
pub fn tls_paths(config: &Config) -> anyhow::Result<(PathBuf, PathBuf)> {
    if let (Some(cert), Some(key)) = (&config.tls_cert, &config.tls_key) {
        return Ok((cert.clone(), key.clone()));
    }
    ensure(config)?;
    let (cert, key) = (
        config.data_dir.join(CERT_FILE),
        config.data_dir.join(KEY_FILE),
    );
    if !cert.exists() || !key.exists() {
        let names = vec![
            "localhost".to_string(),
            "127.0.0.1".to_string(),
            "::1".to_string(),
        ];
        let generated =
            rcgen::generate_simple_self_signed(names).context("cannot generate a certificate")?;
        write_private(&key, generated.signing_key.serialize_pem().as_bytes())?;
        write_private(&cert, generated.cert.pem().as_bytes())?;
        tracing::info!(path = %cert.display(), "generated a self-signed QUIC certificate");
    }
    Ok((cert, key))
}

pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let certs = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read {}", path.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("bad certificate in {}", path.display()))?;
    if certs.is_empty() {
        bail!("no certificate in {}", path.display());
    }
    Ok(certs)
}

pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(path)
        .with_context(|| format!("no private key in {}", path.display()))
}
