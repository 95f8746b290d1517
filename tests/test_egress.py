"""Who the prefetch fallback may call (cds_service/egress.py): every address class refused by
default, every resolved address checked, http refused, the allowlist and the development opt-in,
DNS rebinding between check and connect, IP literals in odd forms, and the answers (412/200 with
the right OperationOutcome). The resolver (socket.getaddrinfo) and the transport (urllib3's
create_connection, or `responses`) are stubbed in every test: nothing is ever sent to an address."""
from __future__ import annotations

import ipaddress
import json
import socket

import pytest
import responses
from urllib3.util import connection

from cds_service import create_app, egress
from cds_service.errors import FHIRError
from cds_service.fhir_client import FHIRClient

from .conftest import SCENARIOS, load_json
from .test_prefetch import AUTH, BASE, with_server

HOST = "fhir.example.org"  # BASE's host
PUBLIC_V4, PUBLIC_V6 = "8.8.8.8", "2001:4860:4860::8888"  # public addresses: never contacted (stubbed transport)
REFUSED = {  # address -> the class the refusal names
    "127.0.0.1": "loopback", "127.8.9.10": "loopback", "::1": "loopback",
    "10.1.2.3": "private (RFC 1918)", "172.16.5.4": "private (RFC 1918)", "192.168.1.1": "private (RFC 1918)",
    "100.64.0.1": "shared (CGNAT", "169.254.169.254": "link-local", "fe80::1": "link-local",
    "fd00:ec2::254": "unique-local", "fc00::1": "unique-local", "0.0.0.0": "unspecified", "::": "unspecified",
    "224.0.0.1": "multicast", "ff02::1": "multicast", "ff0e::1": "multicast", "240.0.0.1": "reserved",
    "255.255.255.255": "reserved", "::127.0.0.1": "reserved", "fec0::1": "site-local",
    "192.0.2.10": "special-purpose", "198.18.0.1": "special-purpose", "0.1.2.3": "special-purpose",
    "::ffff:127.0.0.1": "loopback (in an IPv6 form)", "::ffff:169.254.169.254": "link-local (in an IPv6 form)",
    "::ffff:10.0.0.1": "private (RFC 1918) (in an IPv6 form)", "2002:7f00:1::": "loopback (in an IPv6 form)",
    "64:ff9b::a9fe:a9fe": "link-local (in an IPv6 form)",
}


class Resolver:
    """A stubbed socket.getaddrinfo: ``resolver[host] = [answer, answer, ...]``, one answer (a list of
    addresses) per lookup, the last repeating; a host not listed does not resolve. ``calls``: hosts looked up."""

    def __init__(self):
        self.answers: dict[str, list[list[str]]] = {}
        self.calls: list[str] = []

    def __setitem__(self, host: str, answers: list[list[str]]) -> None:
        self.answers[host] = list(answers)

    def __call__(self, host, port, family=0, type=0, proto=0, flags=0):
        self.calls.append(host)
        if host not in self.answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        answers = self.answers[host]
        ips = answers[0] if len(answers) == 1 else answers.pop(0)
        return [(socket.AF_INET6, socket.SOCK_STREAM, 6, "", (ip, port, 0, 0)) if ":" in ip else
                (socket.AF_INET, socket.SOCK_STREAM, 6, "", (ip, port)) for ip in ips]


@pytest.fixture
def dns(monkeypatch):
    resolver = Resolver()
    monkeypatch.setattr(socket, "getaddrinfo", resolver)
    return resolver


class FakeSocket:
    """A connected socket whose peer is ``peer``; records what is sent (nothing, when refused)."""

    def __init__(self, peer: str):
        self.peer, self.sent, self.closed = peer, b"", False

    def getpeername(self):
        return (self.peer, 443)

    def sendall(self, data):
        self.sent += data

    def close(self):
        self.closed = True


