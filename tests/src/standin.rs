//! `skylift-oap-standin` as a process: its addresses, per-node counts, and node control.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use skylift_testkit::http;
use skylift_testkit::oap::{Announcement, NodeAddresses, NodeView};

use crate::{Process, binary, wait_for};

pub struct OapStandin {
    pub process: Process,
    pub control: String,
    pub nodes: Vec<NodeAddresses>,
}

impl OapStandin {
    /// Starts `instances` nodes on free ports and waits for the process to announce them.
    pub async fn start(instances: usize, dir: &Path) -> OapStandin {
        let mut command = Command::new(binary("skylift-oap-standin"));
        command.args([
            "--grpc-port=0",
            "--http-port=0",
            "--control-listen=127.0.0.1:0",
            &format!("--instances={instances}"),
        ]);
        let process = Process::spawn("skylift-oap-standin", command, dir);
        let announcement: Announcement = wait_for(
            "the stand-in's addresses",
            Duration::from_secs(20),
            || async {
                let output = process.output();
                serde_json::from_str(output.lines().next()?).ok()
            },
        )
        .await;
        OapStandin {
            process,
            control: announcement.control,
            nodes: announcement.nodes,
        }
    }

    /// The GraphQL endpoint of node `index`.
    pub fn graphql(&self, index: usize) -> String {
        format!("http://{}/graphql", self.nodes[index].http)
    }

    /// Every node with its counts.
    pub async fn states(&self) -> Vec<NodeView> {
        let (code, body) = http::get(&format!("{}/nodes", self.control))
            .await
            .expect("the stand-in's control API answers");
        assert_eq!(code, 200, "GET /nodes: {body}");
        serde_json::from_str(&body).expect("GET /nodes answers JSON")
    }

    /// Stops node `index` as a crash would.
    pub async fn stop(&self, index: usize) {
        let (code, body) = http::post(&format!("{}/nodes/{index}/stop", self.control))
            .await
            .expect("the stand-in's control API answers");
        assert_eq!(code, 204, "stopping node {index}: {body}");
    }
}
