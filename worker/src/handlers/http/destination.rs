//! Where `http` may connect: which addresses belong to the worker's own networks (its host, its
//! cloud's metadata service, its private networks), and what the worker's `--http-allow` opens.
//! Pure rules; the resolver and the redirect policy in [`super`] apply them to every address a
//! request connects to.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use reqwest::Url;
use reqwest::dns::Name;

/// Why an address is not one of the public internet's, and so refused unless allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressClass {
    /// 127.0.0.0/8, ::1: the worker's own host.
    Loopback,
    /// 169.254.0.0/16, fe80::/10: the local link, where cloud metadata services answer.
    LinkLocal,
    /// 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, fc00::/7 and the old site-local fec0::/10.
    Private,
    /// 100.64.0.0/10: carrier-grade NAT, often a provider's internal network.
    SharedCgnat,
    /// 0.0.0.0/8 and ::, which Linux connects to the host itself.
    Unspecified,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// Special-purpose ranges that are not routed on the internet: 192.0.0.0/24, documentation
    /// (192.0.2.0/24, 198.51.100.0/24, 203.0.113.0/24, 2001:db8::/32), benchmarking
    /// (198.18.0.0/15), 240.0.0.0/4, discard-only 100::/64 and local-use NAT64 64:ff9b:1::/48.
    Reserved,
}

impl fmt::Display for AddressClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Loopback => "a loopback",
            Self::LinkLocal => "a link-local",
            Self::Private => "a private",
            Self::SharedCgnat => "a shared (CGNAT)",
            Self::Unspecified => "an unspecified",
            Self::Multicast => "a multicast",
            Self::Broadcast => "a broadcast",
            Self::Reserved => "a reserved",
        })
    }
}

/// The class of `ip`, or `None` for a public address.
///
/// An IPv6 address that stands for an IPv4 one (IPv4-mapped `::ffff:a.b.c.d`, IPv4-compatible
/// `::a.b.c.d`, NAT64 `64:ff9b::a.b.c.d`, 6to4 `2002:aabb:ccdd::`, Teredo's client) has the
/// class of that IPv4 address: connecting to it reaches the IPv4 address, or a relay that does.
pub fn classify(ip: IpAddr) -> Option<AddressClass> {
    match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    }
}

fn classify_v4(ip: Ipv4Addr) -> Option<AddressClass> {
    use AddressClass::*;
    let [a, b, c, _] = ip.octets();
    let class = match (a, b, c) {
        (127, ..) => Loopback,
        (169, 254, _) => LinkLocal,
        (10, ..) | (172, 16..=31, _) | (192, 168, _) => Private,
        (100, 64..=127, _) => SharedCgnat,
        (0, ..) => Unspecified,
        (224..=239, ..) => Multicast,
        _ if ip == Ipv4Addr::BROADCAST => Broadcast,
        (240..=255, ..) | (192, 0, 0 | 2) | (198, 51, 100) | (203, 0, 113) | (198, 18..=19, _) => {
            Reserved
        }
        _ => return None,
    };
    Some(class)
}

fn classify_v6(ip: Ipv6Addr) -> Option<AddressClass> {
    use AddressClass::*;
    if ip == Ipv6Addr::LOCALHOST {
        return Some(Loopback);
    }
    if ip == Ipv6Addr::UNSPECIFIED {
        return Some(Unspecified);
    }
    if let Some(v4) = embedded_v4(ip) {
        return classify_v4(v4);
    }
    let s = ip.segments();
    let class = match s[0] {
        0xfe80..=0xfebf => LinkLocal,
        0xfc00..=0xfdff | 0xfec0..=0xfeff => Private,
        0xff00..=0xffff => Multicast,
        0x0100 if s[1..4] == [0, 0, 0] => Reserved,
        0x2001 if s[1] == 0x0db8 => Reserved,
        0x0064 if s[1] == 0xff9b && s[2] == 1 => Reserved,
        _ => return None,
    };
    Some(class)
}

