use std::time::Duration;

use super::*;

const LIMIT: Duration = Duration::from_secs(20);

async fn bound() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").await.unwrap()
}

/// Receives until `count` datagrams came; returns them with their senders and the receive count.
async fn receive_all(
    receiver: &mut BatchReceiver,
    socket: &UdpSocket,
    count: usize,
) -> (Vec<(SocketAddr, Vec<u8>)>, usize) {
    let mut datagrams = Vec::new();
    let mut receives = 0;
    while datagrams.len() < count {
        tokio::time::timeout(LIMIT, receiver.recv(socket)).await.unwrap().unwrap();
        receives += 1;
        datagrams.extend(receiver.datagrams().map(|datagram| (datagram.from, datagram.bytes.to_vec())));
    }
    (datagrams, receives)
}

#[tokio::test]
async fn datagrams_waiting_together_come_in_one_receive_in_order_with_their_senders() {
    let socket = bound().await;
    let to = socket.local_addr().unwrap();
    let (first, second) = (bound().await, bound().await);
    let mut expected = Vec::new();
    for i in 0..10u8 {
        let sender = if i % 3 == 0 { &second } else { &first };
        let bytes = vec![i; 100 + usize::from(i)];
        sender.send_to(&bytes, to).await.unwrap();
        expected.push((sender.local_addr().unwrap(), bytes));
    }
    let mut receiver = BatchReceiver::new(BATCH).unwrap();
    receiver.buffers.resize_with(BATCH, || vec![0; MAX_DATAGRAM]);
    let (got, receives) = receive_all(&mut receiver, &socket, expected.len()).await;
    assert_eq!(got, expected);
    if cfg!(target_os = "linux") {
        assert_eq!(receives, 1, "all ten were waiting: one recvmmsg takes them");
    }
}

#[tokio::test]
async fn a_receiver_grows_only_when_a_receive_fills_it() {
    let socket = bound().await;
    let to = socket.local_addr().unwrap();
    let sender = bound().await;
    let mut receiver = BatchReceiver::new(4).unwrap();
    assert_eq!(receiver.buffers.len(), 1);
    sender.send_to(b"one", to).await.unwrap();
    sender.send_to(b"two", to).await.unwrap();
    let (got, _) = receive_all(&mut receiver, &socket, 2).await;
    assert_eq!(got.len(), 2);
    assert!(receiver.buffers.len() <= 4);
    for _ in 0..20 {
        sender.send_to(b"more", to).await.unwrap();
    }
    receive_all(&mut receiver, &socket, 20).await;
    assert_eq!(receiver.buffers.len(), 4.min(BATCH), "never beyond its maximum");
}

#[tokio::test]
async fn a_gso_burst_arrives_as_its_datagrams_split_at_the_stride() {
    let socket = bound().await;
    prepare(&socket);
    let to = socket.local_addr().unwrap();
    let client = bound().await;
    let mut sender = BatchSender::new();
    let mut expected = Vec::new();
    for i in 0..20u8 {
        // Equal sizes, then a shorter last one: one GSO run where the kernel has GSO.
        let bytes = vec![i; if i == 19 { 300 } else { 1200 }];
        sender
            .push(to, i, |out: &mut Vec<u8>| {
                out.extend_from_slice(&bytes);
                Ok::<_, ()>(())
            })
            .unwrap();
        expected.push((client.local_addr().unwrap(), bytes));
    }
    let outcomes: Vec<_> = tokio::time::timeout(LIMIT, sender.send(&client)).await.unwrap().collect();
    assert_eq!(outcomes, (0..20).map(|i| (i, true)).collect::<Vec<_>>());
    assert!(sender.is_empty());
    let mut receiver = BatchReceiver::new(BATCH).unwrap();
    receiver.buffers.resize_with(BATCH, || vec![0; MAX_DATAGRAM]);
    let (got, _) = receive_all(&mut receiver, &socket, expected.len()).await;
    assert_eq!(got, expected);
    let gso = state().unwrap().max_gso_segments() > 1;
    println!("GSO {gso}, buffers of the last receive: {}", receiver.filled);
    if gso {
        assert_eq!(receiver.filled, 1, "loopback hands the GSO run whole to a GRO socket");
    }
}

