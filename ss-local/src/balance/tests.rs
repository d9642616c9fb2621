//! The balancer's rules on tokio's paused clock: marking down and up, ordering, backoff, quiet checks,
//! hysteresis and weights.

use std::time::Duration;

use ss_crypto::{Key, Method};
use tokio::time::advance;

use super::*;

fn server(name: &str) -> Server {
    let key = Key::from_password(Method::Aes128Gcm, "pw").unwrap();
    Server::new(name, 8388, Method::Aes128Gcm, key)
}

fn three() -> Vec<Server> {
    vec![server("a"), server("b"), server("c")]
}

fn names(order: Vec<&Server>) -> Vec<&str> {
    order.into_iter().map(|s| s.host.as_str()).collect()
}

fn balancer(strategy: Strategy) -> Balancer {
    Balancer::new(Policy { strategy, ..Policy::default() })
}

fn fail(balancer: &Balancer, server: &Server, times: usize) {
    for _ in 0..times {
        balancer.report(&ServerId::of(server), Outcome::Failed);
    }
}

fn answer(balancer: &Balancer, server: &Server, ms: u64) {
    balancer.report(&ServerId::of(server), Outcome::Answered(Duration::from_millis(ms)));
}

#[tokio::test(start_paused = true)]
async fn failover_skips_a_server_after_three_failures_in_a_row_and_returns_when_it_answers() {
    let (balancer, servers) = (balancer(Strategy::Failover), three());
    assert_eq!(names(balancer.order(Kind::Tcp, &servers)), ["a", "b", "c"]);
    fail(&balancer, &servers[0], 2);
    answer(&balancer, &servers[0], 10);
    fail(&balancer, &servers[0], 2);
    assert_eq!(names(balancer.order(Kind::Tcp, &servers))[0], "a", "failures must be in a row");
    fail(&balancer, &servers[0], 1);
    assert!(balancer.is_down(&ServerId::of(&servers[0])));
    assert_eq!(names(balancer.order(Kind::Tcp, &servers)), ["b", "c", "a"], "down servers come last");
    assert_eq!(names(balancer.order(Kind::Udp, &servers))[0], "b", "health is shared by UDP");
    answer(&balancer, &servers[0], 10);
    assert_eq!(names(balancer.order(Kind::Tcp, &servers)), ["a", "b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn with_every_server_down_the_best_scored_is_still_tried_first() {
    let (balancer, servers) = (balancer(Strategy::Failover), three());
    answer(&balancer, &servers[2], 20);
    answer(&balancer, &servers[1], 90);
    for server in &servers {
        fail(&balancer, server, 3);
    }
    assert_eq!(names(balancer.order(Kind::Tcp, &servers)), ["c", "b", "a"]);
}

#[tokio::test(start_paused = true)]
async fn state_follows_the_server_not_its_place_in_the_list() {
    let (balancer, servers) = (balancer(Strategy::Failover), three());
    fail(&balancer, &servers[0], 3);
    let reordered = vec![server("c"), server("a"), server("d")];
    assert_eq!(names(balancer.order(Kind::Tcp, &reordered)), ["c", "d", "a"]);
    let without_a = vec![server("c"), server("d")];
    balancer.due_checks(&without_a);
    assert!(!balancer.is_down(&ServerId::of(&servers[0])), "a server gone from the list is forgotten");
}

#[tokio::test(start_paused = true)]
async fn a_down_server_is_rechecked_with_growing_jittered_backoff_up_to_the_maximum() {
    let (balancer, servers) = (balancer(Strategy::Failover), three());
    fail(&balancer, &servers[1], 3);
    let mut wait = Duration::from_secs(5);
    for _ in 0..10 {
        // Jitter is ±25%: nothing is due before 75% of the wait, the check is due after 125%.
        advance(wait.mul_f64(0.74)).await;
        balancer.order(Kind::Tcp, &servers);
        assert!(balancer.due_checks(&servers).is_empty());
        advance(wait.mul_f64(0.52)).await;
        balancer.order(Kind::Tcp, &servers);
        let due = balancer.due_checks(&servers);
        assert_eq!(names(due.iter().collect()), ["b"]);
        assert!(balancer.due_checks(&servers).is_empty(), "one check at a time");
        fail(&balancer, &servers[1], 1);
        wait = (wait * 2).min(Duration::from_secs(300));
    }
    assert_eq!(wait, Duration::from_secs(300));
    advance(Duration::from_secs(400)).await;
    assert!(balancer.due_checks(&servers).is_empty(), "idle: a down server waits for the client's next use");
    balancer.order(Kind::Tcp, &servers);
    assert_eq!(balancer.due_checks(&servers).len(), 1);
    answer(&balancer, &servers[1], 30);
    assert!(!balancer.is_down(&ServerId::of(&servers[1])));
    advance(Duration::from_secs(3600)).await;
    balancer.order(Kind::Tcp, &servers);
    assert!(balancer.due_checks(&servers).is_empty(), "an up server is not checked by failover");
}

#[tokio::test(start_paused = true)]
async fn fastest_measures_only_while_the_client_is_in_use() {
    let (balancer, servers) = (balancer(Strategy::Fastest), three());
    for _ in 0..100 {
        advance(Duration::from_secs(60)).await;
        assert!(balancer.due_checks(&servers).is_empty(), "an idle client never checks");
    }
    balancer.order(Kind::Tcp, &servers);
    assert_eq!(balancer.due_checks(&servers).len(), 3, "in use: unmeasured servers are measured");
    for server in &servers {
        answer(&balancer, server, 50);
    }
    advance(Duration::from_secs(29)).await;
    assert!(balancer.due_checks(&servers).is_empty(), "measured recently");
    advance(Duration::from_secs(2)).await;
    assert_eq!(balancer.due_checks(&servers).len(), 3, "still in use (31 s since the last connection)");
    for server in &servers {
        answer(&balancer, server, 50);
    }
    advance(Duration::from_secs(40)).await;
    assert!(balancer.due_checks(&servers).is_empty(), "idle again for over a minute");
}

#[tokio::test(start_paused = true)]
async fn fastest_switches_only_beyond_the_tolerance() {
    let (balancer, servers) = (balancer(Strategy::Fastest), three());
    let first = |b: &Balancer| names(b.order(Kind::Tcp, &servers))[0].to_string();
    assert_eq!(first(&balancer), "a", "nothing measured: list order");
    answer(&balancer, &servers[0], 100);
    answer(&balancer, &servers[1], 80);
    answer(&balancer, &servers[2], 200);
    assert_eq!(first(&balancer), "a", "20 ms better is within 50 ms");
    // Scores wobbling around each other for a long run never make it switch.
    for round in 0..200u64 {
        answer(&balancer, &servers[0], 90 + round % 20);
        answer(&balancer, &servers[1], 70 + (round * 7) % 40);
        assert_eq!(first(&balancer), "a");
    }
    for _ in 0..10 {
        answer(&balancer, &servers[1], 20);
    }
    assert_eq!(first(&balancer), "b", "about 80 ms better");
    assert_eq!(first(&balancer), "b");

    // Slow servers: 20% of the current score is the larger margin.
    let slow = crate::balance::Balancer::new(Policy { strategy: Strategy::Fastest, ..Policy::default() });
    answer(&slow, &servers[0], 1000);
    assert_eq!(first(&slow), "a");
    answer(&slow, &servers[1], 850);
    assert_eq!(first(&slow), "a", "150 ms is within 20% of 1000 ms");
    for _ in 0..10 {
        answer(&slow, &servers[1], 600);
    }
    assert_eq!(first(&slow), "b");
}

#[tokio::test(start_paused = true)]
async fn fastest_leaves_a_server_that_goes_down() {
    let (balancer, servers) = (balancer(Strategy::Fastest), three());
    answer(&balancer, &servers[0], 10);
    answer(&balancer, &servers[1], 50);
    assert_eq!(names(balancer.order(Kind::Tcp, &servers))[0], "a");
    fail(&balancer, &servers[0], 3);
    assert_eq!(names(balancer.order(Kind::Tcp, &servers)), ["b", "c", "a"]);
}

#[tokio::test(start_paused = true)]
async fn round_robin_follows_the_weights_and_each_kind_keeps_its_own_turn() {
    let balancer = balancer(Strategy::RoundRobin);
    let mut servers = three();
    servers[0].tcp_weight = 2.0;
    let mut picks = Vec::new();
    for _ in 0..8 {
        picks.push(names(balancer.order(Kind::Tcp, &servers))[0].to_string());
    }
    assert_eq!(picks, ["a", "b", "c", "a", "a", "b", "c", "a"]);
    let udp: Vec<String> =
        (0..3).map(|_| names(balancer.order(Kind::Udp, &servers))[0].to_string()).collect();
    assert_eq!(udp, ["a", "b", "c"], "UDP weights are 1 and its turn starts afresh");
    fail(&balancer, &servers[1], 3);
    let picks: Vec<String> =
        (0..6).map(|_| names(balancer.order(Kind::Udp, &servers))[0].to_string()).collect();
    assert!(!picks.contains(&"b".to_string()), "a down server gets no turn: {picks:?}");
}

#[tokio::test(start_paused = true)]
async fn random_follows_the_weights() {
    let balancer = balancer(Strategy::Random);
    let mut servers = three();
    servers[2].tcp_weight = 0.0001;
    servers[0].tcp_weight = 3.0;
    let mut counts = [0usize; 3];
    for _ in 0..4000 {
        let first = balancer.order(Kind::Tcp, &servers)[0].host.clone();
        counts[servers.iter().position(|s| s.host == first).unwrap()] += 1;
    }
    assert!((2700..3300).contains(&counts[0]) && (700..1300).contains(&counts[1]), "{counts:?}");
    assert!(counts[2] < 20, "{counts:?}");
}

#[test]
fn strategy_names() {
    assert_eq!("round-robin".parse(), Ok(Strategy::RoundRobin));
    assert_eq!("fastest".parse(), Ok(Strategy::Fastest));
    assert!("best".parse::<Strategy>().unwrap_err().contains("failover"));
}