/// The IPv4 address an IPv6 address carries and leads to, if it is of a form that does.
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let last = Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    match s {
        // IPv4-mapped, and the deprecated IPv4-compatible form (:: and ::1 are handled before).
        [0, 0, 0, 0, 0, 0xffff | 0, ..] => Some(last),
        // NAT64's well-known prefix: a translator on the path connects to the IPv4 address.
        [0x0064, 0xff9b, 0, 0, 0, 0, ..] => Some(last),
        // 6to4: the IPv4 address follows the prefix.
        [0x2002, hi, lo, ..] => Some(Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        )),
        // Teredo: the client's IPv4 address, with every bit inverted, ends the address.
        [0x2001, 0, ..] => Some(Ipv4Addr::from(!u32::from(last))),
        _ => None,
    }
}

/// A destination the worker's `--http-allow` opens: a network, or a host name.
///
/// Written as an address (`127.0.0.1`, `::1`, `[::1]`), a network in CIDR notation
/// (`10.0.0.0/8`, `fd00::/8`; the address must have no bits set past the prefix), a host name
/// (`metadata.internal`), or every name under a domain (`*.svc.cluster.local`, which does not
/// include `svc.cluster.local` itself). A network opens the addresses in it, however they are
/// reached; a name opens every address it resolves to, and only when reached by that name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpAllow {
    /// The addresses whose first `prefix` bits are `addr`'s.
    Network {
        /// The network's address, with no bits set past the prefix.
        addr: IpAddr,
        /// The prefix length, at most 32 for IPv4 and 128 for IPv6.
        prefix: u8,
    },
    /// A host name in lower case without a final dot; `*.` first matches every name under it.
    Host(String),
}

impl HttpAllow {
    fn contains(&self, ip: IpAddr) -> bool {
        let Self::Network { addr, prefix } = self else {
            return false;
        };
        let within = |a: u128, b: u128, bits: u8, width: u8| {
            let shift = width - bits;
            // A shift by the full width would overflow: a zero prefix matches everything.
            shift >= width || (a >> shift) == (b >> shift)
        };
        match (addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                within(u32::from(*net).into(), u32::from(ip).into(), *prefix, 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                within(u128::from(*net), u128::from(ip), *prefix, 128)
            }
            // An IPv6 form of an IPv4 address is opened by the IPv4 network that holds it.
            (IpAddr::V4(_), IpAddr::V6(v6)) => {
                embedded_v4(v6).is_some_and(|v4| self.contains(IpAddr::V4(v4)))
            }
            (IpAddr::V6(_), IpAddr::V4(_)) => false,
        }
    }

    fn matches_host(&self, host: &str) -> bool {
        let Self::Host(pattern) = self else {
            return false;
        };
        let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
        match pattern.strip_prefix("*.") {
            Some(domain) => host
                .strip_suffix(domain)
                .is_some_and(|sub| sub.len() > 1 && sub.ends_with('.')),
            None => host == *pattern,
        }
    }
}

/// Why an `--http-allow` value is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--http-allow {value:?}: {why}")]
pub struct HttpAllowError {
    value: String,
    why: String,
}

impl FromStr for HttpAllow {
    type Err = HttpAllowError;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        let bad = |why: String| HttpAllowError {
            value: value.to_owned(),
            why,
        };
        let unbracketed = |s: &'_ str| -> String {
            s.strip_prefix('[')
                .and_then(|s| s.strip_suffix(']'))
                .unwrap_or(s)
                .to_owned()
        };
        if let Some((addr, prefix)) = value.split_once('/') {
            let addr: IpAddr = unbracketed(addr)
                .parse()
                .map_err(|_| bad(format!("{addr:?} is not an IP address")))?;
            let width = if addr.is_ipv4() { 32 } else { 128 };
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= width)
                .ok_or_else(|| bad(format!("the prefix must be a number from 0 to {width}")))?;
            let net = HttpAllow::Network { addr, prefix };
            let bits = match addr {
                IpAddr::V4(a) => u128::from(u32::from(a)),
                IpAddr::V6(a) => u128::from(a),
            };
            let host_bits = if prefix == 0 {
                bits
            } else {
                bits & ((1u128 << (width - prefix)) - 1)
            };
            if host_bits != 0 {
                return Err(bad(format!(
                    "{addr} has bits set past the /{prefix} prefix"
                )));
            }
            return Ok(net);
        }
        if let Ok(addr) = unbracketed(value).parse::<IpAddr>() {
            let prefix = if addr.is_ipv4() { 32 } else { 128 };
            return Ok(HttpAllow::Network { addr, prefix });
        }
        let host = value
            .strip_suffix('.')
            .unwrap_or(value)
            .to_ascii_lowercase();
        let name = host.strip_prefix("*.").unwrap_or(&host);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if name.is_empty() || !name.split('.').all(label_ok) {
            return Err(bad(
                "not an address, a network (CIDR) or a host name (letters, digits, '-', '_' \
                 and dots, optionally after '*.')"
                    .into(),
            ));
        }
        Ok(HttpAllow::Host(host))
    }
}

