"""Digest authentication: the RFCs' worked examples, the retry budget, and fuzzed challenges."""

from __future__ import annotations

import contextlib
import hashlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from callbox.server.sip.digest import (
    AuthenticationFailed,
    Authenticator,
    Challenge,
    Credentials,
    DigestParseError,
    authorization_value,
    digest_response,
    parse_challenge,
)
from callbox.server.sip.message import SipRequest, SipResponse, parse_message

# RFC 7616 §3.9.1: the challenge, the client's values, and the responses printed there.
RFC7616_REALM = "http-auth@example.org"
RFC7616_NONCE = "7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v"
RFC7616_OPAQUE = "FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"
RFC7616_CNONCE = "f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ"
RFC7616_MD5_RESPONSE = "8ca523f5e9506fed4657c9700eebdbec"
RFC7616_SHA256_RESPONSE = "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


def rfc7616_challenge(algorithm: str) -> str:
    return (f'Digest realm="{RFC7616_REALM}", qop="auth, auth-int", algorithm={algorithm}, '
            f'nonce="{RFC7616_NONCE}", opaque="{RFC7616_OPAQUE}"')


@pytest.mark.parametrize(("algorithm", "expected"), [
    ("MD5", RFC7616_MD5_RESPONSE), ("SHA-256", RFC7616_SHA256_RESPONSE)])
def test_rfc7616_worked_examples(algorithm: str, expected: str) -> None:
    challenge = parse_challenge(rfc7616_challenge(algorithm))
    assert challenge.qop == ("auth", "auth-int")
    value = authorization_value(challenge, username="Mufasa", password="Circle of Life",
                                method="GET", uri="/dir/index.html", cnonce=RFC7616_CNONCE,
                                nc=1)
    assert f'response="{expected}"' in value
    assert "qop=auth," in value and "nc=00000001" in value
    assert f'opaque="{RFC7616_OPAQUE}"' in value and f"algorithm={algorithm}" in value


def test_rfc2617_worked_example() -> None:
    challenge = parse_challenge(
        'Digest realm="testrealm@host.com", qop="auth,auth-int", '
        'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    assert challenge.algorithm == "MD5"
    response = digest_response(challenge, username="Mufasa", password="Circle Of Life",
                               method="GET", uri="/dir/index.html", cnonce="0a4f113b", nc=1,
                               qop="auth")
    assert response == "6629fae49393a05397450978507c4ef1"  # printed in RFC 2617 §3.5


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


def sha256(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_without_qop_uses_the_rfc2069_form() -> None:
    challenge = Challenge(realm="r", nonce="n")
    value = authorization_value(challenge, username="u", password="p", method="REGISTER",
                                uri="sip:example.net", cnonce="c", nc=1)
    expected = md5(f"{md5('u:r:p')}:n:{md5('REGISTER:sip:example.net')}")
    assert f'response="{expected}"' in value
    assert "qop=" not in value and "nc=" not in value and "cnonce=" not in value


def test_sess_variant_rehashes_ha1_with_nonce_and_cnonce() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", algorithm=SHA-256-sess, qop=auth')
    response = digest_response(challenge, username="u", password="p", method="INVITE",
                               uri="sip:b@h", cnonce="c", nc=2, qop="auth")
    ha1 = sha256(f"{sha256('u:r:p')}:n:c")
    assert response == sha256(f"{ha1}:n:00000002:c:auth:{sha256('INVITE:sip:b@h')}")


def test_auth_int_hashes_the_body() -> None:
    challenge = parse_challenge('Digest realm="r", nonce="n", qop="auth-int"')
    response = digest_response(challenge, username="u", password="p", method="INVITE",
                               uri="sip:b@h", cnonce="c", nc=1, qop="auth-int", body=b"v=0\r\n")
    ha2 = md5(f"INVITE:sip:b@h:{md5('v=0' + chr(13) + chr(10))}")
    assert response == md5(f"{md5('u:r:p')}:n:00000001:c:auth-int:{ha2}")


def test_quoted_values_unescape_and_stale_is_read() -> None:
    challenge = parse_challenge(r'DIGEST realm="a \"b\" c",nonce=abc,stale=TRUE')
    assert challenge.realm == 'a "b" c' and challenge.nonce == "abc" and challenge.stale


@pytest.mark.parametrize(("value", "words"), [
    ('Basic realm="x"', "not Digest"),
    ('Digest nonce="n"', "without realm"),
    ('Digest realm="r"', "without nonce"),
    ('Digest realm="r", nonce="n", algorithm=SHA-512', "unsupported digest algorithm"),
    ('Digest realm="r", nonce="n", qop="auth-conf"', "unsupported qop"),
    ('Digest realm="r, nonce=n', "unterminated"),
    ('Digest realm="r", realm="s", nonce="n"', "twice"),
    ('Digest realm="r\r\nX: y", nonce="n"', "control character"),
])
def test_bad_challenges_say_why(value: str, words: str) -> None:
    with pytest.raises(DigestParseError, match=words):
        parse_challenge(value)


@settings(max_examples=400, deadline=None)
@given(st.text(max_size=300))
def test_random_challenges_raise_only_the_parse_error(text: str) -> None:
    for value in (text, "Digest " + text):
        try:
            challenge = parse_challenge(value)
        except DigestParseError:
            continue
        assert challenge.realm is not None and challenge.nonce is not None


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["realm", "nonce", "qop", "algorithm", "stale",
                                           "opaque", "x"]),
                          st.text(max_size=20), st.booleans()), max_size=6))
