//! The certificates the adapter makes for itself when it is not given any: a CA, and a
//! serving certificate for its Service's DNS names signed by it. Also reading what is in a
//! PEM certificate: its validity and its subject's common name. No I/O.

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use time::OffsetDateTime;

#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("making a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("no certificate in the PEM text")]
    NoCertificate,
    #[error("the certificate cannot be read: {0}")]
    Unreadable(String),
    #[error("the time {0} is outside what a certificate can carry")]
    Time(i64),
}

/// A certificate with its private key, both PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyedCert {
    pub cert_pem: String,
    pub key_pem: String,
}

/// When a certificate is valid, in Unix seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: i64,
    pub not_after: i64,
}

impl Validity {
    /// Renewal is due once less than a third of the lifetime is left (as kubelet and
    /// cert-manager do), so a renewal that fails has plenty of time to be retried.
    pub fn renewal_due(&self, now: i64) -> bool {
        let lifetime = self.not_after - self.not_before;
        now >= self.not_after - lifetime / 3
    }
}

fn at(unix_seconds: i64) -> Result<OffsetDateTime, CertError> {
    OffsetDateTime::from_unix_timestamp(unix_seconds).map_err(|_| CertError::Time(unix_seconds))
}

fn params(
    common_name: &str,
    names: &[String],
    not_before: i64,
    lifetime: Duration,
) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut subject = DistinguishedName::new();
    subject.push(DnType::CommonName, common_name);
    params.distinguished_name = subject;
    // An hour of slack for clocks behind ours.
    params.not_before = at(not_before - 3600)?;
    params.not_after = at(not_before + lifetime.as_secs() as i64)?;
    Ok(params)
}

/// A new self-signed CA.
pub fn new_authority(
    common_name: &str,
    now: i64,
    lifetime: Duration,
) -> Result<KeyedCert, CertError> {
    let key = KeyPair::generate()?;
    let mut params = params(common_name, &[], now, lifetime)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let cert = params.self_signed(&key)?;
    Ok(KeyedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A serving certificate for `dns_names` (the first is also the common name), signed by `ca`.
pub fn issue_serving(
    ca: &KeyedCert,
    dns_names: &[String],
    now: i64,
    lifetime: Duration,
) -> Result<KeyedCert, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let common_name = dns_names.first().map_or("skylift-adapter", String::as_str);
    let mut params = params(common_name, dns_names, now, lifetime)?;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(KeyedCert {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// Every certificate in a PEM bundle, in order.
pub fn certificates(pem: &str) -> Vec<CertificateDer<'static>> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .filter_map(Result::ok)
        .collect()
}

fn parse<T>(
    der: &[u8],
    read: impl FnOnce(&x509_parser::certificate::X509Certificate<'_>) -> T,
) -> Result<T, CertError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| CertError::Unreadable(e.to_string()))?;
    Ok(read(&cert))
}

/// The validity of a DER certificate.
pub fn validity_der(der: &[u8]) -> Result<Validity, CertError> {
    parse(der, |cert| Validity {
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The validity of the first certificate in a PEM bundle.
pub fn validity(pem: &str) -> Result<Validity, CertError> {
    let first = certificates(pem)
        .into_iter()
        .next()
        .ok_or(CertError::NoCertificate)?;
    validity_der(&first)
}

/// The DNS names a DER certificate is for.
pub fn dns_names(der: &[u8]) -> Result<Vec<String>, CertError> {
    parse(der, |cert| {
        let Ok(Some(names)) = cert.subject_alternative_name() else {
            return Vec::new();
        };
        names
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(dns) => Some(dns.to_string()),
                _ => None,
            })
            .collect()
    })
}

/// The subject's common name of a DER certificate, as the front-proxy check reads it.
pub fn common_name(der: &[u8]) -> Option<String> {
    parse(der, |cert| {
        cert.subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .map(String::from)
    })
    .ok()
    .flatten()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::client::danger::ServerCertVerifier;

    const DAY: Duration = Duration::from_secs(86_400);
    const NOW: i64 = 1_790_000_000;

    #[test]
    fn a_made_authority_signs_a_serving_certificate_for_the_service_names() {
        let ca = new_authority("skylift-adapter-ca", NOW, DAY * 3650).unwrap();
        let names = vec![
            "skylift-adapter.skylift-system.svc".to_string(),
            "skylift-adapter.skylift-system.svc.cluster.local".to_string(),
        ];
        let serving = issue_serving(&ca, &names, NOW, DAY * 365).unwrap();
        let ca_der = certificates(&ca.cert_pem).remove(0);
        let serving_der = certificates(&serving.cert_pem).remove(0);
        assert_eq!(
            common_name(&serving_der).as_deref(),
            Some("skylift-adapter.skylift-system.svc")
        );
        assert_eq!(common_name(&ca_der).as_deref(), Some("skylift-adapter-ca"));
        assert_eq!(dns_names(&serving_der).unwrap(), names);
        let validity = validity(&serving.cert_pem).unwrap();
        assert_eq!(validity.not_after, NOW + 365 * 86_400);
        assert_eq!(validity.not_before, NOW - 3600);

        // The chain verifies the way a TLS client checks it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(ca_der).unwrap();
        let verifier = rustls::client::WebPkiServerVerifier::builder(roots.into())
            .build()
            .unwrap();
        let name =
            rustls::pki_types::ServerName::try_from("skylift-adapter.skylift-system.svc").unwrap();
        let when = rustls::pki_types::UnixTime::since_unix_epoch(Duration::from_secs(
            (NOW + 86_400) as u64,
        ));
        verifier
            .verify_server_cert(&serving_der, &[], &name, &[], when)
            .unwrap();
        let other = rustls::pki_types::ServerName::try_from("elsewhere.svc").unwrap();
        assert!(
            verifier
                .verify_server_cert(&serving_der, &[], &other, &[], when)
                .is_err()
        );
    }

    #[test]
    fn renewal_is_due_in_the_last_third_of_the_lifetime() {
        let validity = Validity {
            not_before: 0,
            not_after: 300,
        };
        assert!(!validity.renewal_due(199));
        assert!(validity.renewal_due(200));
        assert!(validity.renewal_due(400));
    }

    #[test]
    fn text_that_holds_no_certificate_is_refused() {
        assert!(matches!(
            validity("not a certificate"),
            Err(CertError::NoCertificate)
        ));
        assert_eq!(common_name(b"\x30\x03\x02\x01\x00"), None);
    }
}
