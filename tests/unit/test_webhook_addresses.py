"""Webhook receivers are hostile too: what a URL's address means, and what a receiver may do.

The address table checks every IPv6 form that carries an IPv4 address (mapped, compatible, NAT64,
6to4) as the IPv4 it carries, and the special ranges a webhook must never reach. The receivers are
real HTTP servers on loopback that answer with a huge body, dribble a byte at a time or never
answer at all, each bounded in time so that it stops by itself; the API is a real process on a real
Redis, its jobs ended by cancelling them (no worker is needed for a webhook).
"""

import pytest

from service.webhooks import WebhookRefused, resolve

REFUSED = [
    # IPv4: private, loopback, link-local, shared, this-network, broadcast, multicast, reserved
    "127.0.0.1",
    "10.1.2.3",
    "172.16.0.1",
    "192.168.1.1",
    "169.254.169.254",
    "100.64.0.1",
    "0.0.0.0",
    "255.255.255.255",
    "224.0.0.1",
    "240.0.0.1",
    # IPv4 special-purpose: IETF protocol assignments (all of 192.0.0.0/24), documentation,
    # benchmarking, the 6to4 relay anycast
    "192.0.0.8",
    "192.0.0.170",
    "192.0.0.254",
    "192.0.2.1",
    "198.18.0.1",
    "198.51.100.7",
    "203.0.113.9",
    "192.88.99.1",
    # IPv6: loopback, unspecified, link-local (with a zone), unique-local, site-local, multicast
    "::1",
    "::",
    "fe80::1",
    "fe80::1%1",
    "fc00::1",
    "fd12:3456::1",
    "fec0::1",
    "feff::1",
    "ff02::1",
    # IPv6 outside global unicast (reserved) or special within it: Teredo, benchmarking, ORCHID,
    # documentation (both), discard-only
    "100::1",
    "4000::1",
    "2001::1",
    "2001:2::1",
    "2001:10::1",
    "2001:db8::1",
    "3fff::1",
    # IPv4 carried by IPv6 forms: mapped, translated, compatible, NAT64, 6to4
    "::ffff:127.0.0.1",
    "::ffff:10.0.0.1",
    "::ffff:0:10.0.0.1",
    "::127.0.0.1",
    "::10.0.0.1",
    "::169.254.169.254",
    "64:ff9b::127.0.0.1",
    "64:ff9b::a00:1",
    "64:ff9b::192.168.1.1",
    "64:ff9b::169.254.169.254",
    "2002:a00:1::1",
    "2002:7f00:1::",
    "2002:c0a8:101:1::1",
    "2002:a9fe:a9fe::1",
    # the local-use NAT64 prefix is never public, whatever it carries
    "64:ff9b:1::a00:1",
    "64:ff9b:1:0:808:808::",
]
ACCEPTED = [
    "8.8.8.8",
    "1.1.1.1",
    "93.184.216.34",
    "2606:4700:4700::1111",
    "2a00:1450:4001:800::200e",
    "::ffff:8.8.8.8",
    "::8.8.8.8",
    "64:ff9b::8.8.8.8",
    "2002:808:808::1",
]


@pytest.mark.parametrize("address", REFUSED)
def test_webhook_addresses_that_are_not_public_are_refused(address):
    with pytest.raises(WebhookRefused):
        resolve(address, 80, allow_private=False)


@pytest.mark.parametrize("address", ACCEPTED)
def test_public_addresses_and_forms_carrying_a_public_ipv4_are_accepted(address):
    assert resolve(address, 80, allow_private=False)