def test_random_param_lists_raise_only_the_parse_error(
        params: list[tuple[str, str, bool]]) -> None:
    body = ", ".join(f'{k}="{v}"' if quoted else f"{k}={v}" for k, v, quoted in params)
    with contextlib.suppress(DigestParseError):
        parse_challenge("Digest " + body)


# -- the retry budget ---------------------------------------------------------------------

REGISTER = (
    b"REGISTER sip:example.net SIP/2.0\r\n"
    b"Via: SIP/2.0/UDP 127.0.0.1:5060;rport;branch=z9hG4bKfirst\r\n"
    b"Max-Forwards: 70\r\n"
    b"From: <sip:alice@example.net>;tag=abc\r\n"
    b"To: <sip:alice@example.net>\r\n"
    b"Call-ID: reg-1@127.0.0.1\r\n"
    b"CSeq: 7 REGISTER\r\n"
    b"Contact: <sip:alice@127.0.0.1:5060>\r\n"
    b"Content-Length: 0\r\n\r\n"
)


def register() -> SipRequest:
    request = parse_message(REGISTER)
    assert isinstance(request, SipRequest)
    return request


def challenge_response(request: SipRequest, status: int, *challenges: str) -> SipResponse:
    header = "WWW-Authenticate" if status == 401 else "Proxy-Authenticate"
    lines = [f"SIP/2.0 {status} Unauthorized",
             *(f"{name}: {value}" for name, value in request.headers
               if name in ("Via", "From", "To", "Call-ID", "CSeq")),
             *(f"{header}: {c}" for c in challenges), "Content-Length: 0", "", ""]
    response = parse_message("\r\n".join(lines).encode())
    assert isinstance(response, SipResponse)
    return response


def test_retry_is_a_new_transaction_of_the_same_dialog_with_credentials() -> None:
    auth = Authenticator(Credentials("alice", "secret"))
    first = register()
    retried = auth.exchange().retry(
        first, challenge_response(first, 401, 'Digest realm="example.net", nonce="n1", qop=auth'))
    assert retried.cseq.seq == 8 and retried.cseq.method == "REGISTER"
    assert retried.call_id == first.call_id and retried.from_tag == first.from_tag
    assert retried.branch != first.branch and retried.branch is not None
    assert retried.branch.startswith("z9hG4bK")
    value = retried.headers.get("Authorization") or ""
    challenge = parse_challenge('Digest realm="example.net", nonce="n1", qop=auth')
    cnonce = value.split('cnonce="')[1].split('"')[0]
    expected = digest_response(challenge, username="alice", password="secret",
                               method="REGISTER", uri="sip:example.net", cnonce=cnonce, nc=1,
                               qop="auth")
    assert f'response="{expected}"' in value and 'username="alice"' in value


def test_407_is_answered_with_proxy_authorization() -> None:
    first = register()
    retried = Authenticator(Credentials("alice", "secret")).exchange().retry(
        first, challenge_response(first, 407, 'Digest realm="p", nonce="n"'))
    assert retried.headers.get("Proxy-Authorization") is not None
    assert retried.headers.get("Authorization") is None


