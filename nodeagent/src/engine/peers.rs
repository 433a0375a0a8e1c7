//! Listening to netd and vmd: each has a task that opens its event stream, then reads the
//! problems it has open (in that order, so that nothing that changes in between is missed),
//! forwards every event, and when the stream breaks says so and tries again after a backoff
//! (read from the engine's clock). The engine turns the news into problems and events.

use std::future::Future;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::mpsc;

use super::{Msg, PeerNews};
use crate::error::{Error, Result};
use crate::problems::{OpenProblem, PeerEvent, Source};

/// Follows one peer daemon for as long as the engine runs.
pub(super) fn spawn<E, EF, P, PF>(
    source: Source,
    tx: mpsc::Sender<Msg>,
    clock: backroom_daemon::SharedClock,
    retry: backroom_daemon::Backoff,
    events: E,
    problems: P,
) where
    E: Fn() -> EF + Send + Sync + 'static,
    EF: Future<Output = Result<BoxStream<'static, Result<PeerEvent>>>> + Send,
    P: Fn() -> PF + Send + Sync + 'static,
    PF: Future<Output = Result<Vec<OpenProblem>>> + Send,
{
    let span = tracing::info_span!("peer", daemon = source.as_str());
    let run = async move {
        let mut retries = retry.retries();
        loop {
            let connected = async { Ok::<_, Error>((events().await?, problems().await?)) }.await;
            let lost = match connected {
                Ok((mut stream, open)) => {
                    retries.reset();
                    if tx.send(Msg::Peer { source, news: PeerNews::Up(open) }).await.is_err() {
                        return;
                    }
                    loop {
                        match stream.next().await {
                            Some(Ok(event)) => {
                                let news = PeerNews::Event(event);
                                if tx.send(Msg::Peer { source, news }).await.is_err() {
                                    return;
                                }
                            }
                            Some(Err(e)) => break e,
                            None => break Error::StreamClosed(source.as_str()),
                        }
                    }
                }
                Err(e) => e,
            };
            let delay = retries.fail();
            tracing::debug!(
                error = %backroom_daemon::Chain(&lost),
                "not listening to {} (again in {delay:?})",
                source.as_str()
            );
            if tx.send(Msg::Peer { source, news: PeerNews::Down(lost) }).await.is_err() {
                return;
            }
            clock.sleep(delay).await;
        }
    };
    tokio::spawn(tracing::Instrument::instrument(run, span));
}
