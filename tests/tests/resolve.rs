//! The resolver (ss_net::resolve) against a DNS server the test controls on 127.0.0.1: timeouts that
//! cost nothing afterwards, other names resolving meanwhile, the bound on lookups in flight, one query
//! per name however many ask, TTL caching, many records, /etc/hosts.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Duration;

use ss_net::resolve::MAX_ADDRESSES;
use ss_net::{ResolveError, ResolveSettings, Resolver};
use ss_tests::dns::{Behaviour, TestDns};
use ss_tests::STEP;
use tokio::time::{timeout, Instant};

fn ip(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
}

fn answer(last: u8, ttl: u32) -> Behaviour {
    Behaviour::Answer { addrs: vec![ip(last)], ttl }
}

fn resolver(dns: &TestDns, lookup_timeout: Duration, max_in_flight: usize) -> Arc<Resolver> {
    let settings = ResolveSettings {
        nameservers: vec![dns.addr],
        timeout: lookup_timeout,
        max_in_flight,
        ..ResolveSettings::default()
    };
    Arc::new(Resolver::new(&settings).expect("resolver"))
}

/// Live tasks of the current runtime.
fn tasks() -> usize {
    tokio::runtime::Handle::current().metrics().num_alive_tasks()
}

#[tokio::test]
async fn answers_come_from_the_configured_server_and_hosts_still_work() {
    let dns = TestDns::start(&[("a.test", answer(1, 60))]).await;
    let resolver = resolver(&dns, Duration::from_secs(5), 8);
    let addrs = timeout(STEP, resolver.resolve("a.test")).await.unwrap().unwrap();
    assert_eq!(&addrs[..], [ip(1)]);
    assert_eq!(resolver.resolve("A.Test.").await.unwrap()[..], [ip(1)]);
    // localhost comes from /etc/hosts (or RFC 6761), never from the name server.
    let localhost = timeout(STEP, resolver.resolve("localhost")).await.unwrap().unwrap();
    assert_eq!(localhost.first(), Some(&IpAddr::V4(Ipv4Addr::LOCALHOST)), "{localhost:?}");
    assert_eq!(dns.queries("localhost"), 0);
    let missing = timeout(STEP, resolver.resolve("missing.test")).await.unwrap();
    assert_eq!(missing, Err(ResolveError::NotFound));
}