#[test]
fn runs_end_at_another_destination_a_bigger_or_a_shorter_datagram() {
    let (a, b): (SocketAddr, SocketAddr) = ("127.0.0.1:1".parse().unwrap(), "127.0.0.1:2".parse().unwrap());
    let queued = |list: &[(SocketAddr, usize)]| -> Vec<Queued<()>> {
        list.iter().map(|&(to, len)| Queued { to, len, tag: (), sent: false }).collect()
    };
    let list = queued(&[(a, 10), (a, 10), (a, 4), (a, 4), (b, 4), (b, 5), (a, 0), (a, 0)]);
    let mut runs = Vec::new();
    let mut start = 0;
    while start < list.len() {
        let end = run_end(&list, start, 64);
        runs.push(start..end);
        start = end;
    }
    assert_eq!(runs, [0..3, 3..4, 4..5, 5..6, 6..7, 7..8], "a shorter one ends its run; empty ones go alone");
    assert_eq!(run_end(&list, 0, 1), 1, "no GSO: one per send");
    let big = queued(&[(a, 1_452), (a, 1_452), (a, 1_453), (a, 1_453)]);
    assert_eq!(run_end(&big, 0, 64), 2);
    assert_eq!(run_end(&big, 2, 64), 3, "over the path MTU of a 1,500-byte link: alone");
    let many = queued(&[(a, 1_400); 50]);
    assert_eq!(run_end(&many, 0, 64), 46, "a run stays within one UDP payload");
}

#[tokio::test]
async fn an_empty_datagram_is_received_as_one() {
    let socket = bound().await;
    let sender = bound().await;
    sender.send_to(b"", socket.local_addr().unwrap()).await.unwrap();
    sender.send_to(b"after", socket.local_addr().unwrap()).await.unwrap();
    let mut receiver = BatchReceiver::new(BATCH).unwrap();
    let (got, _) = receive_all(&mut receiver, &socket, 2).await;
    let lens: Vec<_> = got.iter().map(|(_, bytes)| bytes.len()).collect();
    assert_eq!(lens, [0, 5]);
}

#[tokio::test]
async fn a_socket_error_is_returned() {
    // A port nobody listens on: the kernel answers our datagram with port unreachable, which a
    // connected socket reports on its next receive.
    let closed = bound().await.local_addr().unwrap();
    let socket = bound().await;
    socket.connect(closed).await.unwrap();
    socket.send(b"anyone?").await.unwrap();
    let mut receiver = BatchReceiver::new(BATCH).unwrap();
    let error = tokio::time::timeout(LIMIT, receiver.recv(&socket)).await.unwrap().unwrap_err();
    assert_eq!(error.kind(), io::ErrorKind::ConnectionRefused);
    assert_eq!(receiver.datagrams().count(), 0, "nothing from a failed receive");
}

#[tokio::test]
async fn a_failed_send_is_reported_for_its_datagram_only() {
    let socket = bound().await;
    let to = socket.local_addr().unwrap();
    let v6: SocketAddr = "[::1]:9".parse().unwrap();
    let client = bound().await;
    let mut sender = BatchSender::new();
    for (tag, destination) in [(1, to), (2, v6), (3, to)] {
        sender
            .push(destination, tag, |out: &mut Vec<u8>| {
                out.push(tag);
                Ok::<_, ()>(())
            })
            .unwrap();
    }
    let outcomes: Vec<_> = tokio::time::timeout(LIMIT, sender.send(&client)).await.unwrap().collect();
    assert_eq!(outcomes, [(1, true), (2, false), (3, true)], "an IPv6 destination from an IPv4 socket fails");
    assert_eq!(sender.push(to, 4, |_| Err("no")), Err("no"));
    assert!(sender.is_empty());
}

#[tokio::test]
async fn a_dual_stack_socket_sends_runs_to_an_ipv4_client() {
    // ss-server listening on [::] answers IPv4 clients from its dual-stack socket.
    let dual = UdpSocket::bind("[::]:0").await.unwrap();
    let socket = bound().await;
    let to = socket.local_addr().unwrap();
    let mut sender = BatchSender::new();
    for i in 0..5u8 {
        sender
            .push(to, i, |out: &mut Vec<u8>| {
                out.extend_from_slice(&[i; 100]);
                Ok::<_, ()>(())
            })
            .unwrap();
    }
    let outcomes: Vec<_> = tokio::time::timeout(LIMIT, sender.send(&dual)).await.unwrap().collect();
    assert!(outcomes.iter().all(|&(_, sent)| sent), "{outcomes:?}");
    let mut receiver = BatchReceiver::new(BATCH).unwrap();
    let (got, _) = receive_all(&mut receiver, &socket, 5).await;
    let got: Vec<_> = got.into_iter().map(|(_, bytes)| bytes).collect();
    assert_eq!(got, (0..5u8).map(|i| vec![i; 100]).collect::<Vec<_>>());
}

#[tokio::test]
async fn prepared_sockets_get_a_larger_receive_buffer_where_the_kernel_allows_it() {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let before = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
    prepare(&socket);
    let after = socket2::SockRef::from(&socket).recv_buffer_size().unwrap();
    // Linux doubles what it is asked for (its bookkeeping), capped at net.core.rmem_max.
    let cap = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|max| max.trim().parse::<usize>().ok());
    match cap {
        Some(max) if max > before => assert!(after > before, "{before} -> {after} with rmem_max {max}"),
        _ => assert!(after >= before),
    }
}
