//! Readiness follows the dependencies: with the coordinator and a worker reaching Postgres and
//! RabbitMQ through TCP proxies that the test cuts and restores, gRPC health turns NOT_SERVING
//! and `/readyz` 503 while one is unreachable, and both come back with it. The shared servers
//! are never stopped.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{amqp_url, pg_url, Farm, FarmOptions};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// A TCP proxy to `target` that can be cut (every connection dropped, new ones refused) and
/// restored.
struct Proxy {
    addr: SocketAddr,
    up: Arc<AtomicBool>,
    generation: watch::Sender<u64>,
}

impl Proxy {
    async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy address");
        let up = Arc::new(AtomicBool::new(true));
        let (generation, _) = watch::channel(0u64);
        let (up2, gen2) = (Arc::clone(&up), generation.clone());
        tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let mut cut = gen2.subscribe();
                tokio::spawn(async move {
                    let Ok(mut outbound) = TcpStream::connect(target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        _ = cut.changed() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            up,
            generation,
        }
    }

    fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.generation.send_modify(|g| *g += 1);
    }

    fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

fn host_port(url: &str) -> SocketAddr {
    let rest = url.split_once("://").expect("scheme").1;
    let authority = rest.split('/').next().expect("authority");
    let host_port = authority.rsplit('@').next().expect("host");
    use std::net::ToSocketAddrs;
    host_port
        .to_socket_addrs()
        .expect("resolve")
        .next()
        .expect("an address")
}

fn through(url: &str, proxy: SocketAddr) -> String {
    url.replace(&host_port(url).to_string(), &proxy.to_string())
        .replace(
            &format!("localhost:{}", host_port(url).port()),
            &proxy.to_string(),
        )
}

async fn readyz(addr: SocketAddr) -> Option<u16> {
    let r = reqwest::Client::new()
        .get(format!("http://{addr}/readyz"))
        .timeout(Duration::from_secs(2))
        .send()
        .await
        .ok()?;
    Some(r.status().as_u16())
}

async fn grpc_status(addr: SocketAddr) -> Option<i32> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))
        .ok()?
        .connect()
        .await
        .ok()?;
    let r = HealthClient::new(channel)
        .check(HealthCheckRequest {
            service: "tutti.v1.Generation".into(),
        })
        .await
        .ok()?;
    Some(r.into_inner().status)
}

/// Waits until (coordinator /readyz, gRPC health, worker /readyz) reads `want`.
async fn wait_for(farm: &Farm, worker_metrics: SocketAddr, want: (u16, ServingStatus, u16)) {
    let want = (Some(want.0), Some(want.1 as i32), Some(want.2));
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = (
            readyz(farm.metrics_addr).await,
            grpc_status(farm.addr).await,
            readyz(worker_metrics).await,
        );
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "readiness stayed {got:?}, expected {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn readiness_follows_postgres_and_rabbitmq() {
    let farm_pg = pg_url("postgres");
    let pg = Proxy::start(host_port(&farm_pg)).await;
    let amqp = Proxy::start(host_port(&amqp_url())).await;
    let mut farm = Farm::start(FarmOptions {
        workers: 0,
        env: vec![(
            "TUTTI_AMQP_URL".to_string(),
            through(&amqp_url(), amqp.addr),
        )],
        ..Default::default()
    })
    .await;
    // Restarted to reach the farm's own database (created by its first start) through the
    // Postgres proxy too.
    farm.kill_coordinator();
    farm.opts.env.push((
        "TUTTI_DATABASE_URL".to_string(),
        through(&pg_url(farm.db()), pg.addr),
    ));
    farm.start_coordinator().await;
    let worker_metrics = common::free_addr();
    farm.add_worker(&["--metrics-listen", &worker_metrics.to_string()]);
    farm.wait_for_consumers(1).await;

    let ready = (200, ServingStatus::Serving, 200);
    wait_for(&farm, worker_metrics, ready).await;

    amqp.cut();
    wait_for(&farm, worker_metrics, (503, ServingStatus::NotServing, 503)).await;
    amqp.restore();
    wait_for(&farm, worker_metrics, ready).await;

    pg.cut();
    wait_for(&farm, worker_metrics, (503, ServingStatus::NotServing, 200)).await;
    pg.restore();
    wait_for(&farm, worker_metrics, ready).await;
}
