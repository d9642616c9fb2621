//! Round trips for every method, flipped and cut datagrams, 2022 sessions and origins, failing seals.

use super::*;

const NOW: u64 = 1_704_164_645;

fn key(method: Method) -> Key {
    Key::from_bytes(method, &[9; 32][..method.key_len()]).unwrap()
}

fn target() -> Address {
    Address::Ip("[::1]:53".parse().unwrap())
}

fn seal(method: Method, sender: Sender, payload: &[u8]) -> Vec<u8> {
    let mut packet = Vec::new();
    match Udp2022::new(method, &key(method)) {
        Some(udp) => {
            let header = Header2022 { session_id: 7, packet_id: 1, sender, timestamp: NOW };
            udp.seal(&header, &[1, 2, 3], &target(), payload, &[4; XNONCE_LEN], &mut packet).unwrap();
        }
        None => {
            let salt = Salt::from_slice(method, &[5; 32][..method.salt_len()]).unwrap();
            let classic = UdpClassic::new(method, &key(method)).unwrap();
            classic.seal(salt, &target(), payload, &mut packet).unwrap();
        }
    }
    packet
}

fn open(method: Method, packet: &mut [u8], origin: Origin) -> Result<(Address, Vec<u8>), UdpError> {
    match Udp2022::new(method, &key(method)) {
        Some(udp) => {
            udp.open(packet, NOW, origin).map(|opened| (opened.address, packet[opened.payload].to_vec()))
        }
        None => UdpClassic::new(method, &key(method))
            .unwrap()
            .open(packet)
            .map(|(address, range)| (address, packet[range].to_vec())),
    }
}

#[test]
fn every_method_round_trips_and_rejects_every_flipped_byte() {
    for method in Method::ALL {
        let payload = b"a DNS query, say";
        let packet = seal(method, Sender::Client, payload);
        assert_eq!(open(method, &mut packet.clone(), Origin::Client), Ok((target(), payload.to_vec())));
        for at in 0..packet.len() {
            let mut flipped = packet.clone();
            flipped[at] ^= 0x10;
            assert!(open(method, &mut flipped, Origin::Client).is_err(), "{method} byte {at}");
        }
        for len in 0..packet.len() {
            assert!(open(method, &mut packet[..len].to_vec(), Origin::Client).is_err(), "{method} cut {len}");
        }
    }
}

#[test]
fn server_replies_carry_the_client_session() {
    for method in Method::ALL.into_iter().filter(|m| m.is_2022()) {
        let udp = Udp2022::new(method, &key(method)).unwrap();
        let mut reply = seal(method, Sender::Server { client_session_id: 99 }, b"answer");
        let opened = udp.open(&mut reply.clone(), NOW, Origin::Server).unwrap();
        assert_eq!(opened.header.sender, Sender::Server { client_session_id: 99 });
        assert_eq!(udp.open(&mut reply, NOW, Origin::Client), Err(UdpError::BadType));
    }
}

#[test]
fn classic_and_2022_do_not_mix() {
    for method in Method::ALL {
        assert_eq!(Udp2022::new(method, &key(method)).is_some(), method.is_2022(), "{method}");
        assert_eq!(UdpClassic::new(method, &key(method)).is_some(), !method.is_2022(), "{method}");
    }
}

#[test]
fn the_largest_datagram_round_trips() {
    for method in Method::ALL {
        let payload = vec![0xEE; 65_507 - 200];
        let mut packet = seal(method, Sender::Client, &payload);
        assert_eq!(open(method, &mut packet, Origin::Client).unwrap().1, payload);
    }
}

proptest::proptest! {
    #[test]
    fn random_datagrams_never_open(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000)) {
        for method in Method::ALL {
            proptest::prop_assert!(open(method, &mut bytes.clone(), Origin::Client).is_err());
        }
    }
}

#[test]
fn a_failed_seal_leaves_no_datagram_behind() {
    let target = Address::domain("example.com", 53).unwrap();
    for method in Method::ALL {
        let key = key(method);
        let mut out = b"earlier".to_vec();
        let failing = crate::cipher::failing_seals::start();
        let sealed = match Udp2022::new(method, &key) {
            Some(codec) => {
                let header =
                    Header2022 { session_id: 1, packet_id: 1, sender: Sender::Client, timestamp: NOW };
                codec.seal(&header, &[], &target, b"ping", &[7; XNONCE_LEN], &mut out)
            }
            None => UdpClassic::new(method, &key).unwrap().seal(
                Salt::from_slice(method, &[1; 32][..method.salt_len()]).unwrap(),
                &target,
                b"ping",
                &mut out,
            ),
        };
        drop(failing);
        assert_eq!(sealed, Err(SealError::Backend), "{method}");
        assert_eq!(out, b"earlier", "{method}: the datagram must be dropped, not sent with a zero tag");
    }
}
