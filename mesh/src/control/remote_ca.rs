//! The controller as the agents' CA: [`CaClient`] over the control protocol.

use std::time::Duration;

use super::ControlClient;
use crate::ca::{CaClient, CaFuture};
use crate::identity::Identity;

#[derive(Debug)]
pub struct RemoteCa {
    client: ControlClient,
    roots_pem: String,
}

impl RemoteCa {
    /// `roots_pem` is the mesh root the agent was given at deploy time; it
    /// also anchors the connection to the controller.
    pub fn new(client: ControlClient, roots_pem: String) -> Self {
        Self { client, roots_pem }
    }
}

impl CaClient for RemoteCa {
    fn sign(&self, csr_pem: String, identity: Identity, ttl: Duration) -> CaFuture {
        let client = self.client.clone();
        Box::pin(async move { super::client::issue(&client, csr_pem, &identity, ttl).await })
    }

    fn roots_pem(&self) -> String {
        self.roots_pem.clone()
    }
}
