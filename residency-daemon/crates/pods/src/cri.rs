//! What the node runs now, from the container runtime's CRI API: the
//! second step of pod identity. [`parse`](crate::parse) reads a pod UID and
//! a container id from a cgroup path; the runtime names them: the pod's
//! name, namespace, labels and annotations, the container's name and image.
//!
//! [`Cri`] is a client of the runtime's CRI v1 gRPC service
//! (`runtime.v1.RuntimeService` and `ImageService`) over its unix socket
//! (containerd: `/run/containerd/containerd.sock`; CRI-O:
//! `/var/run/crio/crio.sock`). [`PodIndex`] keeps one listing of pods and
//! containers, looked up by pod UID, sandbox id and container id, and
//! answers [`PodIndex::resolve`] for a cgroup path.
//!
//! The runtime's answers are input, not truth: an entry that no kubelet
//! could have made (no metadata, an id or name that is empty, too long or
//! has characters Kubernetes does not allow) is skipped and reported in
//! [`Cri::skipped`]; labels and annotations beyond the caps below are
//! dropped and counted in [`Pod::dropped`]; an answer with more entries
//! than [`MAX_PODS`], [`MAX_CONTAINERS`] or [`MAX_IMAGES`] is refused as a
//! whole, and one larger than [`MAX_MESSAGE_BYTES`] is refused by the gRPC
//! layer before it is decoded. Strings that are not UTF-8 fail prost's
//! decoding of the whole answer ([`CriError::Decode`]). The runtime is part
//! of the node's trusted base; the caps bound what a broken or confused
//! runtime costs the daemon, in memory and in the size of what it records.

use std::{
    collections::{BTreeMap, HashMap},
    io,
    path::{Path, PathBuf},
    time::Duration,
};

use hyper_util::rt::TokioIo;
use k8s_cri::v1 as api;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::parse;

/// Pods in one answer; kubelet's default is 110 per node and clusters
/// allow a few hundred.
pub const MAX_PODS: usize = 5_000;
/// Containers in one answer (every attempt of every pod's containers).
pub const MAX_CONTAINERS: usize = 50_000;
/// Images in one answer (used to name containers' images).
pub const MAX_IMAGES: usize = 50_000;
/// Labels kept per pod (by key order); the rest are dropped and counted.
pub const MAX_LABELS: usize = 64;
/// Annotations kept per pod (by key order); the rest are dropped and
/// counted.
pub const MAX_ANNOTATIONS: usize = 64;
/// A label or annotation key: Kubernetes allows a 253-byte prefix, `/`
/// and a 63-byte name.
pub const MAX_KEY_BYTES: usize = 317;
/// A label value: Kubernetes allows 63 bytes, so a longer one did not come
/// from the API server; it is dropped.
pub const MAX_LABEL_VALUE_BYTES: usize = 63;
/// An annotation value kept; longer ones (such as
/// `kubectl.kubernetes.io/last-applied-configuration`) are dropped: tenant
/// and policy annotations are short.
pub const MAX_ANNOTATION_VALUE_BYTES: usize = 4_096;
/// A pod, namespace or container name (a DNS subdomain at most).
pub const MAX_NAME_BYTES: usize = 253;
/// A pod UID, sandbox id or container id.
pub const MAX_ID_BYTES: usize = 128;
/// An image name.
pub const MAX_IMAGE_BYTES: usize = 1_024;
/// The largest gRPC answer decoded: kubelet's own limit is 16 MiB; half of
/// it holds hundreds of pods with large annotations.
pub const MAX_MESSAGE_BYTES: usize = 8 * 1024 * 1024;
/// Skipped entries reported in detail per refresh (the rest are counted).
pub const MAX_SKIPPED_KEPT: usize = 32;

/// The CRI version this client speaks.
pub const CRI_VERSION: &str = "v1";

/// A pod, from its sandbox.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pod {
    /// The pod's UID, lower case.
    pub uid: String,
    pub name: String,
    pub namespace: String,
    /// The sandbox (pause container) id, lower case.
    pub sandbox_id: String,
    /// The pod's labels, without the `io.kubernetes.pod.*` ones kubelet
    /// adds to the sandbox.
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    /// When the sandbox was created, in nanoseconds since the epoch.
    pub created_ns: i64,
    /// Whether the sandbox is ready (a pod whose sandbox is being replaced
    /// has a not-ready one too).
    pub ready: bool,
    /// The sandbox's attempt (kubelet makes a new sandbox on restarts).
    pub attempt: u32,
    /// Labels and annotations dropped by the caps.
    pub dropped: u32,
}

/// A container of a pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Container {
    /// The runtime's container id, lower case.
    pub id: String,
    /// The pod's UID, lower case (from the sandbox when it is known, else
    /// from kubelet's `io.kubernetes.pod.uid` label).
    pub pod_uid: String,
    pub sandbox_id: String,
    /// The container's name in the pod spec.
    pub name: String,
    /// A human image name (`docker.io/library/busybox:latest`) when the
    /// runtime knows one, else its image reference or id.
    pub image: String,
    /// The image reference the runtime resolved (a digest or an id).
    pub image_ref: String,
    pub attempt: u32,
    pub created_ns: i64,
    pub running: bool,
}

/// An entry of an answer that was skipped, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Skipped {
    /// What it was (`pod sandbox 3f2a9c1e8b7d`, `container ...`).
    pub what: String,
    pub reason: String,
}