@pytest.fixture
def wire(monkeypatch):
    """The transport: every connection attempt is recorded as (host, port) and gets the next socket
    of ``wire.sockets`` (none left: the attempt fails, so no test can reach a real address)."""
    class Wire:
        attempts: list[tuple[str, int]] = []
        sockets: list[FakeSocket] = []

    def create_connection(address, timeout=None, source_address=None, socket_options=None):
        Wire.attempts.append(address)
        if not Wire.sockets:
            raise ConnectionRefusedError("stubbed transport: no connection")
        return Wire.sockets.pop(0)

    monkeypatch.setattr(connection, "create_connection", create_connection)
    Wire.attempts, Wire.sockets = [], []
    egress.session.cache_clear()  # no pooled connection from another test
    return Wire


def rules(allowlist: str = "", opt_in: bool = False) -> egress.Policy:
    return egress.policy({"CDS_ALLOWED_FHIR_SERVERS": allowlist, "CDS_ALLOW_PRIVATE_FHIR_SERVERS": opt_in})


def refusal(url: str, policy: egress.Policy | None = None) -> str | None:
    try:
        (policy or rules()).check(url)
    except egress.Refused as exc:
        return str(exc)
    return None


@pytest.mark.parametrize("address", sorted(REFUSED))
def test_every_non_public_address_class_is_refused(dns, address):
    assert egress.address_class(ipaddress.ip_address(address)).startswith(REFUSED[address])
    dns[HOST] = [[address]]
    why = refusal(BASE)
    assert why.startswith(f"fhirServer is not allowed: its host resolves to an address that is {REFUSED[address]}")
    host = f"[{address}]" if ":" in address else address
    assert refusal(f"https://{host}/fhir").startswith(  # the same address as an IP literal
        f"fhirServer is not allowed: its host is an address that is {REFUSED[address]}")


@pytest.mark.parametrize("host,why", [("[fe80::1%25eth0]", "link-local"), ("[0:0:0:0:0:ffff:a9fe:a9fe]", "link-local (in"),
                                      ("[::FFFF:7F00:1]", "loopback (in"), ("[::ffff:0a00:0001]:8443", "private (RFC 1918) (in")])
def test_ipv6_literals_are_judged_by_the_address_they_reach(dns, host, why):
    assert f"an address that is {why}" in refusal(f"https://{host}/fhir") and dns.calls == []


@pytest.mark.parametrize("address", [PUBLIC_V4, PUBLIC_V6, "::ffff:8.8.8.8", "64:ff9b::808:808", "2002:808:808::1"])
def test_public_addresses_are_allowed(dns, address):
    assert egress.address_class(ipaddress.ip_address(address)) is None
    dns[HOST] = [[address]]
    assert refusal(BASE) is None and dns.calls == [HOST]


def test_a_public_name_with_one_private_address_among_public_ones_is_refused(dns):
    dns[HOST] = [[PUBLIC_V4, PUBLIC_V6, "10.0.0.8", "1.1.1.1"]]
    assert "private (RFC 1918)" in refusal(BASE)


def test_an_unresolvable_host_is_not_called(dns):
    assert refusal("https://nowhere.example.org/fhir") == "fhirServer's host name could not be resolved"


@pytest.mark.parametrize("url", ["http://fhir.example.org/r4", "http://127.0.0.1:8080/fhir", "http://2130706433/"])
def test_plain_http_is_refused_by_default_without_resolving(dns, url):
    dns[HOST] = [[PUBLIC_V4]]
    assert "it is not https" in refusal(url) and dns.calls == []


@pytest.mark.parametrize("host", ["2130706433", "0x7f.1", "0x7f000001", "0177.0.0.1", "127.1", "017700000001",
                                  "0x08080808", "8.8.2056", "010.0.0.1", "127.0.0.1."])
def test_ip_literals_in_other_forms_are_refused(dns, host):
    why = refusal(f"https://{host}/fhir")
    assert why is not None and why.startswith("fhirServer is not allowed"), why
    assert dns.calls == []  # never handed to a resolver that might read them as an address


@pytest.mark.parametrize("url", ["https://user:secret-pw@fhir.example.org/r4", "https://secret-pw@fhir.example.org/r4",
                                 "https://fhir.example.org:secret-pw@10.0.0.1/r4"])
def test_user_information_is_refused_and_not_echoed(dns, url):
    dns[HOST] = [[PUBLIC_V4]]
    why = refusal(url)
    assert "user information" in why and "secret-pw" not in why
    assert "user information" in refusal(url, rules(BASE))  # even when the host is allowlisted


