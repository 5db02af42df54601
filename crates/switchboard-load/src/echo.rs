//! The bare tonic ceiling: an echo server with the hand-off's shape (many
//! long-lived server streams, Poisson unary calls that each push one
//! message onto one stream) and the load that drives it. What the machine
//! can do with tonic alone, so a dispatcher number can be quoted as a
//! fraction of it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use hdrhistogram::Histogram;
use rand::Rng;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::sync::mpsc;
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status};

use crate::client::connect_many;
use crate::metrics::{LatencySummary, new_histogram, record};
use crate::procstat::{self, HostSteal};
use crate::run::{MAX_SCHEDULE_LAG_P99_MS, parse_duration};
use crate::schedule;
use crate::sender::SenderRuntime;

#[allow(clippy::unwrap_used, clippy::derive_partial_eq_without_eq)]
pub mod pb {
    tonic::include_proto!("echo.v1");
}

use pb::echo_service_client::EchoServiceClient;
use pb::echo_service_server::{EchoService, EchoServiceServer};
use pb::{EchoPush, EchoRequest, EchoResponse, ListenRequest};

/// Bytes of payload per call: about a RequestAgent with its summary.
const PAYLOAD_BYTES: usize = 256;
/// A rate whose push p99 stays within this is under the ceiling.
pub const CEILING_P99_MS: f64 = 50.0;

type Listeners = Arc<Mutex<HashMap<u64, mpsc::Sender<Result<EchoPush, Status>>>>>;

#[derive(Clone, Default)]
struct Echo {
    listeners: Listeners,
}

#[tonic::async_trait]
impl EchoService for Echo {
    async fn echo(&self, request: Request<EchoRequest>) -> Result<Response<EchoResponse>, Status> {
        let request = request.into_inner();
        let sender = self
            .listeners
            .lock()
            .ok()
            .and_then(|listeners| listeners.get(&request.target).cloned());
        let delivered = sender.is_some_and(|sender| {
            sender
                .try_send(Ok(EchoPush {
                    sequence: request.sequence,
                    payload: request.payload.clone(),
                }))
                .is_ok()
        });
        Ok(Response::new(EchoResponse {
            sequence: request.sequence,
            payload: request.payload,
            delivered,
        }))
    }

    type ListenStream = ReceiverStream<Result<EchoPush, Status>>;

    async fn listen(
        &self,
        request: Request<ListenRequest>,
    ) -> Result<Response<Self::ListenStream>, Status> {
        let (sender, receiver) = mpsc::channel(64);
        if let Ok(mut listeners) = self.listeners.lock() {
            listeners.insert(request.into_inner().listener, sender);
        }
        Ok(Response::new(ReceiverStream::new(receiver)))
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct EchoServerArgs {
    /// Address to listen on; port 0 picks a free one. The bound address is
    /// printed as `listening on ADDR`.
    #[arg(long, default_value = "127.0.0.1:0")]
    pub listen: SocketAddr,
}

/// `switchboard-load echo-server`: serves until stdin closes or the
/// process is killed (the parent holds stdin, so the server never outlives
/// it).
pub async fn serve(args: EchoServerArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    println!("listening on {}", listener.local_addr()?);
    let stdin_closed = async {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(_)) = lines.next_line().await {}
    };
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .add_service(EchoServiceServer::new(Echo::default()))
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stdin_closed)
        .await
        .context("the echo server failed")
}

/// An echo server in its own process (pinned with taskset when `cpu` is
/// given), killed when dropped.
pub struct EchoProcess {
    _child: tokio::process::Child,
    pub url: String,
}

impl EchoProcess {
    pub async fn start(cpu: Option<usize>) -> anyhow::Result<EchoProcess> {
        let mut command = procstat::this_program_on(cpu)?;
        command
            .arg("echo-server")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = command.spawn().context("cannot start the echo server")?;
        let stdout = child
            .stdout
            .take()
            .context("no stdout from the echo server")?;
        let mut lines = BufReader::new(stdout).lines();
        let first = tokio::time::timeout(Duration::from_secs(10), lines.next_line())
            .await
            .context("the echo server did not start within 10 s")??;
        let Some(address) = first
            .as_deref()
            .and_then(|line| line.strip_prefix("listening on "))
        else {
            bail!("the echo server said {first:?} instead of `listening on ADDR`");
        };
        Ok(EchoProcess {
            url: format!("http://{address}"),
            _child: child,
        })
    }
}

#[derive(clap::Args, Clone, Debug)]
pub struct EchoArgs {
    /// An echo server already running (`switchboard-load echo-server`);
    /// without it, one is started as a child process.
    #[arg(long)]
    pub server: Option<String>,
    /// Pin the child echo server to this CPU (taskset).
    #[arg(long)]
    pub server_cpu: Option<usize>,
    /// Open server streams (the agents of a hand-off run).
    #[arg(long, default_value_t = 1000)]
    pub listeners: usize,
    #[arg(long, default_value_t = 1)]
    pub listeners_per_connection: usize,
    /// Rates to try, in calls per second, e.g. 2000,5000,10000.
    #[arg(long, value_delimiter = ',', default_value = "1000,2000,4000")]
    pub rates: Vec<f64>,
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub warmup: Duration,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// The arrival schedule and the callers' thread at real-time priority,
    /// as `run --realtime-senders`.
    #[arg(long)]
    pub realtime_senders: bool,
    #[arg(long)]
    pub json: bool,
}