impl std::fmt::Display for Skipped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.what, self.reason)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error(
        "CRI socket {} does not exist: is the container runtime running here, and is its \
         socket mounted into residency's container (a hostPath volume, e.g. \
         /run/containerd/containerd.sock)?",
        socket.display()
    )]
    SocketMissing { socket: PathBuf },
    #[error(
        "permission denied on CRI socket {}: residency needs read-write access to it \
         (run as root, and mount the socket without readOnly)",
        socket.display()
    )]
    PermissionDenied { socket: PathBuf },
    #[error("cannot connect to CRI socket {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open a gRPC channel on CRI socket {}: {source}", socket.display())]
    Channel {
        socket: PathBuf,
        #[source]
        source: tonic::transport::Error,
    },
    #[error(
        "the container runtime on {} did not answer {call} within {after:?}",
        socket.display()
    )]
    Timeout {
        socket: PathBuf,
        call: &'static str,
        after: Duration,
    },
    #[error(
        "the container runtime on {} speaks CRI {got}, and residency needs CRI {CRI_VERSION} \
         (containerd 1.5 or later, CRI-O 1.20 or later)",
        socket.display()
    )]
    UnsupportedVersion { socket: PathBuf, got: String },
    #[error(
        "the answer to {call} from {} could not be decoded as CRI {CRI_VERSION} (a string that \
         is not UTF-8, or not a CRI message): {message}",
        socket.display()
    )]
    Decode {
        socket: PathBuf,
        call: &'static str,
        message: String,
    },
    #[error(
        "the answer to {call} from {} is larger than the {MAX_MESSAGE_BYTES} bytes residency \
         decodes: {message}",
        socket.display()
    )]
    TooLarge {
        socket: PathBuf,
        call: &'static str,
        message: String,
    },
    #[error(
        "the container runtime on {} answered {call} with {count} {what}, more than the {max} \
         residency accepts: the whole answer is refused",
        socket.display()
    )]
    TooMany {
        socket: PathBuf,
        call: &'static str,
        what: &'static str,
        count: usize,
        max: usize,
    },
    #[error("{call} on CRI socket {} failed: {code:?}: {message}", socket.display())]
    Rpc {
        socket: PathBuf,
        call: &'static str,
        code: tonic::Code,
        message: String,
    },
}

/// A gRPC channel to the CRI socket (no call made yet). The daemon uses
/// [`Cri::connect`]; test kubelets build their own clients on this.
///
/// # Errors
/// If the socket is missing, not accessible, refuses the connection, or the
/// connection takes longer than `timeout`.
pub async fn channel(socket: &Path, timeout: Duration) -> Result<Channel, CriError> {
    let path = socket.to_path_buf();
    // Dial once here for a clear error (missing, permission denied, not a
    // socket); the channel dials again on its own when it reconnects.
    let dial = tokio::time::timeout(timeout, tokio::net::UnixStream::connect(&path)).await;
    match dial {
        Err(_) => {
            return Err(CriError::Timeout {
                socket: path,
                call: "connect",
                after: timeout,
            });
        }
        Ok(Err(e)) => return Err(io_error(&path, e)),
        Ok(Ok(stream)) => drop(stream),
    }
    // The URI is required by tonic and ignored by the connector.
    let endpoint = Endpoint::from_static("http://cri.invalid").connect_timeout(timeout);
    let for_connector = path.clone();
    let connector = tower::service_fn(move |_: Uri| {
        let path = for_connector.clone();
        async move {
            tokio::net::UnixStream::connect(path)
                .await
                .map(TokioIo::new)
        }
    });
    match tokio::time::timeout(timeout, endpoint.connect_with_connector(connector)).await {
        Err(_) => Err(CriError::Timeout {
            socket: path,
            call: "connect",
            after: timeout,
        }),
        Ok(Err(source)) => Err(CriError::Channel {
            socket: path,
            source,
        }),
        Ok(Ok(channel)) => Ok(channel),
    }
}

fn io_error(socket: &Path, e: io::Error) -> CriError {
    let socket = socket.to_path_buf();
    match e.kind() {
        io::ErrorKind::NotFound => CriError::SocketMissing { socket },
        io::ErrorKind::PermissionDenied => CriError::PermissionDenied { socket },
        _ => CriError::Connect { socket, source: e },
    }
}

/// A connected CRI client.
#[derive(Debug, Clone)]
pub struct Cri {
    runtime: api::runtime_service_client::RuntimeServiceClient<Channel>,
    images: api::image_service_client::ImageServiceClient<Channel>,
    socket: PathBuf,
    timeout: Duration,
    skipped: Vec<Skipped>,
    skipped_total: usize,
}

impl Cri {
    /// Connects to the runtime's socket and checks that it speaks CRI v1.
    /// `timeout` bounds the connection and every call after it.
    ///
    /// # Errors
    /// See [`CriError`]: the socket is missing or not accessible, the
    /// runtime does not answer in time, or it does not speak CRI v1.
    pub async fn connect(socket: &Path, timeout: Duration) -> Result<Cri, CriError> {
        let channel = channel(socket, timeout).await?;
        let runtime = api::runtime_service_client::RuntimeServiceClient::new(channel.clone())
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let images = api::image_service_client::ImageServiceClient::new(channel)
            .max_decoding_message_size(MAX_MESSAGE_BYTES);
        let mut cri = Cri {
            runtime,
            images,
            socket: socket.to_path_buf(),
            timeout,
            skipped: Vec::new(),
            skipped_total: 0,
        };
        cri.version().await?;
        Ok(cri)
    }