@pytest.mark.parametrize("url", ["https://localhost:8443/fhir", "https://fhir.example.org:22/r4", "https://fhir.example.org:0/r4",
                                 "https://fhir.example.org:99999/r4", "https://localhost./fhir"])
def test_odd_ports_and_trailing_dots_do_not_get_past_the_checks(dns, url):
    dns["localhost"] = [["127.0.0.1", "::1"]]
    dns[HOST] = [["192.168.0.9"]]
    assert refusal(url).startswith("fhirServer is not allowed")


def test_an_allowlisted_private_server_is_trusted_as_configured(dns):
    policy = rules("http://hapi:8080/fhir, https://ehr.internal/r4/")
    dns["hapi"], dns["ehr.internal"] = [["172.18.0.3"]], [["10.0.0.2"]]
    for url in ("http://hapi:8080/fhir", "http://hapi:8080/fhir/", "https://ehr.internal/r4", "https://EHR.internal:443/r4/x"):
        assert refusal(url, policy) is None, url
    assert dns.calls == []  # trusted as configured: not even resolved
    for url in ("http://hapi:8080/fhirx", "https://hapi:8080/fhir", "http://hapi:8081/fhir", "http://hapi.evil:8080/fhir",
                "http://hapi:8080@evil.example/fhir", "https://ehr.internal/r5", BASE):
        assert "allowlist" in refusal(url, policy) or "user information" in refusal(url, policy), url


def test_the_development_opt_in_allows_any_server_unless_an_allowlist_is_set(dns):
    dns["localhost"] = [["127.0.0.1"]]
    for url in ("http://localhost:8080/fhir", "http://169.254.169.254/latest", "https://[::1]:8443/", "http://10.0.0.1/"):
        assert refusal(url, rules(opt_in=True)) is None
    assert "allowlist" in refusal("http://localhost:8080/fhir", rules("https://trusted.example.org", opt_in=True))


def test_a_bad_allowlist_entry_stops_the_start():
    with pytest.raises(ValueError, match="CDS_ALLOWED_FHIR_SERVERS entry 'ftp://x'"):
        create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_ALLOWED_FHIR_SERVERS": "ftp://x"})


def test_the_opt_in_is_announced_loudly_at_start(capsys):
    create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_ALLOW_PRIVATE_FHIR_SERVERS": True})
    warnings = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.startswith("{")]
    assert any(w["level"] == "WARNING" and "MAY CALL ANY fhirServer" in w["event"] for w in warnings)
    assert egress.startup_warnings({"CDS_ALLOWED_FHIR_SERVERS": BASE, "CDS_ALLOW_PRIVATE_FHIR_SERVERS": False}) == []
    assert "ignored" in egress.startup_warnings({"CDS_ALLOWED_FHIR_SERVERS": BASE, "CDS_ALLOW_PRIVATE_FHIR_SERVERS": True})[0]


def client_for(policy: egress.Policy, base: str = BASE) -> FHIRClient:
    import time
    return FHIRClient(base, "secret-token", policy, connect_timeout=1, read_timeout=1,
                      deadline=time.monotonic() + 5, max_pages=2, max_bytes=1 << 20)


def test_rebinding_between_check_and_connect_is_refused_before_any_connection(dns, wire):
    dns[HOST] = [[PUBLIC_V4], ["127.0.0.1"]]  # public when checked, loopback when the connection resolves
    policy = rules()
    policy.check(BASE)
    with pytest.raises(FHIRError, match="its host resolves to an address that is loopback"):
        client_for(policy).read("Patient/1")
    assert wire.attempts == []  # nothing was sent anywhere


def test_a_connection_whose_peer_is_private_is_closed_before_anything_is_sent(dns, wire):
    dns[HOST] = [[PUBLIC_V4]]
    sock = FakeSocket("10.9.8.7")  # the address answered public; the socket reached a private peer
    wire.sockets = [sock]
    with pytest.raises(FHIRError, match="the connection reached an address that is private"):
        client_for(rules()).read("Patient/1")
    assert wire.attempts == [(PUBLIC_V4, 443)] and sock.closed and sock.sent == b""


