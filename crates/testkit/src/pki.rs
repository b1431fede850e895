//! Certificates tests need and the product never makes: client certificates, as the
//! kube-aggregator's front-proxy certificate is, signed by a test CA.

/// A CA certificate and key, PEM.
#[derive(Clone, Debug)]
pub struct TestCa {
    pub cert_pem: String,
    pub key_pem: String,
}

impl TestCa {
    /// A new self-signed CA named `common_name`.
    pub fn new(common_name: &str) -> TestCa {
        let key = rcgen::KeyPair::generate().expect("a new key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("no names");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).expect("a self-signed CA");
        TestCa {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses) signed by this CA:
    /// (certificate PEM, private key PEM).
    pub fn server_identity(&self, names: &[&str]) -> (String, String) {
        let ca_key = rcgen::KeyPair::from_pem(&self.key_pem).expect("the CA's key");
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(&self.cert_pem, ca_key).expect("the CA's certificate");
        let key = rcgen::KeyPair::generate().expect("a new key");
        let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(names).expect("valid names");
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params
            .signed_by(&key, &issuer)
            .expect("a signed certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// A client certificate (extended key usage clientAuth) for `common_name`: the private
    /// key and then the certificate, PEM, as `reqwest::Identity::from_pem` reads them.
    pub fn client_identity_pem(&self, common_name: &str) -> String {
        let (cert, key) = self.client_identity(common_name, None);
        format!("{key}{cert}")
    }

    /// A client certificate for the user `common_name`, in the group `organization` if any
    /// (kube-apiserver reads the subject's O as a group): (certificate PEM, private key PEM).
    pub fn client_identity(
        &self,
        common_name: &str,
        organization: Option<&str>,
    ) -> (String, String) {
        let ca_key = rcgen::KeyPair::from_pem(&self.key_pem).expect("the CA's key");
        let issuer =
            rcgen::Issuer::from_ca_cert_pem(&self.cert_pem, ca_key).expect("the CA's certificate");
        let key = rcgen::KeyPair::generate().expect("a new key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("no names");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        if let Some(organization) = organization {
            params
                .distinguished_name
                .push(rcgen::DnType::OrganizationName, organization);
        }
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let cert = params
            .signed_by(&key, &issuer)
            .expect("a signed certificate");
        (cert.pem(), key.serialize_pem())
    }
}
