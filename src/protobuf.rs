//! Pod lists and watches in protobuf: the API server encodes a pod in protobuf in about a third of
//! the time and a quarter of the bytes it takes in JSON; a large cluster's start-up is bound by
//! the pod list, and a bulk eviction sends two pod watch events per evicted pod. [`to_json`] turns
//! a list answer, and [`WatchDecoder`] a watch stream, into the compact JSON that kube's watcher and
//! [`WatchedPod`](crate::k8s::WatchedPod) read: only the fields the controller keeps, so the rest
//! of each pod (containers, volumes, managed fields, ...) is skipped unread.
//!
//! Messages here declare only the fields read, with their numbers from `k8s.io/api/core/v1` and
//! `k8s.io/apimachinery` `generated.proto`; every other field is skipped by the decoder. A pod
//! without claims keeps only its identity, since nothing else of it is looked at (its view is
//! `None` whatever its other fields say).

use prost::Message;
use serde::Serialize;

use crate::k8s::Timestamp;

/// The media type of Kubernetes protobuf.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// The `Accept` header of a pod list: protobuf, else JSON (a server or proxy that cannot encode
/// protobuf answers in JSON, which is passed on unchanged).
pub const ACCEPT: &str = "application/vnd.kubernetes.protobuf, application/json";

/// The four bytes before every protobuf-encoded Kubernetes object.
const MAGIC: &[u8] = b"k8s\0";

/// Why a protobuf answer could not be read.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The body does not start with the Kubernetes protobuf prefix.
    #[error("protobuf answer without the k8s prefix")]
    NoPrefix,
    /// The envelope or the object in it does not decode.
    #[error("undecodable protobuf {what}: {source}")]
    Decode {
        what: &'static str,
        source: prost::DecodeError,
    },
    /// The envelope holds another kind than the one asked for.
    #[error("protobuf answer holds {found:?}, expected {expected}")]
    Kind { found: String, expected: &'static str },
    /// A watch frame longer than any object the API server writes: not a frame boundary.
    #[error("protobuf watch frame of {0} bytes")]
    Frame(usize),
    /// A watch event of a type kube does not know.
    #[error("protobuf watch event of type {0:?}")]
    EventType(String),
    /// A decoded value has no JSON form (a time out of range).
    #[error("protobuf {what} has no JSON form: {source}")]
    Encode {
        what: &'static str,
        source: serde_json::Error,
    },
}

/// Whether a string is absent from the JSON: unset, or empty (which protobuf writes for every
/// non-pointer string field, and JSON omits).
#[allow(clippy::ref_option)]
fn unset(value: &Option<String>) -> bool {
    value.as_deref().is_none_or(str::is_empty)
}

/// A required string (a field JSON always writes): empty when unset.
#[allow(clippy::ref_option)]
fn or_empty<S: serde::Serializer>(value: &Option<String>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(value.as_deref().unwrap_or_default())
}

/// `runtime.Unknown`: the envelope of every protobuf-encoded object.
#[derive(Clone, PartialEq, Message)]
struct Unknown {
    #[prost(message, optional, tag = "1")]
    type_meta: Option<TypeMeta>,
    #[prost(bytes = "vec", optional, tag = "2")]
    raw: Option<Vec<u8>>,
}

#[derive(Clone, PartialEq, Message)]
struct TypeMeta {
    #[prost(string, optional, tag = "1")]
    api_version: Option<String>,
    #[prost(string, optional, tag = "2")]
    kind: Option<String>,
}

#[derive(Clone, PartialEq, Message, Serialize)]
#[serde(rename_all = "camelCase")]
struct PodList {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<ListMeta>,
    #[prost(message, repeated, tag = "2")]
    items: Vec<Pod>,
}

#[derive(Clone, PartialEq, Message, Serialize)]
#[serde(rename_all = "camelCase")]
struct ListMeta {
    #[prost(string, optional, tag = "2")]
    #[serde(skip_serializing_if = "unset")]
    resource_version: Option<String>,
    #[prost(string, optional, tag = "3")]
    #[serde(rename = "continue", skip_serializing_if = "unset")]
    continue_: Option<String>,
    #[prost(int64, optional, tag = "4")]
    #[serde(skip_serializing_if = "Option::is_none")]
    remaining_item_count: Option<i64>,
}

#[derive(Clone, PartialEq, Message, Serialize)]
struct Pod {
    #[prost(message, optional, tag = "1")]
    #[serde(skip_serializing_if = "Option::is_none")]
    metadata: Option<ObjectMeta>,
    #[prost(message, optional, tag = "2")]
    #[serde(skip_serializing_if = "Option::is_none")]
    spec: Option<PodSpec>,
    #[prost(message, optional, tag = "3")]
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<PodStatus>,
}

#[derive(Clone, PartialEq, Message, Serialize)]
#[serde(rename_all = "camelCase")]
struct ObjectMeta {
    #[prost(string, optional, tag = "1")]
    #[serde(skip_serializing_if = "unset")]
    name: Option<String>,
    #[prost(string, optional, tag = "3")]
    #[serde(skip_serializing_if = "unset")]
    namespace: Option<String>,
    #[prost(string, optional, tag = "5")]
    #[serde(skip_serializing_if = "unset")]
    uid: Option<String>,
    #[prost(string, optional, tag = "6")]
    #[serde(skip_serializing_if = "unset")]
    resource_version: Option<String>,
    #[prost(message, optional, tag = "9")]
    #[serde(skip_serializing_if = "Option::is_none")]
    deletion_timestamp: Option<Time>,
}