    /// The socket this client talks to.
    #[must_use]
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// The runtime's name and version (`containerd 1.6.20~ds1`), after
    /// checking that it speaks CRI v1.
    ///
    /// # Errors
    /// If the call fails or the runtime speaks another CRI version.
    pub async fn version(&mut self) -> Result<String, CriError> {
        let request = api::VersionRequest {
            version: CRI_VERSION.to_owned(),
        };
        let mut client = self.runtime.clone();
        let answer = self.call("Version", client.version(request)).await;
        let v = match answer {
            Ok(v) => v,
            // A runtime without runtime.v1.RuntimeService (containerd
            // before 1.5 serves only v1alpha2).
            Err(CriError::Rpc {
                code: tonic::Code::Unimplemented,
                ..
            }) => {
                return Err(CriError::UnsupportedVersion {
                    socket: self.socket.clone(),
                    got: "other than v1 (runtime.v1.RuntimeService is not served)".to_owned(),
                });
            }
            Err(e) => return Err(e),
        };
        if v.runtime_api_version != CRI_VERSION {
            return Err(CriError::UnsupportedVersion {
                socket: self.socket.clone(),
                got: format!("{:?}", v.runtime_api_version),
            });
        }
        Ok(format!(
            "{} {}",
            clip(&v.runtime_name, 64),
            clip(&v.runtime_version, 64)
        ))
    }

    /// Every pod sandbox, ready and not ready. Entries no kubelet could
    /// have made are skipped (see [`Cri::skipped`]).
    ///
    /// # Errors
    /// If the call fails, or the answer has more than [`MAX_PODS`] pods.
    pub async fn pods(&mut self) -> Result<Vec<Pod>, CriError> {
        self.clear_skipped();
        let mut client = self.runtime.clone();
        let answer = self
            .call(
                "ListPodSandbox",
                client.list_pod_sandbox(api::ListPodSandboxRequest { filter: None }),
            )
            .await?;
        self.check_count("ListPodSandbox", "pods", answer.items.len(), MAX_PODS)?;
        let mut pods = Vec::with_capacity(answer.items.len());
        for item in answer.items {
            match pod_from(item) {
                Ok(p) => pods.push(p),
                Err(s) => self.skip(s),
            }
        }
        Ok(pods)
    }

    /// Every container, with a human image name where the runtime has one
    /// (kubelet creates containers from an image id, so the name comes
    /// from the runtime's image list).
    ///
    /// # Errors
    /// If a call fails, or an answer has more than [`MAX_CONTAINERS`]
    /// containers or [`MAX_IMAGES`] images.
    pub async fn containers(&mut self) -> Result<Vec<Container>, CriError> {
        self.clear_skipped();
        let mut client = self.runtime.clone();
        let answer = self
            .call(
                "ListContainers",
                client.list_containers(api::ListContainersRequest { filter: None }),
            )
            .await?;
        self.check_count(
            "ListContainers",
            "containers",
            answer.containers.len(),
            MAX_CONTAINERS,
        )?;
        let mut images = self.images.clone();
        let list = self
            .call(
                "ListImages",
                images.list_images(api::ListImagesRequest { filter: None }),
            )
            .await?;
        self.check_count("ListImages", "images", list.images.len(), MAX_IMAGES)?;
        let names = image_names(&list.images);
        let mut out = Vec::with_capacity(answer.containers.len());
        for c in answer.containers {
            match container_from(c, &names) {
                Ok(c) => out.push(c),
                Err(s) => self.skip(s),
            }
        }
        Ok(out)
    }

    /// What the last [`Cri::pods`] or [`Cri::containers`] skipped (at most
    /// [`MAX_SKIPPED_KEPT`] in detail).
    #[must_use]
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// How many entries the last listing skipped, all told.
    #[must_use]
    pub fn skipped_total(&self) -> usize {
        self.skipped_total
    }

    fn clear_skipped(&mut self) {
        self.skipped.clear();
        self.skipped_total = 0;
    }

    fn skip(&mut self, s: Skipped) {
        self.skipped_total += 1;
        if self.skipped.len() < MAX_SKIPPED_KEPT {
            self.skipped.push(s);
        }
    }

    fn check_count(
        &self,
        call: &'static str,
        what: &'static str,
        count: usize,
        max: usize,
    ) -> Result<(), CriError> {
        check_count(&self.socket, call, what, count, max)
    }

    async fn call<T>(
        &self,
        call: &'static str,
        fut: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, CriError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Err(_) => Err(CriError::Timeout {
                socket: self.socket.clone(),
                call,
                after: self.timeout,
            }),
            Ok(Err(status)) => Err(status_error(&self.socket, call, &status)),
            Ok(Ok(r)) => Ok(r.into_inner()),
        }
    }
}

fn check_count(
    socket: &Path,
    call: &'static str,
    what: &'static str,
    count: usize,
    max: usize,
) -> Result<(), CriError> {
    if count > max {
        return Err(CriError::TooMany {
            socket: socket.to_path_buf(),
            call,
            what,
            count,
            max,
        });
    }
    Ok(())
}