def test_the_connection_connects_only_to_the_addresses_it_checked(dns, wire, monkeypatch):
    dns[HOST] = [[PUBLIC_V6, PUBLIC_V4]]
    attempts = []

    def create_connection(address, *args, **kwargs):  # the first address fails, the second connects
        attempts.append(address)
        if len(attempts) == 1:
            raise ConnectionRefusedError("no route")
        return FakeSocket(address[0])

    monkeypatch.setattr(connection, "create_connection", create_connection)
    pools = egress.session(rules()).get_adapter(BASE).poolmanager.pool_classes_by_scheme
    conn = pools["https"].ConnectionCls(HOST, 443)
    sock = conn._new_conn()
    assert attempts == [(PUBLIC_V6, 443), (PUBLIC_V4, 443)] and sock.peer == PUBLIC_V4
    assert conn.host == HOST  # TLS (SNI, certificate) still checks the name, not the address


def test_an_allowlisted_origin_connects_as_urllib3_does(dns, wire):
    dns["hapi"] = [["172.18.0.3"]]
    with pytest.raises(FHIRError, match="unreachable"):
        client_for(rules("http://hapi:8080/fhir"), "http://hapi:8080/fhir").read("Patient/1")
    assert wire.attempts == [("hapi", 8080)]  # urllib3's own connect (stubbed): no address check


def test_environment_proxies_are_not_used_for_fhir_server_calls(dns, wire, monkeypatch):
    for name in ("HTTPS_PROXY", "HTTP_PROXY", "ALL_PROXY", "https_proxy", "http_proxy"):
        monkeypatch.setenv(name, "http://proxy.example.org:3128")
    dns[HOST] = [[PUBLIC_V4]]
    assert egress.session(rules()).trust_env is False
    with pytest.raises(FHIRError, match="unreachable"):
        client_for(rules()).read("Patient/1")
    assert wire.attempts == [(PUBLIC_V4, 443)]  # the server's checked address, not the proxy


@pytest.fixture
def app_client():
    return create_app({"CDS_AUTH_MODE": "off", "CDS_FEEDBACK_DB": ":memory:", "CDS_NOW": "2026-11-25T12:00:00Z",
                       "CDS_LOG_LEVEL": "WARNING"}).test_client()


@responses.activate
@pytest.mark.parametrize("address", ["127.0.0.1", "169.254.169.254", "fd00:ec2::254", "10.1.2.3"])
def test_a_refused_server_missing_required_data_is_412_naming_why(dns, app_client, address):
    dns[HOST] = [[PUBLIC_V4, address]]
    body, _ = with_server("ivig-no-iga", "conditions")
    resp = app_client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 412
    outcome = resp.get_json()
    assert outcome["resourceType"] == "OperationOutcome"
    text = outcome["issue"][0]["details"]["text"]
    assert "'conditions': fhirServer is not allowed: its host resolves to an address that is " + REFUSED[address] in text
    assert address not in resp.get_data(as_text=True) and "secret-token" not in resp.get_data(as_text=True)
    assert len(responses.calls) == 0


@responses.activate
def test_a_refused_server_missing_optional_data_degrades_to_200(dns, app_client):
    body, _ = with_server("ivig-no-iga", "observations")
    body["fhirServer"] = "http://fhir.example.org/r4"
    resp = app_client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 200
    assert {c["source"]["topic"]["code"] for c in resp.get_json()["cards"]} >= {"ivig-iga-unknown"}
    assert len(responses.calls) == 0


@responses.activate
def test_a_public_https_server_is_called(dns, app_client):
    dns[HOST] = [[PUBLIC_V4, PUBLIC_V6]]
    body, original = with_server("ivig-dose-too-high", "observations")
    responses.get(f"{BASE}/Observation", json=original["observations"])
    resp = app_client.post("/cds-services/mg-order-select", json=body)
    prefetched = app_client.post("/cds-services/mg-order-select",
                                 json=load_json(SCENARIOS / "ivig-dose-too-high" / "request.json"))
    assert resp.status_code == 200 and resp.get_json()["cards"][0]["indicator"] == "warning"
    assert [c["source"]["topic"]["code"] for c in resp.get_json()["cards"]] == \
        [c["source"]["topic"]["code"] for c in prefetched.get_json()["cards"]]
    assert responses.calls and all(c.request.url.startswith(f"{BASE}/Observation?") and
                                   c.request.headers["Authorization"] == f"Bearer {AUTH['access_token']}"
                                   for c in responses.calls)