/// `metav1.Time`: seconds and nanoseconds since the epoch; JSON has it as RFC 3339.
#[derive(Clone, Copy, PartialEq, Eq, Message)]
struct Time {
    #[prost(int64, optional, tag = "1")]
    seconds: Option<i64>,
    #[prost(int32, optional, tag = "2")]
    nanos: Option<i32>,
}

impl Serialize for Time {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let at = Timestamp::new(self.seconds.unwrap_or_default(), self.nanos.unwrap_or_default())
            .map_err(serde::ser::Error::custom)?;
        serializer.collect_str(&at)
    }
}

#[derive(Clone, PartialEq, Message, Serialize)]
#[serde(rename_all = "camelCase")]
struct PodSpec {
    #[prost(string, optional, tag = "10")]
    #[serde(skip_serializing_if = "unset")]
    node_name: Option<String>,
    #[prost(int32, optional, tag = "25")]
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<i32>,
    #[prost(message, repeated, tag = "39")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    resource_claims: Vec<PodResourceClaim>,
    #[prost(message, optional, tag = "43")]
    #[serde(skip_serializing_if = "Option::is_none")]
    scheduling_group: Option<PodSchedulingGroup>,
}

#[derive(Clone, PartialEq, Message, Serialize)]
#[serde(rename_all = "camelCase")]
struct PodResourceClaim {
    #[prost(string, optional, tag = "1")]
    #[serde(serialize_with = "or_empty")]
    name: Option<String>,
    #[prost(string, optional, tag = "3")]
    #[serde(skip_serializing_if = "unset")]
    resource_claim_name: Option<String>,
    #[prost(string, optional, tag = "4")]
    #[serde(skip_serializing_if = "unset")]
    resource_claim_template_name: Option<String>,
}

#[derive(Clone, PartialEq, Message, Serialize)]
#[serde(rename_all = "camelCase")]
struct PodSchedulingGroup {
    #[prost(string, optional, tag = "1")]
    #[serde(skip_serializing_if = "unset")]
    pod_group_name: Option<String>,
}

#[derive(Clone, PartialEq, Message, Serialize)]
#[serde(rename_all = "camelCase")]
struct PodStatus {
    #[prost(string, optional, tag = "1")]
    #[serde(skip_serializing_if = "unset")]
    phase: Option<String>,
    #[prost(message, repeated, tag = "2")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    conditions: Vec<PodCondition>,
    #[prost(message, repeated, tag = "15")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    resource_claim_statuses: Vec<PodResourceClaimStatus>,
    #[prost(message, optional, tag = "18")]
    #[serde(skip_serializing_if = "Option::is_none")]
    extended_resource_claim_status: Option<PodExtendedResourceClaimStatus>,
}

#[derive(Clone, PartialEq, Message, Serialize)]
struct PodCondition {
    #[prost(string, optional, tag = "1")]
    #[serde(rename = "type", skip_serializing_if = "unset")]
    type_: Option<String>,
    #[prost(string, optional, tag = "2")]
    #[serde(skip_serializing_if = "unset")]
    status: Option<String>,
    #[prost(string, optional, tag = "5")]
    #[serde(skip_serializing_if = "unset")]
    reason: Option<String>,
    #[prost(string, optional, tag = "6")]
    #[serde(skip_serializing_if = "unset")]
    message: Option<String>,
}

#[derive(Clone, PartialEq, Message, Serialize)]
#[serde(rename_all = "camelCase")]
struct PodResourceClaimStatus {
    #[prost(string, optional, tag = "1")]
    #[serde(serialize_with = "or_empty")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    #[serde(skip_serializing_if = "unset")]
    resource_claim_name: Option<String>,
}

#[derive(Clone, PartialEq, Message, Serialize)]
#[serde(rename_all = "camelCase")]
struct PodExtendedResourceClaimStatus {
    #[prost(message, repeated, tag = "1")]
    request_mappings: Vec<ContainerExtendedResourceRequest>,
    #[prost(string, optional, tag = "2")]
    #[serde(serialize_with = "or_empty")]
    resource_claim_name: Option<String>,
}

// Field names are the API's.
#[allow(clippy::struct_field_names)]
#[derive(Clone, PartialEq, Message, Serialize)]
#[serde(rename_all = "camelCase")]
struct ContainerExtendedResourceRequest {
    #[prost(string, optional, tag = "1")]
    #[serde(serialize_with = "or_empty")]
    container_name: Option<String>,
    #[prost(string, optional, tag = "2")]
    #[serde(serialize_with = "or_empty")]
    resource_name: Option<String>,
    #[prost(string, optional, tag = "3")]
    #[serde(serialize_with = "or_empty")]
    request_name: Option<String>,
}

