//! Placement of clients on interconnects: static balancing (Fig. 8), failover to the least utilised
//! healthy interconnect (Figs. 7 and 9) and failback after a hold-down. Pure functions, no state.
//!
//! * **Home** ([`home_links`]): a pinned client lives on its pin. Otherwise high-bandwidth clients (the
//!   NVRAM mirror) each get an interconnect of their own, taken from the top (`n-1`, `n-2`, ...), and
//!   low-bandwidth clients share the rest (round-robin by client id). Interconnect 0 is always left to
//!   the low-bandwidth clients when there are two or more, so the heartbeat-style clients never queue
//!   behind the mirror. With more high clients than interconnects they share, still away from 0.
//! * **Choice** ([`choose_link`]): the home when it is healthy; otherwise the least utilised healthy
//!   interconnect (ties to the lowest index), which is the patent's Fig. 9 rule.
//! * **Failback** ([`should_fail_back`]): a client away from home returns only after its home has been
//!   healthy for the hold-down period, so a flapping link does not drag clients back and forth.
//!
//! * **Migration** ([`plan_migration`], adaptive balancing by measured bandwidth): when a link's
//!   measured utilisation (the sum of its clients' rates over its capacity) is above the high
//!   watermark, one movable client goes to the healthy link that stays below the low watermark after
//!   the move: the busiest client whose move alone ends the overload (brings its link to the high
//!   watermark or below); when no single move does, nothing moves (the least utilised such link, ties to the lowest index). A move
//!   therefore never makes its target a candidate for moving back: the target ends below `low`, which
//!   is below `high`, so under constant load the plan is stable after one move. The caller adds the
//!   time-based hysteresis (a client moves only after a dwell time, at most one move per period,
//!   targets only links healthy for the hold-down, never a pinned client).
//!
//! The failover choice ranks links by [`LinkView::load`]: measured utilisation in per mille of
//! capacity ([`utilisation_permille`]) once the manager has measurements, else the sum of the class
//! [`weight`]s of the clients placed on the link.

use std::collections::BTreeMap;

use crate::wire::{BandwidthClass, ClientId, InterconnectId};
use crate::Time;

/// What placement needs to know about one client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ClientNeeds {
    /// The client.
    pub client: ClientId,
    /// Its bandwidth class.
    pub class: BandwidthClass,
    /// A pinned interconnect from configuration, if any.
    pub pinned: Option<InterconnectId>,
}

/// What placement needs to know about one interconnect.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkView {
    /// The interconnect.
    pub id: InterconnectId,
    /// Whether it can carry clients now (its control session is up and authenticated).
    pub healthy: bool,
    /// Since when it has been healthy without interruption.
    pub healthy_since: Time,
    /// Current utilisation: per mille of capacity when measured, else the sum of client weights.
    pub load: u64,
}

/// Utilisation of `rate` bytes/s on a link of `capacity` bytes/s, in per mille (a zero capacity
/// counts as fully used by any load).
pub fn utilisation_permille(rate: u64, capacity: u64) -> u64 {
    if capacity == 0 {
        return if rate == 0 { 0 } else { u64::MAX };
    }
    ((u128::from(rate) * 1000) / u128::from(capacity)).min(u128::from(u64::MAX)) as u64
}

/// One bound client as the balancer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedClient {
    /// The client.
    pub client: ClientId,
    /// The interconnect its binding is on.
    pub link: InterconnectId,
    /// Its measured rate, bytes/s (both directions of the pair).
    pub rate: u64,
    /// Whether it may move now (not pinned, live, dwelt long enough since its last move).
    pub movable: bool,
}

/// One interconnect as the balancer sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkLoad {
    /// The interconnect.
    pub id: InterconnectId,
    /// Whether clients may move onto it (up, and healthy for the hold-down).
    pub target: bool,
    /// Its capacity, bytes/s.
    pub capacity: u64,
}

/// The balancer's watermarks, per mille of a link's capacity (`low < high`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Watermarks {
    /// A link above this is overloaded.
    pub high: u64,
    /// A move must leave its target below this.
    pub low: u64,
}

/// A planned migration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Migration {
    /// The client.
    pub client: ClientId,
    /// From.
    pub from: InterconnectId,
    /// To.
    pub to: InterconnectId,
    /// The source's utilisation before the move, per mille.
    pub from_permille: u64,
    /// The target's utilisation after the move, per mille.
    pub to_permille: u64,
}