/// The shape of one echo step apart from its rate and seed.
#[derive(Clone, Debug)]
pub struct StepShape {
    /// Open server streams (the agents of a hand-off run).
    pub listeners: usize,
    pub per_connection: usize,
    pub warmup: Duration,
    pub duration: Duration,
    /// See [`crate::realtime`].
    pub realtime: bool,
}

/// One rate of the echo load.
#[derive(Clone, Debug, Default, Serialize)]
pub struct EchoStep {
    pub target_rate: f64,
    pub listeners: usize,
    pub achieved_calls_per_sec: f64,
    /// Intended send → push received on the target stream (the analogue of
    /// request → offer).
    pub push: LatencySummary,
    /// The unary call alone.
    pub call: LatencySummary,
    pub schedule_lag: LatencySummary,
    pub errors: u64,
    pub undelivered: u64,
    /// CPU time the hypervisor gave to other guests over the measured
    /// window (None where `/proc/stat` cannot be read).
    pub host_steal: Option<HostSteal>,
    /// Lag p99 within bound and steal not excessive.
    pub valid: bool,
    /// Within the ceiling: valid, no errors, at least 95% of the target
    /// rate, push p99 ≤ 50 ms.
    pub within_ceiling: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct EchoReport {
    pub steps: Vec<EchoStep>,
    /// The largest rate within the ceiling, if any.
    pub ceiling_calls_per_sec: Option<f64>,
    /// The generator's timing threads at real-time priority.
    pub realtime_senders: bool,
}

struct Recorder {
    push: Histogram<u64>,
    call: Histogram<u64>,
    lag: Histogram<u64>,
}

/// `switchboard-load echo`: each rate in turn against one echo server.
pub async fn run(args: EchoArgs) -> anyhow::Result<EchoReport> {
    let (_process, url) = match &args.server {
        Some(url) => (None, url.clone()),
        None => {
            let process = EchoProcess::start(args.server_cpu).await?;
            let url = process.url.clone();
            (Some(process), url)
        }
    };
    let shape = StepShape {
        listeners: args.listeners,
        per_connection: args.listeners_per_connection,
        warmup: args.warmup,
        duration: args.duration,
        realtime: args.realtime_senders,
    };
    let mut steps = Vec::new();
    for (index, rate) in args.rates.iter().enumerate() {
        if !args.json {
            eprintln!("echo: {rate} calls/s for {:?}", args.warmup + args.duration);
        }
        let step = step(&url, *rate, &shape, args.seed.wrapping_add(index as u64)).await?;
        steps.push(step);
    }
    let ceiling_calls_per_sec = steps
        .iter()
        .filter(|step| step.within_ceiling)
        .map(|step| step.achieved_calls_per_sec)
        .fold(None, |best: Option<f64>, rate| {
            Some(best.map_or(rate, |best| best.max(rate)))
        });
    Ok(EchoReport {
        steps,
        ceiling_calls_per_sec,
        realtime_senders: args.realtime_senders,
    })
}

/// The echo load at one rate against a fresh echo server process, for
/// `run --compare-echo`.
pub async fn compare_at(
    rate: f64,
    shape: &StepShape,
    cpu: Option<usize>,
    seed: u64,
) -> anyhow::Result<EchoStep> {
    let process = EchoProcess::start(cpu).await?;
    step(&process.url, rate, shape, seed).await
}

async fn step(url: &str, rate: f64, shape: &StepShape, seed: u64) -> anyhow::Result<EchoStep> {
    let StepShape {
        warmup, duration, ..
    } = *shape;
    let listeners = shape.listeners.max(1);
    let per_connection = shape.per_connection.max(1);
    let channels = connect_many(url, listeners.div_ceil(per_connection)).await?;
    // The callers send from their own runtime (see `sender`), as the
    // gateway of `run` does.
    let senders = SenderRuntime::start("echo-callers", shape.realtime)?;
    let callers: Vec<EchoServiceClient<_>> = senders
        .connect_many(url, 2)
        .await?
        .into_iter()
        .map(EchoServiceClient::new)
        .collect();
    let recorder = Arc::new(Mutex::new(Recorder {
        push: new_histogram(),
        call: new_histogram(),
        lag: new_histogram(),
    }));
    let intended_by_sequence: Arc<Mutex<HashMap<u64, (Instant, bool)>>> = Arc::default();
    let errors = Arc::new(AtomicU64::new(0));
    let undelivered = Arc::new(AtomicU64::new(0));
    let listening = Arc::new(AtomicU64::new(0));
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();

    for listener in 0..listeners {
        let mut client = EchoServiceClient::new(channels[listener / per_connection].clone());
        let (recorder, intended_by_sequence, listening, stop) = (
            Arc::clone(&recorder),
            Arc::clone(&intended_by_sequence),
            Arc::clone(&listening),
            stop.clone(),
        );
        let errors = Arc::clone(&errors);
        tracker.spawn(async move {
            let request = ListenRequest {
                listener: listener as u64,
            };
            let mut stream = match client.listen(request).await {
                Ok(stream) => stream.into_inner(),
                Err(_) => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    return;
                }
            };
            listening.fetch_add(1, Ordering::Relaxed);
            loop {
                let message = tokio::select! {
                    () = stop.cancelled() => return,
                    message = stream.message() => message,
                };
                let Ok(Some(push)) = message else { return };
                let now = Instant::now();
                let intended = intended_by_sequence
                    .lock()
                    .ok()
                    .and_then(|mut map| map.remove(&push.sequence));
                if let (Some((intended, true)), Ok(mut recorder)) = (intended, recorder.lock()) {
                    record(&mut recorder.push, now.saturating_duration_since(intended));
                }
            }
        });
    }
    let ready_deadline = Instant::now() + Duration::from_secs(120);
    while listening.load(Ordering::Relaxed) < listeners as u64 {
        if Instant::now() > ready_deadline {
            bail!("the echo listeners did not all open within 120 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let start = Instant::now() + Duration::from_millis(50);
    let measure_from = start + warmup;
    let runtime = senders.handle().clone();
    let payload = vec![b'x'; PAYLOAD_BYTES];
    let completed = Arc::new(AtomicU64::new(0));
    let schedule_tracker = tracker.clone();
    let (schedule_recorder, schedule_intended) =
        (Arc::clone(&recorder), Arc::clone(&intended_by_sequence));
    let (schedule_errors, schedule_undelivered, schedule_completed) = (
        Arc::clone(&errors),
        Arc::clone(&undelivered),
        Arc::clone(&completed),
    );
    let schedule = schedule::poisson(
        rate,
        start,
        warmup + duration,
        seed,
        shape.realtime,
        stop.clone(),
        move |arrival| {
            let mut client = callers[arrival.sequence as usize % callers.len()].clone();
            let target = rand::rng().random_range(0..listeners as u64);
            let request = EchoRequest {
                target,
                sequence: arrival.sequence,
                payload: payload.clone(),
            };
            let (recorder, intended_by_sequence) = (
                Arc::clone(&schedule_recorder),
                Arc::clone(&schedule_intended),
            );
            let (errors, undelivered, completed) = (
                Arc::clone(&schedule_errors),
                Arc::clone(&schedule_undelivered),
                Arc::clone(&schedule_completed),
            );
            let work = async move {
                let started = Instant::now();
                let measured = arrival.intended >= measure_from;
                if let Ok(mut map) = intended_by_sequence.lock() {
                    map.insert(arrival.sequence, (arrival.intended, measured));
                }
                if measured && let Ok(mut recorder) = recorder.lock() {
                    record(
                        &mut recorder.lag,
                        started.saturating_duration_since(arrival.intended),
                    );
                }
                match client.echo(request).await {
                    Ok(response) => {
                        if measured {
                            completed.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut recorder) = recorder.lock() {
                                record(&mut recorder.call, started.elapsed());
                            }
                        }
                        if !response.into_inner().delivered {
                            undelivered.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    Err(_) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            };
            runtime.spawn(schedule_tracker.track_future(work));
        },
    )?;
    let mut host_start = None;
    while !schedule.is_finished() {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if host_start.is_none() && Instant::now() >= measure_from {
            host_start = Some(procstat::host_sample());
        }
    }
    let host_steal = host_start
        .flatten()
        .zip(procstat::host_sample())
        .and_then(|(start, end)| procstat::host_steal(&start, &end));
    // In-flight calls and pushes get a moment to land.
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.cancel();
    tracker.close();
    let _ = tokio::time::timeout(Duration::from_secs(10), tracker.wait()).await;
    senders.stop().await;

    let recorder = recorder
        .lock()
        .map_err(|_| anyhow::anyhow!("an echo task panicked"))?;
    let achieved = completed.load(Ordering::Relaxed) as f64 / duration.as_secs_f64().max(1e-3);
    let push = LatencySummary::of(&recorder.push);
    let schedule_lag = LatencySummary::of(&recorder.lag);
    let errors = errors.load(Ordering::Relaxed);
    let stolen = host_steal.as_ref().is_some_and(HostSteal::is_excessive);
    let valid = schedule_lag.p99_ms <= MAX_SCHEDULE_LAG_P99_MS && !stolen;
    Ok(EchoStep {
        target_rate: rate,
        listeners,
        achieved_calls_per_sec: achieved,
        within_ceiling: valid
            && errors == 0
            && achieved >= 0.95 * rate
            && push.p99_ms <= CEILING_P99_MS,
        call: LatencySummary::of(&recorder.call),
        push,
        schedule_lag,
        errors,
        undelivered: undelivered.load(Ordering::Relaxed),
        host_steal,
        valid,
    })
}
