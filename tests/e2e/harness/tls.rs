//! A throwaway certificate authority made with the `openssl` CLI: a CA certificate, server
//! certificates for `127.0.0.1`/`localhost` (for a TLS upstream registry), client certificates,
//! and an RSA signing certificate with its key (for the token server's JWTs, whose `x5c` chains
//! to the CA).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use super::{require_binary, run_ok};

/// A test CA living in its own directory.
#[derive(Debug)]
pub struct TestCa {
    dir: PathBuf,
    /// PEM certificate of the CA: what clients (ferry `--upstream-ca`, the registry's
    /// `rootcertbundle`) must trust.
    pub cert: PathBuf,
    key: PathBuf,
}

/// A certificate issued by a [`TestCa`], PEM files.
#[derive(Debug, Clone)]
pub struct IssuedCert {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl IssuedCert {
    /// The certificate as standard base64 DER (what a JWT `x5c` entry holds).
    pub fn der_base64(&self) -> String {
        let pem = std::fs::read_to_string(&self.cert).expect("read issued cert");
        pem.lines().filter(|l| !l.starts_with("-----")).collect::<String>()
    }
}

fn openssl(dir: &Path, args: &[&str]) {
    run_ok(Command::new("openssl").current_dir(dir).args(args), Duration::from_secs(30));
}

impl TestCa {
    /// Creates a CA (EC P-256, valid 2 days) in `dir`.
    pub fn new(dir: &Path) -> Self {
        require_binary("openssl", "openssl");
        std::fs::create_dir_all(dir).expect("create CA dir");
        openssl(
            dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
                "-days",
                "2",
                "-subj",
                "/CN=ferry-e2e-test-ca",
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        );
        TestCa { dir: dir.to_path_buf(), cert: dir.join("ca.pem"), key: dir.join("ca.key") }
    }

    /// A TLS server certificate for `127.0.0.1` and `localhost`.
    pub fn issue_server_cert(&self, name: &str) -> IssuedCert {
        let ext = "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
                   keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n";
        self.issue(name, &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"], ext)
    }

    /// A TLS client certificate; `name` is its common name (the user, to Kubernetes).
    pub fn issue_client_cert(&self, name: &str) -> IssuedCert {
        let ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=clientAuth\n";
        self.issue(name, &["ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"], ext)
    }

    /// An RSA certificate for signing RS256 JWTs.
    pub fn issue_signing_cert(&self, name: &str) -> IssuedCert {
        let ext = "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n";
        self.issue(name, &["rsa:2048"], ext)
    }

    fn issue(&self, name: &str, newkey: &[&str], extensions: &str) -> IssuedCert {
        let ext_file = format!("{name}.ext");
        std::fs::write(self.dir.join(&ext_file), extensions).expect("write extensions file");
        let (key, csr, cert) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.pem"));
        let mut req = vec!["req", "-newkey"];
        req.extend_from_slice(newkey);
        req.extend_from_slice(&["-nodes", "-keyout", &key, "-out", &csr, "-subj"]);
        let subject = format!("/CN={name}");
        req.push(&subject);
        openssl(&self.dir, &req);
        let (ca_cert, ca_key) = (self.cert.to_string_lossy(), self.key.to_string_lossy());
        openssl(
            &self.dir,
            &[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                &ca_cert,
                "-CAkey",
                &ca_key,
                "-CAcreateserial",
                "-out",
                &cert,
                "-days",
                "2",
                "-extfile",
                &ext_file,
            ],
        );
        IssuedCert { cert: self.dir.join(cert), key: self.dir.join(key) }
    }
}