impl fmt::Display for HttpAllow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Network { addr, prefix } => write!(f, "{addr}/{prefix}"),
            Self::Host(host) => f.write_str(host),
        }
    }
}

/// Where `http` may connect: every public address, and what [`HttpPolicy::allow`] opens. The
/// default allows no address of the worker's own networks ([`AddressClass`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HttpPolicy {
    /// Networks and host names opened beyond the public internet; the worker's `--http-allow`.
    pub allow: Vec<HttpAllow>,
}

impl HttpPolicy {
    /// Whether a connection to `ip` may be made, `host` being the name it was resolved from
    /// (none for an address written in the URL).
    pub fn check(&self, host: Option<&str>, ip: IpAddr) -> Result<(), Refused> {
        if host.is_some_and(|h| self.allow.iter().any(|a| a.matches_host(h))) {
            return Ok(());
        }
        let Some(class) = classify(ip) else {
            return Ok(());
        };
        if self.allow.iter().any(|a| a.contains(ip)) {
            return Ok(());
        }
        Err(Refused {
            host: host.map(str::to_owned),
            ip,
            class,
        })
    }

    /// The check of a URL's host when it is an address, which no resolver sees; a name is
    /// checked with every address it resolves to, when it is resolved ([`Self::check`]).
    pub fn check_url(&self, url: &Url) -> Result<(), Refused> {
        // The URL standard has already turned every way of writing an IPv4 address into
        // dotted decimal, and an IPv6 address is the only host in brackets.
        let host = url.host_str().unwrap_or_default();
        let host = host
            .strip_prefix('[')
            .and_then(|h| h.strip_suffix(']'))
            .unwrap_or(host);
        match host.parse::<IpAddr>() {
            Ok(ip) => self.check(None, ip),
            Err(_) => Ok(()),
        }
    }

    /// The addresses `name` resolved to that may be connected to; refused if none may.
    pub(super) fn filter(
        &self,
        name: &Name,
        resolved: impl IntoIterator<Item = std::net::SocketAddr>,
    ) -> Result<Vec<std::net::SocketAddr>, Refused> {
        let mut refused = None;
        let allowed: Vec<_> = resolved
            .into_iter()
            .filter(|addr| match self.check(Some(name.as_str()), addr.ip()) {
                Ok(()) => true,
                Err(r) => {
                    refused.get_or_insert(r);
                    false
                }
            })
            .collect();
        match refused {
            Some(r) if allowed.is_empty() => Err(r),
            _ => Ok(allowed),
        }
    }
}