/// A gRPC status as a [`CriError`] that says what went wrong.
fn status_error(socket: &Path, call: &'static str, status: &tonic::Status) -> CriError {
    let socket = socket.to_path_buf();
    let message = clip(status.message(), 512);
    let lower = message.to_ascii_lowercase();
    match status.code() {
        tonic::Code::Internal if lower.contains("decode") => CriError::Decode {
            socket,
            call,
            message,
        },
        tonic::Code::OutOfRange | tonic::Code::ResourceExhausted
            if lower.contains("message length too large")
                || lower.contains("too large")
                || lower.contains("exceeds") =>
        {
            CriError::TooLarge {
                socket,
                call,
                message,
            }
        }
        tonic::Code::DeadlineExceeded => CriError::Timeout {
            socket,
            call,
            after: Duration::ZERO,
        },
        code => CriError::Rpc {
            socket,
            call,
            code,
            message,
        },
    }
}

/// At most `max` bytes of `s`, cut at a character boundary.
fn clip(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

/// A short form of an id for messages.
fn short(id: &str) -> String {
    clip(&id.escape_debug().to_string(), 16)
}

/// An id (pod UID, sandbox or container id): ASCII letters, digits, `-`,
/// `_`, `.`, at most [`MAX_ID_BYTES`]; lower-cased, as the cgroup parser
/// gives them.
fn valid_id(s: &str) -> Option<String> {
    let ok = !s.is_empty()
        && s.len() <= MAX_ID_BYTES
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    ok.then(|| s.to_ascii_lowercase())
}

/// A Kubernetes name (pod, namespace, container): letters, digits, `-`,
/// `.`, `_`, at most [`MAX_NAME_BYTES`].
fn valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_BYTES
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// The labels kubelet adds to a sandbox, which are not the pod's.
const KUBELET_SANDBOX_LABELS: [&str; 4] = [
    "io.kubernetes.pod.name",
    "io.kubernetes.pod.namespace",
    "io.kubernetes.pod.uid",
    "io.kubernetes.container.name",
];

/// Keeps at most `max` entries (by key order) whose key and value fit;
/// returns them and how many were dropped.
fn capped(
    map: HashMap<String, String>,
    max: usize,
    max_value: usize,
    keep: impl Fn(&str, &str) -> bool,
) -> (BTreeMap<String, String>, u32) {
    let total = map.len();
    let sorted: BTreeMap<String, String> = map
        .into_iter()
        .filter(|(k, v)| {
            !k.is_empty()
                && k.len() <= MAX_KEY_BYTES
                && !k.chars().any(char::is_control)
                && v.len() <= max_value
                && keep(k, v)
        })
        .collect();
    let kept: BTreeMap<String, String> = sorted.into_iter().take(max).collect();
    let excluded = total - kept.len();
    (kept, u32::try_from(excluded).unwrap_or(u32::MAX))
}

/// A pod from a sandbox, or why it was skipped.
///
/// # Errors
/// A [`Skipped`] when no kubelet could have made this sandbox.
pub fn pod_from(s: api::PodSandbox) -> Result<Pod, Skipped> {
    let what = format!("pod sandbox {}", short(&s.id));
    let skip = |reason: String| Skipped {
        what: what.clone(),
        reason,
    };
    let sandbox_id = valid_id(&s.id)
        .ok_or_else(|| skip("the sandbox id is empty, too long or not an id".into()))?;
    let meta = s
        .metadata
        .ok_or_else(|| skip("it has no metadata (name, namespace, uid)".into()))?;
    let uid = valid_id(&meta.uid).ok_or_else(|| {
        skip(format!(
            "its pod UID {} is empty, too long or not a UID",
            short(&meta.uid)
        ))
    })?;
    for (field, value) in [("name", &meta.name), ("namespace", &meta.namespace)] {
        if !valid_name(value) {
            return Err(skip(format!(
                "its {field} {} is empty, longer than {MAX_NAME_BYTES} bytes or has characters \
                 Kubernetes does not allow",
                clip(&value.escape_debug().to_string(), 64)
            )));
        }
    }
    // kubelet's own labels on the sandbox, when they say what the
    // metadata says: not the pod's, and not counted as dropped.
    let kubelets = |k: &str, v: &str| {
        KUBELET_SANDBOX_LABELS.contains(&k)
            && (v == meta.name
                || v == meta.namespace
                || v.eq_ignore_ascii_case(&meta.uid)
                || v == "POD")
    };
    let kubelet_labels = s.labels.iter().filter(|(k, v)| kubelets(k, v)).count();
    let (labels, dropped_labels) = capped(s.labels, MAX_LABELS, MAX_LABEL_VALUE_BYTES, |k, v| {
        !kubelets(k, v) && !v.chars().any(char::is_control)
    });
    let (annotations, dropped_annotations) = capped(
        s.annotations,
        MAX_ANNOTATIONS,
        MAX_ANNOTATION_VALUE_BYTES,
        |_, _| true,
    );
    let dropped_labels = dropped_labels.saturating_sub(u32::try_from(kubelet_labels).unwrap_or(0));
    Ok(Pod {
        uid,
        name: meta.name,
        namespace: meta.namespace,
        sandbox_id,
        labels,
        annotations,
        created_ns: s.created_at,
        ready: s.state == api::PodSandboxState::SandboxReady as i32,
        attempt: meta.attempt,
        dropped: dropped_labels.saturating_add(dropped_annotations),
    })
}

/// Image ids and digests (`sha256:...`, `name@sha256:...`), each to the
/// image's first tag (or first digest when it has no tag).
fn image_names(images: &[api::Image]) -> HashMap<String, String> {
    let mut names = HashMap::new();
    for img in images {
        let Some(name) = img
            .repo_tags
            .iter()
            .chain(&img.repo_digests)
            .find(|n| n.len() <= MAX_IMAGE_BYTES && !n.chars().any(char::is_control))
        else {
            continue;
        };
        for key in std::iter::once(&img.id).chain(&img.repo_digests) {
            names.insert(key.clone(), name.clone());
        }
    }
    names
}

/// Whether an image string names a repository rather than being a bare id.
fn is_human(image: &str) -> bool {
    let bare = image.strip_prefix("sha256:").unwrap_or(image);
    !(image.starts_with("sha256:")
        || (bare.len() == 64 && bare.bytes().all(|b| b.is_ascii_hexdigit())))
}

/// A container, or why it was skipped. `names` maps image ids and digests
/// to a tag.
///
/// # Errors
/// A [`Skipped`] when no kubelet could have made this container.
pub fn container_from<S: std::hash::BuildHasher>(
    c: api::Container,
    names: &HashMap<String, String, S>,
) -> Result<Container, Skipped> {
    let what = format!("container {}", short(&c.id));
    let skip = |reason: String| Skipped {
        what: what.clone(),
        reason,
    };
    let id = valid_id(&c.id)
        .ok_or_else(|| skip("the container id is empty, too long or not an id".into()))?;
    let sandbox_id = valid_id(&c.pod_sandbox_id)
        .ok_or_else(|| skip("its sandbox id is empty, too long or not an id".into()))?;
    let meta = c
        .metadata
        .ok_or_else(|| skip("it has no metadata (name)".into()))?;
    if !valid_name(&meta.name) {
        return Err(skip(format!(
            "its name {} is empty, longer than {MAX_NAME_BYTES} bytes or has characters \
             Kubernetes does not allow",
            clip(&meta.name.escape_debug().to_string(), 64)
        )));
    }
    let pod_uid = c
        .labels
        .get("io.kubernetes.pod.uid")
        .and_then(|u| valid_id(u))
        .unwrap_or_default();
    let spec = c.image.unwrap_or_default();
    let usable =
        |s: &str| !s.is_empty() && s.len() <= MAX_IMAGE_BYTES && !s.chars().any(char::is_control);
    let candidates: Vec<&str> = [
        spec.user_specified_image.as_str(),
        spec.image.as_str(),
        c.image_ref.as_str(),
        c.image_id.as_str(),
    ]
    .into_iter()
    .filter(|s| usable(s))
    .collect();
    // A tag beats a digest beats an id: a tag the container carries, else
    // the runtime's tag for the id or digest it names, else a digest.
    let image = candidates
        .iter()
        .find(|s| is_human(s) && !s.contains('@'))
        .map(|s| (*s).to_owned())
        .or_else(|| candidates.iter().find_map(|s| names.get(*s).cloned()))
        .or_else(|| {
            candidates
                .iter()
                .find(|s| is_human(s))
                .map(|s| (*s).to_owned())
        })
        .or_else(|| candidates.first().map(|s| (*s).to_owned()))
        .unwrap_or_default();
    let image_ref = [
        c.image_ref.as_str(),
        c.image_id.as_str(),
        spec.image.as_str(),
    ]
    .into_iter()
    .find(|s| usable(s))
    .unwrap_or_default()
    .to_owned();
    Ok(Container {
        id,
        pod_uid,
        sandbox_id,
        name: meta.name,
        image,
        image_ref,
        attempt: meta.attempt,
        created_ns: c.created_at,
        running: c.state == api::ContainerState::ContainerRunning as i32,
    })
}

/// What the node runs now, by pod UID, sandbox id and container id,
/// refreshed from the CRI. A refresh that fails leaves the index as it was.
#[derive(Debug, Clone, Default)]
pub struct PodIndex {
    /// By pod UID: the pod's current sandbox.
    pods: HashMap<String, Pod>,
    /// Every sandbox id (older attempts too) to its pod's UID.
    sandboxes: HashMap<String, String>,
    containers: HashMap<String, Container>,
    skipped: Vec<Skipped>,
    skipped_total: usize,
}

impl PodIndex {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An index of the given pods and containers. Of several sandboxes of
    /// one pod, the ready one wins, then the newest. A container whose
    /// sandbox is not listed keeps the UID of its kubelet label; one with
    /// neither is skipped.
    #[must_use]
    pub fn build(pods: Vec<Pod>, containers: Vec<Container>) -> Self {
        let mut index = PodIndex::default();
        for pod in pods {
            index
                .sandboxes
                .insert(pod.sandbox_id.clone(), pod.uid.clone());
            let better = match index.pods.get(&pod.uid) {
                None => true,
                Some(old) => {
                    (pod.ready, pod.created_ns, pod.attempt)
                        > (old.ready, old.created_ns, old.attempt)
                }
            };
            if better {
                index.pods.insert(pod.uid.clone(), pod);
            }
        }
        for mut c in containers {
            match index.sandboxes.get(&c.sandbox_id) {
                Some(uid) => c.pod_uid.clone_from(uid),
                None if !c.pod_uid.is_empty() => {}
                None => {
                    index.note(Skipped {
                        what: format!("container {}", short(&c.id)),
                        reason: format!(
                            "its sandbox {} is not listed and it has no pod UID label",
                            short(&c.sandbox_id)
                        ),
                    });
                    continue;
                }
            }
            index.containers.insert(c.id.clone(), c);
        }
        index
    }

    /// Lists pods and containers again and replaces the index; on error
    /// the index stays as it was.
    ///
    /// # Errors
    /// What [`Cri::pods`] and [`Cri::containers`] return.
    pub async fn refresh(&mut self, cri: &mut Cri) -> Result<(), CriError> {
        let pods = cri.pods().await?;
        let mut skipped = cri.skipped().to_vec();
        let mut total = cri.skipped_total();
        let containers = cri.containers().await?;
        skipped.extend_from_slice(cri.skipped());
        total += cri.skipped_total();
        let mut index = PodIndex::build(pods, containers);
        index.skipped_total += total;
        skipped.append(&mut index.skipped);
        skipped.truncate(MAX_SKIPPED_KEPT);
        index.skipped = skipped;
        *self = index;
        Ok(())
    }

    fn note(&mut self, s: Skipped) {
        self.skipped_total += 1;
        if self.skipped.len() < MAX_SKIPPED_KEPT {
            self.skipped.push(s);
        }
    }

    /// The pod of a UID (any case).
    #[must_use]
    pub fn pod(&self, uid: &str) -> Option<&Pod> {
        self.pods
            .get(uid)
            .or_else(|| self.pods.get(&uid.to_ascii_lowercase()))
    }

    /// The pod a sandbox id belongs to (older sandboxes of it too).
    #[must_use]
    pub fn pod_by_sandbox(&self, sandbox_id: &str) -> Option<&Pod> {
        self.pod(self.sandboxes.get(&sandbox_id.to_ascii_lowercase())?)
    }

    /// A container by id (any case).
    #[must_use]
    pub fn container(&self, id: &str) -> Option<&Container> {
        self.containers
            .get(id)
            .or_else(|| self.containers.get(&id.to_ascii_lowercase()))
    }

    /// Every pod (the current sandbox of each).
    pub fn pods(&self) -> impl Iterator<Item = &Pod> {
        self.pods.values()
    }

    /// Every container.
    pub fn containers(&self) -> impl Iterator<Item = &Container> {
        self.containers.values()
    }

    /// What the last refresh skipped (at most [`MAX_SKIPPED_KEPT`]).
    #[must_use]
    pub fn skipped(&self) -> &[Skipped] {
        &self.skipped
    }

    /// How many entries the last refresh skipped, all told.
    #[must_use]
    pub fn skipped_total(&self) -> usize {
        self.skipped_total
    }

    /// The pod and container a cgroup path (relative to the cgroup2
    /// mount, as in `/proc/PID/cgroup`) belongs to: [`parse`], then
    /// lookups. A path of the pod's own cgroup, of one of its sandboxes
    /// (the pause container), of CRI-O's monitor, or of a container the
    /// index does not know yet (started since the last refresh) gives the
    /// pod and no container. A container listed under another pod than
    /// the path's gives no container either.
    #[must_use]
    pub fn resolve(&self, cgroup_path: &str) -> Option<(&Pod, Option<&Container>)> {
        let parsed = parse(cgroup_path)?;
        let pod = self.pod(&parsed.uid)?;
        let container = parsed
            .container
            .filter(|c| !c.conmon && !self.sandboxes.contains_key(&c.id))
            .and_then(|c| self.container(&c.id))
            .filter(|c| c.pod_uid == pod.uid);
        Some((pod, container))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID_A: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
    const UID_B: &str = "11111111-2222-3333-4444-555555555555";

    fn id(n: u8) -> String {
        format!("{n:02x}").repeat(32)
    }

    fn sandbox(uid: &str, name: &str, ns: &str, sid: &str) -> api::PodSandbox {
        api::PodSandbox {
            id: sid.to_owned(),
            metadata: Some(api::PodSandboxMetadata {
                name: name.into(),
                uid: uid.into(),
                namespace: ns.into(),
                attempt: 0,
            }),
            state: api::PodSandboxState::SandboxReady as i32,
            created_at: 1,
            labels: HashMap::from([
                ("app".into(), name.into()),
                ("io.kubernetes.pod.name".into(), name.into()),
                ("io.kubernetes.pod.namespace".into(), ns.into()),
                ("io.kubernetes.pod.uid".into(), uid.into()),
            ]),
            annotations: HashMap::from([("residency.io/tenant".into(), "eu-1".into())]),
            runtime_handler: String::new(),
        }
    }

    fn container(cid: &str, sid: &str, name: &str, image: &str) -> api::Container {
        api::Container {
            id: cid.into(),
            pod_sandbox_id: sid.into(),
            metadata: Some(api::ContainerMetadata {
                name: name.into(),
                attempt: 0,
            }),
            image: Some(api::ImageSpec {
                image: image.into(),
                ..Default::default()
            }),
            image_ref: image.into(),
            state: api::ContainerState::ContainerRunning as i32,
            created_at: 2,
            labels: HashMap::new(),
            annotations: HashMap::new(),
            image_id: String::new(),
        }
    }

    fn index() -> PodIndex {
        let pods = vec![
            pod_from(sandbox(UID_A, "web", "shop", &id(0xa0))).unwrap(),
            pod_from(sandbox(UID_B, "sync", "crm", &id(0xb0))).unwrap(),
        ];
        let img = format!("sha256:{}", id(0xee));
        let names = HashMap::from([(img.clone(), "docker.io/library/busybox:1".to_owned())]);
        let containers = vec![
            container_from(container(&id(0xa1), &id(0xa0), "app", &img), &names).unwrap(),
            container_from(
                container(&id(0xb1), &id(0xb0), "agent", "registry.example/agent:2"),
                &names,
            )
            .unwrap(),
        ];
        PodIndex::build(pods, containers)
    }

    #[test]
    fn a_pod_keeps_its_own_labels_not_kubelets() {
        let p = pod_from(sandbox(UID_A, "web", "shop", &id(0xa0))).unwrap();
        assert_eq!(p.uid, UID_A);
        assert_eq!((p.name.as_str(), p.namespace.as_str()), ("web", "shop"));
        assert_eq!(
            p.labels,
            BTreeMap::from([("app".to_owned(), "web".to_owned())])
        );
        assert_eq!(p.annotations["residency.io/tenant"], "eu-1");
        assert!(p.ready);
        assert_eq!(p.dropped, 0);
    }

    #[test]
    fn resolve_gives_pod_and_container_for_every_layout() {
        let ix = index();
        let a1 = id(0xa1);
        for path in [
            format!("/kubepods/besteffort/pod{UID_A}/{a1}"),
            format!("/residency-test-1/kubepods/pod{UID_A}/{a1}"),
            format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{a1}.scope",
                UID_A.replace('-', "_")
            ),
        ] {
            let (pod, c) = ix.resolve(&path).unwrap();
            assert_eq!(pod.name, "web", "{path}");
            let c = c.unwrap();
            assert_eq!(c.name, "app");
            assert_eq!(c.pod_uid, UID_A);
            assert_eq!(
                c.image, "docker.io/library/busybox:1",
                "tag from the image list"
            );
        }
        let (pod, c) = ix
            .resolve(&format!("/kubepods/pod{UID_B}/{}", id(0xb1)))
            .unwrap();
        assert_eq!(
            (pod.namespace.as_str(), c.unwrap().image.as_str()),
            ("crm", "registry.example/agent:2")
        );
    }

    #[test]
    fn the_sandbox_the_pod_cgroup_and_unknown_containers_give_the_pod_alone() {
        let ix = index();
        for path in [
            format!("/kubepods/besteffort/pod{UID_A}/{}", id(0xa0)),
            format!("/kubepods/besteffort/pod{UID_A}"),
            format!("/kubepods/besteffort/pod{UID_A}/{}", id(0xcc)),
            format!("/kubepods/besteffort/pod{UID_A}/crio-conmon-{}", id(0xa1)),
            // B's container under A's pod cgroup: not A's container.
            format!("/kubepods/besteffort/pod{UID_A}/{}", id(0xb1)),
        ] {
            let (pod, c) = ix.resolve(&path).unwrap();
            assert_eq!(pod.uid, UID_A, "{path}");
            assert!(c.is_none(), "{path}");
        }
        assert!(ix.resolve("/system.slice/containerd.service").is_none());
        assert!(
            ix.resolve("/kubepods/pod99999999-9999-9999-9999-999999999999")
                .is_none()
        );
        assert_eq!(ix.pod_by_sandbox(&id(0xb0)).unwrap().name, "sync");
        assert_eq!(ix.pod(&UID_A.to_uppercase()).unwrap().name, "web");
    }

    #[test]
    fn the_ready_sandbox_of_a_restarted_pod_wins() {
        let mut old = sandbox(UID_A, "web", "shop", &id(0x01));
        old.created_at = 5;
        let mut new = sandbox(UID_A, "web", "shop", &id(0x02));
        new.created_at = 3;
        old.state = api::PodSandboxState::SandboxNotready as i32;
        let ix = PodIndex::build(
            vec![pod_from(new).unwrap(), pod_from(old).unwrap()],
            vec![
                container_from(
                    container(&id(0x11), &id(0x01), "app", "x:1"),
                    &HashMap::new(),
                )
                .unwrap(),
            ],
        );
        assert_eq!(ix.pod(UID_A).unwrap().sandbox_id, id(0x02));
        // The old attempt's container still belongs to the pod.
        let (_, c) = ix
            .resolve(&format!("/kubepods/pod{UID_A}/{}", id(0x11)))
            .unwrap();
        assert_eq!(c.unwrap().name, "app");
        // Either sandbox's own cgroup is the pod's, not a container.
        let (_, c) = ix
            .resolve(&format!("/kubepods/pod{UID_A}/{}", id(0x01)))
            .unwrap();
        assert!(c.is_none());
    }

    #[test]
    fn hostile_pods_are_skipped_with_a_reason() {
        let mut no_meta = sandbox(UID_A, "web", "shop", &id(1));
        no_meta.metadata = None;
        let mut bad_name = sandbox(UID_A, "web\nFAKE LOG LINE", "shop", &id(1));
        bad_name.labels.clear();
        let long_ns = sandbox(UID_A, "web", &"n".repeat(300), &id(1));
        let bad_uid = sandbox("../../etc", "web", "shop", &id(1));
        let empty_id = sandbox(UID_A, "web", "shop", "");
        let long_id = sandbox(UID_A, "web", "shop", &"a".repeat(200));
        for (s, want) in [
            (no_meta, "no metadata"),
            (bad_name, "name"),
            (long_ns, "namespace"),
            (bad_uid, "UID"),
            (empty_id, "sandbox id"),
            (long_id, "sandbox id"),
        ] {
            let e = pod_from(s).unwrap_err();
            assert!(e.reason.contains(want), "{e}");
            assert!(!e.to_string().contains('\n'), "{e}");
        }
        let mut no_meta = container(&id(1), &id(2), "app", "x");
        no_meta.metadata = None;
        assert!(
            container_from(no_meta, &HashMap::new())
                .unwrap_err()
                .reason
                .contains("no metadata")
        );
    }

    #[test]
    fn labels_and_annotations_are_capped_and_counted() {
        let mut s = sandbox(UID_A, "web", "shop", &id(1));
        for i in 0..200 {
            s.labels.insert(format!("k{i:03}"), "v".into());
            s.annotations.insert(format!("a{i:03}"), "v".into());
        }
        s.labels.insert("long-value".into(), "v".repeat(64));
        s.labels.insert("k".repeat(400), "v".into());
        s.labels.insert("ctl".into(), "a\u{7}b".into());
        s.annotations.insert(
            "kubectl.kubernetes.io/last-applied-configuration".into(),
            "x".repeat(10_000),
        );
        let p = pod_from(s).unwrap();
        assert_eq!(p.labels.len(), MAX_LABELS);
        assert_eq!(p.annotations.len(), MAX_ANNOTATIONS);
        assert!(!p.labels.contains_key("long-value"));
        assert!(!p.labels.contains_key("ctl"));
        // 201 labels of the pod's own (app + 200) + 3 bad, 64 kept;
        // 201 + 1 annotations, 64 kept.
        assert_eq!(p.dropped, (201 + 3 - 64) + (202 - 64));
    }

    #[test]
    fn absurd_counts_are_refused_whole() {
        let e = check_count(
            Path::new("/run/x.sock"),
            "ListPodSandbox",
            "pods",
            MAX_PODS + 1,
            MAX_PODS,
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("5001 pods") && msg.contains("refused"),
            "{msg}"
        );
        assert!(check_count(Path::new("/x"), "c", "pods", MAX_PODS, MAX_PODS).is_ok());
    }

    #[test]
    fn non_utf8_strings_fail_decoding_and_say_so() {
        use prost::Message as _;
        // ListPodSandboxResponse { items: [PodSandbox { id: b"\xff" }] }
        let bytes = [0x0a, 0x03, 0x0a, 0x01, 0xff];
        let e = api::ListPodSandboxResponse::decode(&bytes[..]).unwrap_err();
        // tonic turns a decode error into Internal with prost's message.
        let status = tonic::Status::internal(format!("failed to decode Protobuf message: {e}"));
        let err = status_error(Path::new("/run/c.sock"), "ListPodSandbox", &status);
        assert!(matches!(err, CriError::Decode { .. }), "{err}");
        assert!(err.to_string().contains("UTF-8"), "{err}");
    }

    #[test]
    fn image_names_prefer_a_tag() {
        let images = vec![api::Image {
            id: format!("sha256:{}", id(0xee)),
            repo_tags: vec!["docker.io/library/busybox:latest".into()],
            repo_digests: vec![format!("docker.io/library/busybox@sha256:{}", id(0xdd))],
            ..Default::default()
        }];
        let names = image_names(&images);
        let by_digest = container(
            &id(1),
            &id(2),
            "app",
            &format!("docker.io/library/busybox@sha256:{}", id(0xdd)),
        );
        assert_eq!(
            container_from(by_digest, &names).unwrap().image,
            "docker.io/library/busybox:latest"
        );
        let unknown = container(&id(1), &id(2), "app", &format!("sha256:{}", id(0x99)));
        assert_eq!(
            container_from(unknown, &names).unwrap().image,
            format!("sha256:{}", id(0x99))
        );
        let mut user = container(&id(1), &id(2), "app", &format!("sha256:{}", id(0xee)));
        if let Some(spec) = user.image.as_mut() {
            spec.user_specified_image = "busybox".into();
        }
        assert_eq!(container_from(user, &names).unwrap().image, "busybox");
    }

    #[tokio::test]
    async fn a_missing_socket_says_which_and_to_mount_it() {
        let e = Cri::connect(
            Path::new("/nonexistent/residency/containerd.sock"),
            Duration::from_secs(1),
        )
        .await
        .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, CriError::SocketMissing { .. }), "{msg}");
        assert!(
            msg.contains("/nonexistent/residency/containerd.sock") && msg.contains("mounted"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn a_runtime_that_never_answers_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("silent.sock");
        // Accepts connections and never says a word.
        let listener = tokio::net::UnixListener::bind(&path).unwrap();
        let hold = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((s, _)) = listener.accept().await {
                held.push(s);
            }
        });
        let started = std::time::Instant::now();
        let e = Cri::connect(&path, Duration::from_millis(300))
            .await
            .unwrap_err();
        assert!(matches!(e, CriError::Timeout { .. }), "{e}");
        assert!(started.elapsed() < Duration::from_secs(3));
        assert!(e.to_string().contains("did not answer"), "{e}");
        hold.abort();
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("plain");
        std::fs::write(&path, "").unwrap();
        let e = Cri::connect(&path, Duration::from_secs(1))
            .await
            .unwrap_err();
        assert!(e.to_string().contains(&path.display().to_string()), "{e}");
    }
}