/// `metav1.Status`: what an error answer holds (field names are the API's).
#[allow(clippy::struct_field_names)]
#[derive(Clone, PartialEq, Message, Serialize)]
#[serde(rename_all = "camelCase")]
struct Status {
    #[prost(string, optional, tag = "2")]
    #[serde(skip_serializing_if = "unset")]
    status: Option<String>,
    #[prost(string, optional, tag = "3")]
    #[serde(skip_serializing_if = "unset")]
    message: Option<String>,
    #[prost(string, optional, tag = "4")]
    #[serde(skip_serializing_if = "unset")]
    reason: Option<String>,
    #[prost(message, optional, tag = "5")]
    #[serde(skip_serializing_if = "Option::is_none")]
    details: Option<StatusDetails>,
    #[prost(int32, optional, tag = "6")]
    #[serde(skip_serializing_if = "Option::is_none")]
    code: Option<i32>,
}

#[derive(Clone, PartialEq, Message, Serialize)]
#[serde(rename_all = "camelCase")]
struct StatusDetails {
    #[prost(string, optional, tag = "1")]
    #[serde(skip_serializing_if = "unset")]
    name: Option<String>,
    #[prost(string, optional, tag = "2")]
    #[serde(skip_serializing_if = "unset")]
    group: Option<String>,
    #[prost(string, optional, tag = "3")]
    #[serde(skip_serializing_if = "unset")]
    kind: Option<String>,
    #[prost(message, repeated, tag = "4")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    causes: Vec<StatusCause>,
    #[prost(int32, optional, tag = "5")]
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_seconds: Option<i32>,
    #[prost(string, optional, tag = "6")]
    #[serde(skip_serializing_if = "unset")]
    uid: Option<String>,
}

#[derive(Clone, PartialEq, Message, Serialize)]
struct StatusCause {
    #[prost(string, optional, tag = "1")]
    #[serde(skip_serializing_if = "unset")]
    reason: Option<String>,
    #[prost(string, optional, tag = "2")]
    #[serde(skip_serializing_if = "unset")]
    message: Option<String>,
    #[prost(string, optional, tag = "3")]
    #[serde(skip_serializing_if = "unset")]
    field: Option<String>,
}

/// `metav1.WatchEvent`: one frame of a watch stream.
#[derive(Clone, PartialEq, Message)]
struct WatchEvent {
    #[prost(string, optional, tag = "1")]
    type_: Option<String>,
    #[prost(message, optional, tag = "2")]
    object: Option<RawExtension>,
}

/// `runtime.RawExtension`: the event's object, itself a protobuf answer (prefix and envelope).
#[derive(Clone, PartialEq, Message)]
struct RawExtension {
    #[prost(bytes = "vec", optional, tag = "1")]
    raw: Option<Vec<u8>>,
}

/// The object of a `BOOKMARK` event: a pod of which only these are set.
#[derive(Clone, PartialEq, Message, Serialize)]
struct Bookmark {
    #[prost(message, optional, tag = "1")]
    metadata: Option<BookmarkMeta>,
}

#[derive(Clone, PartialEq, Message, Serialize)]
#[serde(rename_all = "camelCase")]
struct BookmarkMeta {
    #[prost(string, optional, tag = "6")]
    #[serde(serialize_with = "or_empty")]
    resource_version: Option<String>,
    #[prost(btree_map = "string, string", tag = "12")]
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    annotations: std::collections::BTreeMap<String, String>,
}

/// JSON of an object with its kind and version.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Json<'a, T> {
    api_version: &'static str,
    kind: &'static str,
    #[serde(flatten)]
    object: &'a T,
}

/// The object inside a protobuf answer, with its kind.
fn unwrap(body: &[u8]) -> Result<(String, Vec<u8>), Error> {
    let envelope = body.strip_prefix(MAGIC).ok_or(Error::NoPrefix)?;
    let unknown = Unknown::decode(envelope).map_err(|source| Error::Decode {
        what: "envelope",
        source,
    })?;
    let kind = unknown.type_meta.and_then(|t| t.kind).unwrap_or_default();
    Ok((kind, unknown.raw.unwrap_or_default()))
}

/// Keeps of a pod what the controller reads; a pod without claims keeps only its identity.
fn trim(pod: &mut Pod) {
    let claimless = pod.spec.as_ref().is_none_or(|s| s.resource_claims.is_empty())
        && pod
            .status
            .as_ref()
            .is_none_or(|s| s.extended_resource_claim_status.is_none());
    if claimless {
        pod.spec = None;
        pod.status = None;
    } else if let Some(status) = &mut pod.status {
        status
            .conditions
            .retain(|c| c.type_.as_deref() == Some("DisruptionTarget"));
    }
}

/// The JSON of a protobuf answer to a pod list: a `PodList` (of the fields the controller reads)
/// or a `Status` (an error answer), as the API server would have written it in JSON.
///
/// # Errors
/// When the body is not a protobuf `PodList` or `Status`.
pub fn to_json(body: &[u8]) -> Result<Vec<u8>, Error> {
    let (kind, raw) = unwrap(body)?;
    match kind.as_str() {
        "PodList" => convert("PodList", &raw, |list: &mut PodList| {
            list.items.iter_mut().for_each(trim);
        }),
        "Status" => convert("Status", &raw, |_: &mut Status| {}),
        _ => Err(Error::Kind {
            found: kind,
            expected: "PodList or Status",
        }),
    }
}

/// Decodes `raw` as a `kind`, lets `prepare` trim it, and writes its JSON.
fn convert<M: Message + Default + Serialize>(
    kind: &'static str,
    raw: &[u8],
    prepare: impl FnOnce(&mut M),
) -> Result<Vec<u8>, Error> {
    let mut out = Vec::new();
    write_object(&mut out, kind, raw, prepare)?;
    Ok(out)
}

