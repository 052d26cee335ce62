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
//! Utilisation is the sum of the [`weight`]s of the clients placed on a link: a stand-in for measured
//! bandwidth until the adaptive balancer (issue 6) feeds real numbers in the same field.

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
    /// Current utilisation (sum of client weights placed on it).
    pub load: u64,
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
