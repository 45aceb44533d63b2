//! The node's network state, read and set over rtnetlink: interfaces, host
//! routes to pods, the node's addresses, and the policy routing that
//! delivers marked packets locally.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use ambit_ebpf_common::{CAPTURE_MARK, CAPTURE_MARK_MASK, ROUTE_TABLE, RULE_PRIORITY};
use std::sync::Arc;

use futures::{StreamExt as _, TryStreamExt as _};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteMessage, RouteScope, RouteType};
use rtnetlink::packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{Handle, IpVersion, RouteMessageBuilder};
use tokio::sync::Notify;

use super::Error;

#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct Link {
    pub index: u32,
    pub name: String,
    pub loopback: bool,
}

#[derive(Clone, Debug)]
pub(super) struct Netlink {
    handle: Handle,
}

impl Netlink {
    /// Opens a netlink socket in the current network namespace. Must run
    /// inside a tokio runtime: the connection is driven by a spawned task.
    pub fn connect() -> Result<Self, Error> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(|e| Error::Netlink("open socket", e.to_string()))?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    pub async fn links(&self) -> Result<Vec<Link>, Error> {
        let messages: Vec<_> = self
            .handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::Netlink("list interfaces", e.to_string()))?;
        Ok(messages
            .into_iter()
            .filter_map(|m| {
                let name = m.attributes.iter().find_map(|a| match a {
                    LinkAttribute::IfName(name) => Some(name.clone()),
                    _ => None,
                })?;
                let loopback = m.header.flags.contains(LinkFlags::Loopback);
                Some(Link { index: m.header.index, name, loopback })
            })
            .collect())
    }

    /// Host routes (`/32`) in the main table, by destination: how a node
    /// with ptp-style pod networking reaches each pod. The route's output
    /// interface is the pod's node-side veth.
    pub async fn host_routes(&self) -> Result<HashMap<Ipv4Addr, u32>, Error> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let routes: Vec<RouteMessage> = self
            .handle
            .route()
            .get(query)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::Netlink("list routes", e.to_string()))?;
        Ok(routes.iter().filter_map(host_route).collect())
    }

    /// Every address configured on the node.
    pub async fn addresses(&self) -> Result<HashSet<IpAddr>, Error> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::Netlink("list addresses", e.to_string()))?;
        Ok(messages
            .iter()
            .flat_map(|m| m.attributes.iter())
            .filter_map(|a| match a {
                AddressAttribute::Address(ip) | AddressAttribute::Local(ip) => Some(*ip),
                _ => None,
            })
            .collect())
    }

    /// Installs, idempotently, `ip rule add fwmark MARK/MASK lookup TABLE`
    /// and `ip route replace local 0.0.0.0/0 dev lo table TABLE`.
    pub async fn ensure_local_delivery(&self, loopback: u32) -> Result<(), Error> {
        let rules: Vec<RuleMessage> = self
            .handle
            .rule()
            .get(IpVersion::V4)
            .execute()
            .try_collect()
            .await
            .map_err(|e| Error::Netlink("list rules", e.to_string()))?;
        if !rules.iter().any(is_capture_rule) {
            let mut add = self
                .handle
                .rule()
                .add()
                .v4()
                .fw_mark(CAPTURE_MARK)
                .table_id(ROUTE_TABLE)
                .priority(RULE_PRIORITY)
                .action(RuleAction::ToTable);
            add.message_mut().attributes.push(RuleAttribute::FwMask(CAPTURE_MARK_MASK));
            add.execute().await.map_err(|e| Error::Netlink("add fwmark rule", e.to_string()))?;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(Ipv4Addr::UNSPECIFIED, 0)
            .table_id(ROUTE_TABLE)
            .kind(RouteType::Local)
            .scope(RouteScope::Host)
            .output_interface(loopback)
            .build();
        self.handle
            .route()
            .add(route)
            .replace()
            .execute()
            .await
            .map_err(|e| Error::Netlink("add local route", e.to_string()))
    }
}

/// Subscribes to the node's link, IPv4 address and IPv4 route changes. The
/// returned `Notify` holds one permit per burst: a waiter re-reads the whole
/// state, so individual messages need not be kept (the library's queue is
/// drained as fast as it fills).
pub(super) fn subscribe_to_changes() -> Result<Arc<Notify>, Error> {
    use rtnetlink::MulticastGroup;
    let groups = [MulticastGroup::Link, MulticastGroup::Ipv4Ifaddr, MulticastGroup::Ipv4Route];
    let (connection, _handle, mut messages) = rtnetlink::new_multicast_connection(&groups)
        .map_err(|e| Error::Netlink("subscribe to changes", e.to_string()))?;
    tokio::spawn(connection);
    let changed = Arc::new(Notify::new());
    let notify = changed.clone();
    tokio::spawn(async move {
        while messages.next().await.is_some() {
            notify.notify_one();
        }
    });
    Ok(changed)
}

fn host_route(route: &RouteMessage) -> Option<(Ipv4Addr, u32)> {
    if route.header.destination_prefix_length != 32
        || route.header.table != RouteHeader::RT_TABLE_MAIN
        || route.header.kind != RouteType::Unicast
    {
        return None;
    }
    let mut destination = None;
    let mut oif = None;
    for attribute in &route.attributes {
        match attribute {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => destination = Some(*ip),
            RouteAttribute::Oif(index) => oif = Some(*index),
            _ => {}
        }
    }
    Some((destination?, oif?))
}

fn is_capture_rule(rule: &RuleMessage) -> bool {
    let has = |wanted: &RuleAttribute| rule.attributes.iter().any(|a| a == wanted);
    has(&RuleAttribute::FwMark(CAPTURE_MARK))
        && has(&RuleAttribute::FwMask(CAPTURE_MARK_MASK))
        && (has(&RuleAttribute::Table(ROUTE_TABLE)) || u32::from(rule.header.table) == ROUTE_TABLE)
}