/// Decodes `raw` as a `kind`, lets `prepare` trim it, and appends its JSON to `out`.
fn write_object<M: Message + Default + Serialize>(
    out: &mut Vec<u8>,
    kind: &'static str,
    raw: &[u8],
    prepare: impl FnOnce(&mut M),
) -> Result<(), Error> {
    let mut object = M::decode(raw).map_err(|source| Error::Decode { what: kind, source })?;
    prepare(&mut object);
    let json = Json {
        api_version: "v1",
        kind,
        object: &object,
    };
    serde_json::to_writer(out, &json).map_err(|source| Error::Encode { what: kind, source })
}

/// The longest watch frame taken: far above the API server's own limit on an object (about
/// 3 MiB in etcd), so only a stream that is not frames at all reaches it.
const MAX_FRAME: usize = 64 << 20;

/// Turns a protobuf pod watch stream (each event a 4-byte big-endian length, then a
/// `WatchEvent`) into the lines of JSON that kube's watcher reads, one event a line, each pod cut
/// down as in a list ([`to_json`]). Bytes arrive in chunks that need not end on a frame: what is
/// left of a frame waits for the next chunk.
#[derive(Debug, Default)]
pub struct WatchDecoder {
    pending: Vec<u8>,
}

impl WatchDecoder {
    /// Takes the next chunk of the stream; returns the JSON lines of the events it completed
    /// (none, if it completed none).
    ///
    /// # Errors
    /// When a frame is not a pod `WatchEvent` (or a `Status` in an `ERROR` event), or announces a
    /// length no frame has.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<u8>, Error> {
        self.pending.extend_from_slice(chunk);
        let mut out = Vec::new();
        let mut at = 0;
        while let Some(prefix) = self.pending.get(at..at + 4) {
            let len = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
            if len > MAX_FRAME {
                return Err(Error::Frame(len));
            }
            let Some(frame) = self.pending.get(at + 4..at + 4 + len) else {
                break;
            };
            write_event(&mut out, frame)?;
            out.push(b'\n');
            at += 4 + len;
        }
        self.pending.drain(..at);
        Ok(out)
    }

    /// Bytes of an event not yet complete.
    #[must_use]
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// The JSON of one watch event, as the API server would have written it in JSON.
fn write_event(out: &mut Vec<u8>, frame: &[u8]) -> Result<(), Error> {
    let event = WatchEvent::decode(frame).map_err(|source| Error::Decode {
        what: "WatchEvent",
        source,
    })?;
    let type_ = event.type_.unwrap_or_default();
    if !matches!(
        type_.as_str(),
        "ADDED" | "MODIFIED" | "DELETED" | "BOOKMARK" | "ERROR"
    ) {
        return Err(Error::EventType(type_));
    }
    let raw = event.object.and_then(|o| o.raw).unwrap_or_default();
    let (kind, raw) = unwrap(&raw)?;
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(type_.as_bytes());
    out.extend_from_slice(b"\",\"object\":");
    match (type_.as_str(), kind.as_str()) {
        ("ERROR", "Status") => write_object(out, "Status", &raw, |_: &mut Status| {})?,
        ("BOOKMARK", "Pod") => write_object(out, "Pod", &raw, |_: &mut Bookmark| {})?,
        (t, "Pod") if t != "ERROR" => write_object(out, "Pod", &raw, trim)?,
        _ => {
            return Err(Error::Kind {
                found: kind,
                expected: if type_ == "ERROR" { "Status" } else { "Pod" },
            });
        }
    }
    out.push(b'}');
    Ok(())
}

/// Whether a request lists pods (all, or a namespace's): `GET .../pods`, no watch.
#[must_use]
pub fn is_pod_list(method: &http::Method, uri: &http::Uri) -> bool {
    is_pods(method, uri) && !is_watch(uri)
}

/// Whether a request watches pods (all, or a namespace's): `GET .../pods?watch=true`.
#[must_use]
pub fn is_pod_watch(method: &http::Method, uri: &http::Uri) -> bool {
    is_pods(method, uri) && is_watch(uri)
}

/// Whether a request is a watch: `watch=true` (or `1`) in its query.
pub(crate) fn is_watch(uri: &http::Uri) -> bool {
    uri.query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"))
}

/// `GET` of the pod collection, of the cluster or of a namespace.
fn is_pods(method: &http::Method, uri: &http::Uri) -> bool {
    let path = uri.path().trim_end_matches('/');
    method == http::Method::GET
        && (path == "/api/v1/pods"
            || path
                .strip_prefix("/api/v1/namespaces/")
                .and_then(|rest| rest.strip_suffix("/pods"))
                .is_some_and(|namespace| !namespace.is_empty() && !namespace.contains('/')))
}

/// Protobuf answers for tests of the layers above.
#[cfg(test)]
pub(crate) mod testing {
    use prost::Message as _;

    use super::{
        MAGIC, ObjectMeta, Pod, PodList, PodResourceClaim, PodSpec, RawExtension, TypeMeta, Unknown,
        WatchEvent,
    };

