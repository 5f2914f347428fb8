//! The CRI reader against a fake runtime that answers what a broken or
//! hostile one could: another CRI version, strings that are not UTF-8,
//! too many pods, an answer too large, pods without metadata. The real
//! client (tonic, prost) decodes each answer; nothing may panic, and each
//! error must say what went wrong.

use std::{
    collections::HashMap,
    convert::Infallible,
    path::{Path, PathBuf},
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use hyper::{
    HeaderMap, Request, Response,
    body::{Body, Bytes, Frame, Incoming},
    header::{CONTENT_TYPE, HeaderValue},
};
use hyper_util::rt::{TokioExecutor, TokioIo};
use k8s_cri::v1 as api;
use prost::Message as _;
use residency_pods::cri::{Cri, CriError, MAX_PODS, PodIndex};

/// One gRPC answer: a length-prefixed message, then `grpc-status: 0`.
struct Answer {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if let Some(d) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(d))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }
}

/// A fake runtime on a unix socket answering each gRPC method (by path)
/// with the given message bytes; `Version` says CRI `api_version`.
struct Fake {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Fake {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn version(api_version: &str) -> Vec<u8> {
    api::VersionResponse {
        version: "0.1.0".into(),
        runtime_name: "fake".into(),
        runtime_version: "1.0".into(),
        runtime_api_version: api_version.into(),
    }
    .encode_to_vec()
}

fn fake(answers: Vec<(&str, Vec<u8>)>) -> Fake {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let socket = dir.path().join("fake.sock");
    let listener = tokio::net::UnixListener::bind(&socket).expect("binding the fake socket");
    let answers: Arc<HashMap<String, Bytes>> = Arc::new(
        answers
            .into_iter()
            .map(|(path, msg)| {
                let mut framed = Vec::with_capacity(msg.len() + 5);
                framed.push(0);
                framed.extend_from_slice(
                    &u32::try_from(msg.len()).expect("under 4 GiB").to_be_bytes(),
                );
                framed.extend_from_slice(&msg);
                (path.to_owned(), Bytes::from(framed))
            })
            .collect(),
    );
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let answers = answers.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                    let answers = answers.clone();
                    async move {
                        let mut trailers = HeaderMap::new();
                        let data = answers.get(req.uri().path()).cloned();
                        let status = if data.is_some() { "0" } else { "12" }; // UNIMPLEMENTED
                        trailers.insert("grpc-status", HeaderValue::from_static(status));
                        let mut resp = Response::new(Answer {
                            data,
                            trailers: Some(trailers),
                        });
                        resp.headers_mut()
                            .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Fake {
        _dir: dir,
        socket,
        task,
    }
}

async fn connect(socket: &Path) -> Result<Cri, CriError> {
    Cri::connect(socket, Duration::from_secs(5)).await
}

fn with_version(mut answers: Vec<(&'static str, Vec<u8>)>) -> Vec<(&'static str, Vec<u8>)> {
    answers.push(("/runtime.v1.RuntimeService/Version", version("v1")));
    answers
}

#[tokio::test]
async fn another_cri_version_is_refused_by_name() {
    let f = fake(vec![(
        "/runtime.v1.RuntimeService/Version",
        version("v1alpha2"),
    )]);
    let e = connect(&f.socket).await.unwrap_err();
    assert!(matches!(e, CriError::UnsupportedVersion { .. }), "{e}");
    assert!(e.to_string().contains("\"v1alpha2\""), "{e}");
    // A runtime that does not serve runtime.v1 at all.
    let f = fake(vec![]);
    let e = connect(&f.socket).await.unwrap_err();
    assert!(matches!(e, CriError::UnsupportedVersion { .. }), "{e}");
}

#[tokio::test]
async fn a_string_that_is_not_utf8_fails_the_answer_with_a_decode_error() {
    // ListPodSandboxResponse { items: [PodSandbox { id: b"\xff" }] }
    let f = fake(with_version(vec![(
        "/runtime.v1.RuntimeService/ListPodSandbox",
        vec![0x0a, 0x03, 0x0a, 0x01, 0xff],
    )]));
    let mut cri = connect(&f.socket).await.unwrap();
    let e = cri.pods().await.unwrap_err();
    assert!(matches!(e, CriError::Decode { .. }), "{e}");
    assert!(e.to_string().contains("UTF-8"), "{e}");
}

#[tokio::test]
async fn too_many_pods_are_refused_and_the_index_stays() {
    let many = api::ListPodSandboxResponse {
        items: vec![api::PodSandbox::default(); MAX_PODS + 1],
    };
    let f = fake(with_version(vec![(
        "/runtime.v1.RuntimeService/ListPodSandbox",
        many.encode_to_vec(),
    )]));
    let mut cri = connect(&f.socket).await.unwrap();
    let e = cri.pods().await.unwrap_err();
    assert!(
        matches!(e, CriError::TooMany { count, .. } if count == MAX_PODS + 1),
        "{e}"
    );
    let mut index = PodIndex::new();
    assert!(index.refresh(&mut cri).await.is_err());
    assert_eq!(index.pods().count(), 0);
}

#[tokio::test]
async fn an_answer_larger_than_the_cap_is_refused_before_decoding() {
    let big = api::ListPodSandboxResponse {
        items: vec![api::PodSandbox {
            id: "x".repeat(9 * 1024 * 1024),
            ..Default::default()
        }],
    };
    let f = fake(with_version(vec![(
        "/runtime.v1.RuntimeService/ListPodSandbox",
        big.encode_to_vec(),
    )]));
    let mut cri = connect(&f.socket).await.unwrap();
    let e = cri.pods().await.unwrap_err();
    assert!(matches!(e, CriError::TooLarge { .. }), "{e}");
    eprintln!("{e}");
}

#[tokio::test]
async fn pods_without_metadata_are_skipped_and_the_rest_kept() {
    let uid = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";
    let sid = "ab".repeat(32);
    let cid = "cd".repeat(32);
    let pods = api::ListPodSandboxResponse {
        items: vec![
            api::PodSandbox {
                id: "ef".repeat(32),
                ..Default::default()
            },
            api::PodSandbox {
                id: sid.clone(),
                metadata: Some(api::PodSandboxMetadata {
                    name: "web".into(),
                    uid: uid.into(),
                    namespace: "shop".into(),
                    attempt: 0,
                }),
                state: api::PodSandboxState::SandboxReady as i32,
                ..Default::default()
            },
        ],
    };
    let containers = api::ListContainersResponse {
        containers: vec![api::Container {
            id: cid.clone(),
            pod_sandbox_id: sid,
            metadata: Some(api::ContainerMetadata {
                name: "app".into(),
                attempt: 0,
            }),
            image: Some(api::ImageSpec {
                image: format!("sha256:{}", "11".repeat(32)),
                ..Default::default()
            }),
            ..Default::default()
        }],
    };
    let images = api::ListImagesResponse {
        images: vec![api::Image {
            id: format!("sha256:{}", "11".repeat(32)),
            repo_tags: vec!["docker.io/library/app:1".into()],
            ..Default::default()
        }],
    };
    let f = fake(with_version(vec![
        (
            "/runtime.v1.RuntimeService/ListPodSandbox",
            pods.encode_to_vec(),
        ),
        (
            "/runtime.v1.RuntimeService/ListContainers",
            containers.encode_to_vec(),
        ),
        (
            "/runtime.v1.ImageService/ListImages",
            images.encode_to_vec(),
        ),
    ]));
    let mut cri = connect(&f.socket).await.unwrap();
    assert_eq!(cri.version().await.unwrap(), "fake 1.0");
    let mut index = PodIndex::new();
    index.refresh(&mut cri).await.unwrap();
    assert_eq!(index.skipped_total(), 1);
    assert!(index.skipped()[0].reason.contains("no metadata"));
    let (pod, c) = index
        .resolve(&format!("/kubepods/besteffort/pod{uid}/{cid}"))
        .unwrap();
    assert_eq!((pod.name.as_str(), pod.namespace.as_str()), ("web", "shop"));
    assert_eq!(c.unwrap().image, "docker.io/library/app:1");
}
