use super::*;

fn timing() -> Timing {
    let mut timing = Timing::new(
        Duration::from_secs(1),
        Duration::from_secs(30),
        Duration::from_millis(50),
    );
    // The tests below reason in whole seconds.
    timing.window = Duration::from_secs(1);
    timing
}

/// A heartbeat from `origin`.
fn alive(origin: ReplicaId, beat: u64, seq: u64, pending: u32) -> Beat {
    Beat::Alive {
        origin,
        beat,
        seq,
        pending,
    }
}

#[test]
fn confirmed_only_by_an_own_heartbeat_heard_back_and_for_one_window() {
    let me = ReplicaId::random();
    let live = Liveness::new(me, timing());
    let t0 = Instant::now();
    assert!(!live.confirmed(t0), "degraded until proven otherwise");
    live.subscribed(true);
    assert!(!live.confirmed(t0), "a subscription alone proves nothing");
    live.sent(1, t0);
    live.heard(alive(me, 1, 0, 0), t0 + Duration::from_millis(3));
    assert!(live.confirmed(t0 + Duration::from_millis(900)));
    assert!(live.may_refill(t0 + Duration::from_millis(900)));
    assert!(
        !live.confirmed(t0 + Duration::from_millis(1001)),
        "nothing heard for a window: degraded without any task noticing"
    );
    live.subscribed(false);
    assert!(!live.confirmed(t0));
}

#[test]
fn a_silent_or_pending_peer_degrades_and_a_leaving_one_does_not() {
    let (me, peer) = (ReplicaId::random(), ReplicaId::random());
    let live = Liveness::new(me, timing());
    let t0 = Instant::now();
    live.subscribed(true);
    live.sent(1, t0 + Duration::from_millis(500));
    live.heard(alive(peer, 1, 5, 0), t0);
    live.heard(alive(me, 1, 0, 0), t0 + Duration::from_millis(501));
    // Own heartbeat until t0 + 1.5 s, the peer's until t0 + 1 s.
    assert!(live.confirmed(t0 + Duration::from_millis(999)));
    assert!(!live.confirmed(t0 + Duration::from_millis(1001)));
    assert_eq!(live.peer_seq(peer), Some(5));
    live.heard(alive(peer, 2, 6, 2), t0 + Duration::from_millis(600));
    assert!(
        !live.confirmed(t0 + Duration::from_millis(601)),
        "a peer holding invalidations"
    );
    live.heard(
        Beat::Leaving { origin: peer },
        t0 + Duration::from_millis(700),
    );
    assert!(live.confirmed(t0 + Duration::from_millis(1400)));
    let report = live.report(t0 + Duration::from_millis(1400));
    assert!(!report.degraded && report.peers.is_empty(), "{report:?}");
}

#[test]
fn own_held_invalidations_degrade_and_in_flight_ones_stop_refills_only() {
    let me = ReplicaId::random();
    let live = Liveness::new(me, timing());
    let t0 = Instant::now();
    live.subscribed(true);
    live.sent(1, t0);
    live.heard(alive(me, 1, 0, 0), t0);
    let soon = t0 + Duration::from_millis(10);
    live.outbox(0, 1);
    assert!(live.confirmed(soon) && !live.may_refill(soon));
    live.outbox(1, 1);
    assert!(!live.confirmed(soon));
    assert_eq!(
        live.report(soon).reasons,
        vec!["1 invalidations undelivered".to_owned()]
    );
    live.outbox(0, 0);
    assert!(live.confirmed(soon) && live.may_refill(soon));
}

#[test]
fn three_slow_heartbeats_in_a_row_degrade_and_one_fast_one_ends_it() {
    let me = ReplicaId::random();
    let live = Liveness::new(
        me,
        Timing::new(
            Duration::from_secs(1),
            Duration::from_secs(30),
            Duration::from_millis(50),
        ),
    );
    let t0 = Instant::now();
    live.subscribed(true);
    let beat = |n: u64, sent: Duration, took: Duration| {
        live.sent(n, t0 + sent);
        live.heard(alive(me, n, 0, 0), t0 + sent + took);
    };
    let slow = Duration::from_millis(80);
    beat(1, Duration::ZERO, slow);
    beat(2, Duration::from_millis(200), slow);
    assert!(
        live.confirmed(t0 + Duration::from_millis(300)),
        "two are a blip"
    );
    beat(3, Duration::from_millis(400), slow);
    let at = t0 + Duration::from_millis(500);
    assert!(!live.confirmed(at));
    assert!(live.report(at).reasons[0].contains("more than op_timeout"));
    beat(4, Duration::from_millis(600), Duration::from_millis(5));
    assert!(live.confirmed(t0 + Duration::from_millis(700)));
}