    /// Pod `name` in namespace `ns` using claim `gpu`.
    fn gpu_pod(ns: &str, name: &str) -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                name: Some(name.to_owned()),
                namespace: Some(ns.to_owned()),
                uid: Some(format!("uid-{name}")),
                resource_version: Some("5".to_owned()),
                deletion_timestamp: None,
            }),
            spec: Some(PodSpec {
                node_name: None,
                priority: None,
                resource_claims: vec![PodResourceClaim {
                    name: Some("gpu".to_owned()),
                    resource_claim_name: Some("gpu".to_owned()),
                    resource_claim_template_name: None,
                }],
                scheduling_group: None,
            }),
            status: None,
        }
    }

    /// A protobuf answer: prefix and envelope around `raw`, an encoded `kind`.
    pub(crate) fn envelope(kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let unknown = Unknown {
            type_meta: Some(TypeMeta {
                api_version: Some("v1".to_owned()),
                kind: Some(kind.to_owned()),
            }),
            raw: Some(raw),
        };
        [MAGIC, &unknown.encode_to_vec()].concat()
    }

    /// A protobuf pod list answer: pods `names` in namespace `ns`, each using claim `gpu`.
    pub(crate) fn pod_list(ns: &str, names: &[&str]) -> Vec<u8> {
        let list = PodList {
            metadata: None,
            items: names.iter().map(|name| gpu_pod(ns, name)).collect(),
        };
        envelope("PodList", list.encode_to_vec())
    }

    /// A protobuf error answer: a `Status` with `code` and `reason`.
    pub(crate) fn status(code: i32, reason: &str) -> Vec<u8> {
        let status = super::Status {
            status: Some("Failure".to_owned()),
            message: Some(reason.to_lowercase()),
            reason: Some(reason.to_owned()),
            details: None,
            code: Some(code),
        };
        envelope("Status", status.encode_to_vec())
    }

    /// One frame of a protobuf pod watch: a `type_` event of pod `name` in `ns` using claim `gpu`.
    pub(crate) fn pod_event(type_: &str, ns: &str, name: &str) -> Vec<u8> {
        frame(type_, "Pod", gpu_pod(ns, name).encode_to_vec())
    }

    /// A watch frame: a `type_` event holding `raw`, an encoded `kind`.
    pub(crate) fn frame(type_: &str, kind: &str, raw: Vec<u8>) -> Vec<u8> {
        let event = WatchEvent {
            type_: Some(type_.to_owned()),
            object: Some(RawExtension {
                raw: Some(envelope(kind, raw)),
            }),
        }
        .encode_to_vec();
        let len = u32::try_from(event.len()).expect("a small frame");
        [&len.to_be_bytes()[..], &event].concat()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::{k8s::WatchedPod, view::PodView};

    #[allow(clippy::unnecessary_wraps)] // the fields are options
    fn some(value: &str) -> Option<String> {
        Some(value.to_owned())
    }

    /// Field `tag` of wire type LEN holding `bytes`: how a field unknown to these messages (a
    /// container, a label, ...) looks on the wire.
    fn len_field(tag: u32, bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        prost::encoding::encode_key(tag, prost::encoding::WireType::LengthDelimited, &mut out);
        prost::encoding::encode_varint(bytes.len() as u64, &mut out);
        out.extend_from_slice(bytes);
        out
    }

    fn condition(type_: &str, reason: &str, message: &str) -> PodCondition {
        PodCondition {
            type_: some(type_),
            status: some("True"),
            reason: some(reason),
            message: some(message),
        }
    }

    /// A pod using three claims (by name, from a template, for extended resources), terminating,
    /// with our `DisruptionTarget` condition among others.
    fn pod_with_claims() -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                name: some("gpu-pod"),
                namespace: some("ml"),
                uid: some("uid-1"),
                resource_version: some("41"),
                deletion_timestamp: Some(Time {
                    seconds: Some(1_795_000_000),
                    nanos: Some(0),
                }),
            }),
            spec: Some(PodSpec {
                node_name: some("node-1"),
                priority: Some(7),
                resource_claims: vec![
                    PodResourceClaim {
                        name: some("direct"),
                        resource_claim_name: some("shared-claim"),
                        resource_claim_template_name: None,
                    },
                    PodResourceClaim {
                        name: some("templated"),
                        resource_claim_name: None,
                        resource_claim_template_name: some("gpu-template"),
                    },
                ],
                scheduling_group: Some(PodSchedulingGroup {
                    pod_group_name: some("trainers"),
                }),
            }),
            status: Some(PodStatus {
                phase: some("Running"),
                conditions: vec![
                    condition("Ready", "", ""),
                    condition(
                        "DisruptionTarget",
                        crate::k8s::DISRUPTION_REASON,
                        crate::k8s::DISRUPTION_MESSAGE,
                    ),
                ],
                resource_claim_statuses: vec![PodResourceClaimStatus {
                    name: some("templated"),
                    resource_claim_name: some("gpu-pod-templated-x7"),
                }],
                extended_resource_claim_status: Some(PodExtendedResourceClaimStatus {
                    request_mappings: vec![ContainerExtendedResourceRequest {
                        container_name: some("main"),
                        resource_name: some("example.com/gpu"),
                        request_name: some("container-0-request-0"),
                    }],
                    resource_claim_name: some("gpu-pod-extended-resources-k2"),
                }),
            }),
        }
    }

    /// A running pod without claims: protobuf writes its empty strings too.
    fn pod_without_claims() -> Pod {
        Pod {
            metadata: Some(ObjectMeta {
                name: some("web"),
                namespace: some("ml"),
                uid: some("uid-2"),
                resource_version: some("40"),
                deletion_timestamp: None,
            }),
            spec: Some(PodSpec {
                node_name: some("node-2"),
                priority: Some(0),
                resource_claims: vec![],
                scheduling_group: None,
            }),
            status: Some(PodStatus {
                phase: some("Running"),
                conditions: vec![condition("Ready", "", "")],
                resource_claim_statuses: vec![],
                extended_resource_claim_status: None,
            }),
        }
    }

    fn list_json(pods: Vec<Pod>) -> serde_json::Value {
        let list = PodList {
            metadata: Some(ListMeta {
                resource_version: some("42"),
                continue_: some(""),
                remaining_item_count: None,
            }),
            items: pods,
        };
        let body = to_json(&testing::envelope("PodList", list.encode_to_vec())).expect("a pod list");
        serde_json::from_slice(&body).expect("JSON")
    }

    #[test]
    fn a_pod_list_becomes_the_json_the_watcher_reads() {
        let json = list_json(vec![pod_with_claims(), pod_without_claims()]);
        assert_eq!(
            json,
            json!({
                "apiVersion": "v1",
                "kind": "PodList",
                "metadata": {"resourceVersion": "42"},
                "items": [
                    {
                        "metadata": {"name": "gpu-pod", "namespace": "ml", "uid": "uid-1",
                                     "resourceVersion": "41",
                                     "deletionTimestamp": "2026-11-18T11:06:40Z"},
                        "spec": {
                            "nodeName": "node-1",
                            "priority": 7,
                            "resourceClaims": [
                                {"name": "direct", "resourceClaimName": "shared-claim"},
                                {"name": "templated", "resourceClaimTemplateName": "gpu-template"},
                            ],
                            "schedulingGroup": {"podGroupName": "trainers"},
                        },
                        "status": {
                            "phase": "Running",
                            "conditions": [{
                                "type": "DisruptionTarget", "status": "True",
                                "reason": crate::k8s::DISRUPTION_REASON,
                                "message": crate::k8s::DISRUPTION_MESSAGE,
                            }],
                            "resourceClaimStatuses": [
                                {"name": "templated", "resourceClaimName": "gpu-pod-templated-x7"},
                            ],
                            "extendedResourceClaimStatus": {
                                "requestMappings": [{"containerName": "main",
                                                     "resourceName": "example.com/gpu",
                                                     "requestName": "container-0-request-0"}],
                                "resourceClaimName": "gpu-pod-extended-resources-k2",
                            },
                        },
                    },
                    {"metadata": {"name": "web", "namespace": "ml", "uid": "uid-2",
                                  "resourceVersion": "40"}},
                ],
            })
        );
    }

    /// What the controller makes of each pod is the same as from the full JSON pod.
    #[test]
    fn the_views_are_those_of_the_json_pods() {
        let json = list_json(vec![pod_with_claims(), pod_without_claims()]);
        let listed: Vec<WatchedPod> = serde_json::from_value(json["items"].clone()).expect("watched pods");
        let full: Vec<WatchedPod> = serde_json::from_value(json!([
            {
                "metadata": {"name": "gpu-pod", "namespace": "ml", "uid": "uid-1",
                             "resourceVersion": "41", "deletionTimestamp": "2026-11-18T11:06:40Z",
                             "labels": {"app": "train"}},
                "spec": {"nodeName": "node-1", "priority": 7,
                         "containers": [{"name": "main", "image": "trainer"}],
                         "resourceClaims": [
                             {"name": "direct", "resourceClaimName": "shared-claim"},
                             {"name": "templated", "resourceClaimTemplateName": "gpu-template"}],
                         "schedulingGroup": {"podGroupName": "trainers"}},
                "status": {"phase": "Running",
                           "conditions": [
                               {"type": "Ready", "status": "True"},
                               {"type": "DisruptionTarget", "status": "True",
                                "reason": crate::k8s::DISRUPTION_REASON,
                                "message": crate::k8s::DISRUPTION_MESSAGE}],
                           "resourceClaimStatuses": [
                               {"name": "templated", "resourceClaimName": "gpu-pod-templated-x7"}],
                           "extendedResourceClaimStatus": {
                               "requestMappings": [{"containerName": "main",
                                                    "resourceName": "example.com/gpu",
                                                    "requestName": "container-0-request-0"}],
                               "resourceClaimName": "gpu-pod-extended-resources-k2"}},
            },
            {
                "metadata": {"name": "web", "namespace": "ml", "uid": "uid-2", "resourceVersion": "40"},
                "spec": {"nodeName": "node-2", "priority": 0, "containers": [{"name": "web"}]},
                "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
            },
        ]))
        .expect("watched pods");
        assert_eq!(listed[0], full[0], "a pod with claims keeps every field read");
        assert_eq!(listed[1].metadata, full[1].metadata);
        for (listed, full) in listed.iter().zip(&full) {
            assert_eq!(
                PodView::from_api(listed).expect("valid"),
                PodView::from_api(full).expect("valid")
            );
        }
        let view = PodView::from_api(&listed[0])
            .expect("valid")
            .expect("uses claims");
        assert_eq!(view.claims.len(), 3, "{view:?}");
        assert!(view.scheduled && view.terminating && view.disruption_target);
        assert_eq!(view.priority, 7);
    }

    /// Fields these messages do not declare (containers, labels, ...) are skipped.
    #[test]
    fn undeclared_fields_are_skipped() {
        let meta = [
            ObjectMeta {
                name: some("p"),
                namespace: some("ns"),
                uid: some("u"),
                resource_version: some("1"),
                deletion_timestamp: None,
            }
            .encode_to_vec(),
            len_field(2, b"generate-"),
            len_field(11, &len_field(1, b"app")),
        ]
        .concat();
        let spec = [
            len_field(2, &len_field(1, b"container")),
            PodSpec {
                node_name: some("n"),
                priority: None,
                resource_claims: vec![PodResourceClaim {
                    name: some("gpu"),
                    resource_claim_name: some("claim"),
                    resource_claim_template_name: None,
                }],
                scheduling_group: None,
            }
            .encode_to_vec(),
        ]
        .concat();
        let pod = [len_field(1, &meta), len_field(2, &spec)].concat();
        let list = [len_field(2, &pod), len_field(99, b"future field")].concat();
        let body = to_json(&testing::envelope("PodList", list)).expect("decodes");
        let json: serde_json::Value = serde_json::from_slice(&body).expect("JSON");
        assert_eq!(
            json["items"][0],
            json!({"metadata": {"name": "p", "namespace": "ns", "uid": "u", "resourceVersion": "1"},
                   "spec": {"nodeName": "n", "resourceClaims": [{"name": "gpu", "resourceClaimName": "claim"}]}})
        );
    }

    /// An error answer is the `Status` kube reads from a JSON error.
    #[test]
    fn a_status_answer_becomes_a_json_status() {
        let status = Status {
            status: some("Failure"),
            message: some("too many requests"),
            reason: some("TooManyRequests"),
            details: Some(StatusDetails {
                name: None,
                group: None,
                kind: some("pods"),
                causes: vec![StatusCause {
                    reason: some("Throttled"),
                    message: some("slow down"),
                    field: None,
                }],
                retry_after_seconds: Some(3),
                uid: None,
            }),
            code: Some(429),
        };
        let body = to_json(&testing::envelope("Status", status.encode_to_vec())).expect("a status");
        let read: kube::core::Status = serde_json::from_slice(&body).expect("a kube Status");
        assert_eq!(read.code, 429);
        assert_eq!(read.reason, "TooManyRequests");
        assert_eq!(read.message, "too many requests");
        let details = read.details.expect("details");
        assert_eq!(details.retry_after_seconds, 3);
        assert_eq!(details.kind, "pods");
        assert_eq!(details.causes[0].reason, "Throttled");
    }

    #[test]
    fn what_is_not_a_pod_list_or_status_is_an_error() {
        assert!(matches!(to_json(b"{\"kind\":\"PodList\"}"), Err(Error::NoPrefix)));
        assert!(matches!(
            to_json(&[MAGIC, &[0x0a, 0xff]].concat()),
            Err(Error::Decode { what: "envelope", .. })
        ));
        assert!(matches!(
            to_json(&testing::envelope("PodList", vec![0x12, 0x05, 0x01])),
            Err(Error::Decode { what: "PodList", .. })
        ));
        assert!(matches!(
            to_json(&testing::envelope("Pod", vec![])),
            Err(Error::Kind { found, .. }) if found == "Pod"
        ));
        let far = PodList {
            metadata: None,
            items: vec![Pod {
                metadata: Some(ObjectMeta {
                    deletion_timestamp: Some(Time {
                        seconds: Some(i64::MAX),
                        nanos: None,
                    }),
                    ..pod_with_claims().metadata.expect("metadata")
                }),
                ..pod_with_claims()
            }],
        };
        assert!(matches!(
            to_json(&testing::envelope("PodList", far.encode_to_vec())),
            Err(Error::Encode { what: "PodList", .. })
        ));
    }

    #[test]
    fn pod_lists_are_told_from_other_requests() {
        let get = http::Method::GET;
        let list = |uri: &str| is_pod_list(&get, &uri.parse().expect("uri"));
        assert!(list("/api/v1/pods?limit=500&resourceVersion=0"));
        assert!(list("/api/v1/namespaces/ml/pods"));
        assert!(list("/api/v1/namespaces/ml/pods/?labelSelector=a%3Db"));
        assert!(!list("/api/v1/pods?watch=true&resourceVersion=5"));
        assert!(!list("/api/v1/namespaces/ml/pods?watch=1"));
        assert!(!list("/api/v1/namespaces/ml/pods/gpu-pod"));
        assert!(!list("/api/v1/namespaces/ml/pods/gpu-pod/status"));
        assert!(!list("/api/v1/namespaces//pods"));
        assert!(!list("/apis/resource.k8s.io/v1/resourceclaims"));
        assert!(!list("/api/v1/namespaces/ml/events"));
        assert!(!is_pod_list(
            &http::Method::DELETE,
            &"/api/v1/namespaces/ml/pods".parse().expect("uri")
        ));
    }

    #[test]
    fn pod_watches_are_told_from_other_requests() {
        let get = http::Method::GET;
        let watch = |uri: &str| is_pod_watch(&get, &uri.parse().expect("uri"));
        assert!(watch(
            "/api/v1/pods?watch=true&resourceVersion=5&allowWatchBookmarks=true"
        ));
        assert!(watch("/api/v1/namespaces/ml/pods?watch=1"));
        assert!(!watch("/api/v1/pods?limit=500"));
        assert!(!watch("/api/v1/namespaces/ml/pods/gpu-pod?watch=true"));
        assert!(!watch("/apis/resource.k8s.io/v1/resourceclaims?watch=true"));
        assert!(!watch("/api/v1/namespaces/ml/events?watch=true"));
    }

    /// Every kind of event of a watch stream: a pod with claims as in a list, one without cut to
    /// its identity, a bookmark with its annotations, a `410 Gone` error.
    fn watch_stream() -> (Vec<u8>, Vec<serde_json::Value>) {
        let bookmark = Bookmark {
            metadata: Some(BookmarkMeta {
                resource_version: some("77"),
                annotations: [("k8s.io/initial-events-end".to_owned(), "true".to_owned())].into(),
            }),
        };
        let gone = Status {
            status: some("Failure"),
            message: some("too old resource version: 5 (70)"),
            reason: some("Expired"),
            details: None,
            code: Some(410),
        };
        let frames = [
            testing::frame("ADDED", "Pod", pod_with_claims().encode_to_vec()),
            testing::frame("MODIFIED", "Pod", pod_without_claims().encode_to_vec()),
            testing::frame("DELETED", "Pod", pod_with_claims().encode_to_vec()),
            testing::frame("BOOKMARK", "Pod", bookmark.encode_to_vec()),
            testing::frame("ERROR", "Status", gone.encode_to_vec()),
        ]
        .concat();
        let listed = list_json(vec![pod_with_claims(), pod_without_claims()]);
        let pod = |i: usize| {
            let mut pod = listed["items"][i].clone();
            pod["apiVersion"] = json!("v1");
            pod["kind"] = json!("Pod");
            pod
        };
        let expected = vec![
            json!({"type": "ADDED", "object": pod(0)}),
            json!({"type": "MODIFIED", "object": pod(1)}),
            json!({"type": "DELETED", "object": pod(0)}),
            json!({"type": "BOOKMARK", "object": {
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"resourceVersion": "77",
                             "annotations": {"k8s.io/initial-events-end": "true"}}}}),
            json!({"type": "ERROR", "object": {
                "apiVersion": "v1", "kind": "Status", "status": "Failure",
                "message": "too old resource version: 5 (70)", "reason": "Expired", "code": 410}}),
        ];
        (frames, expected)
    }

    fn lines(json: &[u8]) -> Vec<serde_json::Value> {
        assert_eq!(json.last(), Some(&b'\n'), "each event ends its line");
        json.split(|&b| b == b'\n')
            .filter(|line| !line.is_empty())
            .map(|line| serde_json::from_slice(line).expect("a JSON line"))
            .collect()
    }

    #[test]
    fn a_pod_watch_becomes_the_json_lines_the_watcher_reads() {
        let (frames, expected) = watch_stream();
        let mut decoder = WatchDecoder::default();
        let json = decoder.push(&frames).expect("decodes");
        assert_eq!(lines(&json), expected);
        assert_eq!(decoder.pending(), 0);
        for line in json.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            serde_json::from_slice::<kube::core::WatchEvent<WatchedPod>>(line).expect("kube reads it");
        }
    }

    /// Chunks end anywhere: the events are the same, each given once its last byte arrived.
    #[test]
    fn a_frame_split_across_chunks_waits_for_its_end() {
        let (frames, expected) = watch_stream();
        for size in [1, 3, 4, 5, 17, 64] {
            let mut decoder = WatchDecoder::default();
            let mut json = Vec::new();
            for chunk in frames.chunks(size) {
                json.extend(decoder.push(chunk).expect("decodes"));
            }
            assert_eq!(lines(&json), expected, "chunks of {size}");
            assert_eq!(decoder.pending(), 0);
        }
        let first = testing::pod_event("ADDED", "ns", "a");
        let mut decoder = WatchDecoder::default();
        assert!(
            decoder
                .push(&first[..first.len() - 1])
                .expect("decodes")
                .is_empty()
        );
        assert_eq!(decoder.pending(), first.len() - 1);
        assert_eq!(
            lines(&decoder.push(&first[first.len() - 1..]).expect("decodes")).len(),
            1
        );
    }

    #[test]
    fn what_is_not_a_pod_watch_event_is_an_error() {
        let push = |bytes: &[u8]| WatchDecoder::default().push(bytes);
        assert!(matches!(
            push(&testing::frame("SYNC", "Pod", pod_with_claims().encode_to_vec())),
            Err(Error::EventType(t)) if t == "SYNC"
        ));
        assert!(matches!(
            push(&testing::frame("ADDED", "Node", vec![])),
            Err(Error::Kind { found, expected: "Pod" }) if found == "Node"
        ));
        assert!(matches!(
            push(&testing::frame("ERROR", "Pod", vec![])),
            Err(Error::Kind {
                expected: "Status",
                ..
            })
        ));
        assert!(matches!(push(b"{\"type\":\"ADDED\"}\n"), Err(Error::Frame(_))));
        assert!(matches!(
            push(&[0, 0, 0, 2, 0x0a, 0xff]),
            Err(Error::Decode {
                what: "WatchEvent",
                ..
            })
        ));
    }
}