/// A connection `http` refused to make, naming the address and its class.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct Refused {
    host: Option<String>,
    ip: IpAddr,
    class: AddressClass,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Some(host) => write!(f, "{host} resolves to {}, {} address", self.ip, self.class)?,
            None => write!(f, "{} is {} address", self.ip, self.class)?,
        }
        f.write_str("; refused (allow it with --http-allow)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn addresses_are_classified() {
        use AddressClass::*;
        let check = |addr: &str, want: Option<AddressClass>| {
            assert_eq!(classify(ip(addr)), want, "{addr}");
        };
        check("127.0.0.1", Some(Loopback));
        check("127.255.255.254", Some(Loopback));
        check("::1", Some(Loopback));
        check("169.254.169.254", Some(LinkLocal));
        check("fe80::1", Some(LinkLocal));
        check("febf:ffff::1", Some(LinkLocal));
        check("10.0.0.1", Some(Private));
        check("172.16.0.1", Some(Private));
        check("172.31.255.255", Some(Private));
        check("192.168.1.1", Some(Private));
        check("fc00::1", Some(Private));
        check("fd12:3456::1", Some(Private));
        check("fec0::1", Some(Private));
        check("100.64.0.1", Some(SharedCgnat));
        check("100.127.255.255", Some(SharedCgnat));
        check("0.0.0.0", Some(Unspecified));
        check("0.1.2.3", Some(Unspecified));
        check("::", Some(Unspecified));
        check("224.0.0.1", Some(Multicast));
        check("239.255.255.250", Some(Multicast));
        check("ff02::1", Some(Multicast));
        check("255.255.255.255", Some(Broadcast));
        check("240.0.0.1", Some(Reserved));
        check("192.0.2.1", Some(Reserved));
        check("198.18.0.1", Some(Reserved));
        check("2001:db8::1", Some(Reserved));
        check("100::1", Some(Reserved));
        check("64:ff9b:1::1", Some(Reserved));
        // Both sides of every edge stay public.
        check("8.8.8.8", None);
        check("126.255.255.255", None);
        check("128.0.0.1", None);
        check("169.253.255.255", None);
        check("172.15.255.255", None);
        check("172.32.0.0", None);
        check("192.167.255.255", None);
        check("100.63.255.255", None);
        check("100.128.0.0", None);
        check("223.255.255.255", None);
        check("2606:4700:4700::1111", None);
        check("fbff::1", None);
        check("2001:4860:4860::8888", None);
    }

    #[test]
    fn ipv6_forms_of_ipv4_addresses_have_their_class() {
        use AddressClass::*;
        let check = |addr: &str, want: Option<AddressClass>| {
            assert_eq!(classify(ip(addr)), want, "{addr}");
        };
        check("::ffff:127.0.0.1", Some(Loopback));
        check("::ffff:169.254.169.254", Some(LinkLocal));
        check("::ffff:10.1.2.3", Some(Private));
        check("::ffff:100.64.0.1", Some(SharedCgnat));
        check("::ffff:0.0.0.0", Some(Unspecified));
        check("::ffff:224.0.0.1", Some(Multicast));
        check("::ffff:255.255.255.255", Some(Broadcast));
        check("::ffff:8.8.8.8", None);
        check("::127.0.0.1", Some(Loopback));
        check("::10.0.0.1", Some(Private));
        check("64:ff9b::a9fe:a9fe", Some(LinkLocal));
        check("64:ff9b::808:808", None);
        check("2002:7f00:1::", Some(Loopback));
        check("2002:c0a8:101::1", Some(Private));
        check("2002:808:808::1", None);
        // Teredo: client 127.0.0.1 is stored inverted, as 80ff:fffe.
        check("2001:0:4136:e378:8000:63bf:80ff:fffe", Some(Loopback));
    }

    #[test]
    fn allow_entries_parse() {
        let net = |addr: &str, prefix| HttpAllow::Network {
            addr: ip(addr),
            prefix,
        };
        let check = |value: &str, want: HttpAllow| {
            assert_eq!(value.parse::<HttpAllow>(), Ok(want), "{value}");
        };
        check("127.0.0.1", net("127.0.0.1", 32));
        check("10.0.0.0/8", net("10.0.0.0", 8));
        check("0.0.0.0/0", net("0.0.0.0", 0));
        check("::1", net("::1", 128));
        check("[::1]", net("::1", 128));
        check("fd00::/8", net("fd00::", 8));
        check("[fd00::]/8", net("fd00::", 8));
        check(
            "Metadata.Internal.",
            HttpAllow::Host("metadata.internal".into()),
        );
        check(
            "*.svc.cluster.local",
            HttpAllow::Host("*.svc.cluster.local".into()),
        );
        check("localhost", HttpAllow::Host("localhost".into()));
        for bad in [
            "",
            "10.0.0.1/8",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            "x/8",
            "a b",
            "a..b",
            "*",
            "*.",
            "http://x",
            "a:80",
        ] {
            assert!(bad.parse::<HttpAllow>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn networks_and_names_open_what_they_say() {
        let policy = |entries: &[&str]| HttpPolicy {
            allow: entries.iter().map(|e| e.parse().unwrap()).collect(),
        };
        let open = |p: &HttpPolicy, host: Option<&str>, addr: &str| p.check(host, ip(addr)).is_ok();

        let none = policy(&[]);
        assert!(open(&none, None, "93.184.215.14"));
        assert!(open(&none, Some("example.com"), "93.184.215.14"));
        assert!(!open(&none, None, "127.0.0.1"));
        assert!(!open(&none, Some("localhost"), "127.0.0.1"));

        let lo = policy(&["127.0.0.1"]);
        assert!(open(&lo, None, "127.0.0.1"));
        assert!(open(&lo, Some("localhost"), "127.0.0.1"));
        assert!(open(&lo, None, "::ffff:127.0.0.1"));
        assert!(!open(&lo, None, "127.0.0.2"));
        assert!(!open(&lo, None, "::1"));

        let nets = policy(&["10.0.0.0/8", "fd00::/8"]);
        assert!(open(&nets, None, "10.255.0.1"));
        assert!(open(&nets, None, "fd12::1"));
        assert!(open(&nets, None, "11.0.0.1"));
        assert!(!open(&nets, None, "192.168.0.1"));
        assert!(!open(&nets, None, "fc00::1"));

        let everything = policy(&["0.0.0.0/0", "::/0"]);
        assert!(open(&everything, None, "169.254.169.254"));
        assert!(open(&everything, None, "fe80::1"));

        let names = policy(&["metadata.internal", "*.svc.local"]);
        assert!(open(&names, Some("metadata.internal"), "169.254.169.254"));
        assert!(open(&names, Some("METADATA.internal."), "169.254.169.254"));
        assert!(open(&names, Some("api.svc.local"), "10.0.0.1"));
        assert!(open(&names, Some("a.b.svc.local"), "10.0.0.1"));
        assert!(!open(&names, Some("svc.local"), "10.0.0.1"));
        assert!(!open(&names, Some("evilsvc.local"), "10.0.0.1"));
        assert!(!open(&names, Some("other.internal"), "169.254.169.254"));
        // A name opens addresses only when reached by that name.
        assert!(!open(&names, None, "169.254.169.254"));
    }

    #[test]
    fn refusals_name_the_address_and_its_class() {
        let none = HttpPolicy::default();
        assert_eq!(
            none.check(None, ip("127.0.0.1")).unwrap_err().to_string(),
            "127.0.0.1 is a loopback address; refused (allow it with --http-allow)"
        );
        assert_eq!(
            none.check(Some("metadata"), ip("169.254.169.254"))
                .unwrap_err()
                .to_string(),
            "metadata resolves to 169.254.169.254, a link-local address; refused (allow it with \
             --http-allow)"
        );
    }

    #[test]
    fn urls_with_addresses_are_checked_and_names_left_to_the_resolver() {
        let none = HttpPolicy::default();
        let check = |url: &str| {
            none.check_url(&Url::parse(url).unwrap())
                .map_err(|r| r.class)
        };
        assert_eq!(check("http://127.0.0.1:8080/"), Err(AddressClass::Loopback));
        assert_eq!(check("http://[::1]/"), Err(AddressClass::Loopback));
        assert_eq!(
            check("http://[::ffff:a9fe:a9fe]/"),
            Err(AddressClass::LinkLocal)
        );
        // The URL standard reads these as 127.0.0.1.
        assert_eq!(check("http://2130706433/"), Err(AddressClass::Loopback));
        assert_eq!(check("http://0x7f.1/"), Err(AddressClass::Loopback));
        assert_eq!(check("http://localhost/"), Ok(()));
        assert_eq!(check("https://example.com/"), Ok(()));
    }

    #[test]
    fn resolved_addresses_are_filtered_and_refused_when_none_is_left() {
        let none = HttpPolicy::default();
        let name: Name = "mixed.example".parse().unwrap();
        let addr = |s: &str| std::net::SocketAddr::new(ip(s), 0);
        assert_eq!(
            none.filter(&name, [addr("10.0.0.1"), addr("93.184.215.14")]),
            Ok(vec![addr("93.184.215.14")])
        );
        let refused = none
            .filter(&name, [addr("10.0.0.1"), addr("127.0.0.1")])
            .unwrap_err();
        assert_eq!(refused.class, AddressClass::Private);
        assert_eq!(none.filter(&name, []), Ok(vec![]));
    }
}
