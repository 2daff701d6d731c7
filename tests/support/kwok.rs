//! Pods with a (simulated) kubelet: on a control plane started with `up.sh --kwok-nodes=N`, KWOK
//! plays the kubelet of every node annotated `kwok.x-k8s.io/node=fake` (node-1 ... node-N among
//! them): such a node is Ready, a pod bound to it runs, and a deleted pod is removed once its grace
//! period is over, unless a finalizer holds it.

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ObjectMeta, Patch, PatchParams, PostParams};

use super::{TIMEOUT, TestEnv, wait_for};

/// Annotation that puts a node in KWOK's hands (`--manage-nodes-with-annotation-selector`).
pub const KWOK_NODE_ANNOTATION: (&str, &str) = ("kwok.x-k8s.io/node", "fake");

/// How long KWOK may take to remove a deleted pod: its pod-delete stage waits between 1s and the
/// pod's grace period (30s by default).
pub const GONE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

impl TestEnv {
    /// Whether this test's control plane runs KWOK (self-started with `--kwok-nodes=N`).
    pub fn kwok(&self) -> bool {
        self.cluster.dir.is_some()
            && self
                .cluster
                .up_flags
                .iter()
                .any(|f| f.starts_with("--kwok-nodes="))
    }

    /// Creates a Node named [`TestEnv::unique_name`]`(base)` that KWOK manages and waits until KWOK
    /// reports it Ready; deleted with this environment. Needs [`TestEnv::kwok`].
    pub async fn create_kwok_node(&self, base: &str) -> String {
        assert!(
            self.kwok(),
            "KWOK nodes need a control plane started with --kwok-nodes=N"
        );
        let name = self.unique_name(base);
        let nodes: Api<Node> = Api::all(self.client.clone());
        let mut labels = self.labels();
        labels.insert("kubernetes.io/hostname".to_owned(), name.clone());
        let node = Node {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(labels),
                annotations: Some(
                    [(
                        KWOK_NODE_ANNOTATION.0.to_owned(),
                        KWOK_NODE_ANNOTATION.1.to_owned(),
                    )]
                    .into(),
                ),
                ..ObjectMeta::default()
            },
            ..Node::default()
        };
        nodes
            .create(&PostParams::default(), &node)
            .await
            .unwrap_or_else(|e| panic!("creating node {name}: {e}"));
        // The TaintNodesByCondition admission plugin taints every new node not-ready; the node
        // lifecycle controller would lift that once the node is Ready.
        let untaint = serde_json::json!({ "spec": { "taints": null } });
        nodes
            .patch(&name, &PatchParams::default(), &Patch::Merge(&untaint))
            .await
            .unwrap_or_else(|e| panic!("untainting node {name}: {e}"));
        wait_for(&format!("KWOK to make node {name} Ready"), TIMEOUT, || async {
            let node = nodes.get(&name).await.ok()?;
            node.status?
                .conditions?
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
                .then_some(())
        })
        .await;
        name
    }

    /// Whether the pod no longer exists.
    pub async fn pod_gone(&self, name: &str) -> bool {
        self.api::<Pod>().get_opt(name).await.expect("get pod").is_none()
    }

    /// Waits until the pod's phase is `Running` (KWOK runs the pods bound to its nodes).
    pub async fn wait_pod_running(&self, name: &str) {
        wait_for(&format!("pod {name} to run"), TIMEOUT, || async {
            let pod = self.api::<Pod>().get_opt(name).await.expect("get pod")?;
            (pod.status?.phase.as_deref() == Some("Running")).then_some(())
        })
        .await;
    }

    /// Waits until the pod is evicted: being deleted, and, where KWOK plays its node's kubelet and
    /// no finalizer holds it, really gone.
    pub async fn wait_evicted(&self, name: &str) {
        wait_for(&format!("pod {name} to be evicted"), TIMEOUT, || async {
            self.pod_deleted(name).await.then_some(())
        })
        .await;
        let Some(pod) = self.api::<Pod>().get_opt(name).await.expect("get pod") else {
            return;
        };
        let held = pod.metadata.finalizers.as_ref().is_some_and(|f| !f.is_empty());
        let kubelet = pod.spec.as_ref().and_then(|s| s.node_name.as_ref()).is_some();
        if self.kwok() && kubelet && !held {
            wait_for(
                &format!("evicted pod {name} to be gone"),
                GONE_TIMEOUT,
                || async { self.pod_gone(name).await.then_some(()) },
            )
            .await;
        }
    }
}