/// The measured load of every link: the sum of the rates of the clients bound on it.
pub fn link_rates(clients: &[LoadedClient], links: &[LinkLoad]) -> Vec<u64> {
    links
        .iter()
        .map(|l| {
            clients
                .iter()
                .filter(|c| c.link == l.id)
                .map(|c| c.rate)
                .fold(0u64, u64::saturating_add)
        })
        .collect()
}

/// At most one migration that relieves an overloaded link (see the module docs), or `None`.
pub fn plan_migration(
    clients: &[LoadedClient],
    links: &[LinkLoad],
    w: Watermarks,
) -> Option<Migration> {
    let rates = link_rates(clients, links);
    let util = |i: usize, extra: u64| {
        utilisation_permille(rates[i].saturating_add(extra), links[i].capacity)
    };
    // Most overloaded link first.
    let mut over: Vec<usize> = (0..links.len()).filter(|&i| util(i, 0) > w.high).collect();
    over.sort_by_key(|&i| (std::cmp::Reverse(util(i, 0)), links[i].id));
    for src in over {
        let mut movers: Vec<&LoadedClient> = clients
            .iter()
            .filter(|c| c.link == links[src].id && c.movable && c.rate > 0)
            .collect();
        movers.sort_by_key(|c| (std::cmp::Reverse(c.rate), c.client));
        let target = |c: &LoadedClient| {
            (0..links.len())
                .filter(|&j| j != src && links[j].target)
                .map(|j| (util(j, c.rate), links[j].id))
                .filter(|(u, _)| *u < w.low)
                .min()
        };
        let ends_overload = |c: &LoadedClient| {
            utilisation_permille(rates[src] - c.rate, links[src].capacity) <= w.high
        };
        // The busiest client whose move ends the overload. Moving a client that cannot end it
        // would only churn: a link saturated by what cannot move stays as it is.
        let pick = movers
            .iter()
            .filter(|c| ends_overload(c))
            .find_map(|c| target(c).map(|t| (*c, t)));
        if let Some((c, (to_permille, to))) = pick {
            return Some(Migration {
                client: c.client,
                from: links[src].id,
                to,
                from_permille: util(src, 0),
                to_permille,
            });
        }
    }
    None
}

/// The utilisation weight of a client of a class.
pub fn weight(class: BandwidthClass) -> u64 {
    match class {
        BandwidthClass::High => 100,
        BandwidthClass::Low => 1,
    }
}

/// The configured (static) home interconnect of every client, for `links` interconnects.
pub fn home_links(clients: &[ClientNeeds], links: usize) -> BTreeMap<ClientId, InterconnectId> {
    let mut out = BTreeMap::new();
    if links == 0 {
        return out;
    }
    let mut sorted: Vec<&ClientNeeds> = clients.iter().collect();
    sorted.sort_by_key(|c| c.client);
    let high: Vec<&&ClientNeeds> = sorted
        .iter()
        .filter(|c| c.pinned.is_none() && c.class == BandwidthClass::High)
        .collect();
    // Links handed to high clients, from the top, never link 0 when there are two or more links.
    let high_pool = if links >= 2 { links - 1 } else { 1 };
    let high_links = high.len().min(high_pool);
    for (i, c) in high.iter().enumerate() {
        let slot = i % high_pool;
        let link = if links >= 2 { links - 1 - slot } else { 0 };
        out.insert(c.client, InterconnectId(link as u8));
    }
    // Low clients share what is left (at least link 0).
    let low_pool = (links - high_links).max(1);
    for (i, c) in sorted
        .iter()
        .filter(|c| c.pinned.is_none() && c.class == BandwidthClass::Low)
        .enumerate()
    {
        out.insert(c.client, InterconnectId((i % low_pool) as u8));
    }
    for c in sorted.iter().filter(|c| c.pinned.is_some()) {
        let p = c.pinned.unwrap_or_default();
        let p = if (p.0 as usize) < links {
            p
        } else {
            InterconnectId(0)
        };
        out.insert(c.client, p);
    }
    out
}

/// The least utilised healthy interconnect (ties to the lowest index), the failover target of Fig. 9.
pub fn least_utilised_healthy(links: &[LinkView]) -> Option<InterconnectId> {
    links
        .iter()
        .filter(|l| l.healthy)
        .min_by_key(|l| (l.load, l.id))
        .map(|l| l.id)
}