def test_rebinding_through_the_service_is_412_and_never_connects(dns, wire, app_client):
    dns[HOST] = [[PUBLIC_V4], ["192.168.7.7"]]  # the service's check sees public; the connection sees private
    body, _ = with_server("ivig-no-iga", "conditions")
    resp = app_client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 412
    assert "fhirServer is not allowed: its host resolves to an address that is private (RFC 1918)" in \
        resp.get_json()["issue"][0]["details"]["text"]
    assert wire.attempts == []


def test_a_url_with_credentials_is_412_and_neither_answer_nor_log_repeats_them(dns, app_client, capfd):
    dns[HOST] = [[PUBLIC_V4]]
    body, _ = with_server("ivig-no-iga", "conditions")
    body["fhirServer"] = "https://mg-cds:secret-pw@fhir.example.org/r4"
    resp = app_client.post("/cds-services/mg-order-select", json=body)
    assert resp.status_code == 412 and "its URL has user information" in resp.get_json()["issue"][0]["details"]["text"]
    _, err = capfd.readouterr()
    assert '"event":"fhirServer refused","host":"fhir.example.org"' in err
    assert "secret-pw" not in err + resp.get_data(as_text=True) and "secret-token" not in err


def test_a_resolver_that_does_not_answer_costs_at_most_the_timeout(monkeypatch):
    import threading
    import time
    release = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *args, **kwargs: release.wait(10) and [])
    started = time.monotonic()
    try:
        with pytest.raises(egress.Refused, match="could not be resolved"):
            rules().check(BASE, timeout=0.2)
        assert time.monotonic() - started < 2
    finally:
        release.set()


def test_names_whose_dns_never_answers_hold_one_worker_each_and_starve_no_other_lookup(monkeypatch):
    """Six names whose lookups never end, each asked ten times: more stuck lookups than the old
    shared pool had workers (4). One lookup runs per name, a name that timed out is refused at once,
    and a good name still resolves."""
    import threading
    monkeypatch.setattr(egress, "RESOLVER", egress.Resolver(), raising=False)  # no state from other tests
    release = threading.Event()
    calls: list[str] = []

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        calls.append(host)
        if host.startswith("stuck"):
            release.wait(10)
            raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC_V4, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    policy = rules()
    try:
        for i in range(6):
            for _ in range(10):
                with pytest.raises(socket.gaierror, match="timed out"):
                    policy.addresses(f"stuck{i}.example", 443, 0.05)
        assert sorted(calls) == [f"stuck{i}.example" for i in range(6)], "one lookup per stuck name"
        assert policy.addresses(HOST, 443, 1.0) == [PUBLIC_V4]
    finally:
        release.set()


def test_a_name_whose_slow_lookup_ended_is_looked_up_again(monkeypatch):
    import threading
    import time
    monkeypatch.setattr(egress, "RESOLVER", egress.Resolver(), raising=False)
    release = threading.Event()
    calls: list[str] = []

    def getaddrinfo(host, port, family=0, type=0, proto=0, flags=0):
        calls.append(host)
        if len(calls) == 1:
            release.wait(10)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (PUBLIC_V4, port))]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(socket.gaierror, match="timed out"):
        rules().addresses(HOST, 443, 0.05)
    with pytest.raises(socket.gaierror, match="timed out recently"):
        rules().addresses(HOST, 443, 1.0)  # refused at once, no second lookup
    assert calls == [HOST]
    release.set()
    for _ in range(100):  # the first lookup ends: its name is no longer refused
        try:
            assert rules().addresses(HOST, 443, 1.0) == [PUBLIC_V4]
            break
        except socket.gaierror:
            time.sleep(0.02)
    else:
        pytest.fail("the name stayed refused after its lookup ended")
    assert len(calls) == 2


