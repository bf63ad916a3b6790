use super::*;

fn ep(port: u16) -> Endpoint {
    Endpoint {
        addr: SocketAddr::from(([10, 0, 0, 1], port)),
        identity: None,
    }
}

fn picks(b: &Balancer, eps: &[Endpoint], n: usize) -> HashMap<u16, usize> {
    let mut counts = HashMap::new();
    for _ in 0..n {
        let e = b.pick(eps, &[]).unwrap();
        *counts.entry(e.addr.port()).or_insert(0) += 1;
    }
    counts
}

#[test]
fn idle_endpoints_share_the_picks() {
    let b = Balancer::default();
    let eps = [ep(1), ep(2), ep(3)];
    let counts = picks(&b, &eps, 3000);
    for port in 1..=3 {
        let n = counts.get(&port).copied().unwrap_or(0);
        assert!((700..1300).contains(&n), "{counts:?}");
    }
}

#[test]
fn the_busiest_endpoint_is_never_picked_and_the_idlest_is_preferred() {
    let b = Balancer::default();
    let eps = [ep(1), ep(2), ep(3)];
    let _held: Vec<_> = (0..5)
        .map(|_| b.start(eps[0].addr))
        .chain((0..2).map(|_| b.start(eps[1].addr)))
        .collect();
    assert_eq!(b.in_flight(eps[0].addr), 5);
    let counts = picks(&b, &eps, 600);
    assert_eq!(counts.get(&1), None, "{counts:?}");
    // ep 3 wins every comparison it is in (2 of 3 pairs), ep 2 only the pair (1, 2).
    assert!(counts[&3] > 350 && counts[&2] > 100, "{counts:?}");
    // Two endpoints: always the less loaded one (both are always compared).
    let two = [ep(1), ep(2)];
    assert!((0..100).all(|_| b.pick(&two, &[]).unwrap().addr.port() == 2));
}

#[test]
fn in_flight_guards_give_the_count_back() {
    let b = Balancer::default();
    let a = ep(1).addr;
    let g1 = b.start(a);
    let g2 = b.start(a);
    assert_eq!(b.in_flight(a), 2);
    drop(g1);
    assert_eq!(b.in_flight(a), 1);
    drop(g2);
    assert_eq!(b.in_flight(a), 0);
}

#[test]
fn tried_endpoints_are_skipped_and_the_attempts_end() {
    let b = Balancer::default();
    let eps = [ep(1), ep(2), ep(3)];
    let mut tried = Vec::new();
    while let Some(e) = b.pick(&eps, &tried) {
        assert!(!tried.contains(&e.addr));
        tried.push(e.addr);
    }
    assert_eq!(tried.len(), 3);
    assert!(b.pick(&[], &[]).is_none());
}

#[test]
fn a_new_endpoint_set_is_used_as_given() {
    // Updates: the candidates are whatever discovery says now; a removed endpoint is not
    // picked even when it was the least loaded, a new one is.
    let b = Balancer::default();
    let before = [ep(1), ep(2)];
    let _busy = b.start(ep(2).addr);
    assert_eq!(b.pick(&before, &[]).unwrap().addr.port(), 1);
    let after = [ep(2), ep(4)];
    let counts = picks(&b, &after, 50);
    assert_eq!(counts.get(&1), None);
    assert_eq!(counts.get(&4), Some(&50));
}

#[tokio::test(start_paused = true)]
async fn a_failed_endpoint_is_passed_over_until_the_ejection_ends() {
    let b = Balancer::default();
    let eps = [ep(1), ep(2)];
    b.failed(eps[0].addr);
    assert_eq!(picks(&b, &eps, 100).get(&1), None);
    tokio::time::advance(EJECT_FOR - Duration::from_millis(1)).await;
    assert_eq!(picks(&b, &eps, 100).get(&1), None);
    tokio::time::advance(Duration::from_millis(2)).await;
    let counts = picks(&b, &eps, 400);
    assert!(counts[&1] > 100 && counts[&2] > 100, "{counts:?}");

    // Every candidate failed: still try them rather than none.
    b.failed(eps[0].addr);
    b.failed(eps[1].addr);
    assert!(b.pick(&eps, &[]).is_some());
    // A success makes an endpoint eligible again at once.
    b.succeeded(eps[1].addr);
    assert!((0..50).all(|_| b.pick(&eps, &[]).unwrap().addr.port() == 2));
}

#[test]
fn the_load_table_stays_bounded() {
    let b = Balancer::default();
    for port in 0..(MAX_TRACKED as u16 + 10) {
        drop(b.start(SocketAddr::from(([10, 1, 0, 1], port))));
    }
    assert!(b.lock().len() <= MAX_TRACKED);
}