#[tokio::test]
async fn a_name_that_never_answers_costs_nothing_beyond_its_timeout() {
    let dns = TestDns::start(&[("never.test", Behaviour::Never), ("a.test", answer(1, 0))]).await;
    let lookup_timeout = Duration::from_secs(2);
    let resolver = resolver(&dns, lookup_timeout, 8);
    // Warm up the resolver's connections so the task count below is its steady state.
    resolver.resolve("a.test").await.unwrap();
    let idle_tasks = tasks();

    let started = Instant::now();
    let never = tokio::spawn({
        let resolver = resolver.clone();
        async move { resolver.resolve("never.test").await }
    });
    // Meanwhile other names resolve, each within a fraction of the timeout.
    for _ in 0..5 {
        let asked = Instant::now();
        assert_eq!(resolver.resolve("a.test").await.unwrap()[..], [ip(1)]);
        assert!(asked.elapsed() < lookup_timeout / 2, "{:?}", asked.elapsed());
    }
    assert_eq!(resolver.in_flight(), 1);
    let outcome = timeout(STEP, never).await.unwrap().unwrap();
    assert_eq!(outcome, Err(ResolveError::TimedOut));
    let took = started.elapsed();
    // hickory gives up after its two tries (4/5 of the budget), the resolver's own cap at the latest.
    assert!(took >= lookup_timeout / 2 && took < lookup_timeout + Duration::from_secs(1), "{took:?}");
    // Nothing of the lookup remains: no slot, no task.
    assert_eq!(resolver.in_flight(), 0);
    timeout(STEP, async {
        while tasks() > idle_tasks {
            tokio::task::yield_now().await;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{} tasks left, {idle_tasks} before", tasks()));
}

#[tokio::test]
async fn a_slow_answer_within_the_timeout_is_taken() {
    let slow = Behaviour::Slow { delay: Duration::from_millis(300), addrs: vec![ip(7)], ttl: 60 };
    let dns = TestDns::start(&[("slow.test", slow)]).await;
    let resolver = resolver(&dns, Duration::from_secs(5), 8);
    assert_eq!(timeout(STEP, resolver.resolve("slow.test")).await.unwrap().unwrap()[..], [ip(7)]);
}

#[tokio::test]
async fn an_a_answer_survives_a_server_that_never_answers_aaaa() {
    let silent = Behaviour::SilentAaaa { addrs: vec![ip(8)], ttl: 60 };
    let dns = TestDns::start(&[("silent.test", silent)]).await;
    let lookup_timeout = Duration::from_secs(3);
    let resolver = resolver(&dns, lookup_timeout, 8);
    let started = Instant::now();
    assert_eq!(timeout(STEP, resolver.resolve("silent.test")).await.unwrap().unwrap()[..], [ip(8)]);
    assert!(started.elapsed() < lookup_timeout, "{:?}", started.elapsed());
}

#[tokio::test]
async fn the_bound_on_lookups_in_flight_holds() {
    let names = ["n1.test", "n2.test", "n3.test", "n4.test"];
    let zone: Vec<_> = names.iter().map(|&name| (name, Behaviour::Never)).collect();
    let dns = TestDns::start(&zone).await;
    let lookup_timeout = Duration::from_secs(2);
    let resolver = resolver(&dns, lookup_timeout, 2);

    let first = resolver.try_resolve("n1.test").unwrap();
    let second = resolver.try_resolve("n2.test").unwrap();
    assert!(first.ready().is_none() && second.ready().is_none());
    assert_eq!(resolver.in_flight(), 2);
    // A third name finds no slot at once; the same names join the lookups already running.
    assert_eq!(resolver.try_resolve("n3.test").unwrap_err(), ResolveError::Busy);
    let joined: Vec<_> = (0..100).map(|_| resolver.try_resolve("n1.test").unwrap()).collect();
    assert_eq!(resolver.in_flight(), 2);

    // A caller that may wait gets a slot when one frees: after the first lookups time out.
    let started = Instant::now();
    let waiting = tokio::spawn({
        let resolver = resolver.clone();
        async move { resolver.resolve("n4.test").await }
    });
    assert_eq!(timeout(STEP, first.wait()).await.unwrap(), Err(ResolveError::TimedOut));
    for lookup in joined {
        assert_eq!(lookup.wait().await, Err(ResolveError::TimedOut));
    }
    assert_eq!(timeout(STEP, waiting).await.unwrap().unwrap(), Err(ResolveError::TimedOut));
    // n4 waited for n1's lookup to end, then ran its own.
    assert!(started.elapsed() >= lookup_timeout, "{:?}", started.elapsed());
    assert_eq!(resolver.in_flight(), 0);
    drop(second);
    // One lookup's queries (A and AAAA, each retried a few times), not one per caller.
    assert!(dns.queries("n1.test") < 20, "{}", dns.queries("n1.test"));
}

#[tokio::test]
async fn a_waiting_caller_gives_up_after_the_timeout() {
    let dns = TestDns::start(&[("n1.test", Behaviour::Never), ("n2.test", Behaviour::Never)]).await;
    let resolver = resolver(&dns, Duration::from_secs(1), 1);
    let _held = resolver.try_resolve("n1.test").unwrap();
    // n2 waits up to 1 s for the slot, which frees when n1 times out at about that time: either it
    // gives up (Busy) or it gets the slot and its own lookup times out 1 s later.
    let started = Instant::now();
    let outcome = timeout(STEP, resolver.resolve("n2.test")).await.unwrap();
    assert!(matches!(outcome, Err(ResolveError::Busy | ResolveError::TimedOut)), "{outcome:?}");
    assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
}

#[tokio::test(start_paused = true)]
async fn answers_are_cached_for_their_ttl() {
    let dns = TestDns::start(&[("ttl.test", answer(3, 30)), ("zero.test", answer(4, 0))]).await;
    let resolver = resolver(&dns, Duration::from_secs(5), 8);
    assert_eq!(resolver.resolve("ttl.test").await.unwrap()[..], [ip(3)]);
    let asked = dns.queries("ttl.test");
    assert!(asked > 0);

    tokio::time::advance(Duration::from_secs(29)).await;
    assert_eq!(resolver.resolve("ttl.test").await.unwrap()[..], [ip(3)]);
    assert!(resolver.try_resolve("ttl.test").unwrap().ready().is_some(), "a cached answer is ready at once");
    assert_eq!(dns.queries("ttl.test"), asked, "within the TTL the server is not asked");

    tokio::time::advance(Duration::from_secs(2)).await;
    assert_eq!(resolver.resolve("ttl.test").await.unwrap()[..], [ip(3)]);
    assert_eq!(dns.queries("ttl.test"), asked * 2, "after the TTL the server is asked again");

    // TTL 0: never cached.
    resolver.resolve("zero.test").await.unwrap();
    let zero = dns.queries("zero.test");
    resolver.resolve("zero.test").await.unwrap();
    assert_eq!(dns.queries("zero.test"), zero * 2);
}

#[tokio::test]
async fn many_records_come_over_tcp_and_are_capped() {
    let addrs: Vec<IpAddr> = (1..=60).map(ip).collect();
    let dns = TestDns::start(&[("many.test", Behaviour::Answer { addrs: addrs.clone(), ttl: 60 })]).await;
    let resolver = resolver(&dns, Duration::from_secs(5), 8);
    let resolved = timeout(STEP, resolver.resolve("many.test")).await.unwrap().unwrap();
    assert_eq!(resolved.len(), MAX_ADDRESSES);
    assert!(resolved.iter().all(|addr| addrs.contains(addr)), "{resolved:?}");
}