@pytest.mark.parametrize("url", [
    f"{BASE}/Patient/../../admin", f"{BASE}/Patient/%2e%2e/%2E%2E/admin", f"{BASE}/Patient/%252e%252e/admin",
    f"{BASE}/Patient/..;/admin", f"{BASE}\\..\\admin", f"{BASE}/Patient%5c..%5cadmin", f"{BASE}/./Patient/1",
    "https://fhir.example.org/r4x/Patient/1", "https://fhir.example.org/admin", "https://other.example.org/r4/Patient/1",
    "http://fhir.example.org/r4/Patient/1", "https://fhir.example.org:8443/r4/Patient/1",
])
def test_a_url_that_escapes_fhir_server_is_never_fetched(dns, wire, url):
    dns[HOST] = [[PUBLIC_V4]]
    with pytest.raises(egress.Refused, match="a FHIR URL to fetch"):
        rules().check_fetch(url, BASE)
    client = client_for(rules())
    client.url_for = lambda relative: url  # as if a template or a reference had rendered it
    with pytest.raises(FHIRError, match="a FHIR URL to fetch"):
        client.read("Patient/1")
    assert wire.attempts == []  # nothing sent, the bearer token least of all


@pytest.mark.parametrize("url", [f"{BASE}/Patient/1", f"{BASE}?_getpages=abc&_getpagesoffset=20",
                                 f"{BASE}/Observation?patient=1&code=a/../b", "https://FHIR.example.org:443/r4/Patient/1"])
def test_urls_under_fhir_server_may_be_fetched(url):
    rules().check_fetch(url, BASE)  # no lookup: the connection checks the addresses


@responses.activate
def test_a_next_page_that_escapes_fhir_server_or_the_allowlist_is_not_followed(dns):
    page = {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": {"resourceType": "Patient", "id": "1"}}],
            "link": [{"relation": "next", "url": f"{BASE}/Patient/../../admin?page=2"}]}
    responses.get(f"{BASE}/Patient", json=page)
    dns[HOST] = [[PUBLIC_V4]]
    bundle, notes, cut = client_for(rules(f"{BASE}/Patient")).read("Patient?name=x")
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["1"] and len(responses.calls) == 1
    assert cut == "a FHIR search's next page was not followed: a FHIR URL to fetch has a dot segment or a backslash in its path"
    page["link"][0]["url"] = f"{BASE}/Observation?page=2"  # under fhirServer, not under the allowlisted prefix
    responses.replace(responses.GET, f"{BASE}/Patient", json=page)
    _, _, cut = client_for(rules(f"{BASE}/Patient"), f"{BASE}").read("Patient?name=x")
    assert cut == "a FHIR search's next page was not followed: a FHIR URL to fetch is not on this service's " \
                  "allowlist (CDS_ALLOWED_FHIR_SERVERS)"
    assert len(responses.calls) == 2


def test_a_context_value_that_is_not_a_fhir_id_is_never_rendered_into_a_query():
    """encounterId and userId are not validated (no rule reads them), so a template naming one
    gets no value unless it is a FHIR id: its key is unavailable, no path is steered."""
    from cds_service.prefetch import TemplateError, render, template_values
    values = template_values({"patientId": "p1", "encounterId": "../../admin", "userId": "Practitioner/a%2f..",
                              "other": "x?y=z"})
    assert values == {"context.patientId": "p1"}
    with pytest.raises(TemplateError, match="encounterId"):
        render("Encounter/{{context.encounterId}}", values)
    assert template_values({"encounterId": "e.1-2", "userId": "Practitioner/d9"}) == \
        {"context.encounterId": "e.1-2", "userPractitionerId": "d9"}
    assert template_values({"patientId": "..", "encounterId": ".", "userId": "Practitioner/.."}) == {}


