//! Who is asking: a node agent proves its node with a bearer credential. In
//! local mode that is a per-node bootstrap token from a file the test bed
//! (or an operator) writes: YAML, `node-name: token`. Tokens are compared
//! by SHA-256 digest, so the comparison does not leak them through timing.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest as _, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("cannot read credentials {path}: {cause}")]
    Read { path: String, cause: std::io::Error },
    #[error("credentials {path}: {cause}")]
    Invalid { path: String, cause: String },
}

#[derive(Debug, Default)]
pub struct NodeCredentials {
    by_digest: BTreeMap<[u8; 32], String>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.trim().as_bytes()).into()
}

impl NodeCredentials {
    pub fn from_file(path: &Path) -> Result<Self, CredentialsError> {
        let text = std::fs::read_to_string(path)
            .map_err(|cause| CredentialsError::Read { path: path.display().to_string(), cause })?;
        let invalid = |cause: String| CredentialsError::Invalid { path: path.display().to_string(), cause };
        let nodes: BTreeMap<String, String> = yaml_serde::from_str(&text).map_err(|e| invalid(e.to_string()))?;
        if let Some((node, _)) = nodes.iter().find(|(_, token)| token.trim().len() < 16) {
            return Err(invalid(format!("the token for {node} is shorter than 16 characters")));
        }
        Ok(Self { by_digest: nodes.into_iter().map(|(node, token)| (digest(&token), node)).collect() })
    }

    /// The node an `Authorization` header value proves, if any.
    pub fn node_for(&self, authorization: Option<&str>) -> Option<&str> {
        let token = authorization?.strip_prefix("Bearer ")?;
        self.by_digest.get(&digest(token)).map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::NodeCredentials;

    #[test]
    fn tokens_map_to_nodes() {
        let dir = tempfile::tempdir().ok();
        let path = dir.as_ref().map(|d| d.path().join("c.yaml")).unwrap_or_default();
        std::fs::write(&path, "node1: 0123456789abcdef0123\nnode2: fedcba9876543210fedc\n").ok();
        let credentials = NodeCredentials::from_file(&path).unwrap_or_default();
        assert_eq!(credentials.node_for(Some("Bearer 0123456789abcdef0123")), Some("node1"));
        assert_eq!(credentials.node_for(Some("Bearer wrong")), None);
        assert_eq!(credentials.node_for(Some("0123456789abcdef0123")), None, "the scheme is required");
        assert_eq!(credentials.node_for(None), None);
        std::fs::write(&path, "node1: short\n").ok();
        let error = NodeCredentials::from_file(&path).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(error.contains("shorter than 16"), "{error}");
    }
}