def test_the_same_challenge_twice_fails_instead_of_looping() -> None:
    exchange = Authenticator(Credentials("alice", "wrong")).exchange()
    first = register()
    second = exchange.retry(first, challenge_response(first, 401, 'Digest realm="r", nonce="n"'))
    with pytest.raises(AuthenticationFailed, match="refused by realm 'r'"):
        exchange.retry(second, challenge_response(second, 401, 'Digest realm="r", nonce="n"'))


def test_a_new_nonce_without_stale_is_a_refusal_too() -> None:
    exchange = Authenticator(Credentials("alice", "wrong")).exchange()
    first = register()
    second = exchange.retry(first, challenge_response(first, 401, 'Digest realm="r", nonce="1"'))
    with pytest.raises(AuthenticationFailed):
        exchange.retry(second, challenge_response(second, 401, 'Digest realm="r", nonce="2"'))


def test_stale_gets_exactly_one_more_answer_with_the_new_nonce() -> None:
    exchange = Authenticator(Credentials("alice", "secret")).exchange()
    first = register()
    second = exchange.retry(first, challenge_response(first, 401, 'Digest realm="r", nonce="1"'))
    third = exchange.retry(second, challenge_response(
        second, 401, 'Digest realm="r", nonce="2", stale=true'))
    assert 'nonce="2"' in (third.headers.get("Authorization") or "")
    assert third.cseq.seq == first.cseq.seq + 2
    assert len(third.headers.get_all("Authorization")) == 1  # the old answer is replaced
    with pytest.raises(AuthenticationFailed):
        exchange.retry(third, challenge_response(
            third, 401, 'Digest realm="r", nonce="3", stale=true'))


def test_nc_counts_per_nonce_across_requests() -> None:
    auth = Authenticator(Credentials("alice", "secret"))
    counts = []
    for _ in range(3):
        first = register()
        retried = auth.exchange().retry(
            first, challenge_response(first, 401, 'Digest realm="r", nonce="same", qop=auth'))
        counts.append((retried.headers.get("Authorization") or "").split("nc=")[1][:8])
    assert counts == ["00000001", "00000002", "00000003"]


def test_realm_restriction_refuses_other_realms() -> None:
    exchange = Authenticator(Credentials("alice", "secret", realm="mine")).exchange()
    first = register()
    with pytest.raises(AuthenticationFailed, match="realm 'other'"):
        exchange.retry(first, challenge_response(first, 401, 'Digest realm="other", nonce="n"'))


def test_the_strongest_algorithm_of_a_realm_is_answered() -> None:
    first = register()
    retried = Authenticator(Credentials("alice", "secret")).exchange().retry(
        first, challenge_response(first, 401, 'Digest realm="r", nonce="n", algorithm=MD5',
                                  'Digest realm="r", nonce="n", algorithm=SHA-256'))
    values = retried.headers.get_all("Authorization")
    assert len(values) == 1 and "algorithm=SHA-256" in values[0]


def test_a_challenge_we_cannot_read_is_a_failure_with_the_reason() -> None:
    first = register()
    with pytest.raises(AuthenticationFailed, match="not Digest"):
        Authenticator(Credentials("a", "b")).exchange().retry(
            first, challenge_response(first, 401, 'Basic realm="x"'))


def test_a_proxy_then_a_registrar_are_both_answered() -> None:
    exchange = Authenticator(Credentials("alice", "secret")).exchange()
    first = register()
    second = exchange.retry(first, challenge_response(first, 407, 'Digest realm="proxy", '
                                                                  'nonce="p"'))
    third = exchange.retry(second, challenge_response(second, 401, 'Digest realm="registrar", '
                                                                   'nonce="r"'))
    assert 'realm="proxy"' in (third.headers.get("Proxy-Authorization") or "")
    assert 'realm="registrar"' in (third.headers.get("Authorization") or "")
    with pytest.raises(AuthenticationFailed, match="refused by realm 'registrar'"):
        exchange.retry(third, challenge_response(third, 401, 'Digest realm="registrar", '
                                                             'nonce="r2"'))


def test_a_server_inventing_new_realms_is_cut_off() -> None:
    exchange = Authenticator(Credentials("alice", "secret")).exchange()
    request = register()
    with pytest.raises(AuthenticationFailed, match="still challenged after 3 answers"):
        for n in range(10):
            request = exchange.retry(request, challenge_response(
                request, 401, f'Digest realm="r{n}", nonce="n"'))
    assert request.cseq.seq == 7 + 3