def test_after_the_refusal_expires_a_name_still_stuck_waits_on_its_one_lookup(monkeypatch):
    import threading
    import time
    monkeypatch.setattr(egress, "RESOLVER", egress.Resolver(workers=2, negative_ttl=0.05))
    release = threading.Event()
    calls: list[str] = []
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *args: calls.append(host) or release.wait(10) and [])
    try:
        with pytest.raises(socket.gaierror, match="name resolution timed out$"):
            rules().addresses("stuck.example", 443, 0.05)
        time.sleep(0.1)  # the refusal has expired; the lookup has not ended
        with pytest.raises(socket.gaierror, match="name resolution timed out$"):
            rules().addresses("stuck.example", 443, 0.05)
        assert calls == ["stuck.example"], "no second lookup of a name already in flight"
    finally:
        release.set()


@pytest.mark.parametrize("bundle,verify", [("/etc/ssl/hospital-ca.pem", "/etc/ssl/hospital-ca.pem"), ("", True)])
def test_fhir_server_certificates_are_checked_against_the_configured_ca_bundle(monkeypatch, bundle, verify):
    """A hospital's internal CA (CDS_FHIR_CA_BUNDLE); else the bundled set. Never verify=False."""
    import time

    policy = egress.policy({"CDS_ALLOWED_FHIR_SERVERS": BASE, "CDS_ALLOW_PRIVATE_FHIR_SERVERS": False})
    seen = []

    class Answer:
        status_code = 200

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def iter_content(self, size):
            return iter([b'{"resourceType": "Patient", "id": "1"}'])

    monkeypatch.setattr(egress.session(policy), "get", lambda url, **kwargs: seen.append(kwargs) or Answer())
    client = FHIRClient(BASE, "secret-token", policy, connect_timeout=1, read_timeout=1,
                        deadline=time.monotonic() + 5, max_pages=1, max_bytes=1 << 20, ca_bundle=bundle)
    assert client.read("Patient/1")[0]["id"] == "1"
    assert [k["verify"] for k in seen] == [verify]


def test_a_ca_bundle_that_is_not_a_file_stops_the_start(tmp_path):
    from cds_service.config import ConfigError, load_config
    with pytest.raises(ConfigError, match="CDS_FHIR_CA_BUNDLE"):
        load_config({"CDS_FHIR_CA_BUNDLE": str(tmp_path / "missing.pem")}, environ={})
    pem = tmp_path / "ca.pem"
    pem.write_text("-----BEGIN CERTIFICATE-----\n")
    assert load_config({"CDS_FHIR_CA_BUNDLE": str(pem)}, environ={})["CDS_FHIR_CA_BUNDLE"] == str(pem)


@responses.activate
def test_a_cookie_one_fhir_answer_sets_never_goes_out_with_another_request():
    """The guarded session is shared by every request and user: a JSESSIONID the server set for user
    A's call must not be sent with user B's (stubbed transport, no network)."""
    egress.session.cache_clear()
    guarded = egress.session(rules(BASE))
    responses.add(responses.GET, f"{BASE}/Patient/1", json={"resourceType": "Patient", "id": "1"},
                  headers={"Set-Cookie": "JSESSIONID=user-a-session; Path=/"})
    responses.add(responses.GET, f"{BASE}/Patient/2", json={"resourceType": "Patient", "id": "2"})
    guarded.get(f"{BASE}/Patient/1", headers={"Authorization": "Bearer user-a"})
    guarded.get(f"{BASE}/Patient/2", headers={"Authorization": "Bearer user-b"})
    assert [c.request.headers.get("Cookie") for c in responses.calls] == [None, None]
    assert len(guarded.cookies) == 0


@pytest.mark.parametrize("host", ["a" * 64 + ".invalid", "a..b.invalid"])
def test_a_host_name_the_idna_codec_refuses_does_not_resolve(monkeypatch, host):
    """getaddrinfo raises UnicodeError for such a name: it is refused as unresolvable, never a 500
    (the connection-level check resolves the host urllib3 parsed, not the request's validated one)."""
    def getaddrinfo(name, *args, **kwargs):
        return name.encode("idna") and []  # what socket.getaddrinfo does first, stubbed: no lookup is made

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    with pytest.raises(egress.Refused, match="could not be resolved"):
        rules().check(f"https://{host}/fhir")
    with pytest.raises(socket.gaierror):
        rules().addresses(host, 443)
