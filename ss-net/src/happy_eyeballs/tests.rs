//! The race on tokio's paused clock, with fake attempts whose outcome and duration each test chooses.

use std::cell::RefCell;
use std::rc::Rc;

use tokio::time::Instant;

use super::*;

/// What a fake attempt to one address does.
#[derive(Clone, Copy)]
enum Outcome {
    /// Connects after this long.
    Connects(Duration),
    /// Fails after this long.
    Fails(Duration),
    /// Never answers (a black hole).
    Hangs,
}

/// Sets its flag when dropped: shows that a losing attempt was cancelled.
struct DropFlag(Rc<RefCell<Vec<SocketAddr>>>, SocketAddr);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.borrow_mut().push(self.1);
    }
}

struct Log {
    started: Rc<RefCell<Vec<(SocketAddr, Duration)>>>,
    dropped: Rc<RefCell<Vec<SocketAddr>>>,
}

/// Runs the race over `plan` (addresses in order and what each does).
async fn run(plan: &[(SocketAddr, Outcome)]) -> (io::Result<(SocketAddr, SocketAddr)>, Duration, Log) {
    let epoch = Instant::now();
    let log = Log { started: Rc::default(), dropped: Rc::default() };
    let addresses: Vec<SocketAddr> = plan.iter().map(|(addr, _)| *addr).collect();
    let result = race(&addresses, |addr| {
        let outcome = plan.iter().find(|(a, _)| *a == addr).map(|(_, o)| *o).unwrap();
        log.started.borrow_mut().push((addr, epoch.elapsed()));
        let flag = DropFlag(log.dropped.clone(), addr);
        async move {
            let _flag = flag;
            match outcome {
                Outcome::Connects(after) => {
                    tokio::time::sleep(after).await;
                    Ok(addr)
                }
                Outcome::Fails(after) => {
                    tokio::time::sleep(after).await;
                    Err(io::Error::new(io::ErrorKind::ConnectionRefused, format!("{addr} refused")))
                }
                Outcome::Hangs => std::future::pending().await,
            }
        }
    })
    .await;
    (result, epoch.elapsed(), log)
}

fn addr(text: &str) -> SocketAddr {
    text.parse().unwrap()
}

fn ms(millis: u64) -> Duration {
    Duration::from_millis(millis)
}

#[test]
fn families_alternate_starting_with_the_preferred_one() {
    let all = [addr("[2001:db8::1]:1"), addr("[2001:db8::2]:1"), addr("192.0.2.1:1"), addr("192.0.2.2:1")];
    let v6_first = interleave(&all, true);
    assert_eq!(v6_first, [all[0], all[2], all[1], all[3]]);
    let v4_first = interleave(&all, false);
    assert_eq!(v4_first, [all[2], all[0], all[3], all[1]]);
    assert_eq!(interleave(&all[..2], false), all[..2], "one family: the resolver's order");
    assert!(interleave(&[], true).is_empty());
}

#[tokio::test(start_paused = true)]
async fn attempts_start_250_ms_apart_and_the_first_to_connect_wins() {
    let (a, b, c) = (addr("[2001:db8::1]:1"), addr("192.0.2.1:1"), addr("[2001:db8::2]:1"));
    let plan = [(a, Outcome::Hangs), (b, Outcome::Connects(ms(100))), (c, Outcome::Connects(ms(10)))];
    let (result, elapsed, log) = run(&plan).await;
    assert_eq!(result.unwrap().1, b);
    assert_eq!(elapsed, ms(350), "b starts at 250 ms and connects 100 ms later");
    assert_eq!(*log.started.borrow(), [(a, ms(0)), (b, ms(250))], "c never started: b won first");
    assert!(log.dropped.borrow().contains(&a), "the black-holed attempt was dropped");
}

#[tokio::test(start_paused = true)]
async fn a_failure_starts_the_next_attempt_at_once() {
    let (a, b, c) = (addr("[2001:db8::1]:1"), addr("192.0.2.1:1"), addr("192.0.2.2:1"));
    let plan = [(a, Outcome::Fails(ms(20))), (b, Outcome::Fails(ms(30))), (c, Outcome::Connects(ms(5)))];
    let (result, elapsed, log) = run(&plan).await;
    assert_eq!(result.unwrap().1, c);
    assert_eq!(*log.started.borrow(), [(a, ms(0)), (b, ms(20)), (c, ms(50))]);
    assert_eq!(elapsed, ms(55));
}

#[tokio::test(start_paused = true)]
async fn a_failure_does_not_wait_for_an_attempt_still_running() {
    let (a, b, c) = (addr("[2001:db8::1]:1"), addr("192.0.2.1:1"), addr("[2001:db8::2]:1"));
    let plan = [(a, Outcome::Hangs), (b, Outcome::Fails(ms(10))), (c, Outcome::Connects(ms(5)))];
    let (result, elapsed, log) = run(&plan).await;
    assert_eq!(result.unwrap().1, c);
    assert_eq!(*log.started.borrow(), [(a, ms(0)), (b, ms(250)), (c, ms(260))]);
    assert_eq!(elapsed, ms(265));
    assert!(log.dropped.borrow().contains(&a));
}

#[tokio::test(start_paused = true)]
async fn a_slow_winner_keeps_running_while_later_attempts_start() {
    let (a, b) = (addr("[2001:db8::1]:1"), addr("192.0.2.1:1"));
    let plan = [(a, Outcome::Connects(ms(400))), (b, Outcome::Hangs)];
    let (result, elapsed, log) = run(&plan).await;
    assert_eq!(result.unwrap().1, a);
    assert_eq!(elapsed, ms(400));
    assert_eq!(*log.started.borrow(), [(a, ms(0)), (b, ms(250))]);
    assert!(log.dropped.borrow().contains(&b), "the loser was dropped");
}

#[tokio::test(start_paused = true)]
async fn all_failing_reports_the_last_error_and_no_address_is_not_found() {
    let (a, b) = (addr("[2001:db8::1]:1"), addr("192.0.2.1:1"));
    let plan = [(a, Outcome::Fails(ms(300))), (b, Outcome::Fails(ms(100)))];
    let (result, elapsed, _) = run(&plan).await;
    let error = result.unwrap_err();
    assert!(error.to_string().contains("192.0.2.1:1") || error.to_string().contains("2001:db8::1"));
    assert_eq!(elapsed, ms(350), "b fails at 350 ms, a at 300 ms: the race ends with the last one");
    let (result, _, _) = run(&[]).await;
    assert_eq!(result.unwrap_err().kind(), io::ErrorKind::NotFound);
}

#[tokio::test(start_paused = true)]
async fn the_callers_timeout_bounds_a_race_of_black_holes() {
    let plan = [(addr("[2001:db8::1]:1"), Outcome::Hangs), (addr("192.0.2.1:1"), Outcome::Hangs)];
    let bounded = tokio::time::timeout(Duration::from_secs(10), run(&plan)).await;
    assert!(bounded.is_err(), "black holes never win; the connect timeout ends the race");
}
