//! The operator key: `ferry prewarm keygen` makes it, `apply` signs orders with it.

use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use p2p_node::prewarm::order::SigningKey;

use crate::cli::KeygenArgs;

pub fn keygen(args: KeygenArgs) -> Result<()> {
    let key = SigningKey::generate();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&args.out)
        .with_context(|| format!("creating {} (an existing key is never overwritten)", args.out.display()))?;
    file.write_all(format!("{}\n", key.to_hex()).as_bytes()).with_context(|| format!("writing {}", args.out.display()))?;
    println!("{}", key.public());
    eprintln!(
        "wrote the secret key to {}; give nodes the public key above: --operator-key {} (or prewarm.operator_keys)",
        args.out.display(),
        key.public()
    );
    Ok(())
}

pub fn load(path: &Path) -> Result<SigningKey> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the operator key {}", path.display()))?;
    SigningKey::from_hex(&text).map_err(|e| anyhow::anyhow!("operator key {}: {e} (make one with `ferry prewarm keygen`)", path.display()))
}

/// A fresh order id: 128 random bits.
pub fn order_id() -> Result<String> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).context("reading /dev/urandom")?;
    if bytes == [0; 16] {
        bail!("/dev/urandom gave zeros");
    }
    Ok(hex_string(&bytes))
}

fn hex_string(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
