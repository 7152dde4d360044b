//! The accept loop shared by the mirror, metrics and admin endpoints: HTTP/1 and HTTP/2 over
//! any listener, every connection watched for graceful shutdown.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::sync::CancellationToken;

/// The response body type of every endpoint.
pub type Body = BoxBody<Bytes, crate::Error>;

/// How long open connections get to finish after shutdown begins.
const DRAIN: Duration = Duration::from_secs(10);

/// Something that yields connections: a TCP or a unix listener.
pub trait Listener: Send + 'static {
    type Io: AsyncRead + AsyncWrite + Unpin + Send + 'static;
    fn accept(&self) -> impl Future<Output = std::io::Result<Self::Io>> + Send;
}

impl Listener for tokio::net::TcpListener {
    type Io = tokio::net::TcpStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        let (s, _) = tokio::net::TcpListener::accept(self).await?;
        let _ = s.set_nodelay(true);
        Ok(s)
    }
}

impl Listener for tokio::net::UnixListener {
    type Io = tokio::net::UnixStream;
    async fn accept(&self) -> std::io::Result<Self::Io> {
        tokio::net::UnixListener::accept(self).await.map(|(s, _)| s)
    }
}

/// Serves `handler` on `listener` until `cancel`, then drains open connections.
pub async fn serve<L, H, F>(listener: L, handler: H, cancel: CancellationToken)
where
    L: Listener,
    H: Fn(http::Request<Incoming>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = http::Response<Body>> + Send + 'static,
{
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
    loop {
        let io = tokio::select! {
            r = listener.accept() => match r {
                Ok(io) => io,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => break,
        };
        let h = handler.clone();
        let service = hyper::service::service_fn(move |req| {
            let h = h.clone();
            async move { Ok::<_, Infallible>(h(req).await) }
        });
        let conn = graceful.watch(builder.serve_connection_with_upgrades(TokioIo::new(io), service).into_owned());
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        });
    }
    if tokio::time::timeout(DRAIN, graceful.shutdown()).await.is_err() {
        tracing::warn!("connections still open after {DRAIN:?}; closing them");
    }
}