/// Where a client without a working binding goes now: its home if healthy, else the least utilised
/// healthy interconnect. `None` when no interconnect is healthy.
pub fn choose_link(home: InterconnectId, links: &[LinkView]) -> Option<InterconnectId> {
    match links.iter().find(|l| l.id == home) {
        Some(l) if l.healthy => Some(home),
        _ => least_utilised_healthy(links),
    }
}

/// Whether a client living on `current` should move back to `home`: it is away from home and its home
/// has been healthy for at least `hold_down`.
pub fn should_fail_back(
    current: InterconnectId,
    home: InterconnectId,
    links: &[LinkView],
    now: Time,
    hold_down: std::time::Duration,
) -> bool {
    if current == home {
        return false;
    }
    links
        .iter()
        .any(|l| l.id == home && l.healthy && now.saturating_since(l.healthy_since) >= hold_down)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn low(id: u32) -> ClientNeeds {
        ClientNeeds {
            client: ClientId(id),
            class: BandwidthClass::Low,
            pinned: None,
        }
    }
    fn high(id: u32) -> ClientNeeds {
        ClientNeeds {
            client: ClientId(id),
            class: BandwidthClass::High,
            pinned: None,
        }
    }
    fn link(id: u8, healthy: bool, load: u64) -> LinkView {
        LinkView {
            id: InterconnectId(id),
            healthy,
            healthy_since: Time::ZERO,
            load,
        }
    }

    #[test]
    fn fig8_the_mirror_gets_its_own_link_and_the_others_share_link_0() {
        let h = home_links(&[low(1), low(2), high(3)], 2);
        assert_eq!(h[&ClientId(3)], InterconnectId(1));
        assert_eq!(h[&ClientId(1)], InterconnectId(0));
        assert_eq!(h[&ClientId(2)], InterconnectId(0));
    }

    #[test]
    fn with_one_link_everyone_shares_it() {
        let h = home_links(&[low(1), high(2), high(3)], 1);
        assert!(h.values().all(|l| *l == InterconnectId(0)));
    }

    #[test]
    fn low_clients_spread_over_links_the_high_ones_leave() {
        let h = home_links(&[low(1), low(2), low(3), high(9)], 3);
        assert_eq!(h[&ClientId(9)], InterconnectId(2));
        assert_eq!(h[&ClientId(1)], InterconnectId(0));
        assert_eq!(h[&ClientId(2)], InterconnectId(1));
        assert_eq!(h[&ClientId(3)], InterconnectId(0));
    }

    #[test]
    fn more_high_clients_than_links_share_but_keep_off_link_0() {
        let h = home_links(&[high(1), high(2), high(3), low(4)], 2);
        for c in 1..=3 {
            assert_eq!(h[&ClientId(c)], InterconnectId(1));
        }
        assert_eq!(h[&ClientId(4)], InterconnectId(0));
    }

    #[test]
    fn a_pin_wins_and_an_impossible_pin_falls_back_to_link_0() {
        let mut c = high(1);
        c.pinned = Some(InterconnectId(0));
        let mut d = low(2);
        d.pinned = Some(InterconnectId(7));
        let h = home_links(&[c, d], 2);
        assert_eq!(h[&ClientId(1)], InterconnectId(0));
        assert_eq!(h[&ClientId(2)], InterconnectId(0));
    }

    #[test]
    fn fig9_failover_picks_the_least_utilised_healthy_link() {
        let links = [link(0, false, 0), link(1, true, 100), link(2, true, 3)];
        assert_eq!(
            choose_link(InterconnectId(0), &links),
            Some(InterconnectId(2))
        );
        let tie = [link(0, false, 0), link(1, true, 5), link(2, true, 5)];
        assert_eq!(
            choose_link(InterconnectId(0), &tie),
            Some(InterconnectId(1))
        );
    }

    #[test]
    fn a_healthy_home_is_kept_even_when_busier() {
        let links = [link(0, true, 500), link(1, true, 0)];
        assert_eq!(
            choose_link(InterconnectId(0), &links),
            Some(InterconnectId(0))
        );
    }

    #[test]
    fn no_healthy_link_means_no_placement() {
        let links = [link(0, false, 0), link(1, false, 0)];
        assert_eq!(choose_link(InterconnectId(1), &links), None);
    }

    const MB: u64 = 1_000_000;
    const W: Watermarks = Watermarks {
        high: 800,
        low: 600,
    };

    fn lc(id: u32, link: u8, rate_mb: u64) -> LoadedClient {
        LoadedClient {
            client: ClientId(id),
            link: InterconnectId(link),
            rate: rate_mb * MB,
            movable: true,
        }
    }
    fn ll(id: u8, capacity_mb: u64) -> LinkLoad {
        LinkLoad {
            id: InterconnectId(id),
            target: true,
            capacity: capacity_mb * MB,
        }
    }

    /// Applies a plan to the clients, as the manager does.
    fn apply(clients: &mut [LoadedClient], m: Migration) {
        for c in clients.iter_mut().filter(|c| c.client == m.client) {
            c.link = m.to;
        }
    }

    #[test]
    fn utilisation_is_per_mille_of_capacity() {
        assert_eq!(utilisation_permille(50 * MB, 100 * MB), 500);
        assert_eq!(utilisation_permille(150 * MB, 100 * MB), 1500);
        assert_eq!(utilisation_permille(0, 0), 0);
        assert_eq!(utilisation_permille(1, 0), u64::MAX);
        assert_eq!(utilisation_permille(u64::MAX, 1), u64::MAX);
    }

    #[test]
    fn an_overloaded_link_sheds_its_busiest_movable_client_that_fits_elsewhere() {
        let clients = [lc(1, 0, 5), lc(2, 0, 80), lc(3, 0, 3), lc(4, 1, 10)];
        let links = [ll(0, 100), ll(1, 200)];
        let m = plan_migration(&clients, &links, W).expect("a move");
        assert_eq!(
            m,
            Migration {
                client: ClientId(2),
                from: InterconnectId(0),
                to: InterconnectId(1),
                from_permille: 880,
                to_permille: 450,
            }
        );
    }

    #[test]
    fn only_a_move_that_ends_the_overload_is_made() {
        // Link 0 at 880: client 2 (80) fits nowhere below low; moving client 1 (5) or 3 (3) would
        // leave link 0 above high: nothing moves.
        let clients = [lc(1, 0, 5), lc(2, 0, 80), lc(3, 0, 3), lc(4, 1, 10)];
        let links = [ll(0, 100), ll(1, 100)];
        assert_eq!(plan_migration(&clients, &links, W), None);
        // Client 6 (55) would end the overload but does not fit on link 1 (65 > 60); client 5 (30)
        // both fits and ends it.
        let clients = [lc(5, 0, 30), lc(6, 0, 55), lc(4, 1, 10)];
        let m = plan_migration(&clients, &links, W).expect("a move");
        assert_eq!(
            (m.client, m.from_permille, m.to_permille),
            (ClientId(5), 850, 400)
        );
    }

    #[test]
    fn when_the_busiest_client_does_not_fit_a_smaller_one_may_move() {
        // Link 0 at 900 per mille: client 2 (70) does not fit on link 1 (10 + 70 > 60), client 1 (20) does.
        let clients = [lc(1, 0, 20), lc(2, 0, 70), lc(4, 1, 10)];
        let links = [ll(0, 100), ll(1, 100)];
        let m = plan_migration(&clients, &links, W).expect("a move");
        assert_eq!((m.client, m.to), (ClientId(1), InterconnectId(1)));
    }

    #[test]
    fn nothing_moves_below_the_high_watermark_or_without_a_target_with_room() {
        let links = [ll(0, 100), ll(1, 100)];
        assert_eq!(
            plan_migration(&[lc(1, 0, 80)], &links, W),
            None,
            "at high, not above"
        );
        let busy = [lc(1, 0, 90), lc(2, 1, 55)];
        assert_eq!(
            plan_migration(&busy, &links, W),
            None,
            "no link stays below low"
        );
    }

    #[test]
    fn pinned_or_recently_moved_clients_and_unhealthy_targets_are_left_alone() {
        let mut clients = [lc(1, 0, 60), lc(2, 0, 35)];
        clients[0].movable = false;
        let links = [ll(0, 100), ll(1, 100)];
        let m = plan_migration(&clients, &links, W).expect("the movable one");
        assert_eq!(m.client, ClientId(2));
        clients[1].movable = false;
        assert_eq!(plan_migration(&clients, &links, W), None);
        let clients = [lc(1, 0, 90)];
        let mut links = [ll(0, 100), ll(1, 100)];
        links[1].target = false;
        assert_eq!(plan_migration(&clients, &links, W), None);
    }

    #[test]
    fn the_least_utilised_target_wins_ties_to_the_lowest_index() {
        let clients = [lc(1, 2, 45), lc(2, 0, 30), lc(3, 1, 10)];
        let links = [ll(0, 100), ll(1, 100), ll(2, 50)];
        let m = plan_migration(&clients, &links, W).expect("a move");
        assert_eq!(m.to, InterconnectId(1));
        let clients = [lc(1, 2, 45), lc(2, 0, 10), lc(3, 1, 10)];
        let m = plan_migration(&clients, &links, W).expect("a move");
        assert_eq!(m.to, InterconnectId(0));
    }

    #[test]
    fn under_constant_load_the_plan_settles_after_one_move_and_does_not_oscillate() {
        let mut clients = [lc(1, 0, 2), lc(2, 0, 1), lc(3, 0, 85)];
        let links = [ll(0, 100), ll(1, 100)];
        // Saturated by what cannot move anywhere.
        let mut moves = Vec::new();
        for _ in 0..100 {
            if let Some(m) = plan_migration(&clients, &links, W) {
                moves.push(m);
                apply(&mut clients, m);
            }
        }
        // 88 MB/s on a 100 MB/s link: the 85 MB/s client does not fit below 60 % elsewhere and
        // moving a small one would not end the overload: nothing ever moves.
        assert!(moves.is_empty(), "{moves:?}");
    }

    #[test]
    fn a_heavy_client_moves_once_and_stays_under_constant_load() {
        let mut clients = [lc(1, 0, 2), lc(2, 0, 1), lc(3, 0, 90)];
        let links = [ll(0, 100), ll(1, 200)];
        let first = plan_migration(&clients, &links, W).expect("a move");
        assert_eq!((first.client, first.to), (ClientId(3), InterconnectId(1)));
        apply(&mut clients, first);
        for _ in 0..100 {
            assert_eq!(plan_migration(&clients, &links, W), None);
        }
    }

    #[test]
    fn under_alternating_load_a_client_moves_at_most_once_per_direction_change_of_overload() {
        // Two heavy clients take turns: in even periods client 1 pushes 90 MB/s, in odd ones client 2.
        // Each period's plan may move the busy one off its link, but a moved client lands below the
        // low watermark, so it is never moved back while its own load is what it was when it moved.
        let links = [ll(0, 100), ll(1, 100)];
        let mut clients = [lc(1, 0, 0), lc(2, 0, 0), lc(3, 1, 5)];
        let mut moves = Vec::new();
        for period in 0..200u32 {
            let busy = if period % 2 == 0 { 0 } else { 1 };
            clients[0].rate = if busy == 0 { 50 * MB } else { MB };
            clients[1].rate = if busy == 1 { 50 * MB } else { MB };
            // Load that fits nowhere below low never moves, whatever alternates.
            if let Some(m) = plan_migration(&clients, &links, W) {
                moves.push((period, m));
                apply(&mut clients, m);
            }
        }
        assert!(
            moves.is_empty(),
            "51 MB/s on a link is below the high watermark: {moves:?}"
        );
        // Now the alternating client alone overloads its link: it moves once and the link it left
        // never becomes a target for it again while its load alternates.
        let mut clients = [lc(1, 0, 0), lc(3, 0, 30), lc(4, 1, 0)];
        let mut moves = Vec::new();
        for period in 0..200u32 {
            clients[0].rate = if period % 2 == 0 { 55 * MB } else { 5 * MB };
            if let Some(m) = plan_migration(&clients, &links, W) {
                moves.push((period, m));
                apply(&mut clients, m);
            }
        }
        assert_eq!(moves.len(), 1, "{moves:?}");
        assert_eq!(moves[0].1.client, ClientId(1));
    }

    #[test]
    fn failback_waits_for_the_hold_down() {
        let hold = Duration::from_millis(500);
        let mut links = [link(0, true, 0), link(1, true, 0)];
        links[0].healthy_since = Time::from_millis(1000);
        let (cur, home) = (InterconnectId(1), InterconnectId(0));
        assert!(!should_fail_back(
            cur,
            home,
            &links,
            Time::from_millis(1499),
            hold
        ));
        assert!(should_fail_back(
            cur,
            home,
            &links,
            Time::from_millis(1500),
            hold
        ));
        assert!(!should_fail_back(
            home,
            home,
            &links,
            Time::from_millis(9000),
            hold
        ));
        links[0].healthy = false;
        assert!(!should_fail_back(
            cur,
            home,
            &links,
            Time::from_millis(9000),
            hold
        ));
    }
}
